"""The task table, ``TASKS``: one row per task ``selfattention train`` knows, and how the synthetic
tasks draw their prompts. No torch here: the command line's parser and ``TrainConfig`` read it.

A row answers everything the rest of ``train/`` asks of a task: its name and a line of help, what a
prompt's length counts (``unit``), the defaults that differ from ``TrainConfig``'s, the longest
sequence the model reads, what the model is given for a prompt and what ``generate`` prints. A new
task is one row (``Task``: a name, what it does, an example and ``solve``; a task of letters needs
nothing more).

Synthetic tasks (``Task``). Every example is one string the decoder-only model reads left to right,

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

The text task (``TextTask``) is a character-level language model of ``--text FILE`` (read by
``text.read_text``, cut into windows by ``data.TextData``): a prompt is continued, not answered.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import InputError, UsageError

if TYPE_CHECKING:
    from .config import TrainConfig

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


def _letters(rng: np.random.Generator, n: int) -> str:
    return "".join(LETTERS[i] for i in rng.integers(0, len(LETTERS), n))


def _count_words(n: int) -> int:
    return len(LETTERS) ** n


def _all_words(n: int) -> Iterable[str]:
    idx = np.indices((len(LETTERS),) * n).reshape(n, -1).T  # (26**n, n)
    return ("".join(LETTERS[i] for i in row) for row in idx)


def _as_long(n: int) -> int:
    return 2 * n + 2  # prompt, "=", an answer as long, "."


# eq=False: a row is equal only to itself, and hashable (``_held_out_of`` caches by row).
@dataclass(frozen=True, eq=False)
class Task:
    """A synthetic task, one row of the table: its symbols, how an answer follows from a prompt, how
    prompts are drawn and counted, and its defaults. The defaults of the fields make a task of
    letters whose answer is as long as its prompt."""

    name: str
    what: str  # what the answer is, for messages ("copy the letters")
    example: str  # a prompt, shown with its answer in --help and in messages ("abc")
    solve: Callable[[str], str]
    symbols: str = LETTERS  # what prompts are made of (recall: keys then values)
    extra: str = ""  # other characters of prompts or answers (recall's "?")
    sep: str = SEP  # what comes between prompt and answer: "=", or nothing for recall (see above)
    unit: str = "letters"  # what a prompt's length counts (recall: "pairs")
    draw: Callable[[np.random.Generator, int], str] = _letters  # a random prompt of a given length
    count: Callable[[int], int] = _count_words  # how many prompts of a length exist
    enumerate_all: Callable[[int], Iterable[str]] = _all_words  # every prompt of a length (only when few)
    length: Callable[[str], int] = len  # a prompt's length, in units
    longest: Callable[[int], int] = _as_long  # the longest training string of prompts of n units
    most: int | None = None  # the longest prompt that exists (units), and why (for the message)
    most_why: str = ""
    defaults: Mapping[str, object] = field(default_factory=dict)  # TrainConfig fields, where they differ
    temperature: float = 0.0  # generate's default: always the likeliest token

    from_file: ClassVar[bool] = False  # draws its own prompts (the text task reads --text FILE)

    @property
    def help(self) -> str:
        return self.sequence(self.example)

    @property
    def description(self) -> str:
        return f"{self.what}: {self.help}"

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.symbols + self.extra + self.sep + END)

    def sequence(self, prompt: str) -> str:
        """The whole training string: prompt, "=" (not for recall), answer, "."."""
        return f"{prompt}{self.sep}{self.solve(prompt)}{END}"

    def sequence_len(self, config: TrainConfig) -> int:
        return self.longest(config.longer_len)

    def check(self, config: TrainConfig) -> None:
        """UsageError for lengths this task does not have."""
        if self.most is not None and config.longer_len > self.most:
            raise UsageError(f"{self.name} has at most {self.most} {self.unit} ({self.most_why}), "
                             f"got longer_len={config.longer_len}")

    def prompt_for(self, text: str) -> str:
        """What the model reads before answering: the prompt and "=" (recall: the prompt alone);
        InputError for an empty prompt or a character prompts do not use."""
        allowed = set(self.vocab.tokens) - {self.sep, END}
        bad = next((c for c in text if c not in allowed), None)
        if bad is not None or not text:
            what = f"the character {bad!r}" if bad is not None else "an empty prompt"
            raise InputError(f"--prompt: {what} is not a {self.name} prompt ({self.description}; a prompt "
                             f"uses only {''.join(sorted(allowed))})")
        return text + self.sep

    def printed(self, prompt: str, generated: str) -> str:  # noqa: ARG002
        """What ``generate`` prints: the answer alone."""
        return generated

    def stop(self, vocab: Vocabulary) -> int | None:
        """The token that ends generation: the answer's final "."."""
        return vocab.index[END]

    def max_new(self, config: TrainConfig) -> int:
        """generate's default --max-new: more than the longest answer."""
        return 2 * config.longer_len + 2

    def length_warning(self, prompt: str, config: TrainConfig) -> str | None:
        """A line when ``prompt`` is of a length the model was not trained on."""
        n = self.length(prompt)
        if config.min_len <= n <= config.max_len:
            return None
        return (f"prompt of {n} {self.unit}, trained on {config.min_len}-{config.max_len}: a test of length "
                "generalisation")

    def held_out(self, prompt: str) -> bool:
        """Is ``prompt`` in the held-out set (never trained on)? Fixed forever by a hash."""
        n = self.length(prompt)
        if self.count(n) <= ENUMERATE_MAX:
            return prompt in _held_out_of(self, n)
        return _hash(self.name, prompt) % HELDOUT == 0


@dataclass(frozen=True, eq=False)
class TextTask:
    """The text task, one row of the table: a character-level language model of ``--text FILE``.
    Its vocabulary is the file's characters; a prompt is continued, and printed with its
    continuation."""

    name: str
    help: str
    unit: str = "characters"
    defaults: Mapping[str, object] = field(default_factory=dict)
    temperature: float = 0.8  # generate's default: sampled

    from_file: ClassVar[bool] = True  # reads --text FILE (stored in the config: a resume finds it)
    vocab: ClassVar[None] = None  # not fixed: the file's characters

    def sequence_len(self, config: TrainConfig) -> int:
        return config.context

    def check(self, config: TrainConfig) -> None:
        pass

    def prompt_for(self, text: str) -> str:
        """The text itself; InputError for an empty one."""
        if not text:
            raise InputError("--prompt: an empty prompt; a text model continues a text of at least one "
                             "character")
        return text

    def printed(self, prompt: str, generated: str) -> str:
        return prompt + generated

    def stop(self, vocab: Vocabulary) -> int | None:  # noqa: ARG002
        return None

    def max_new(self, config: TrainConfig) -> int:  # noqa: ARG002
        """generate's default --max-new."""
        return 200

    def length_warning(self, prompt: str, config: TrainConfig) -> str | None:  # noqa: ARG002
        return None


def _hash(name: str, prompt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}:{prompt}".encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=64)
def _held_out_of(task: Task, n: int) -> frozenset[str]:
    """Held-out prompts of a length with few: the 1/16 with the smallest hashes (at least one)."""
    everything = sorted(task.enumerate_all(n), key=lambda p: _hash(task.name, p))
    return frozenset(everything[:max(1, len(everything) // HELDOUT)])


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


def _pairs(prompt: str) -> int:
    return len(prompt.partition(QUERY)[0]) // 2


# The task table, in the order --help lists them.
TASKS: dict[str, Task | TextTask] = {t.name: t for t in (
    Task("copy", "copy the letters", "abc", lambda p: p),
    Task("reverse", "reverse the letters", "abc", lambda p: p[::-1]),
    Task("sort", "sort the letters", "cab", lambda p: "".join(sorted(p))),
    Task("recall", "associative recall: key-value pairs, '?', a key; answer its value", "a1b7?b",
         _solve_recall, symbols=LETTERS + DIGITS, extra=QUERY, sep="", unit="pairs", draw=_draw_recall,
         count=_count_recall, enumerate_all=_all_recall, length=_pairs,
         longest=lambda n: 2 * n + 4,  # pairs, "?", key, value, "."
         most=len(LETTERS), most_why="distinct letter keys", defaults={"max_len": 8, "longer_len": 12}),
    TextTask("text", "a character-level language model of --text FILE",
             defaults={"d_model": 128, "num_layers": 4, "d_ff": 512, "batch_size": 32, "lr": 1e-3,
                       "dropout": 0.1, "eval_every": 200, "eval_size": 64}),
)}
SYNTHETIC = tuple(name for name, task in TASKS.items() if not task.from_file)


def get_task(name: str) -> Task | TextTask:
    """The row of task ``name``; InputError naming the tasks there are."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
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
