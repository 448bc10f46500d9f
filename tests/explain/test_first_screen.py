"""A learner's first screen of `explain` (issue 20): the lecture's first step within 24 lines, a
header of a few lines (where H and the W's come from: --verbose), q_i = W_Q h_i worked as a dot
product and q_i beside every k_j, the two "the" rows of the toy pointed out, a heatmap with numbered
columns in narrow characters only, and --permute's columns and max |Δz| of one stated scope.

Every number printed is re-derived here with NumPy from the JSON's inputs (H, the W's, the b's)."""

from __future__ import annotations

import json
import re
import unicodedata

import numpy as np
import pytest
from _cli import run_cli

from selfattention.viz import terminal

SENTENCE = "I am enjoying this lecture"
TOY = ["--model", "toy"]
NUMBER = r"-?\d+\.\d+"


def text(*argv: str) -> str:
    rc, out, err = run_cli("explain", *argv, "--no-color")
    assert rc == 0, err
    return out


def report(*argv: str) -> dict:
    rc, out, err = run_cli("explain", *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize("argv", [[SENTENCE], [SENTENCE, *TOY], [SENTENCE, "--causal"]])
def test_the_first_step_is_on_the_first_screen(argv):
    lines = text(*argv).splitlines()
    step = next(n for n, line in enumerate(lines) if line.startswith("1. Three vectors from each"))
    assert step < 24 and any(re.match(r"\s+q_\d+\[1\] = W_Q\[1,:\]·h_\d+", line) for line in lines[step:24])
    header = next(n for n, line in enumerate(lines) if line.startswith("sentence:"))
    assert header <= 6  # the header: a few lines (the causal mask takes two more)
    assert not any("in_proj" in line or "e^entropy" in line or "segment" in line for line in lines[:24])


def test_the_provenance_is_behind_verbose():
    plain, verbose = text(SENTENCE), text(SENTENCE, "--verbose")
    where = "rows 96…127 (counted from 0) of the Q, K, V blocks of layer 1's in_proj"
    assert where not in " ".join(plain.split()) and where in " ".join(verbose.split())
    assert "--model toy" in " ".join(plain.splitlines()[:4])  # the lecture's own setting is named at once


@pytest.mark.parametrize("argv", [[SENTENCE], [SENTENCE, *TOY], ["the cat sat", *TOY, "--word", "3"]])
def test_one_component_of_q_is_worked_out(argv):
    r, out = report(*argv), text(*argv)
    i = r["derivation"]["index"]
    H, W_Q = np.array(r["H"]), np.array(r["W_Q"])
    b = r.get("biases", {}).get("b_Q")
    products = W_Q[0] * H[:, i - 1]  # q_i[1] = row 1 of W_Q times h_i, number by number
    q1 = products.sum() + (b[0] if b else 0.0)
    block = out.split(f"q_{i}[1] = W_Q[1,:]·h_{i}")[1].split(f"\n  q_{i} = ")[0]
    pairs = re.findall(rf"\(({NUMBER})\)\(({NUMBER})\)", block)
    assert len(pairs) >= 2
    for k, (w, h) in enumerate(pairs):  # the first products shown are W_Q[1, k] and h_i[k]
        assert float(w) == pytest.approx(W_Q[0, k], abs=5e-4)
        assert float(h) == pytest.approx(H[k, i - 1], abs=5e-4)
    sums = re.findall(rf"= ({NUMBER})\s*$", block, flags=re.M)
    assert float(sums[0]) == pytest.approx(products.sum(), abs=5e-4)  # all D products, summed
    assert float(sums[-1]) == pytest.approx(q1, abs=5e-4)  # … plus the bias: q_i[1]
    shown_q = out.split(f"\n  q_{i} = W_Q h_{i}")[1].split("[")[1].split(",")[0]
    assert float(shown_q) == pytest.approx(q1, abs=5e-4)  # the same number as q_i's first component
    assert ("+ b_Q[1] = " in block) == bool(b)


def test_q_stands_beside_every_k_and_their_scores():
    r, out = report(SENTENCE), text(SENTENCE)
    i = r["derivation"]["index"]
    H, W_K, W_Q = np.array(r["H"]), np.array(r["W_K"]), np.array(r["W_Q"])
    K = W_K @ H + np.array(r["biases"]["b_K"])[:, None]
    q = W_Q @ H[:, i - 1] + np.array(r["biases"]["b_Q"])
    step = out.split("2. Scores:")[1].split("\n\n")[0]
    rows = re.findall(rf"^\s+(\d+)\s+\S+\s+\[([^\]]*)\]\s+({NUMBER})$", step, flags=re.M)
    assert [int(j) for j, _, _ in rows] == list(range(1, r["T"] + 1))
    for j, k, e in rows:
        shown = [float(x) for x in k.replace("…", "").split(",") if x.strip()]
        np.testing.assert_allclose(shown, K[:len(shown), int(j) - 1], atol=5e-4)  # k_j
        assert float(e) == pytest.approx(q @ K[:, int(j) - 1], abs=5e-3)  # e_ij = q_i · k_j


def test_the_two_the_rows_are_pointed_out():
    out = " ".join(text("the cat saw the dog", *TOY).split())
    r = report("the cat saw the dog", *TOY)
    A = np.array(r["A"])
    assert np.array_equal(A[0], A[3])  # the reason for the note, from the numbers
    assert 'Rows 1 and 4 ("the") are the same in E, A and Z' in out
    assert "nothing here carries its position" in out
    for argv in ([*TOY, "--positions", "sinusoidal"], []):  # positions make the two rows differ
        assert "are the same in E, A and Z" not in text("the cat saw the dog", *argv)


def test_the_heatmap_numbers_its_columns_in_narrow_characters():
    assert all(unicodedata.east_asian_width(c) in ("Na", "N") for c in terminal.SHADES)
    out = text(SENTENCE)
    lines = out.split("Heatmap of the weights A")[1].splitlines()[1:]
    ruler, rows, legend = lines[0], lines[1:8], lines[8]
    assert ruler.split() == [str(n) for n in range(1, 8)]
    assert [row.split()[0] for row in rows] == ["1:[CLS]", "2:i", "3:am", "4:enjoying", "5:this", "6:lecture",
                                               "7:[SEP]"]
    for row in rows:
        cells = row.split(None, 1)[1]
        assert set(cells) <= set(terminal.SHADES + " ") and len(cells.split()) == 7
        assert ruler.index("7") == len(row) - len(cells) + cells.rindex(cells.split()[-1])  # 7 above column 7
    assert legend.startswith("scale: '.' ':' '+' '*' '#'")
    many = terminal.heatmap(np.eye(30), [str(n) for n in range(30)], [f"w{n}" for n in range(30)], width=60)
    head = many.splitlines()[0]
    assert max(len(line) for line in many.splitlines()) <= 60 and "10" in head and "30" in head
    assert "columns: 1:w0  2:w1" in many  # labels other than the rows' are listed once, not spelt downwards


def test_permute_shows_one_scope_in_its_columns():
    r = report(SENTENCE, "--permute")
    out = text(SENTENCE, "--permute")
    h, d = r["head"], 32
    assert h == report(SENTENCE)["head"]  # the walk-through's head
    flat = " ".join(out.split())
    assert f"z of head {h} (the walk-through's head" in flat and f"all {r['heads']} heads' z" in flat
    table = out.split(f"|Δz| head {h}")[1].split("\n\n")[0].splitlines()[1:]
    for w, line in zip(r["words"], table, strict=True):
        old = np.array(w["z_old"]).reshape(r["heads"], d)[h - 1]  # every head's z, flattened: take head h
        new = np.array(w["z_new"]).reshape(r["heads"], d)[h - 1]
        one, every = (float(x) for x in line.split()[-2:])
        assert one == pytest.approx(np.abs(new - old).max(), rel=0.06)  # printed to 2 digits
        assert every == pytest.approx(w["max_abs_diff_z"], rel=0.06) and one <= every
        vector = re.findall(r"\[((?:\s*-?\d+\.\d+,)+) …\]", line)[0]  # head h's z, original
        shown = [float(x) for x in vector.split(",") if x.strip()]
        np.testing.assert_allclose(shown, old[:len(shown)], atol=5e-4)  # the columns are head h's z too
