"""`explain --quiz`: the right answers (derived here with NumPy from the toy model's JSON, not by the
quiz's code) pass with exit 0, a wrong one fails with exit 1 and its worked step, bad answers are a
usage error; answers come from --answers or stdin."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import run_cli

SENTENCE = "I am here"


def expected(sentence: str = SENTENCE, *argv: str) -> tuple[list[float], dict]:
    """The quiz's three answers from the toy model's own numbers (explain --json, D = 4), by its
    stated choice: word i (the first, or --word), j the word i attends to most, the component of z_i
    largest in size."""
    rc, out, err = run_cli("explain", sentence, "--model", "toy", "--dim", "4", *argv, "--json")
    assert rc == 0, err
    r = json.loads(out)
    H, W_Q, W_K, W_V = (np.array(r[k]) for k in ("H", "W_Q", "W_K", "W_V"))
    Q, K, V = W_Q @ H, W_K @ H, W_V @ H
    E = Q.T @ K
    S = E / math.sqrt(4)
    A = np.exp(S - S.max(1, keepdims=True))
    A /= A.sum(1, keepdims=True)
    Z = V @ A.T
    i = r["derivation"]["index"] - 1
    j = int(A[i].argmax())
    c = int(np.abs(Z[:, i]).argmax())
    return [E[i, j], A[i, j], Z[c, i]], {"i": i + 1, "j": j + 1, "c": c + 1, "q": Q[:, i], "k": K[:, j]}


def quiz(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    return run_cli("explain", *argv, "--quiz", stdin=stdin)


def test_right_answers_exit_0():
    answers, where = expected()
    rc, out, err = quiz(SENTENCE, "--answers", ",".join(f"{x:.6f}" for x in answers))
    assert (rc, err) == (0, "")
    assert out.count("right ✓") == 3 and "3 of 3 right" in out and "worked" not in out
    assert f"e_{where['i']}{where['j']} = q_{where['i']} · k_{where['j']} = ?" in out
    assert f"Component {where['c']} of z_{where['i']}" in out


def test_answers_within_the_stated_tolerance_are_right():
    answers, _ = expected()
    near = [x + 0.004 for x in answers]  # the rule: within 0.005 + 0.5 % of the exact value
    assert quiz(SENTENCE, "--answers", ",".join(map(str, near)))[0] == 0
    rc, out, _ = quiz(SENTENCE, "--answers", ",".join(str(x + 0.02 + 0.01 * abs(x)) for x in answers))
    assert rc == 1 and out.count("not quite ✗") == 3


def test_a_wrong_answer_exits_1_with_its_worked_step():
    answers, where = expected()
    answers[0] += 0.5
    rc, out, _ = quiz(SENTENCE, "--answers", ",".join(map(str, answers)))
    assert rc == 1 and out.count("right ✓") == 2 and "2 of 3 right" in out
    worked = " ".join(out.split("worked:")[1].split("2. Its weight")[0].split())
    products = re.findall(r"\((-?[\d.]+)\)\((-?[\d.]+)\)", worked)
    assert len(products) == 4  # D = 4 terms q_c · k_c, the numbers shown (4 decimals)
    np.testing.assert_allclose([float(a) for a, _ in products], where["q"], atol=5e-5)
    np.testing.assert_allclose([float(b) for _, b in products], where["k"], atol=5e-5)
    total = float(worked.rsplit("=", 1)[1])
    assert total == pytest.approx(answers[0] - 0.5, abs=5e-5)


def verdicts(out: str) -> list[bool]:
    """Right or not, for each question in the order asked."""
    return [line.strip().startswith("right ✓") for line in out.splitlines()
            if line.strip().startswith(("right ✓", "not quite ✗"))]


def test_answers_from_stdin_and_the_end_of_input():
    """From stdin the quiz asks every kind (issue 20): q, then e, α, z (2…4), shapes, causal, heads;
    tests/explain/test_quiz_kinds.py answers all of them right."""
    answers, _ = expected()
    rc, out, _ = quiz(SENTENCE, stdin="\n".join(["0", *map(str, answers), "1x1", "1x1", "0", "0"]) + "\n")
    assert rc == 1 and out.count("your answer:") == 8 and verdicts(out)[1:4] == [True] * 3
    rc, out, err = quiz(SENTENCE, stdin=f"{answers[0]}\n")
    assert rc == 2 and err.count("\n") == 1 and "ended before answer 2 of 8" in err
    rc, _, err = quiz(SENTENCE, stdin="twelve\n")
    assert rc == 2 and err.count("\n") == 1
    assert "ended before answer 1 of 8; the last line read, 'twelve', is not a number" in err


def test_word_and_three_words():
    answers, where = expected("the cat sat", "--word", "cat")
    assert where["i"] == 2
    assert quiz("the cat sat", "--word", "cat", "--answers", ",".join(map(str, answers)))[0] == 0


def test_an_answer_that_is_not_a_number_is_asked_again():
    """Issue 20: a line that is not a number (words, other scripts' digits, '_') is asked again, from a
    pipe as from a terminal; up to TRIES times."""
    from selfattention.explain.quiz import TRIES

    answers, _ = expected()
    rc, out, err = quiz(SENTENCE, stdin="\n".join(["twelve", "0", "٠.٥", "1_0", *map(str, answers), "3x3",
                                                   "4x3", "0", "0"]) + "\n")
    assert (rc, err) == (1, "") and verdicts(out)[1:4] == [True] * 3  # e, α, z: read after the tries
    assert out.count("that is not a number; try again") == 3 and "your answer '٠.٥'" in out
    rc, out, err = quiz(SENTENCE, stdin="x\n" * 1000)
    assert rc == 2 and err.count("\n") == 1 and f"answer 1: {TRIES} tries and none is a number" in err
    assert out.count("try again") == TRIES - 1


def test_on_a_terminal_the_tries_are_bounded_too():
    from selfattention.errors import UsageError
    from selfattention.explain.quiz import TRIES, make_quiz, run_quiz
    from selfattention.models.toy import ToyModel

    facts, questions = make_quiz(ToyModel(dim=4, seed=0), SENTENCE)
    asked = []
    with pytest.raises(UsageError, match=f"answer 1: {TRIES} tries"):
        run_quiz(facts, questions, None, lambda: asked.append(1) or "abc\n", lambda *a, **k: None,
                 interactive=True)
    assert len(asked) == TRIES


class EndlessLine:
    """stdin holding one line that never ends; reading it whole would never return."""

    def __init__(self) -> None:
        self.read = 0

    def readline(self, size: int = -1) -> str:
        assert 0 < size <= 10_000, f"an unbounded read of stdin (size {size})"
        self.read += size
        return "1" * size

    def isatty(self) -> bool:
        return False


def test_an_endless_or_huge_answer_is_read_bounded_and_not_echoed_whole(monkeypatch):
    """Issue 14: a line is read at most MAX_LINE + 1 characters at a time, and refused past that;
    the message shows a few dozen characters of it, not 10 MB."""
    import sys

    from selfattention.cli import main
    from selfattention.explain.quiz import MAX_LINE

    stdin = EndlessLine()
    monkeypatch.setattr(sys, "stdin", stdin)
    rc = main(["explain", SENTENCE, "--quiz"])
    assert rc == 2 and stdin.read <= MAX_LINE + 1
    rc, out, err = quiz(SENTENCE, stdin="1" * 10_000_000 + "\n0.1\n0.2\n")
    assert rc == 2 and err.count("\n") == 1 and len(err) < 300, err[:300]
    assert f"answer 1 is a line of more than {MAX_LINE} characters" in err and "1" * 50 not in err + out


@pytest.mark.parametrize("argv, message", [
    ([SENTENCE, "--answers", "1,2"], "expected three numbers"),
    ([SENTENCE, "--answers", "٣,1,2"], "expected three numbers"),
    ([SENTENCE, "--answers", "1_0,1,2"], "expected three numbers"),
    ([SENTENCE, "--answers", "1,inf,2"], "expected three numbers"),
    ([SENTENCE, "--answers", "1,2,x"], "expected three numbers"),
    ([SENTENCE, "--answers", "1,2,nan"], "expected three numbers"),
    (["I am enjoying this lecture", "--answers", "1,2,3"], "two or three words"),
    (["I", "--answers", "1,2,3"], "two or three words"),
    ([SENTENCE, "--model", "minilm"], "--quiz uses the toy model"),
    ([SENTENCE, "--json"], "drop --json"),
    ([SENTENCE, "--causal"], "drop --causal"),
])
def test_bad_quiz_use_is_one_error_line(argv, message):
    rc, out, err = quiz(*argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err
