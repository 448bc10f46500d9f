"""``explain --quiz``: three questions a learner answers by hand, on a problem small enough for it.

The toy model with D = 4 (``--dim`` changes it) on a sentence of two or three words: the learner is
given the vectors each step needs, rounded to 4 decimals, and asked for

1. one score e_ij = q_i · k_j,
2. that pair's weight α_ij = softmax_j(e_ij / √d_k) (given the row of scores),
3. one component of z_i = Σ_j α_ij v_j (given the row of weights and that component of each v_j).

j is the word i attends to most, so the three answers follow one thread. An answer is right when
|answer − exact| ≤ ABS + REL·|exact|: the numbers shown are rounded to 4 decimals, which moves a
hand computation by less than 1e-3 here (D = 4, T ≤ 3, entries of order 1), well inside. A wrong
answer gets the worked step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from .. import reference
from .._text import ascii_float, clip, printable
from ..errors import InputError, UsageError
from ..models.toy import ToyModel
from .selection import resolve_word

QUIZ_DIM = 4
MAX_LINE = 1000  # characters of an answer's line: a number needs a few dozen; a longer line is refused
TRIES = 5  # lines that are not a number, per answer, before the quiz gives up
ABS, REL = 0.005, 0.005  # an answer is right within ABS + REL·|exact|: two or three decimals
DIGITS = 4  # decimals of the numbers given
WIDTH = 100  # columns of the text


@dataclass
class Question:
    ask: str  # the question, with the numbers it needs
    exact: float
    worked: str  # the worked step, shown when the answer is wrong


def _n(x: float) -> str:
    return f"{x:.{DIGITS}f}"


def _v(x: np.ndarray) -> str:
    return "[" + ", ".join(_n(float(c)) for c in x) + "]"


def ask(text: str, *, model: str | None, dim: int | None, seed: int | None, positions: str | None,
        word: str | None, answers: str | None) -> int:
    """``explain --quiz``: ask the questions on ``text`` (answers from ``answers``, "e,α,z", else from
    stdin) and say which are right; 0 when all are, 1 when not. ``model`` must be None or "toy"."""
    import sys

    from .._command import check_outputs, stdin_read

    if model not in (None, "toy"):
        raise UsageError("--quiz uses the toy model (a problem small enough for pencil and paper); drop "
                         "--model")
    given = parse_answers(answers) if answers is not None else None
    check_outputs({}, stdin_read() if given is None else {})  # stdout must not be the answers' file
    toy = ToyModel(dim=QUIZ_DIM if dim is None else dim, seed=0 if seed is None else seed,
                   positions=positions or "none")
    facts, questions = make_quiz(toy, text, word=word)
    stdin = sys.stdin
    interactive = given is None and stdin is not None and stdin.isatty()

    def say(line: str, end: str = "\n") -> None:
        print(line, end=end, flush=True)

    return run_quiz(facts, questions, given, line_reader(stdin), say, interactive=interactive)


def make_quiz(model: ToyModel, text: str, *, word: str | None = None) -> tuple[dict, list[Question]]:
    """(facts, three questions) for ``text`` (2 or 3 words) through ``model``; UsageError otherwise."""
    words = model.tokenize(text).tokens
    if not 2 <= len(words) <= 3:
        raise UsageError(f"--quiz takes a sentence of two or three words (a problem for pencil and paper), "
                         f"got {len(words)}: {printable(' '.join(words[:6]))}")
    H = model.inputs(words)  # (D, T)
    W_Q, W_K, W_V = model.weights()
    s = reference.self_attention(H, W_Q, W_K, W_V)
    T, d = len(words), W_Q.shape[0]
    i = resolve_word(word, words, default=0)
    j = int(np.argmax(s.A[i]))
    c = int(np.argmax(np.abs(s.Z[:, i])))  # the largest component: not a near-zero one
    w = [printable(x) for x in words]
    q, k, e_row = s.Q[:, i], s.K[:, j], s.E[i]
    root = math.sqrt(d)
    terms = " + ".join(f"({_n(a)})({_n(b)})" for a, b in zip(q, k, strict=True))
    exps = np.exp(e_row / root)
    q1 = Question(
        ask=(f'1. The score of "{w[j]}" (j = {j + 1}) for "{w[i]}" (i = {i + 1}):  e_{i + 1}{j + 1} = '
             f"q_{i + 1} · k_{j + 1} = ?\n     q_{i + 1} = {_v(q)}\n     k_{j + 1} = {_v(k)}"),
        exact=float(s.E[i, j]),
        worked=f"e_{i + 1}{j + 1} = {terms} = {_n(s.E[i, j])}")
    q2 = Question(
        ask=(f"2. Its weight:  α_{i + 1}{j + 1} = softmax over j of e_{i + 1}j / √d_k, with d_k = {d} = ?\n"
             f"     scores e_{i + 1}j, j = 1…{T}: {_v(e_row)}"),
        exact=float(s.A[i, j]),
        worked=(f"α_{i + 1}{j + 1} = exp(e_{i + 1}{j + 1}/{root:g}) / Σ_j exp(e_{i + 1}j/{root:g}) = "
                f"{_n(exps[j])} / ({' + '.join(_n(x) for x in exps)}) = {_n(exps[j])} / {_n(exps.sum())} = "
                f"{_n(s.A[i, j])}"))
    v_c = s.V[c]  # (T,): component c of every v_j
    q3 = Question(
        ask=(f"3. Component {c + 1} of z_{i + 1} = Σ_j α_{i + 1}j v_j = ?\n"
             f"     weights α_{i + 1}j, j = 1…{T}: {_v(s.A[i])}\n"
             f"     component {c + 1} of v_j, j = 1…{T}: {_v(v_c)}"),
        exact=float(s.Z[c, i]),
        worked=(f"z_{i + 1}[{c + 1}] = " + " + ".join(f"({_n(a)})({_n(b)})" for a, b in zip(s.A[i], v_c,
                                                                                         strict=True))
                + f" = {_n(s.Z[c, i])}"))
    facts = {"words": words, "D": model.dim, "seed": model.seed, "positions": model.positions,
             "i": i + 1, "j": j + 1, "component": c + 1, "answers": [q.exact for q in (q1, q2, q3)]}
    return facts, [q1, q2, q3]


def right(answer: float, exact: float) -> bool:
    return abs(answer - exact) <= ABS + REL * abs(exact)


def parse_answers(text: str) -> list[float]:
    """'1.2,0.3,-0.5' → three finite numbers; UsageError naming what is wrong."""
    values = [_number(p) for p in text.split(",")]
    if len(values) != 3 or None in values:
        raise UsageError(f"--answers: expected three numbers (digits 0-9) separated by commas (e, α, z "
                         f"component), got '{clip(text)}'")
    return values  # type: ignore[return-value]


def run_quiz(facts: dict, questions: list[Question], answers: list[float] | None,
             read: Callable[[], str | None], say: Callable[..., None], *, interactive: bool) -> int:
    """Ask the questions (answers from ``answers``, else ``read()`` per question); 0 if all right, 1 if not.
    Lines are wrapped to ``WIDTH`` columns.

    ``read`` returns a line, or None at the end of the input (a UsageError: no answer). A line that
    is not a number is asked again, ``TRIES`` times at most; one longer than ``MAX_LINE`` is a
    UsageError (messages show at most 40 characters of what was read).
    """
    w = " ".join(printable(x) for x in facts["words"])
    say = _wrapped(say)
    where = "no positions" if facts["positions"] == "none" else f"{facts['positions']} positions"
    say(f'Quiz: "{w}" through the toy model (D = {facts["D"]}, random untrained W\'s, seed {facts["seed"]}, '
        f"{where}).")
    say(f"An answer is right within {ABS} + {REL * 100:g} % of the exact value (the numbers given are "
        f"rounded to {DIGITS}")
    say("decimals, which moves a careful answer by less than 0.001).")
    wrong = 0
    for n, q in enumerate(questions):
        say("")
        say(q.ask)
        if answers is not None:
            value = answers[n]
            say(f"   your answer: {value:g}")
        else:
            value = _ask(n, read, say, interactive)
            if not interactive:  # the answer came through a pipe: show what was read
                say(f"   your answer: {value:g}")
        if right(value, q.exact):
            say(f"   right ✓ (exact: {q.exact:.6f})")
        else:
            wrong += 1
            say(f"   not quite ✗: the exact value is {q.exact:.6f}")
            say(f"   worked: {q.worked}")
    say("")
    say(f"{len(questions) - wrong} of {len(questions)} right" + ("" if wrong else " — well done"))
    return 1 if wrong else 0


def _wrapped(say: Callable[..., None], width: int = WIDTH) -> Callable[..., None]:
    """``say``, each line wrapped to ``width`` columns, continuation lines indented under the first."""
    import textwrap

    def out(text: str, end: str = "\n") -> None:
        lines = []
        for line in text.split("\n"):
            hang = " " * (len(line) - len(line.lstrip()) + 4)
            lines += textwrap.wrap(line, width, subsequent_indent=hang, break_on_hyphens=False,
                                   drop_whitespace=True) or [""] if end == "\n" else [line]
        say("\n".join(lines), end=end)
    return out


def line_reader(stream: TextIO | None) -> Callable[[], str | None]:
    """``read`` for ``run_quiz``: the next line of ``stream``, at most ``MAX_LINE`` + 1 characters of
    it (an endless line is not read whole: ``_ask`` refuses it), None at its end or when it is closed."""
    def read() -> str | None:
        if stream is None or getattr(stream, "closed", False):
            return None
        try:
            line = stream.readline(MAX_LINE + 1)
        except UnicodeDecodeError:
            raise InputError("stdin is not UTF-8 text; type the answers, or give --answers e,α,z") from None
        except OSError as e:
            raise InputError(f"cannot read stdin: {e.strerror or e}") from None
        return line if line else None
    return read


def _number(line: str) -> float | None:
    """The answer on ``line``: a finite number in ASCII digits ("0.25", "-1.5e-2"), else None."""
    try:
        return ascii_float(line.strip())
    except ValueError:
        return None


def _ask(n: int, read: Callable[[], str | None], say: Callable[..., None], interactive: bool) -> float:
    """Answer ``n`` (0-based): a line that is not a number is asked again, ``TRIES`` times at most."""
    last = None
    for k in range(TRIES):
        if interactive:
            say("   your answer: ", end="")
        line = read()
        if line is None:
            was = f"; the last line read, '{clip(last)}', is not a number" if last is not None else ""
            raise UsageError(f"the input ended before answer {n + 1} of 3{was} (or give --answers e,α,z)")
        if len(line.rstrip("\r\n")) > MAX_LINE:
            raise UsageError(f"answer {n + 1} is a line of more than {MAX_LINE} characters (it begins "
                             f"'{clip(line[:40])}…'); an answer is one number such as 0.25")
        value = _number(line)
        if value is not None:
            return value
        last = line.strip()
        if k < TRIES - 1:
            shown = "" if interactive else f"your answer '{clip(last)}': "  # a pipe's line is not on screen
            say(f"   {shown}that is not a number; try again (e.g. 0.25)")
    raise UsageError(f"answer {n + 1}: {TRIES} tries and none is a number (the last: '{clip(last or '')}'); "
                     "an answer is one number such as 0.25, in the digits 0-9")
