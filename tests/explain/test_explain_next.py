"""`explain`'s next steps of the lecture, from the outside: --causal, --multihead, --permute and
--positions, where h_i comes from, the 100-column layout and --wide.

Every number is re-derived here with NumPy from the JSON's own inputs, or from the model files
themselves (safetensors, read directly): never by calling the package's code paths.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import ATOL64, formula_rule, layer_norm_rows, run_cli, softmax_rows
from safetensors.numpy import load_file

from selfattention.models.pretrained import default_model_path

SENTENCE = "I am enjoying this lecture"
TOY = ["--model", "toy"]
PIECES = ["[CLS]", "i", "am", "enjoying", "this", "lecture", "[SEP]"]
d = 32  # MiniLM's head size


def explain_json(*argv: str) -> dict:
    rc, out, err = run_cli("explain", *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def explain_text(*argv: str) -> str:
    rc, out, err = run_cli("explain", *argv, "--no-color")
    assert rc == 0, err
    return out


def flat(text: str) -> str:
    """Text with its line wrapping undone (any run of spaces and newlines → one space)."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def files() -> dict:
    return load_file(default_model_path() / "model.safetensors")


# --- causal -------------------------------------------------------------------------------------


def test_causal_toy_is_the_masked_lecture(capsys):
    r = explain_json(SENTENCE, *TOY, "--causal")
    T = 5
    H, W_Q, W_K, W_V = (np.array(r[k]) for k in ("H", "W_Q", "W_K", "W_V"))
    Q, K, V = W_Q @ H, W_K @ H, W_V @ H
    tril = np.tri(T, dtype=bool)
    S = np.where(tril, (Q.T @ K) / math.sqrt(64), -np.inf)  # e_ij / √d_k, −∞ above the diagonal
    A = softmax_rows(S)
    assert r["mask"]["kind"] == "causal" and r["mask"]["illustration"] is True
    assert np.array_equal(np.array(r["mask"]["allowed"]), tril)
    np.testing.assert_allclose(np.array(r["E"]), Q.T @ K, atol=1e-10)  # the raw dot products
    np.testing.assert_allclose(np.array(r["A"]), A, atol=1e-12)
    assert (np.array(r["A"])[~tril] == 0).all()  # exactly 0 above the diagonal
    np.testing.assert_allclose(np.array(r["A"]).sum(1), 1.0, atol=1e-12)
    scaled = r["scaled"]
    assert all(scaled[i][j] is None for i in range(T) for j in range(T) if not tril[i, j])
    np.testing.assert_allclose(np.array(r["Z"]), V @ A.T, atol=1e-12)
    dv = r["derivation"]
    i = dv["index"]  # the middle word under a causal mask: it sees some words, not others
    assert (i, dv["word"]) == (3, "enjoying")
    seen = [t for t in dv["terms"] if not t["masked"]]
    assert [t["j"] for t in seen] == [1, 2, 3]
    np.testing.assert_allclose(dv["z"], sum(t["alpha"] * np.array(t["v"]) for t in seen), atol=1e-12)
    assert r["verification"]["ok"] and all(x < 1e-10 for x in r["verification"]["max_abs_diff"].values())

    out = explain_text(SENTENCE, *TOY, "--causal")
    scores = out[out.index("Scores e_ij"):out.index("Weights α_ij")].splitlines()
    row_i = next(line for line in scores if line.startswith("  I "))
    assert row_i.split()[1:] == [f"{r['E'][0][0]:.2f}", "−∞", "−∞", "−∞", "−∞"]
    out = flat(out)
    for piece in ["mask: causal", "top-left", "bottom-right", "each row still sums to 1",
                  "z_3 = Σ_(j ≤ 3) α_3j v_j", "words 4…5: masked"]:
        assert piece in out, piece


def test_causal_minilm_runs_the_layer_with_the_mask(files):
    plain, causal = explain_json(SENTENCE), explain_json(SENTENCE, "--causal")
    T, h = 7, causal["head"]
    tril = np.tri(T, dtype=bool)
    A = np.array(causal["A"])
    assert (A[~tril] == 0).all() and not np.allclose(A, np.array(plain["A"]))
    own = np.array(causal["heads"][h - 1]["A"])  # the layer's own weights in its (causal) forward pass
    assert (own[~tril] == 0).all()
    # the loops (float64) from the model files' W's and the JSON's H
    rows = slice((h - 1) * d, h * d)
    H = np.array(causal["H"])
    W = [files[f"encoder.layer.0.attention.self.{p}.{w}"][rows]
         for p in ("query", "key") for w in ("weight", "bias")]

    def weights(W_Q, b_Q, W_K, b_K, H):  # causal softmax(QᵀK/√d) with words as columns
        q, k = W_Q @ H + b_Q[:, None], W_K @ H + b_K[:, None]
        return softmax_rows(np.where(tril, q.T @ k / math.sqrt(d), -np.inf))

    np.testing.assert_allclose(A, weights(*W, H), atol=ATOL64)  # float64 both
    formula_rule(own, weights, *W, H, what="the layer's causal α")  # float32 layer
    assert causal["verification"]["ok"] and causal["mask"]["illustration"] is True
    out = flat(explain_text(SENTENCE, "--causal"))
    assert "for illustration: all-MiniLM-L6-v2 was trained without it" in out


# --- multi-head ---------------------------------------------------------------------------------


def test_multihead_minilm_splits_concatenates_and_projects(files):
    r = explain_json(SENTENCE, "--multihead")
    assert (r["num_heads"], r["d"], r["D"], r["T"]) == (12, d, 384, 7) and r["tokens"] == PIECES
    H = np.array(r["H"])  # (D, T)
    Zs = []
    for h, head in enumerate(r["heads"]):
        rows = slice(h * d, (h + 1) * d)
        assert head["rows"]["Q"] == [h * d, (h + 1) * d]  # W_Q of head h: rows h·d … (h+1)·d − 1
        q, k, v = (files[f"encoder.layer.0.attention.self.{p}.weight"][rows] @ H
                   + files[f"encoder.layer.0.attention.self.{p}.bias"][rows, None]
                   for p in ("query", "key", "value"))
        A = softmax_rows(q.T @ k / math.sqrt(d))
        np.testing.assert_allclose(np.array(head["Z"]), v @ A.T, atol=ATOL64)  # float64 loops
        Zs.append(np.array(head["Z"]))
    C = np.concatenate(Zs, axis=0)  # (12·32, T): head 1's rows first
    np.testing.assert_array_equal(np.array(r["C"]), C)
    W_O = files["encoder.layer.0.attention.output.dense.weight"]
    np.testing.assert_array_equal(np.array(r["W_O"]), W_O)
    O = W_O.astype(np.float64) @ C + files["encoder.layer.0.attention.output.dense.bias"][:, None]
    np.testing.assert_allclose(np.array(r["O"]), O, atol=1e-10)
    formula_rule(r["layer_output"], lambda W, C, b: W @ C + b[:, None], W_O, C,
                 files["encoder.layer.0.attention.output.dense.bias"], what="the layer's own output")
    v = r["verification"]
    gap = np.abs(np.array(r["layer_output"]) - O).max()
    assert v["ok"] and v["max_abs_diff"]["output"] == pytest.approx(gap, abs=1e-6)
    out = flat(explain_text(SENTENCE, "--multihead"))
    for piece in ["Multi-head attention, layer 1", "rows (h−1)·32 … h·32 − 1",
                  "Concatenate: C = [Z_1; Z_2; …; Z_12]", "Project: O = W_O C + b_O", "the layer's own o_2",
                  "verify:", "✓"]:
        assert piece in out, piece


def test_multihead_causal_and_the_toys_single_head():
    r = explain_json(SENTENCE, "--multihead", "--causal", "--layer", "2")
    assert r["verification"]["ok"] and r["mask"]["kind"] == "causal" and r["layer"] == 2
    rc, out, err = run_cli("explain", SENTENCE, *TOY, "--multihead")
    assert rc == 0 and "1 heads" not in out  # one head: the concatenation is that head, W_O = I
    r = explain_json(SENTENCE, *TOY, "--multihead")
    np.testing.assert_array_equal(np.array(r["W_O"]), np.eye(64))
    np.testing.assert_allclose(np.array(r["O"]), np.array(r["heads"][0]["Z"]), atol=1e-12)
    assert r["verification"]["max_abs_diff"]["output"] < 1e-12


# --- word order and positions -------------------------------------------------------------------


def test_without_positions_every_z_only_moves_with_its_word():
    a, b = explain_json(SENTENCE, *TOY), explain_json("lecture this enjoying am I", *TOY)
    Za, Zb = np.array(a["Z"]), np.array(b["Z"])
    np.testing.assert_allclose(Zb[:, ::-1], Za, atol=1e-12)  # reversed order: z's reversed, unchanged
    r = explain_json(SENTENCE, *TOY, "--permute")
    assert r["permuted"] == ["lecture", "this", "enjoying", "am", "I"] and r["positions"] == "none"
    assert r["unchanged"] and r["max_abs_diff"]["z"] < 1e-12 and r["max_abs_diff"]["weights"] < 1e-12
    for w in r["words"]:
        np.testing.assert_allclose(w["z_old"], Za[:, w["old"] - 1], atol=1e-12)
        np.testing.assert_allclose(w["z_new"], Zb[:, w["new"] - 1], atol=1e-12)
    out = flat(explain_text(SENTENCE, *TOY, "--permute"))
    assert "Every word's z is unchanged, only moved with it" in out and "--positions sinusoidal" in out


def test_sinusoidal_positions_are_added_and_make_order_matter():
    r = explain_json(SENTENCE, *TOY, "--positions", "sinusoidal")
    plain = explain_json(SENTENCE, *TOY)
    T, D = 5, 64
    p = np.arange(T)[:, None]
    i2 = np.arange(0, D, 2)
    PE = np.zeros((T, D))
    PE[:, 0::2] = np.sin(p / 10000 ** (i2 / D))
    PE[:, 1::2] = np.cos(p / 10000 ** (i2 / D))  # the original Transformer's sinusoids
    np.testing.assert_allclose(np.array(r["H"]) - np.array(plain["H"]), PE.T, atol=1e-6)  # float32 table
    assert r["input"]["positions"] == "sinusoidal"
    names = [name for name, _ in r["input"]["parts"]]
    assert names[1].startswith("+ PE(0),")  # word 1: the formula counts p from 0
    order = explain_json(SENTENCE, *TOY, "--positions", "sinusoidal", "--permute")
    assert not order["unchanged"] and min(w["max_abs_diff_z"] for w in order["words"]) > 1e-3
    assert "The z's changed" in flat(explain_text(SENTENCE, *TOY, "--positions", "sinusoidal", "--permute"))


def test_minilm_learned_positions_are_shown_where_they_enter_H(files):
    r = explain_json(SENTENCE)
    parts = dict(r["input"]["parts"])
    assert r["input"]["positions"] == "learned"
    word, pos, seg, total = (np.array(v) for v in parts.values())
    np.testing.assert_array_equal(word, files["embeddings.word_embeddings.weight"][1045])  # "i"
    np.testing.assert_array_equal(pos, files["embeddings.position_embeddings.weight"][1])  # position 2
    np.testing.assert_array_equal(seg, files["embeddings.token_type_embeddings.weight"][0])
    ln = files["embeddings.LayerNorm.weight"], files["embeddings.LayerNorm.bias"]

    def h_2(word, pos, seg, w, b):
        return layer_norm_rows(word + pos + seg, w, b, 1e-12)

    formula_rule(r["input"]["h"], h_2, word, pos, seg, *ln, what="h_2")
    formula_rule(np.array(r["H"])[:, 1], h_2, word, pos, seg, *ln, what="column 2 of H")
    order = explain_json(SENTENCE, "--permute")
    assert order["positions"] == "learned" and not order["unchanged"]
    assert order["permuted"] == ["[CLS]", "lecture", "this", "enjoying", "am", "i", "[SEP]"]  # markers stay
    moved = order["parts"]
    np.testing.assert_array_equal(dict(moved["after"]["parts"])[next(n for n in dict(moved["after"]["parts"])
                                                                     if n.startswith("+ p_"))],
                                  files["embeddings.position_embeddings.weight"][5])  # "i" now at place 6
    out = flat(explain_text(SENTENCE, "--permute"))
    assert "learned — all-MiniLM-L6-v2 adds a trained vector p_i" in out and "+ p_2 / p_6" in out


@pytest.mark.parametrize("argv, message", [
    ([SENTENCE, "--positions", "sinusoidal"], "--positions applies to the toy model"),
    ([SENTENCE, "--multihead", "--permute"], "give one of them"),
    ([SENTENCE, "--multihead", "--head", "2"], "--multihead shows every head"),
    ([SENTENCE, "--permute", "--causal", *TOY], "without a mask"),
    (["a a", "--permute", *TOY], "is the same sentence"),
    ([SENTENCE, "--answers", "1,2,3"], "--answers goes with --quiz"),
])
def test_mistakes_are_one_line(argv, message):
    rc, out, err = run_cli("explain", *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err


# --- layout -------------------------------------------------------------------------------------


LONG = " ".join(["internationalization", "of", "the", "incomprehensibilities"] * 5)


@pytest.mark.parametrize("argv", [
    [SENTENCE], [SENTENCE, "--layer", "3", "--head", "7"], [SENTENCE, "--causal"], [SENTENCE, "--multihead"],
    [SENTENCE, "--permute"], [LONG], [LONG, *TOY], [SENTENCE, *TOY, "--causal"],
    [SENTENCE, *TOY, "--positions", "sinusoidal", "--permute"], ["I am here", "--quiz", "--answers", "0,0,0"],
])
def test_every_line_fits_100_columns(argv):
    rc, out, _ = run_cli("explain", *argv, "--no-color")
    assert rc in (0, 1)
    too_long = [line for line in out.splitlines() if len(line) > 100]
    assert not too_long, too_long[:3]


def test_wide_prints_everything():
    words = " ".join(f"w{i}" for i in range(20))
    narrow, wide = explain_text(words, *TOY), explain_text(words, *TOY, "--wide")
    assert "tables show the first 12" in narrow and "tables show" not in wide
    assert "… 8 more rows" not in wide and "  w19 " in wide.split("Weights α_ij")[1].split("Z:")[0]
    verify = [line for line in wide.splitlines() if line.startswith("verify")]
    assert len(verify) == 1 and len(verify[0]) > 100 and verify[0].endswith("✓")  # one line, unwrapped


def test_learner_notes_are_in_the_walk_through():
    out = flat(explain_text(SENTENCE))
    for piece in ["(T = 7 word pieces)",
                  "The lecture's matrix form Z = softmax(QᵀK/√d_k)·Vᵀ has one row per word piece, T × d_v",
                  "e_2j = q_2·k_j e_2j / √d_k α_2j"]:
        assert piece in out, piece
    verbose = flat(explain_text(SENTENCE, "--verbose"))  # issue 20: where the numbers come from, on request
    for piece in ["[CLS], [SEP]: markers the tokenizer adds; word pieces: the tokenizer's units",
                  "(score: the mean over real word pieces of the weight each puts on real word pieces",
                  "rows 96…127 (counted from 0) of the Q, K, V blocks of layer 1's in_proj"]:
        assert piece in verbose and piece not in out, piece
    toy = flat(explain_text(SENTENCE, *TOY))
    assert "random, untrained W's" in toy and "random (untrained) here" in toy
    assert "W_Q, W_K, W_V ~ N(0, 1/D) from seed 0 (random, untrained)" in toy
