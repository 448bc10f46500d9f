"""Which layer, head and word ``explain`` shows, resolved once: ``select`` turns the options (1-based
layer and head, a word or a position; None for the defaults) and the trace into a ``Selection``,
0-based, which every view reads. And what a layer's mask lets each word see (``mask_report``), on
which the default word depends.

Defaults: layer ``models.DEFAULT_LAYER`` (its input H is the word embeddings themselves); the head
that mixes the most real words (``models.heads.default_head``); the first real word, or under a
causal mask the middle one, which sees some words and not others; for a model trained on a task
(``selfattention train reverse``, …) whose text holds a prompt and its answer, the answer's first
character (``answer_row`` finds where the answer starts: the views window their tables on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..models import DEFAULT_LAYER, check_layer_head
from ..models.heads import default_head
from ..models.tracing import Trace
from .fmt import one

GIVEN = {"layer": "--layer", "head": "--head", "word": "--word"}  # how a chosen one was chosen


@dataclass(frozen=True)
class Selection:
    """The layer, head and word every view shows, 0-based, and how each was chosen, for the
    messages: ``GIVEN``'s "--layer", "--head", "--word" when the option gave it, else why the
    default was taken (the head's: ``models.heads.MIXING``, …)."""

    layer: int
    head: int
    word: int
    layer_why: str
    head_why: str
    word_why: str
    answer: int | None = None  # a task model's text: the row that writes the answer's first character


    @property
    def head_given(self) -> bool:
        return self.head_why == GIVEN["head"]


def layer_index(layer: int | None) -> int:
    """The 0-based index of the 1-based ``layer`` option (None: ``models.DEFAULT_LAYER``)."""
    return (DEFAULT_LAYER if layer is None else layer) - 1


def select(trace: Trace, *, layer: int | None = None, head: int | None = None,
           word: str | None = None) -> Selection:
    """The layer, head (1-based; None: the defaults) and word (itself or a 1-based position, as
    ``resolve_word`` reads it) of ``trace`` that the views show.

    Raises OptionError for a layer or head the model does not have, UsageError for a word that is
    not in the sentence, ValueError for a layer the trace did not record.
    """
    check_layer_head(trace.model, layer, head)
    n = layer_index(layer)
    if n not in trace.layers:
        raise ValueError(f"the trace holds layers {[k + 1 for k in sorted(trace.layers)]}, not layer {n + 1}")
    layer_why = GIVEN["layer"] if layer is not None else f"the default, layer {DEFAULT_LAYER}"
    h, head_why = (head - 1, GIVEN["head"]) if head is not None else default_head(
        trace.layers[n].weights.double().numpy(), trace.tokens.special, trace.model.unit)
    answer = answer_row(trace)
    if word is None:
        i, word_why = default_word(trace, answer)
    else:
        i, word_why = resolve_word(word, trace.tokens.tokens, unit=trace.model.unit), GIVEN["word"]
    return Selection(n, h, i, layer_why, head_why, word_why, answer)


def resolve_word(word: str | None, tokens: list[str], *, default: int = 0, unit: str = "words") -> int:
    """0-based index of ``word``: None → ``default``; digits → a 1-based position; otherwise the
    first token equal to it (exactly, then ignoring case, then ignoring a word piece's '##')."""
    if word is None:
        return default
    w = word.strip()
    if w.isascii() and w.isdigit():  # "²".isdigit() is True, but int("²") fails
        n = int(w)
        if not 1 <= n <= len(tokens):
            raise UsageError(f"--word {n} is out of range: the sentence has {len(tokens)} {unit} "
                             f"(valid: 1 to {len(tokens)})")
        return n - 1
    rules = (str.__eq__, lambda a, b: a.casefold() == b.casefold(),
             lambda a, b: a.removeprefix("##").casefold() == b.removeprefix("##").casefold())
    for same in rules:
        for i, tok in enumerate(tokens):
            if same(tok, w):
                return i
    listed = ", ".join(tokens[:40]) + (", …" if len(tokens) > 40 else "")
    raise UsageError(f"--word {word!r} is not in the sentence; its {unit} are: {listed}")


def default_word(trace: Trace, answer: int | None = None) -> tuple[int, str]:
    """(0-based index, why) of the default word: the first real one (for [CLS] i am …, "i", index 1;
    a text of markers only: 0); under a causal mask the middle real one instead, which sees some
    words and not others (the first sees only itself); with an ``answer`` (``answer_row``), the
    answer's first character, whose row looks back at the prompt to write the next one."""
    real = [i for i, s in enumerate(trace.tokens.special) if not s]
    unit = one(trace.model.unit)
    if answer is not None:
        if answer + 1 < len(trace.tokens.tokens):
            return answer + 1, f"the first {unit} of the answer"
        return answer, f"the last {unit} of the prompt, which writes the answer's first"
    causal = any((m := mask_report(trace, n)) and m["kind"] == "causal" for n in trace.layers)
    if not real:
        return 0, f"the first {unit} (there is no real {unit})"
    if causal:
        return real[(len(real) - 1) // 2], f"the middle real {unit}, which sees some and not others"
    return real[0], f"the first real {unit}"


def answer_row(trace: Trace) -> int | None:
    """0-based index of the row that writes the first character of the answer in a task model's text
    ("abcd=dcba." → 4, the "=": each row predicts the next character), the last one the model reads
    before answering (the task's ``prompt_for``); None for a model not trained on a task with
    answers, or a text that holds no whole prompt ("abc" of reverse)."""
    from ..train.tasks import TASKS

    task = TASKS.get(str(trace.model.describe().get("task", "")))
    if task is None or task.from_file:
        return None
    text = "".join(trace.tokens.tokens)
    for k in range(1, len(text) + 1):  # the shortest prefix that is a whole prompt and its separator
        prompt, sep = text[:k - len(task.sep)], text[k - len(task.sep):k]
        if sep != task.sep or not prompt:
            continue
        try:
            task.prompt_for(prompt)
            task.solve(prompt)  # recall: a prompt is whole once its query key is there
        except (ValueError, KeyError, IndexError):  # InputError is a ValueError
            continue
        return k - 1
    return None


def mask_report(trace: Trace, layer: int) -> dict[str, object] | None:
    """What the mask of ``layer`` (0-based) let each word see: None when every word sees every word.

    {"kind": "causal" (word i sees words 1 … i) or "mask", "allowed": (T, T) bools, "masked": how
    many scores were forbidden, "illustration": True when the causal mask was added to a model that
    was not trained with it (``--causal``), "alignment": the causal alignment for Tq ≠ Tk}."""
    allowed = trace.layers[layer].allowed
    if allowed is None:
        return None
    a = allowed.numpy()
    causal = a.shape[0] == a.shape[1] and bool((a == np.tri(*a.shape, dtype=bool)).all())
    return {"kind": "causal" if causal else "mask", "allowed": a.tolist(), "masked": int((~a).sum()),
            "illustration": trace.added_causal, "alignment": "top_left"}
