"""`selfattention explain --model toy` and the CLI's error handling, checked from the outside.

Numbers in the JSON report are re-derived here from its own inputs (H, W's) with NumPy, so the
tests can fail if the report is wrong; they do not re-run the package's code paths. The toy model
is named explicitly everywhere (the default is the pretrained model: tests/cli/test_cli_pretrained.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from selfattention import available_backends
from selfattention.cli import main
from selfattention.models import ToyModel, Traceable, load, trace
from selfattention.viz import terminal

SENTENCE = "I am enjoying this lecture"


TOY = ["--model", "toy"]


def run_json(capsys, *args: str) -> dict:
    assert main(["explain", *args, *TOY, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def softmax_rows(S: np.ndarray) -> np.ndarray:
    e = np.exp(S - S.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_explain_text_has_every_section(capsys):
    assert main(["explain", SENTENCE, "--no-color", *TOY]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for piece in ["Shapes", "64 × 5", "64 × 64", "Scores e_ij", "Weights α_ij", "row sum",
                  "Z: z_i", 'How z_1 ("I")', "Σ_j α_1j", "Heatmap", "verify", "✓",
                  "lecture", "enjoying"]:
        assert piece in out, piece
    assert "\x1b[" not in out  # --no-color (and not a TTY anyway)


def test_json_numbers_are_right(capsys):
    r = run_json(capsys, SENTENCE)
    assert r["tokens"] == ["I", "am", "enjoying", "this", "lecture"]
    T, D = 5, 64
    H, W_Q, W_K, W_V = (np.array(r[k]) for k in ("H", "W_Q", "W_K", "W_V"))
    assert H.shape == (D, T) and W_Q.shape == W_K.shape == W_V.shape == (D, D)
    assert r["shapes"]["Z"] == [D, T] and r["shapes"]["E"] == [T, T]
    Q, K, V = W_Q @ H, W_K @ H, W_V @ H  # the lecture: Q = W_Q H, words are columns
    np.testing.assert_allclose(np.array(r["Q"]), Q, atol=1e-12)
    np.testing.assert_allclose(np.array(r["V"]), V, atol=1e-12)
    E = Q.T @ K  # (T, T), e_ij = q_i · k_j
    np.testing.assert_allclose(np.array(r["E"]), E, atol=1e-10)
    assert r["scale"] == pytest.approx(1 / 8)
    A = np.array(r["A"])
    np.testing.assert_allclose(A, softmax_rows(E / 8), atol=1e-12)
    np.testing.assert_allclose(A.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(r["row_sums"], 1.0, atol=1e-12)
    np.testing.assert_allclose(np.array(r["Z"]), (A @ np.array(r["V"]).T).T, atol=1e-12)


def test_json_derivation_of_one_word(capsys):
    r = run_json(capsys, SENTENCE, "--word", "enjoying")
    d = r["derivation"]
    assert (d["index"], d["word"]) == (3, "enjoying")
    alphas = np.array([t["alpha"] for t in d["terms"]])
    vs = np.array([t["v"] for t in d["terms"]])  # (T, d_v)
    np.testing.assert_allclose(alphas, np.array(r["A"])[2], atol=0)
    assert alphas.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(d["z"], alphas @ vs, atol=1e-12)  # z_i = Σ_j α_ij v_j
    np.testing.assert_allclose(d["z"], np.array(r["Z"])[:, 2], atol=1e-12)
    q = np.array(d["q"])
    for t in d["terms"]:
        assert t["e"] == pytest.approx(q @ np.array(t["k"]), abs=1e-10)
        assert t["scaled"] == pytest.approx(t["e"] * r["scale"], abs=1e-12)


def test_verification_is_tight_and_names_the_backend(capsys):
    v = run_json(capsys, SENTENCE)["verification"]
    assert v["ok"] is True
    assert v["auto_backend"] in available_backends()
    assert set(v["max_abs_diff"]) >= {"matrix_form", "auto", *available_backends()}
    assert all(0 <= x < 1e-10 for x in v["max_abs_diff"].values())


def test_same_word_same_vector_seed_changes_only_W(capsys):
    a = run_json(capsys, "the cat saw the dog", "--seed", "0")
    b = run_json(capsys, "the cat saw the dog", "--seed", "1")
    c = run_json(capsys, "dog the", "--seed", "0")
    Ha, Hb, Hc = (np.array(x["H"]) for x in (a, b, c))
    assert np.array_equal(Ha[:, 0], Ha[:, 3])  # "the" twice: one vector
    assert np.array_equal(Ha[:, 4], Hc[:, 0]) and np.array_equal(Ha[:, 0], Hc[:, 1])
    assert not np.array_equal(Ha[:, 0], Ha[:, 1])
    assert np.array_equal(Ha, Hb)  # --seed does not touch the embeddings
    for W in ("W_Q", "W_K", "W_V"):
        assert not np.allclose(a[W], b[W])
    assert np.array_equal(np.array(a["W_Q"]), np.array(c["W_Q"]))


def test_word_by_position_or_by_name(capsys):
    by_pos = run_json(capsys, SENTENCE, "--word", "2")["derivation"]
    by_name = run_json(capsys, SENTENCE, "--word", "am")["derivation"]
    by_case = run_json(capsys, SENTENCE, "--word", "AM")["derivation"]
    assert by_pos["index"] == by_name["index"] == by_case["index"] == 2
    assert by_pos["z"] == by_name["z"]


def test_dim_and_punctuation(capsys):
    r = run_json(capsys, "Hello, world!", "--dim", "8")
    assert r["tokens"] == ["Hello", ",", "world", "!"]
    assert r["shapes"]["H"] == [8, 4] and r["shapes"]["W_Q"] == [8, 8]
    assert r["scale"] == pytest.approx(8**-0.5)


def test_long_sentence_abbreviates_tables_not_json(capsys):
    words = " ".join(f"w{i}" for i in range(20))
    assert main(["explain", words, "--no-color", "--word", "20", *TOY]) == 0
    out = capsys.readouterr().out
    assert "tables show the first 12" in out and "… 8 more rows" in out
    r = run_json(capsys, words)
    assert np.array(r["A"]).shape == (20, 20) and len(r["derivation"]["terms"]) == 20


@pytest.mark.parametrize("argv", [
    ["explain", "", *TOY],
    ["explain", "   \t ", *TOY],
    ["explain", SENTENCE, "--dim", "0", *TOY],
    ["explain", SENTENCE, "--dim", "many", *TOY],
    ["explain", SENTENCE, "--seed", "-1", *TOY],
    ["explain", SENTENCE, "--word", "movie", *TOY],
    ["explain", SENTENCE, "--word", "6", *TOY],
    ["explain", SENTENCE, "--layer", "2", *TOY],
    ["explain", SENTENCE, "--head", "2", *TOY],
    ["explain", SENTENCE, "--no-truncate", *TOY],
    ["explain", SENTENCE, "--model", "bert"],
    ["explain", SENTENCE, "--colour"],
    ["explain"],
    ["translate", SENTENCE],
    [],
    ["bench", "--sizes", "0,4"],
    ["bench", "--sizes", "a,b"],
    ["bench", "--sizes", "16,16"],
    ["bench", "--repeats", "0"],
])
def test_user_errors_exit_2_with_one_line(capsys, argv):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("selfattention: error: ") and err.endswith("\n")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_word_lists_the_words(capsys):
    assert main(["explain", SENTENCE, "--word", "movie", *TOY]) == 2
    assert "I, am, enjoying, this, lecture" in capsys.readouterr().err


def test_toy_layer_and_head_name_the_valid_range(capsys):
    assert main(["explain", SENTENCE, "--layer", "3", *TOY]) == 2
    assert "valid: 1" in capsys.readouterr().err


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("selfattention ")
    assert main(["explain", "--help"]) == 0
    assert "--word" in capsys.readouterr().out


@pytest.mark.subprocess
def test_console_script_runs(tmp_path):
    env = {**os.environ, "NO_COLOR": ""}
    cmd = [sys.executable, "-m", "selfattention.cli", "explain", SENTENCE, *TOY]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "verify" in ok.stdout and "\x1b[" not in ok.stdout  # a pipe: no colour
    bad = subprocess.run([*cmd[:4], "  ", *TOY], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("selfattention: error:")


def test_toy_model_is_an_attention_model():
    m = load("toy", dim=16, seed=3)
    assert isinstance(m, Traceable) and isinstance(m, ToyModel)
    H = m.embed(m.tokenize("a b a").tokens)
    assert H.shape == (16, 3) and H.dtype == np.float64
    assert all(W.shape == (16, 16) for W in m.weights())
    json.dumps(m.describe())
    t = trace(m, "a b a", backends=["matrix"])  # its one layer, recorded: H is the embeddings
    np.testing.assert_array_equal(t.layers[0].x.numpy().T, H)
    assert t.layers[0].weights.shape == (1, 3, 3) and t.attention(0).head_projections(0)["b_Q"] is None
    with pytest.raises(ValueError, match="unknown model"):
        load("bert")


class _Tty:
    def isatty(self) -> bool:
        return True


def test_palette_and_colour_switch(monkeypatch):
    assert terminal.palette_hex(0.0) == terminal.PALETTE[0].lower()
    assert terminal.palette_hex(1.0) == terminal.PALETTE[-1].lower()
    lum = [sum(terminal.palette_rgb(t / 10)) for t in range(11)]
    assert lum[0] < lum[5] < lum[10]  # sequential: dark to light
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert terminal.color_enabled(_Tty()) and not terminal.color_enabled(_Tty(), no_color=True)
    assert not terminal.color_enabled(object())  # no isatty: not a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    assert not terminal.color_enabled(_Tty())


def test_heatmap_shades_and_colour():
    M = np.array([[0.0, 1.0], [0.5, 0.25]])
    plain = terminal.heatmap(M, ["a", "b"], ["a", "b"], vmin=0.0, vmax=1.0)
    rows = plain.splitlines()
    assert rows[1].startswith("a ") and terminal.SHADES[-1] in rows[1] and terminal.SHADES[0] in rows[1]
    assert "\x1b" not in plain
    coloured = terminal.heatmap(M, ["a", "b"], ["a", "b"], color=True)
    assert coloured.count("\x1b[48;5;") >= 4
    wide = terminal.heatmap(np.zeros((2, 200)), ["a", "b"], [str(i) for i in range(200)], width=60)
    assert "columns shown" in wide and max(len(x) for x in wide.splitlines()[:-1]) <= 60
