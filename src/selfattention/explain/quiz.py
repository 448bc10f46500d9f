"""``explain --quiz``: questions a learner answers by hand, on a problem small enough for it.

The toy model with D = 4 (``--dim`` changes it) on a sentence of two or three words: the learner is
given the numbers each step needs, rounded to 4 decimals, and asked, in the lecture's order
(``explain.questions``: one kind each), for

1. one component of q_i = W_Q h_i,
2. one score e_ij = q_i · k_j,
3. that pair's weight α_ij = softmax_j(e_ij / √d_k) (given the row of scores),
4. one component of z_i = Σ_j α_ij v_j (given the row of weights and that component of each v_j),
5. and 6. the shapes of Qᵀ K and of Z in the lecture's orientation (words as columns),
7. one weight of a row under the causal mask,
8. the first component of o_i = W_O c_i, c_i the z_i of two heads stacked.

``--answers`` gives the answers instead of stdin, separated by commas: all eight in that order
(a shape as rows x columns, "3x3"), or three, e,α,z, which asks the questions 2–4 alone (the form of
earlier versions). A number is right when |answer − exact| ≤ ABS + REL·|exact|: the numbers shown
are rounded to 4 decimals, which moves a hand computation by less than 1e-3 here (D = 4, T ≤ 3,
entries of order 1), well inside; a shape when both sizes are. A wrong answer gets the worked step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TextIO

from .._text import ascii_float, clip, printable
from ..errors import InputError, UsageError
from ..models.toy import ToyModel
from .questions import CLASSIC, KINDS, SHAPES, Question, make_questions
from .selection import resolve_word

QUIZ_DIM = 4
MAX_LINE = 1000  # characters of an answer's line: a number needs a few dozen; a longer line is refused
TRIES = 5  # lines that are not an answer, per answer, before the quiz gives up
ABS, REL = 0.005, 0.005  # an answer is right within ABS + REL·|exact|: two or three decimals
DIGITS = 4  # decimals of the numbers given
WIDTH = 100  # columns of the text
_SHAPE = re.compile(r"([0-9]+)\s*[xX×*]\s*([0-9]+)")
Answer = float | tuple[int, int]


def ask(text: str, *, model: str | None, dim: int | None, seed: int | None, positions: str | None,
        word: str | None, answers: str | None) -> int:
    """``explain --quiz``: ask the questions on ``text`` (answers from ``answers``, all eight or "e,α,z",
    else from stdin) and say which are right; 0 when all are, 1 when not. ``model``: None or "toy"."""
    import sys

    from .._command import check_outputs, stdin_read

    if model not in (None, "toy"):
        raise UsageError("--quiz uses the toy model (a problem for pencil and paper); drop --model")
    given = parse_answers(answers) if answers is not None else None
    check_outputs({}, stdin_read() if given is None else {})  # stdout must not be the answers' file
    toy = ToyModel(dim=QUIZ_DIM if dim is None else dim, seed=0 if seed is None else seed,
                   positions=positions or "none")
    kinds = CLASSIC if given is not None and len(given) == len(CLASSIC) else KINDS
    facts, questions = make_quiz(toy, text, word=word, kinds=kinds)
    stdin = sys.stdin
    interactive = given is None and stdin is not None and stdin.isatty()

    def say(line: str, end: str = "\n") -> None:
        print(line, end=end, flush=True)

    return run_quiz(facts, questions, given, line_reader(stdin), say, interactive=interactive)


def make_quiz(model: ToyModel, text: str, *, word: str | None = None,
              kinds: tuple[str, ...] = KINDS) -> tuple[dict, list[Question]]:
    """(facts, the questions of ``kinds``) on ``word`` (default: the first) of ``text`` (2 or 3 words)
    through ``model``; UsageError otherwise (``explain.questions.make_questions``)."""
    words = model.tokenize(text).tokens
    if not 2 <= len(words) <= 3:
        raise UsageError(f"--quiz takes a sentence of two or three words (a problem for pencil and paper), "
                         f"got {len(words)}: {printable(' '.join(words[:6]))}")
    return make_questions(model, words, resolve_word(word, words, default=0), kinds)


def right(answer: Answer, exact: Answer) -> bool:
    if isinstance(exact, tuple):
        return answer == exact
    return isinstance(answer, float) and abs(answer - exact) <= ABS + REL * abs(exact)


def parse_answers(text: str) -> list[Answer]:
    """--answers: three numbers (e, α, z) or all eight answers (shapes as "3x3"), separated by commas;
    UsageError naming what is wrong."""
    parts = text.split(",")
    kinds = CLASSIC if len(parts) == len(CLASSIC) else KINDS if len(parts) == len(KINDS) else None
    values = [None] * len(parts) if kinds is None else [
        _shape(p) if k in SHAPES else _number(p) for p, k in zip(parts, kinds, strict=True)]
    if kinds is None or None in values:
        raise UsageError(f"--answers: expected three numbers (e, α, z component) or all {len(KINDS)} answers "
                         "(q, e, α, z, the shapes of QᵀK and Z as rows x columns such as 3x3, the causal α, "
                         f"o), separated by commas, got '{clip(text)}'")
    return values  # type: ignore[return-value]


def _show(value: Answer) -> str:
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else f"{value:g}"


def run_quiz(facts: dict, questions: list[Question], answers: list[Answer] | None,
             read: Callable[[], str | None], say: Callable[..., None], *, interactive: bool) -> int:
    """Ask the questions (answers from ``answers``, else ``read()`` per question); 0 if all right, 1 if not.
    Lines are wrapped to ``WIDTH`` columns.

    ``read`` returns a line, or None at the end of the input (a UsageError: no answer). A line that
    is not an answer (a number; a shape for the shape questions) is asked again, ``TRIES`` times at
    most; one longer than ``MAX_LINE`` is a UsageError (messages show at most 40 characters of it).
    """
    w = " ".join(printable(x) for x in facts["words"])
    say = _wrapped(say)
    where = "no positions" if facts["positions"] == "none" else f"{facts['positions']} positions"
    say(f'Quiz: "{w}" through the toy model (D = {facts["D"]}, random untrained W\'s, seed {facts["seed"]}, '
        f"{where}).")
    say(f"An answer is right within {ABS} + {REL * 100:g} % of the exact value (the numbers given are "
        f"rounded to {DIGITS}")
    say("decimals, which moves a careful answer by less than 0.001)" + (
        "; a shape is rows x columns, e.g. 2x5." if any(q.shape for q in questions) else "."))
    wrong = 0
    for n, q in enumerate(questions):
        say("")
        say(f"{n + 1}. {q.ask}")
        if answers is not None:
            value = answers[n]
            say(f"   your answer: {_show(value)}")
        else:
            value = _ask(n, len(questions), q.shape, read, say, interactive)
            if not interactive:  # the answer came through a pipe: show what was read
                say(f"   your answer: {_show(value)}")
        exact = _show(q.exact) if q.shape else f"{q.exact:.6f}"
        if right(value, q.exact):
            say(f"   right ✓ (exact: {exact})")
        else:
            wrong += 1
            say(f"   not quite ✗: the exact value is {exact}")
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


def _shape(line: str) -> tuple[int, int] | None:
    """A shape on ``line``: rows x columns in ASCII digits ("3x4", "3 × 4", "3*4"), else None."""
    m = _SHAPE.fullmatch(line.strip())
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def _ask(n: int, total: int, shape: bool, read: Callable[[], str | None], say: Callable[..., None],
         interactive: bool) -> Answer:
    """Answer ``n`` (0-based) of ``total``: a line that is not one (a number; a shape if ``shape``) is
    asked again, ``TRIES`` times at most."""
    what, example = ("a shape", "3x4") if shape else ("a number", "0.25")
    last = None
    for k in range(TRIES):
        if interactive:
            say("   your answer: ", end="")
        line = read()
        if line is None:
            was = f"; the last line read, '{clip(last)}', is not {what}" if last is not None else ""
            raise UsageError(f"the input ended before answer {n + 1} of {total}{was} (or give --answers)")
        if len(line.rstrip("\r\n")) > MAX_LINE:
            raise UsageError(f"answer {n + 1} is a line of more than {MAX_LINE} characters (it begins "
                             f"'{clip(line[:40])}…'); an answer is {what} such as {example}")
        value = _shape(line) if shape else _number(line)
        if value is not None:
            return value
        last = line.strip()
        if k < TRIES - 1:
            shown = "" if interactive else f"your answer '{clip(last)}': "  # a pipe's line is not on screen
            say(f"   {shown}that is not {what}; try again (e.g. {example})")
    raise UsageError(f"answer {n + 1}: {TRIES} tries and none is {what} (the last: '{clip(last or '')}'); "
                     f"an answer is {what} such as {example}, in the digits 0-9")
