"""Models on a shard (issue 19, part 2), in real processes (gloo, 2 and 3 of them): a DecoderLM (and
an Encoder with a document mask) run by each process on its shard of the tokens with
``shard=ContextParallel(T)`` gives, put back together, one process's output on the whole sequence,
and every weight's gradient summed over the processes is one process's gradient — 1e-10 in
float64, FlashAttention's rule in float32 — in both layouts, with learned and sinusoidal positions,
pre- and post-norm, and T not dividing into the shards. The processes are those of
test_ring_attention.py (``spawn_once``): each world size is started once."""

from __future__ import annotations

import pytest
import torch
from _model_cases import F64, MODEL_CASES, build, whole
from _ring_cases import CASES
from _ring_harness import spawn_once
from conftest import ATOL64, EPS32, assert_close, flash_rule

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}-processes")
def shards(request, tmp_path_factory):
    world = request.param
    results = spawn_once(world, "_ring_cases:run_cases", ([c.name for c in CASES],), tmp_path_factory)
    for r, res in enumerate(results):
        assert res is not None, f"rank {r} saved no result"
        assert "crashed" not in res, f"rank {r}: {res['crashed']}\n{res.get('traceback', '')}"
    return world, [res["models"] for res in results]


def _got(shards, name: str) -> dict:
    world, per_rank = shards
    for r, res in enumerate(per_rank):
        assert "error" not in res[name], f"rank {r}: {res[name]['error']}"
    first = per_rank[0][name]
    for res in per_rank[1:]:  # every process holds the same whole output and the same sums
        assert torch.equal(res[name]["out"], first["out"])
        assert all(torch.equal(res[name]["grads"][n], g) for n, g in first["grads"].items())
    assert sum(res[name]["local"] for res in per_rank) == first["out"].shape[1]  # each held its part only
    return first


@pytest.mark.parametrize("name", [c.name for c in MODEL_CASES if c.dtype == F64])
def test_float64_a_model_on_shards_is_the_model_on_the_whole_sequence(shards, name):
    c = next(c for c in MODEL_CASES if c.name == name)
    got = _got(shards, name)
    want_out, want_grads = whole(c, build(c), F64)
    assert_close(got["out"], want_out, atol=ATOL64)
    assert got["grads"].keys() == want_grads.keys()
    for n, g in want_grads.items():
        assert_close(got["grads"][n], g, atol=ATOL64)


@pytest.mark.parametrize("name", [c.name for c in MODEL_CASES if c.dtype == torch.float32])
def test_float32_within_flash_attentions_rule(shards, name):
    """Against the same float32 weights run in float64 on the whole sequence, the shards' error may
    be at most 2× that of one float32 process on the whole sequence (the peer), plus a floor of
    (4 + N) float32 roundings of the largest value: the ring's merges (as in test_ring_attention)
    and one rounding per process in the sum of a gradient over the group."""
    world, _ = shards
    c = next(c for c in MODEL_CASES if c.name == name)
    got = _got(shards, name)
    ref_out, ref_grads = whole(c, build(c), F64)  # the float32 weights, exactly, in float64
    peer_out, peer_grads = whole(c, build(c), torch.float32)
    floor = (4 + world) * EPS32
    flash_rule(got["out"], peer_out, ref_out, eps=floor * ref_out.abs().max().item(), what=f"{name} output")
    for n, ref in ref_grads.items():
        flash_rule(got["grads"][n], peer_grads[n], ref, eps=floor * ref.abs().max().item(),
                   what=f"{name} d/d {n}")
