"""`explain --quiz`'s question kinds (issue 20): q = W_Q h, e, α, z, the shapes of Qᵀ K and Z in the
lecture's orientation, one causal row, a two-head concatenation through W_O. Every answer is derived
here with NumPy from the toy model's own numbers (explain --json, D = 4), by the quiz's stated choices
(word i the first, j the word i attends to most, the largest components); the quiz's W_O row is
read from its question, as a learner reads it. `--answers` takes all eight, or the three of old."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from _cli import run_cli

SENTENCE = "I am here"
EIGHT = "0,0,0,0,1x1,1x1,0,0"  # eight answers of the right kinds, all wrong


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(H: np.ndarray, W_Q: np.ndarray, W_K: np.ndarray, W_V: np.ndarray) -> tuple[np.ndarray, ...]:
    """Q, E, A, Z of one head, words as columns, scale 1/√d."""
    Q, K, V = W_Q @ H, W_K @ H, W_V @ H
    E = Q.T @ K
    A = softmax(E / math.sqrt(W_Q.shape[0]))
    return Q, E, A, V @ A.T


def answers(sentence: str = SENTENCE, *argv: str) -> dict[str, object]:
    """Every kind's right answer, and the numbers a wrong one is built from."""
    rc, out, err = run_cli("explain", sentence, "--model", "toy", "--dim", "4", *argv, "--json")
    assert rc == 0, err
    r = json.loads(out)
    H, W_Q, W_K, W_V = (np.array(r[k]) for k in ("H", "W_Q", "W_K", "W_V"))
    (D, T), i = H.shape, r["derivation"]["index"] - 1
    Q, E, A, Z = attention(H, W_Q, W_K, W_V)
    j = int(A[i].argmax())
    c_q, c_z = int(np.abs(Q[:, i]).argmax()), int(np.abs(Z[:, i]).argmax())
    row = T - 2  # the causal row: the one before the last
    causal = softmax(E[row, :row + 1] / 2.0)[0]
    heads = [attention(H, W_Q[s], W_K[s], W_V[s])[3][:, i] for s in (slice(0, D // 2), slice(D // 2, D))]
    _, text, _ = run_cli("explain", sentence, "--quiz", *argv, "--answers", EIGHT)
    (w_o,) = re.findall(r"Row 1 of W_O = \[([^\]]*)\]", text)
    w_o = np.array([float(x) for x in w_o.split(",")])
    return {"q": Q[c_q, i], "e": E[i, j], "alpha": A[i, j], "z": Z[c_z, i], "shape_E": f"{T}x{T}",
            "shape_Z": f"{D}x{T}", "causal": causal, "heads": w_o @ np.concatenate(heads),
            # wrong on purpose: the rows orientation, no mask, the heads stacked the other way
            "wrong": {"shape_Z": f"{T}x{D}", "causal": softmax(E[row] / 2.0)[0],
                      "heads": w_o @ np.concatenate(heads[::-1])},
            "where": {"i": i + 1, "c_q": c_q + 1, "row": row + 1}}


def given(a: dict, **changed: object) -> str:
    kinds = ("q", "e", "alpha", "z", "shape_E", "shape_Z", "causal", "heads")
    return ",".join(str(changed.get(k, a[k])) for k in kinds)


def quiz(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    return run_cli("explain", *argv, "--quiz", stdin=stdin)


@pytest.fixture(scope="module")
def right() -> dict:
    return answers()


def test_all_eight_kinds_right_exit_0(right):
    rc, out, err = quiz(SENTENCE, "--answers", given(right))
    assert (rc, err) == (0, "") and out.count("right ✓") == 8 and "8 of 8 right" in out
    i, c = right["where"]["i"], right["where"]["c_q"]
    flat = " ".join(out.split())
    for piece in [f"1. Component {c} of the query", f"q_{i}[{c}] = W_Q[{c},:] · h_{i} = ?",
                  "5. The shape of Qᵀ K", "6. The shape of Z, the lecture's way", "7. With the causal mask",
                  "8. Two heads instead of one", "a shape is rows x columns"]:
        assert piece in flat, piece


def test_all_eight_from_stdin_shapes_in_any_spelling(right):
    lines = [str(right[k]) for k in ("q", "e", "alpha", "z")]
    lines += [right["shape_E"].replace("x", " x "), "3 by 3",  # not a shape: asked again
              right["shape_Z"].replace("x", "×"), str(right["causal"]), str(right["heads"])]
    rc, out, err = quiz(SENTENCE, stdin="\n".join(lines) + "\n")
    assert (rc, err) == (0, "") and "8 of 8 right" in out
    assert "your answer '3 by 3': that is not a shape; try again (e.g. 3x4)" in out


@pytest.mark.parametrize("kind, number", [("shape_Z", 6), ("causal", 7), ("heads", 8)])
def test_a_classic_mistake_is_wrong_and_worked(right, kind, number):
    """Z as PyTorch's rows (T × d_v), α without the mask, the heads stacked the other way: each is
    marked wrong, with its worked step."""
    rc, out, _ = quiz(SENTENCE, "--answers", given(right, **{kind: right["wrong"][kind]}))
    assert rc == 1 and "7 of 8 right" in out
    block = out.split(f"\n{number}. ")[1].split("\n\n")[0]
    assert "not quite ✗" in block
    worked = " ".join(block.split("worked:")[1].split())
    where = right["where"]
    expect = {"shape_Z": "is its transpose", "causal": f"word 3 is masked (exp(−∞) = 0); α_{where['row']}1",
              "heads": f"c_{where['i']} = ["}[kind]
    assert expect in worked, worked
    if kind == "heads":  # the worked sum: the products shown add up to the exact answer
        products = re.findall(r"\((-?[\d.]+)\)\((-?[\d.]+)\)", worked)
        assert len(products) == 4
        assert sum(float(a) * float(b) for a, b in products) == pytest.approx(right["heads"], abs=1e-3)


def test_the_q_step_worked_is_the_row_times_h(right):
    rc, out, _ = quiz(SENTENCE, "--answers", given(right, q=right["q"] + 1))
    assert rc == 1
    worked = " ".join(out.split("\n1. ")[1].split("\n\n")[0].split("worked:")[1].split())
    products = re.findall(r"\((-?[\d.]+)\)\((-?[\d.]+)\)", worked)
    assert len(products) == 4  # D = 4 products W_Q[c, k] h[k]
    assert sum(float(a) * float(b) for a, b in products) == pytest.approx(right["q"], abs=1e-3)


def test_the_three_answer_form_asks_the_three_of_old(right):
    rc, out, err = quiz(SENTENCE, "--answers", f"{right['e']},{right['alpha']},{right['z']}")
    assert (rc, err) == (0, "") and "3 of 3 right" in out
    assert "1. The score of" in out and "Qᵀ K" not in out and "shape is rows x columns" not in out


def test_another_word_and_dimension():
    a = answers("the cat sat", "--word", "cat", "--seed", "3")
    assert a["where"]["i"] == 2
    rc, out, _ = quiz("the cat sat", "--word", "cat", "--seed", "3", "--dim", "4", "--answers", given(a))
    assert rc == 0 and "8 of 8 right" in out


@pytest.mark.parametrize("argv, message", [
    (["--answers", "1,2,3,4"], "or all 8 answers"),
    (["--answers", "1,2,3,4,3,3x3,5,6"], "expected three numbers"),  # a number where a shape goes
    (["--answers", "1,2,3,4,3x3,3x3,5x5,6"], "expected three numbers"),  # a shape where a number goes
    (["--answers", "1,2,3,4,٣x3,3x3,5,6"], "expected three numbers"),  # digits 0-9 only
    (["--dim", "1"], "give --dim 2 or more"),
    (["--verbose"], "--quiz asks its own questions; drop --verbose"),
])
def test_bad_use_is_one_error_line(argv, message):
    rc, out, err = quiz(SENTENCE, *argv, stdin="")
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_one_dimension_still_takes_the_three_of_old():
    rc, out, _ = quiz(SENTENCE, "--dim", "1", "--answers", "0,0,0")
    assert rc == 1 and "of 3 right" in out
