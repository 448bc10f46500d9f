"""`explain --model RUN`: a Transformer trained here for a few steps (`selfattention train`), walked
through the lecture's steps like MiniLM; its numbers re-derived from the checkpoint's safetensors
file with NumPy. A GRU checkpoint is one error line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _cli import run_cli
from _rules import ATOL64, formula_rule, layer_norm_rows, softmax_rows
from safetensors.numpy import load_file

SIZES = ["--d-model", "16", "--layers", "2", "--heads", "2", "--d-ff", "32", "--no-progress", "--no-pictures"]


def train(out: Path, *argv: str) -> Path:
    rc, _, err = run_cli("train", "reverse", "--out", str(out), *SIZES, *argv)  # in this process: quick
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("runs") / "reverse", "--steps", "30", "--checkpoint-every", "30",
                 "--eval-every", "30")


def weights(run: Path) -> dict[str, np.ndarray]:
    (ckpt,) = sorted((run / "checkpoints").iterdir())
    return load_file(ckpt / "model.safetensors")


def test_a_trained_head_walks_through_the_lecture(run_dir: Path):
    rc, out, err = run_cli("explain", "abc=", "--model", str(run_dir), "--json")
    assert rc == 0, err
    r = json.loads(out)
    w = weights(run_dir)
    assert r["tokens"] == list("abc=") and r["unit"] == "characters" and r["T"] == 4
    assert r["mask"]["kind"] == "causal" and r["mask"]["illustration"] is False  # the decoder's own mask
    d, h = 8, r["head"] - 1
    # layer 1's H: LayerNorm(embedding + learned position) of block 1 (pre-norm), from the file
    (ckpt,) = sorted((run_dir / "checkpoints").iterdir())
    vocab = json.loads((ckpt / "state.json").read_text())["vocab"]  # the checkpoint's characters ↔ ids
    ids = [vocab.index(c) for c in "abc="]
    tables = (w["embed.weight"][ids], w["positions.table"][:4], w["blocks.0.norm1.weight"],
              w["blocks.0.norm1.bias"])

    def h_rows(e, p, g, b):  # (T, D): h_i as rows
        return layer_norm_rows(e + p, g, b, 1e-5)

    formula_rule(np.array(r["H"]).T, h_rows, *tables, what="H")  # float32 model, float64 formula
    W, b = w["blocks.0.attn.in_proj.weight"], w["blocks.0.attn.in_proj.bias"]  # rows: Q (16), K (16), V (16)
    rows = [slice(part * 16 + h * d, part * 16 + (h + 1) * d) for part in range(3)]
    np.testing.assert_array_equal(np.array(r["W_Q"]), W[rows[0]])
    np.testing.assert_array_equal(np.array(r["W_V"]), W[rows[2]])
    H = np.array(r["H"])
    parts = [x for s in rows for x in (W[s], b[s])]

    def steps(W_Q, b_Q, W_K, b_K, W_V, b_V, H):  # (A, Z), causal, words as columns
        q, k, v = W_Q @ H + b_Q[:, None], W_K @ H + b_K[:, None], W_V @ H + b_V[:, None]
        A = softmax_rows(np.where(np.tri(4, dtype=bool), q.T @ k / math.sqrt(d), -np.inf))
        return A, v @ A.T

    np.testing.assert_allclose(np.array(r["A"]), steps(*parts, H)[0], atol=ATOL64)  # the loops, float64
    formula_rule(r["layer_Z"], lambda *x: steps(*x)[1], *parts, H, what="the model's own Z")
    assert r["verification"]["ok"]
    parts = r["input"]
    assert parts["positions"] == "learned" and parts["formula"].startswith("h_i = LayerNorm(")
    i = r["derivation"]["index"] - 1
    formula_rule(parts["h"], lambda *t: h_rows(*t)[i], *tables, what="h_i")


def test_text_multihead_permute_and_pictures(run_dir: Path, tmp_path: Path):
    rc, out, err = run_cli("explain", "abc=", "--model", str(run_dir), "--no-color")
    assert rc == 0 and err == ""
    assert "(T = 4 characters)" in out and "as this model computes it" in " ".join(out.split())
    assert max(len(line) for line in out.splitlines()) <= 100
    rc, out, _ = run_cli("explain", "abc=", "--model", str(run_dir), "--multihead", "--json")
    m = json.loads(out)
    assert rc == 0 and m["num_heads"] == 2 and m["verification"]["ok"]
    C = np.concatenate([np.array(h["Z"]) for h in m["heads"]])
    w = weights(run_dir)
    formula_rule(m["layer_output"], lambda W, C, b: W @ C + b[:, None], w["blocks.0.attn.out_proj.weight"], C,
                 w["blocks.0.attn.out_proj.bias"], what="the layer's output")
    rc, out, _ = run_cli("explain", "abc=", "--model", str(run_dir), "--permute", "--json")
    p = json.loads(out)
    assert rc == 0 and p["masked"] and not p["unchanged"] and p["positions"] == "learned"
    page, pic = tmp_path / "t.html", tmp_path / "t.png"
    rc, out, _ = run_cli("explain", "abc=", "--model", str(run_dir), "--html", str(page), "--png", str(pic))
    assert rc == 0 and "4 characters" in out and page.stat().st_size > 1000 and pic.stat().st_size > 1000
    # a checkpoint folder itself works too
    (ckpt,) = sorted((run_dir / "checkpoints").iterdir())
    assert run_cli("explain", "ab", "--model", str(ckpt))[0] == 0


@pytest.mark.parametrize("text, argv, message", [
    ("ab?", [], "the character '?' is not in this model's vocabulary"),
    ("ab", ["--dim", "8"], "--dim applies only to the toy model"),
    ("ab", ["--positions", "sinusoidal"], "--positions applies only to the toy model"),
    ("ab", ["--layer", "3"], "layer 3 is out of range"),
    ("a" * 60, ["--no-truncate"], "more than the model's 50 positions"),
])
def test_mistakes_are_one_line(run_dir: Path, text, argv, message):
    rc, out, err = run_cli("explain", text, "--model", str(run_dir), *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_a_long_text_is_cut_with_one_warning(run_dir: Path):
    rc, out, err = run_cli("explain", "a" * 60, "--model", str(run_dir), "--json")
    assert rc == 0 and json.loads(out)["T"] == 50
    assert err.count("selfattention: warning:") == 1 and "the last 10 were dropped" in err


def test_a_gru_checkpoint_has_no_attention(tmp_path: Path):
    run = train(tmp_path / "gru", "--model", "gru", "--steps", "2", "--checkpoint-every", "2",
                "--eval-every", "2")
    rc, out, err = run_cli("explain", "abc=", "--model", str(run))
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "holds a GRU model: it has no attention to explain" in err
