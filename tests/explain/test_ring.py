"""`explain --ring N`: one word's z_i in N pieces, as ring attention over N processes computes it.

Every number the view prints is recomputed here from the trace (q, k, v of the shown head), with
the pieces cut by the zigzag rule written out here (2N chunks of ⌈T/2N⌉, process r holding chunks
r and 2N−1−r), not by the library's layout code: each piece's scores, max, Σ, partial and
log-sum-exp, their merge, and the merged z_i against the layer's own z_i. A merge that forgets to
rescale is caught by the same checks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli
from _rules import ATOL64, F64, flash_rule

from selfattention.errors import UsageError
from selfattention.explain import ring as ring_view
from selfattention.explain.ring import build_ring, render_ring
from selfattention.explain.selection import select
from selfattention.models import ToyModel, load, trace

SENTENCE = "I am enjoying this lecture"


def zigzag(T: int, N: int) -> list[list[int]]:
    """0-based positions of each process: chunk c = ⌈T / 2N⌉ positions, rank r holds r and 2N−1−r."""
    c = -(-T // (2 * N))
    chunk = lambda k: list(range(min(k * c, T), min((k + 1) * c, T)))  # noqa: E731
    return [chunk(r) + chunk(2 * N - 1 - r) for r in range(N)]


def expected(t, sel, N: int) -> list[dict]:
    """Each piece of row ``sel.word`` in the order the pieces reach the word's process, from the
    trace's q, k, v in float64 torch: keys, scores (None where masked), m, Σ, partial, lse."""
    lt, i, h = t.layers[sel.layer], sel.word, sel.head
    H, Hkv = lt.q.shape[0], lt.k.shape[0]
    q, K, V = lt.q[h, i].to(F64), lt.k[h // (H // Hkv)].to(F64), lt.v[h // (H // Hkv)].to(F64)
    s = K @ q / math.sqrt(q.shape[0])
    ok = torch.ones(len(s), dtype=torch.bool) if lt.allowed is None else lt.allowed[i]
    held = zigzag(len(s), N)
    home = next(r for r in range(N) if i in held[r])
    out = []
    for step in range(N):
        owner = (home - step) % N
        js = [j for j in held[owner] if ok[j]]
        piece = {"process": owner, "j": [j + 1 for j in held[owner]],
                 "s": [float(s[j]) if ok[j] else None for j in held[owner]]}
        if js:
            m = s[js].max()
            e = torch.exp(s[js] - m)
            piece.update(m=float(m), sum=float(e.sum()), partial=(e @ V[js]).numpy(),
                         lse=float(torch.logsumexp(s[js], 0)))
        else:
            piece.update(m=None, sum=0.0, partial=np.zeros(V.shape[1]), lse=None)
        out.append(piece)
    return out


def check(r: dict, t, sel, N: int) -> None:
    """The report ``r`` against ``expected``, and its merged z_i against the layer's own."""
    want = expected(t, sel, N)
    T = len(t.tokens.tokens)
    assert r["N"] == N and r["T"] == T and r["word"]["index"] == sel.word + 1
    assert r["held"] == [[p + 1 for p in ps] for ps in zigzag(T, N)]
    assert sorted(p for ps in r["held"] for p in ps) == list(range(1, T + 1))  # every key once
    assert all(r["held"]), "a process holds no key"
    assert len(r["pieces"]) == N
    for got, w in zip(r["pieces"], want, strict=True):
        assert got["process"] == w["process"] and [k["j"] for k in got["keys"]] == w["j"]
        for k, s in zip(got["keys"], w["s"], strict=True):
            assert (k["s"] is None) == (s is None) and (s is None or abs(k["s"] - s) <= ATOL64)
        assert (got["m"] is None) == (w["m"] is None) == got["skipped"]
        if w["m"] is not None:
            assert abs(got["m"] - w["m"]) <= ATOL64 and abs(got["lse"] - w["lse"]) <= ATOL64
        assert abs(got["sum"] - w["sum"]) <= ATOL64
        np.testing.assert_allclose(got["partial"], w["partial"], rtol=0, atol=ATOL64)
    # the merge written out with the expected pieces, and the one-process z_i from the whole row
    m = max(w["m"] for w in want if w["m"] is not None)
    c = [0.0 if w["m"] is None else math.exp(w["m"] - m) for w in want]
    z = sum(ci * w["partial"] for ci, w in zip(c, want, strict=True)) / sum(
        ci * w["sum"] for ci, w in zip(c, want, strict=True))
    np.testing.assert_allclose(r["merge"]["z"], z, rtol=0, atol=ATOL64)
    lt = t.layers[sel.layer]
    own = lt.z["auto"][sel.head, sel.word]  # the layer's own z_i (the model's forward pass)
    if own.dtype == torch.float64:
        np.testing.assert_allclose(r["merge"]["z"], own.numpy(), rtol=0, atol=ATOL64)
    else:  # a float32 layer: within FlashAttention's rule of a float32 peer on the same q, k, v
        H, Hkv = lt.q.shape[0], lt.k.shape[0]
        q, K, V = lt.q[sel.head, sel.word], lt.k[sel.head // (H // Hkv)], lt.v[sel.head // (H // Hkv)]
        s = (K @ q) / math.sqrt(q.shape[0])
        if lt.allowed is not None:
            s = s.masked_fill(~lt.allowed[sel.word], -math.inf)
        peer = torch.softmax(s, 0) @ V  # float32
        flash_rule(own, peer, torch.as_tensor(np.array(r["merge"]["z"])), what="z_i")
    assert r["verification"]["ok"]


@pytest.fixture(scope="module")
def toy():
    return trace(ToyModel(), SENTENCE, layers=[0])


@pytest.fixture(scope="module")
def minilm():
    return trace(load("minilm"), SENTENCE, layers=[0])


@pytest.mark.parametrize("model", ["toy", "minilm"])
@pytest.mark.parametrize("N", [2, 3, "T"])
def test_the_pieces_and_their_merge_are_the_trace_recomputed(model, N, request):
    t = request.getfixturevalue(model)
    N = len(t.tokens.tokens) if N == "T" else N
    for word in (None, "3"):
        sel = select(t, word=word)
        check(build_ring(t, sel, ring=N), t, sel, N)


def test_a_causal_row_skips_the_pieces_after_it():
    t = trace(ToyModel(), SENTENCE, layers=[0], causal=True)
    sel = select(t)  # the middle word, "enjoying" (3)
    r = build_ring(t, sel, ring=5)
    check(r, t, sel, 5)
    skipped = {k["j"] for p in r["pieces"] if p["skipped"] for k in p["keys"]}
    assert skipped == {4, 5}  # every key after word 3 is alone in its piece (N = T)
    text = render_ring(r)
    assert "skipped: the causal rule forbids all its keys for word 3" in text


@pytest.mark.slow
def test_a_trained_causal_decoder(tmp_path: Path):
    """A decoder trained here (a causal mask of its own): its pieces after the word are skipped."""
    out = tmp_path / "run"
    rc, _, err = run_cli("train", "reverse", "--out", str(out), "--d-model", "16", "--layers", "1", "--heads",
                         "2", "--d-ff", "32", "--steps", "2", "--no-progress", "--no-pictures")
    assert rc == 0, err
    for N in (2, 3):
        rc, got, err = run_cli("explain", "abcd=dcba", "--model", str(out), "--ring", str(N), "--json")
        assert rc == 0, err
        r = json.loads(got)
        assert r["mask"] == "causal"
        from selfattention.explain.cli import load_model

        t = trace(load_model(str(out), dim=None, seed=None, positions=None), "abcd=dcba", layers=[0])
        check(r, t, select(t), N)
        rc, got, err = run_cli("explain", "abcd=dcba", "--model", str(out), "--ring", str(N), "--word", "1",
                               "--json")
        r = json.loads(got)
        check(r, t, select(t, word="1"), N)  # "a" sees itself alone: every other piece is skipped
        assert [p["skipped"] for p in r["pieces"]] == [False] + [True] * (N - 1)


def test_a_merge_without_rescaling_is_caught(toy, monkeypatch):
    """The planted mistake: pieces added as they are, each still scaled by its own max."""
    sel = select(toy)

    def unscaled(parts):
        right = merge(parts)
        total = sum(p["sum"] for p in parts)
        top = sum(p["partial"] for p in parts)
        return {**right, "factors": [1.0] * len(parts), "sum": total, "numerator": top, "z": top / total}

    merge = ring_view.merge
    monkeypatch.setattr(ring_view, "merge", unscaled)
    r = build_ring(toy, sel, ring=3)
    with pytest.raises(AssertionError):
        check(r, toy, sel, 3)
    assert not r["verification"]["ok"]
    np.testing.assert_allclose(r["without_rescaling"], r["merge"]["z"], rtol=0, atol=ATOL64)


def test_the_command_prints_the_pieces_and_says_it_is_a_simulation(toy):
    rc, out, err = run_cli("explain", SENTENCE, "--model", "toy", "--ring", "3")
    assert rc == 0, err
    assert all(len(line) <= 100 for line in out.splitlines())
    r = build_ring(toy, select(toy), ring=3)
    for p in r["pieces"]:
        assert f"step {p['step']}: the piece of process {p['process']}" in out
        assert f"m = max s_1j = {p['m']:.4f}" in out and f"lse = m + log Σ = {p['lse']:.4f}" in out
    maxima = ", ".join(f"{p['m']:.4f}" for p in r["pieces"])
    assert f"m = max({maxima}) = {r['merge']['m']:.4f}" in out
    assert "This ran in one process, a simulation of 3." in out
    assert "all within rounding ✓" in out
    rc, got, err = run_cli("explain", SENTENCE, "--model", "toy", "--ring", "3", "--json")
    assert rc == 0 and json.loads(got)["pieces"] == json.loads(json.dumps(r["pieces"])), err


@pytest.mark.parametrize("argv, message", [
    (["--ring", "1"], "argument --ring: must be at least 2, got 1"),
    (["--ring", "two"], "argument --ring: expected an integer written with the digits 0-9, got 'two'"),
    (["--ring", "6"], "--ring 6: the text has 5 words, the keys to split; give N from 2 to 5 (each process "
                      "holds at least one key)"),
    (["--ring", "2", "--png", "x.png"], "--ring prints one word's z_i in pieces; draw pictures without it"),
    (["--ring", "2", "--html", "x.html"], "--ring prints one word's z_i in pieces; draw pictures without it"),
    (["--ring", "2", "--multihead"], "--multihead and --ring: give one of them"),
])
def test_refusals(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli("explain", SENTENCE, "--model", "toy", *argv)
    assert (rc, out, err) == (2, "", f"selfattention: error: {message}\n")
    assert list(tmp_path.iterdir()) == []


def test_one_word_is_refused():
    rc, _, err = run_cli("explain", "hello", "--model", "toy", "--ring", "2")
    assert (rc, err) == (2, "selfattention: error: --ring splits the keys over processes: give at least two "
                            "words\n")


def test_a_row_that_sees_no_key_is_refused(toy):
    """attention() gives such a row 0: no piece has a max, and there is nothing to merge."""
    lt = toy.layers[0]
    allowed = torch.ones(5, 5, dtype=torch.bool)
    allowed[0] = False
    row = type(toy)(toy.model, toy.text, toy.tokens, {0: type(lt)(**{**vars(lt), "allowed": allowed})})
    with pytest.raises(UsageError, match="word 1 may see no key under this layer's mask"):
        build_ring(row, select(toy), ring=2)
