"""Ring attention in real processes (gloo, 2, 3 and 4 of them): every process's shard of the output
and of dq, dk, dv, put back together by the layouts' definition, equals ``attention()`` on the
whole sequence — 1e-10 in float64, FlashAttention's rule in float32, bfloat16 and float16.

Each world size is started once (``spawn_once``, shared with test_models_on_a_shard.py): its
processes run every case and return their shards, and the tests compare here. Shapes are small
(T 13…64, d 8…16) so the three worlds take well under a minute; the benchmark holds the large ones.
"""

from __future__ import annotations

import math

import pytest
import torch
from _ring_cases import BY_NAME, CASES, F64, MEMORY_CASE, assemble, dense_mask, inputs, owned, reference
from _ring_harness import spawn_once
from conftest import ATOL64, EPS32, assert_close, flash_rule

pytestmark = pytest.mark.distributed

LOW = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda n: f"{n}-processes")
def ring(request, tmp_path_factory):
    world = request.param
    results = spawn_once(world, "_ring_cases:run_cases", ([c.name for c in CASES],), tmp_path_factory)
    for r, res in enumerate(results):
        assert res is not None, f"rank {r} saved no result"
        assert "crashed" not in res, f"rank {r}: {res['crashed']}\n{res.get('traceback', '')}"
    return world, results


def _gathered(ring, name: str) -> dict[str, torch.Tensor]:
    world, results = ring
    c = BY_NAME[name]
    per_rank = [r[name] for r in results]
    for r, got in enumerate(per_rank):
        assert "error" not in got, f"rank {r}: {got['error']}"
        assert got["dtypes"] == [c.dtype] * 4  # out, dq, dk, dv in the inputs' dtype
    lengths = {"out": c.Tq, "dq": c.Tq, "dk": c.Tk, "dv": c.Tk}
    whole = {key: assemble([g[key] for g in per_rank], T, world, c.layout) for key, T in lengths.items()}
    lse = [g["lse"].unsqueeze(-1) for g in per_rank]
    whole["lse"] = assemble(lse, c.Tq, world, c.layout).squeeze(-1)
    return whole


@pytest.mark.parametrize("name", [c.name for c in CASES if c.dtype == F64])
def test_float64_equals_attention_on_the_whole_sequence(ring, name):
    c = BY_NAME[name]
    got = _gathered(ring, name)
    want = dict(zip(("out", "lse", "dq", "dk", "dv"), reference(c, *inputs(c)), strict=True))
    for key in ("out", "dq", "dk", "dv"):
        assert_close(got[key], want[key], atol=ATOL64)
    # the log-sum-exp: −inf exactly where a row may see no key, equal elsewhere
    assert torch.equal(got["lse"].isneginf(), want["lse"].isneginf())
    alive = ~want["lse"].isneginf()
    assert_close(got["lse"][alive], want["lse"][alive], atol=ATOL64)


def test_rows_with_no_allowed_key_give_exact_zeros(ring):
    c = BY_NAME["rows with no allowed key"]
    got = _gathered(ring, c.name)
    dead = ~dense_mask(c).any(-1).expand(c.B, c.H, c.Tq)  # (B, H, Tq): rows that see nothing
    assert dead.any() and not dead.all()
    assert torch.equal(got["out"][dead], torch.zeros_like(got["out"][dead]))
    assert torch.equal(got["dq"][dead], torch.zeros_like(got["dq"][dead]))
    assert bool(got["lse"][dead].isneginf().all())


@pytest.mark.parametrize("name", [c.name for c in CASES if c.dtype in LOW])
def test_low_precision_within_flash_attentions_rule(ring, name):
    """Against float64 attention() on the same (rounded) inputs, the ring's error may be at most 2×
    the error of attention() on the whole sequence in the inputs' dtype — a float32 computation for
    all three (the half types compute in float32 and round once, as the ring, whose merges are in
    float32) — plus a floor of 4 float32 roundings of the largest value, 4 · ε₃₂ · max|ref|, for a
    peer that happens to be exact (each merge is a few float32 operations: products, a sum, a
    division). For the half types the floor is far below one rounding of theirs: 2× the peer binds."""
    c = BY_NAME[name]
    got = _gathered(ring, name)
    x = inputs(c)
    ref = dict(zip(("out", "lse", "dq", "dk", "dv"), reference(c, *(t.to(F64) for t in x)), strict=True))
    peer = dict(zip(("out", "lse", "dq", "dk", "dv"), reference(c, *x, backend="auto"), strict=True))
    for key in ("out", "dq", "dk", "dv"):
        floor = 4 * EPS32 * ref[key].abs().max().item()
        flash_rule(got[key], peer[key], ref[key], eps=floor, k=2.0, what=f"{name} {key}")
    if name == "float32 large scores":  # the point of the case: sums past e^88.7 = float32's largest
        assert ref["lse"].max().item() > math.log(torch.finfo(torch.float32).max)


def test_shard_and_unshard_follow_the_layouts(ring):
    world, results = ring
    x = torch.arange(2 * 37 * 3, dtype=F64).view(2, 37, 3)
    for rank, res in enumerate(results):
        got = res["layout"]
        mine = owned(37, world, "zigzag", rank)
        assert got["positions"].tolist() == mine
        assert torch.equal(got["mine"], x[:, mine])
        assert torch.equal(got["contiguous"], x[:, owned(37, world, "contiguous", rank)])
        assert torch.equal(got["whole"], x)  # every process gets the whole sequence back
        # d/dx of Σ_processes Σ_t t · whole[t]: each position's weight, once per process
        weights = torch.arange(37, dtype=F64)[mine].view(1, -1, 1).expand(2, -1, 3)
        assert torch.equal(got["grad"], world * weights)


def test_mismatched_calls_fail_on_every_process(ring):
    world, results = ring
    errors = [r["errors"] for r in results]
    for what in ("causal differs", "dtype differs", "one refuses", "not our shards", "layout differs"):
        seen = [e[what] for e in errors]
        assert all(s["type"] is not None for s in seen), (what, seen)  # nobody went on, nobody hung
        assert all("\n" not in s["message"] for s in seen)
    for what, words in (("causal differs", "disagree on causal: rank 0 has False, rank 1 has True"),
                        ("dtype differs", "disagree on dtype"), ("layout differs", "disagree on layout"),
                        ("not our shards", "cut the sequence with shard_sequence")):
        messages = {e[what]["message"] for e in errors}
        assert len(messages) == 1 and words in messages.pop(), (what, [e[what] for e in errors])
    refused = [e["one refuses"] for e in errors]
    assert "expected 4 dims" in refused[-1]["message"]  # the process whose argument was wrong says why
    for other in refused[:-1]:  # and every other one says who and why
        assert other["type"] == "ValueError"
        assert f"rank {world - 1} of {world} refused its arguments: q has shape" in other["message"]
    # the group still works afterwards, and gives what it gave before
    for res in results:
        assert torch.equal(res["errors"]["after"]["out"], res["T not divisible"]["out"])


def test_a_process_holds_its_shard_and_a_constant_not_the_whole_sequence(ring):
    """Forward + backward, causal, T = 2048, d = 256: the largest tensor allocated during the call
    is one of the shard's (B·H·T/N·d floats) — never one of the whole sequence, nor the (T × T)
    scores — and each process's live tensors stay within what the design holds: its shard's out,
    dq, dk and dv (4 shards, the part that falls as 1/N), the ring's lanes (two of K and V, three
    of the dK and dV sums: 10 tensors of one lane; none for one process), and the local block
    functions' working set (up to 4 tiles of rows × a lane's run of scores, and 2 tiles of rows × d
    of products). The ring used to hold 12 shards and tiles of a whole chunk of queries."""
    from selfattention.distributed.local import BLOCKWISE

    world, results = ring
    m = MEMORY_CASE
    whole = m["B"] * m["H"] * m["T"] * m["d"] * 4  # one float32 tensor of the whole sequence
    chunk = -(-m["T"] // (2 * world))  # a zigzag chunk (the longest)
    shard = m["B"] * m["H"] * 2 * chunk * m["d"] * 4  # one tensor of the longest shard
    lane = m["B"] * m["H"] * min(BLOCKWISE.lane, 2 * chunk) * m["d"] * 4
    rows, run = min(BLOCKWISE.rows, chunk), min(BLOCKWISE.lane // 2, chunk)
    tile, q_tile = m["B"] * m["H"] * rows * run * 4, m["B"] * m["H"] * rows * m["d"] * 4
    assert shard < whole
    for rank, res in enumerate(results):
        got = res["memory"]
        assert got["largest"] <= shard < whole, (rank, got, shard)
        assert got["peak"] <= 4 * shard + 10 * lane + 4 * tile + 2 * q_tile, (rank, got, shard, lane, tile)
