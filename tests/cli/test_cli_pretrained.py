"""`selfattention explain` on the real all-MiniLM-L6-v2 (the default), `embed` and `similarity`.

Numbers are re-derived here from the JSON's own inputs, and H, W's and b's from the model files
themselves (safetensors + tokenizers, not the package's loader), so a wrong report can fail. The
model is loaded once per process (``main`` runs in-process); broken model directories are built in
tmp_path with the big files symlinked.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cli import model_dir_copy, run_cli
from _rules import NORM_TOL, formula_rule, layer_norm_rows, softmax_rows

from selfattention.embed import PROGRESS_MIN
from selfattention.explain import LAYER_TOLERANCE
from selfattention.models.pretrained import default_model_path

SENTENCE = "I am enjoying this lecture"
PIECES = ["[CLS]", "i", "am", "enjoying", "this", "lecture", "[SEP]"]
LONG = "word " * 600  # 600 word pieces + [CLS] and [SEP] = 602
D, HEADS, d = 384, 12, 32


run = run_cli  # main(argv) in-process → (exit status, stdout, stderr)


def explain_json(*argv: str) -> dict:
    rc, out, err = run("explain", *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def report() -> dict:
    return explain_json(SENTENCE)


@pytest.fixture(scope="module")
def files() -> dict:
    """The model's tensors and tokenizer, read directly from its files."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    path = default_model_path()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()  # the file pads to 128
    return {"t": load_file(path / "model.safetensors"), "tok": tok}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def one_error_line(rc: int, out: str, err: str) -> str:
    assert rc == 2 and out == ""
    assert err.startswith("selfattention: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# --- explain ------------------------------------------------------------------------------------


def test_default_explain_shows_word_pieces_and_verifies():
    rc, out, err = run("explain", SENTENCE, "--no-color")
    assert rc == 0 and err == ""
    assert "1:[CLS]  2:i  3:am  4:enjoying  5:this  6:lecture  7:[SEP]" in out
    for piece in ["all-MiniLM-L6-v2", "Layer 1, head 4", "Q = W_Q H + b_Q", "√32", 'How z_2 ("i")',
                  "Σ_j α_2j", "the layer's own z_2", "Heatmap", "Where each head of layer 1 looks",
                  "verify", "✓"]:
        assert piece in out, piece
    assert "\x1b[" not in out


def test_json_steps_are_the_lecture_steps(report):
    assert report["tokens"] == PIECES and report["unit"] == "word pieces"
    assert (report["layer"], report["head"], report["d_k"], report["D"]) == (1, 4, d, D)
    assert report["scale"] == pytest.approx(1 / math.sqrt(32))
    dv = report["derivation"]
    assert (dv["index"], dv["word"]) == (2, "i")  # the first word piece after [CLS]
    terms = dv["terms"]
    q = np.array(dv["q"])
    e = np.array([t["e"] for t in terms])
    scaled = np.array([t["scaled"] for t in terms])
    alpha = np.array([t["alpha"] for t in terms])
    V = np.array([t["v"] for t in terms])  # (T, d)
    assert q.shape == (d,) and V.shape == (7, d)
    np.testing.assert_allclose(e, [q @ np.array(t["k"]) for t in terms], atol=1e-9)  # e_ij = q_i·k_j
    np.testing.assert_allclose(scaled, e / math.sqrt(32), atol=1e-12)
    np.testing.assert_allclose(alpha, softmax(scaled), atol=1e-12)
    assert alpha.sum() == pytest.approx(1.0, abs=1e-12) and dv["alpha_sum"] == pytest.approx(1.0)
    np.testing.assert_allclose(dv["z"], alpha @ V, atol=1e-12)  # z_i = Σ_j α_ij v_j
    # the real layer (float32) agrees with the loops (float64) as float32 allows
    formula_rule(dv["layer_z"], lambda q, K, V: softmax_rows(K @ q / math.sqrt(32)) @ V, q,
                 [t["k"] for t in terms], V, what="the layer's own z_2")


def test_verification_against_the_layer_is_tight(report):
    v = report["verification"]
    # explain's own claim: a float32 layer marked ✓ agrees within LAYER_TOLERANCE
    assert v["ok"] is True and v["tolerance"] == LAYER_TOLERANCE and v["auto_backend"] == "torch"
    assert {"auto", "matrix", "torch", "blockwise", "weights", "matrix_form"} <= set(v["max_abs_diff"])
    assert all(0 <= x < LAYER_TOLERANCE for x in v["max_abs_diff"].values())
    # and the layer's α's and Z (float32) against the formula from the JSON's H and W's (float64)
    W = [np.array(report[n]) if n.startswith("W") else np.array(report["biases"][n])
         for n in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V")]
    H = np.array(report["H"])

    def steps(W_Q, b_Q, W_K, b_K, W_V, b_V, H):  # (A, Z) with words as columns
        q, k, v = W_Q @ H + b_Q[:, None], W_K @ H + b_K[:, None], W_V @ H + b_V[:, None]
        A = softmax_rows(q.T @ k / math.sqrt(d))
        return A, v @ A.T

    formula_rule(report["heads"][3]["A"], lambda *x: steps(*x)[0], *W, H, what="the layer's α's")
    formula_rule(report["layer_Z"], lambda *x: steps(*x)[1], *W, H, what="the layer's Z")


def test_H_W_b_come_from_the_model_files(report, files):
    t, tok = files["t"], files["tok"]
    ids = tok.encode(SENTENCE).ids
    assert [tok.id_to_token(i) for i in ids] == PIECES
    # layer 1's H: the embeddings (float32) against their formula from the model's tables
    formula_rule(np.array(report["H"]).T, lambda w, p, s, g, b: layer_norm_rows(w + p + s, g, b, 1e-12),
                 t["embeddings.word_embeddings.weight"][ids], t["embeddings.position_embeddings.weight"][:7],
                 t["embeddings.token_type_embeddings.weight"][0], t["embeddings.LayerNorm.weight"],
                 t["embeddings.LayerNorm.bias"], what="H")
    rows = slice(3 * d, 4 * d)  # head 4
    for part, W, b in (("query", "W_Q", "b_Q"), ("key", "W_K", "b_K"), ("value", "W_V", "b_V")):
        name = f"encoder.layer.0.attention.self.{part}"
        np.testing.assert_array_equal(np.array(report[W]), t[f"{name}.weight"][rows])
        np.testing.assert_array_equal(report["biases"][b], t[f"{name}.bias"][rows])
    H, W_Q, b_Q = np.array(report["H"]), np.array(report["W_Q"]), np.array(report["biases"]["b_Q"])
    np.testing.assert_allclose(np.array(report["Q"]), W_Q @ H + b_Q[:, None], atol=1e-10)


def test_layer_and_head_change_the_output(report, files):
    r = explain_json(SENTENCE, "--layer", "3", "--head", "5")
    assert (r["layer"], r["head"], r["model"]["head_choice"]) == (3, 5, "--head")
    assert r["tokens"] == PIECES and r["verification"]["ok"]
    assert not np.allclose(r["H"], report["H"]) and not np.allclose(r["A"], report["A"])
    np.testing.assert_array_equal(
        np.array(r["W_K"]), files["t"]["encoder.layer.2.attention.self.key.weight"][4 * d:5 * d])
    rc, out, _ = run("explain", SENTENCE, "--layer", "6", "--head", "12", "--no-color")
    assert rc == 0 and "Layer 6, head 12" in out and "12 ◀" in out


def test_heads_overview(report):
    heads = report["heads"]
    assert [h["head"] for h in heads] == list(range(1, HEADS + 1))
    for h in heads:
        A = np.array(h["A"])
        assert A.shape == (7, 7)
        assert sum(h["share"].values()) == pytest.approx(1.0, abs=1e-5)
        assert h["argmax"] == [int(k) + 1 for k in A.argmax(-1)]
        assert h["argmax_words"] == [PIECES[k - 1] for k in h["argmax"]]
    assert heads[2]["mostly"] == "previous"  # layer 1, head 3 of MiniLM looks at the previous word


def test_json_keeps_every_heads_weights_only_for_short_texts():
    r = explain_json("word " * 68)  # 70 word pieces
    assert r["T"] == 70 and all(h["A"] is None for h in r["heads"])
    assert np.array(r["A"]).shape == (70, 70) and len(r["heads"][0]["argmax"]) == 70


@pytest.mark.parametrize(("word", "index"), [("enjoying", 4), ("6", 6), ("LECTURE", 6), ("1", 1)])
def test_word_by_piece_or_position(word, index):
    assert explain_json(SENTENCE, "--word", word)["derivation"]["index"] == index


def test_word_piece_without_hashes():
    r = explain_json("the mailman came", "--word", "man")
    assert r["tokens"][r["derivation"]["index"] - 1] == "##man"


def test_unknown_word_lists_the_word_pieces():
    err = one_error_line(*run("explain", SENTENCE, "--word", "movie"))
    assert "[CLS], i, am, enjoying, this, lecture, [SEP]" in err


@pytest.mark.parametrize("text", ["I love it 😀🎉", "cafe\u0301 nai\u0308ve", "مرحبا بالعالم", "שלום עולם",
                                  "日本語のテキスト"])
def test_unusual_unicode(text):
    rc, out, err = run("explain", text, "--no-color")
    assert rc == 0 and err == "" and "✓" in out
    assert run("embed", text)[0] == 0


@pytest.mark.slow
def test_too_long_is_truncated_with_one_warning_line():
    rc, out, err = run("explain", LONG, "--no-color")
    assert rc == 0 and "(T = 512 word pieces)" in out and "truncated" in out
    assert err.count("\n") == 1 and err.startswith("selfattention: warning: ")
    assert "602 word pieces" in err and "dropped the last 90" in err  # 602 - 512
    rc, out, err = run("embed", LONG, "short")
    assert rc == 0 and err.count("\n") == 1 and "dropped the last 346" in err  # 602 - 256


@pytest.mark.parametrize("argv", [
    ["explain", ""],
    ["explain", " \t\n "],
    ["explain", "\u200b"],
    ["explain", LONG, "--no-truncate"],
    ["explain", SENTENCE, "--layer", "7"],
    ["explain", SENTENCE, "--layer", "0"],
    ["explain", SENTENCE, "--head", "13"],
    ["explain", SENTENCE, "--word", "8"],
    ["explain", SENTENCE, "--dim", "8"],
    ["explain", SENTENCE, "--model", "/nonexistent"],
    ["embed"],
    ["embed", "fine", ""],
    ["embed", LONG, "--no-truncate"],
    ["embed", "x", "--model", "toy"],
    ["embed", "x", "--out", "/nonexistent/e.npy"],
    ["similarity", "a", "   "],
    ["similarity", "a"],
])
def test_bad_input_is_one_error_line(argv):
    one_error_line(*run(*argv))


def test_range_errors_name_the_valid_range():
    assert "layers 1 to 6" in one_error_line(*run("explain", SENTENCE, "--layer", "7"))
    assert "heads 1 to 12" in one_error_line(*run("explain", SENTENCE, "--head", "13"))




@pytest.mark.parametrize("broken", ["no tokenizer", "corrupt weights", "gpt2 config"])
@pytest.mark.parametrize("command", [["explain", SENTENCE], ["embed", SENTENCE]])
def test_broken_model_directory(tmp_path, broken, command):
    weights = (default_model_path() / "model.safetensors").read_bytes()[:4096]
    config = json.loads((default_model_path() / "config.json").read_text())
    model = {"no tokenizer": lambda: model_dir_copy(tmp_path, without=("tokenizer.json",)),
             "corrupt weights": lambda: model_dir_copy(tmp_path, replace={"model.safetensors": weights}),
             "gpt2 config": lambda: model_dir_copy(
                 tmp_path, replace={"config.json": json.dumps({**config, "model_type": "gpt2"}).encode()}),
             }[broken]()
    err = one_error_line(*run(*command, "--model", str(model)))
    assert {"no tokenizer": "tokenizer.json", "corrupt weights": "model.safetensors",
            "gpt2 config": "gpt2"}[broken] in err


def test_model_path_works(tmp_path):
    r = explain_json(SENTENCE, "--model", str(model_dir_copy(tmp_path)))
    assert r["model"]["name"] == "model" and r["tokens"] == PIECES and r["verification"]["ok"]


# --- embed and similarity -----------------------------------------------------------------------

THREE = ["I am enjoying this lecture", "The talk was fun", "Stock prices fell sharply"]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rc, out, _ = run("embed", *THREE, "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["dim"] == D and r["count"] == 3 and [e["text"] for e in r["embeddings"]] == THREE
    return np.array([e["vector"] for e in r["embeddings"]])


def test_embed_prints_one_row_per_sentence(vectors):
    rc, out, err = run("embed", *THREE)
    assert rc == 0 and err == ""
    rows = [ln for ln in out.splitlines() if re.match(r"\d+  \[", ln)]
    assert len(rows) == 3 and "D = 384" in out
    for row, text, x in zip(rows, THREE, vectors, strict=True):
        assert row.endswith(text) and f"{x[0]: .4f}" in row
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=NORM_TOL)


def test_embed_out_writes_the_json_vectors(tmp_path, vectors):
    path = tmp_path / "e.npy"
    rc, out, _ = run("embed", *THREE, "--out", str(path))
    assert rc == 0 and "wrote 3 × 384" in out
    X = np.load(path, allow_pickle=False)
    assert X.shape == (3, D) and X.dtype == np.float32
    np.testing.assert_array_equal(X, vectors.astype(np.float32))  # the same run's rows, as written
    assert os.listdir(tmp_path) == ["e.npy"]  # no temporary file left behind


def test_embed_out_is_all_or_nothing(tmp_path):
    path = tmp_path / "e.npy"
    path.write_bytes(b"keep me")
    one_error_line(*run("embed", "fine", "", "--out", str(path)))
    assert path.read_bytes() == b"keep me" and os.listdir(tmp_path) == ["e.npy"]


def test_embed_file_and_stdin(tmp_path, vectors):
    f = tmp_path / "s.txt"
    f.write_text("\n".join(THREE) + "\n\n", encoding="utf-8")
    rc, out, _ = run("embed", "--file", str(f), "--json", "--batch-size", "2")
    assert rc == 0
    # other batches (padding, summation order) than the fixture's: within the norm's rounding bound
    np.testing.assert_allclose([e["vector"] for e in json.loads(out)["embeddings"]], vectors, atol=NORM_TOL)
    rc, out, _ = run("embed", "--file", "-", "--json", stdin="\n".join(THREE))
    assert rc == 0 and len(json.loads(out)["embeddings"]) == 3
    f.write_text("one\n\nthree\n", encoding="utf-8")
    assert "line 2 of" in one_error_line(*run("embed", "--file", str(f)))
    assert "cannot read" in one_error_line(*run("embed", "--file", str(tmp_path / "none.txt")))


@pytest.mark.slow
def test_progress_bar_for_big_batches(tmp_path):
    f = tmp_path / "many.txt"
    f.write_text("\n".join(f"sentence number {n}" for n in range(PROGRESS_MIN)), encoding="utf-8")
    rc, out, err = run("embed", "--file", str(f), "--batch-size", "128", tty=True)
    assert rc == 0 and len(out.splitlines()) == 1 + PROGRESS_MIN
    assert f"embedding {PROGRESS_MIN} texts" in err
    rc, out, err = run("embed", "--file", str(f), "--batch-size", "128", "--no-progress", tty=True)
    assert rc == 0 and err == ""


def test_similarity(vectors):
    rc, out, err = run("similarity", THREE[0], THREE[1])
    assert rc == 0 and err == "" and re.fullmatch(r"-?\d\.\d{4}\n", out)
    assert float(out) == pytest.approx(vectors[0] @ vectors[1], abs=5e-5 + NORM_TOL)  # printed to 4 places
    para = float(run("similarity", "A man is playing a guitar.", "Someone plays the guitar.")[1])
    unrelated = float(run("similarity", "A man is playing a guitar.", "The stock market fell today.")[1])
    assert para > 0.5 > unrelated
    r = json.loads(run("similarity", "a", "b", "--json")[1])
    assert set(r) == {"model", "a", "b", "cosine"}


# --- the installed command, cold ----------------------------------------------------------------


@pytest.mark.subprocess
def test_console_script_and_lazy_imports():
    exe = Path(sys.executable).with_name("selfattention")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "selfattention.cli"]
    ok = subprocess.run([*cmd, "explain", SENTENCE], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stderr == "" and "verify" in ok.stdout and "✓" in ok.stdout
    probe = ("import sys, selfattention.cli; "
             "print(sorted(m for m in ('transformers', 'tokenizers', 'safetensors') if m in sys.modules))")
    lazy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert lazy.stdout.strip() == "[]", lazy.stdout + lazy.stderr


def test_non_ascii_digit_word_is_a_usage_error():
    rc, _, err = run("explain", "I am here", "--word", "²")  # "²".isdigit() is True; int("²") fails
    assert rc == 2 and err.count("\n") == 1 and "is not in the sentence" in err


def test_single_word_gets_head_1_and_says_why(tmp_path):
    rc, out, _ = run("explain", "a")
    assert rc == 0
    assert "head 1: the default when there are fewer than two real word pieces to mix" in out
    rc, out, _ = run("explain", "hi", "--model", "toy", "--png", str(tmp_path / "one.png"))
    assert rc == 0 and out.rstrip().endswith("1 word")
