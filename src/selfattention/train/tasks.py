"""Synthetic tasks whose attention patterns a person can recognise, generated on the fly.

Every example is one string the decoder-only model reads left to right,

    prompt "=" answer "."        e.g. reverse:  "hello=olleh."     recall:  "a1b7c3?b7."

and the loss counts only the answer and the final "." (the model must say where it stops). Recall
has no "=": its answer follows the query key at once. With an "=" in between, the model would
first have to move the key one place to the right and then look it up, a two-hop circuit a
2-layer model did not find in 3000 steps (stuck at chance), where one hop is learnt in ~500. The
tasks: ``copy`` (answer = prompt), ``reverse``, ``sort`` (letters in alphabetical order) and
``recall`` (key-value pairs, a query key, its value). ``length`` is the number of letters of the
prompt (for recall: of key-value pairs), drawn uniformly from [min_len, max_len].

Held out: a fixed pseudo-random 1/16 of all possible prompts (by a hash of the prompt) is never
used for training; accuracy is measured on those only. A length with few prompts (length 1 has
26) holds out the 1/16 of them with the smallest hashes, at least one, so every length is tested.

Data for training step s comes from a generator seeded by (seed, s), so any step's batch can be
regenerated: that is the whole "data position" a checkpoint needs.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..errors import InputError

LETTERS = string.ascii_lowercase
DIGITS = string.digits
SEP, END, QUERY = "=", ".", "?"
HELDOUT = 16  # one prompt in HELDOUT is held out
ENUMERATE_MAX = 20_000  # below this many prompts of one length, draw held-out ones from a full list


class Vocabulary:
    """Characters ↔ token ids (one character, one token)."""

    def __init__(self, tokens: Iterable[str]):
        self.tokens = list(tokens)
        if len(set(self.tokens)) != len(self.tokens) or not all(len(t) == 1 for t in self.tokens):
            raise ValueError("a vocabulary is a list of distinct single characters")
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; InputError naming the first character the model does not know."""
        try:
            return [self.index[c] for c in text]
        except KeyError as err:
            known = "".join(self.tokens)
            shown = known if len(known) <= 60 else known[:57] + "…"
            raise InputError(f"the character {err.args[0]!r} is not in this model's vocabulary "
                             f"({len(self.tokens)} characters: {shown!r})") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.tokens[int(i)] for i in ids)


@dataclass(frozen=True)
class Task:
    """A synthetic task: its symbols, how an answer follows from a prompt, and how prompts are drawn."""

    name: str
    symbols: str  # what prompts are made of (recall: keys then values)
    solve: Callable[[str], str]
    draw: Callable[[np.random.Generator, int], str]  # a random prompt of a given length
    count: Callable[[int], int]  # how many prompts of a length exist
    enumerate_all: Callable[[int], Iterable[str]]  # every prompt of a length (only used when few)
    description: str

    @property
    def sep(self) -> str:
        """What comes between prompt and answer: "=", or nothing for recall (see above)."""
        return "" if self.name == "recall" else SEP

    @property
    def vocab(self) -> Vocabulary:
        extra = QUERY if self.name == "recall" else ""
        return Vocabulary(self.symbols + extra + self.sep + END)

    def sequence(self, prompt: str) -> str:
        """The whole training string: prompt, "=" (not for recall), answer, "."."""
        return f"{prompt}{self.sep}{self.solve(prompt)}{END}"

    def length(self, prompt: str) -> int:
        """Letters of a prompt (recall: key-value pairs)."""
        return len(prompt.partition(QUERY)[0]) // 2 if self.name == "recall" else len(prompt)

    def held_out(self, prompt: str) -> bool:
        """Is ``prompt`` in the held-out set (never trained on)? Fixed forever by a hash."""
        n = self.length(prompt)
        if self.count(n) <= ENUMERATE_MAX:
            return prompt in _held_out_of(self, n)
        return _hash(self.name, prompt) % HELDOUT == 0


def _hash(name: str, prompt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}:{prompt}".encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=64)
def _held_out_of(task: Task, n: int) -> frozenset[str]:
    """Held-out prompts of a length with few: the 1/16 with the smallest hashes (at least one)."""
    everything = sorted(task.enumerate_all(n), key=lambda p: _hash(task.name, p))
    return frozenset(everything[:max(1, len(everything) // HELDOUT)])


def _letters(rng: np.random.Generator, n: int) -> str:
    return "".join(LETTERS[i] for i in rng.integers(0, len(LETTERS), n))


def _all_words(n: int) -> Iterable[str]:
    idx = np.indices((len(LETTERS),) * n).reshape(n, -1).T  # (26**n, n)
    return ("".join(LETTERS[i] for i in row) for row in idx)


def _draw_recall(rng: np.random.Generator, pairs: int) -> str:
    keys = rng.choice(len(LETTERS), size=pairs, replace=False)
    values = rng.integers(0, len(DIGITS), pairs)
    query = keys[rng.integers(0, pairs)]
    body = "".join(LETTERS[k] + DIGITS[v] for k, v in zip(keys, values, strict=True))
    return f"{body}{QUERY}{LETTERS[query]}"


def _solve_recall(prompt: str) -> str:
    body, _, key = prompt.partition(QUERY)
    pairs = dict(zip(body[0::2], body[1::2], strict=True))
    return pairs[key]


def _count_recall(pairs: int) -> int:
    keys = int(np.prod([len(LETTERS) - i for i in range(pairs)], dtype=np.float64))
    return keys * len(DIGITS) ** pairs * pairs


def _all_recall(pairs: int) -> Iterable[str]:
    from itertools import permutations, product

    for keys in permutations(LETTERS, pairs):
        for values in product(DIGITS, repeat=pairs):
            body = "".join(k + v for k, v in zip(keys, values, strict=True))
            for q in keys:
                yield f"{body}{QUERY}{q}"


TASKS: dict[str, Task] = {
    "copy": Task("copy", LETTERS, lambda p: p, _letters, lambda n: len(LETTERS) ** n, _all_words,
                 "copy the letters: abc=abc."),
    "reverse": Task("reverse", LETTERS, lambda p: p[::-1], _letters, lambda n: len(LETTERS) ** n, _all_words,
                    "reverse the letters: abc=cba."),
    "sort": Task("sort", LETTERS, lambda p: "".join(sorted(p)), _letters, lambda n: len(LETTERS) ** n,
                 _all_words, "sort the letters: cab=abc."),
    "recall": Task("recall", LETTERS + DIGITS, _solve_recall, _draw_recall, _count_recall, _all_recall,
                   "associative recall: key-value pairs, '?', a key; answer its value: a1b7?b7."),
}
SYNTHETIC = tuple(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; expected one of {', '.join(TASKS)} or text")
    return TASKS[name]


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The generator of training step ``step``: the same numbers for the same (seed, step, stream)."""
    return np.random.default_rng([seed, step, stream])


def train_prompts(task: Task, rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[str]:
    """``n`` random training prompts (never held-out ones), lengths uniform in [min_len, max_len]."""
    out = []
    for length in rng.integers(min_len, max_len + 1, n):
        while True:  # rejection: ~1/16 of draws is held out (a length with few prompts may retry)
            p = task.draw(rng, int(length))
            if not task.held_out(p):
                out.append(p)
                break
    return out


def heldout_prompts(task: Task, rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[str]:
    """``n`` held-out prompts, lengths uniform in [min_len, max_len]."""
    out = []
    for L in rng.integers(min_len, max_len + 1, n):
        if task.count(int(L)) <= ENUMERATE_MAX:
            pool = sorted(_held_out_of(task, int(L)))
            out.append(pool[rng.integers(0, len(pool))])
            continue
        while True:
            p = task.draw(rng, int(L))
            if task.held_out(p):
                out.append(p)
                break
    return out


@dataclass
class Batch:
    """Token ids and what the loss counts, for a decoder-only model (teacher forcing)."""

    inputs: torch.Tensor  # (B, T) ids of the sequence without its last token
    targets: torch.Tensor  # (B, T) ids of the sequence without its first token
    weight: torch.Tensor  # (B, T) bool: True where the target is part of the answer (or its ".")

    def __len__(self) -> int:
        return self.inputs.shape[0]


def encode_batch(task: Task, prompts: list[str]) -> Batch:
    """Right-padded ids of the training strings; the loss counts the answer and the final "."."""
    vocab = task.vocab
    seqs = [vocab.encode(task.sequence(p)) for p in prompts]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), vocab.index[END], dtype=torch.long)  # (B, T) padded with "."
    weight = torch.zeros(len(seqs), T - 1, dtype=torch.bool)  # (B, T - 1)
    for b, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[b, : len(s)] = torch.tensor(s)
        start = len(p) + len(task.sep)  # where the answer begins in s
        weight[b, start - 1: len(s) - 1] = True  # targets s[start …]: the answer and "."
    return Batch(ids[:, :-1], ids[:, 1:], weight)
