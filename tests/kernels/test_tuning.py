"""Launch configurations (``kernels/tuning.py``): length buckets, pruning, and the kernels'
refusal to specialise on lengths. Pure logic: runs wherever the kernel tests run."""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="Triton is not installed")
from selfattention.kernels import tuning  # noqa: E402
from selfattention.kernels.tuning import Cfg, bucket, prune  # noqa: E402

H100_SHARED = 232448  # bytes of shared memory one block may use on an H100/H200 (sm_90)


@pytest.mark.parametrize(
    "n, b",
    [
        (1, 16),
        (15, 16),
        (16, 16),
        (17, 32),
        (1000, 1024),
        (1001, 1024),
        (1024, 1024),
        (1025, 2048),
        (8192, 8192),
        (8193, 8192),
        (10**6, 8192),
    ],
)
def test_bucket(n, b):
    assert bucket(n) == b


def test_lengths_in_one_bucket_share_a_key():
    assert len({bucket(n) for n in range(1000, 1025)}) == 1
    assert len({bucket(n) for n in range(16385, 131073, 997)}) == 1  # the cap


def test_kernels_are_not_specialised_on_lengths():
    """Triton specialises int arguments divisible by 16 or equal to 1: every argument that follows
    the length must be exempt, or T = 1000 and T = 1008 would compile two kernels."""
    for kind, kernel in tuning.KERNELS.items():
        if hasattr(kernel, "params"):  # a compiled kernel: what Triton's JIT will honour
            exempt = {p.name for p in kernel.params if p.do_not_specialize}
        else:  # the interpreter's stand-in keeps the arguments triton.jit was given
            exempt = set(kernel.kwargs["do_not_specialize"])
        assert {"Tq", "Tk", "offset", "TQ_BUCKET", "TK_BUCKET"} <= exempt, kind
        assert {"sqb", "sqh", "mir"} <= exempt, kind  # strides that grow with T
        assert not {"sqm", "D", "H"} & exempt, kind  # row strides and sizes keep their alignment
    assert "Tq" not in tuning.KEY and "Tk" not in tuning.KEY


@pytest.fixture
def gpu_lists(monkeypatch):
    """The GPU candidate lists (the interpreter has its own single one)."""
    monkeypatch.setattr(tuning, "interpreting", lambda: False)


@pytest.mark.parametrize("kind", ["fwd", "dkdv", "dq"])
@pytest.mark.parametrize("d_pad", [16, 32, 64, 128, 256])
def test_candidates_fit_and_are_usable(gpu_lists, kind, d_pad):
    cfgs = tuning.candidates(kind, d_pad)
    assert cfgs and len(set(cfgs)) == len(cfgs)
    for c in cfgs:
        for n in (c.BLOCK_M, c.BLOCK_N, c.warps):
            assert n & (n - 1) == 0
        assert c.BLOCK_M >= 16 and c.BLOCK_N >= 16
        assert not c.warp_spec  # Triton 3.6 did not specialise (8 warps) or crashed (4 warps)
    assert tuning.shared_bytes(kind, cfgs[0], d_pad) <= H100_SHARED  # the untuned default fits
    if kind == "dq":
        assert all(c.BLOCK_M >= 64 for c in cfgs)  # a warpgroup MMA needs 64 rows


def test_prune_clamps_to_the_block_map():
    cfgs = [Cfg(128, 64, 8, 3), Cfg(64, 64, 4, 3), Cfg(128, 128, 8, 3)]
    got = prune("fwd", 64, cfgs, tq_bucket=4096, tk_bucket=4096, map_m=64, map_n=64)
    assert got == [Cfg(64, 64, 8, 3), Cfg(64, 64, 4, 3)]  # clamped, duplicates dropped
    got = prune("fwd", 64, cfgs, tq_bucket=4096, tk_bucket=4096, map_m=128, map_n=128)
    assert got == cfgs


def test_prune_drops_what_does_not_fit_but_never_everything():
    cfgs = [Cfg(128, 128, 8, 3), Cfg(128, 64, 8, 3), Cfg(64, 64, 4, 3)]
    sizes = [tuning.shared_bytes("fwd", c, 128) for c in cfgs]
    assert sizes == sorted(sizes, reverse=True)
    got = prune("fwd", 128, cfgs, tq_bucket=4096, tk_bucket=4096, max_shared=sizes[1])
    assert got == cfgs[1:]
    got = prune("fwd", 128, cfgs, tq_bucket=4096, tk_bucket=4096, max_shared=1)
    assert got == [cfgs[2]]  # nothing fits: the smallest is kept, and the compiler will say


def test_prune_prefers_blocks_no_longer_than_the_sequence():
    cfgs = [Cfg(128, 64, 8, 3), Cfg(64, 64, 4, 3), Cfg(64, 128, 8, 3)]
    assert prune("fwd", 64, cfgs, tq_bucket=64, tk_bucket=4096) == cfgs[1:]
    assert prune("fwd", 64, cfgs, tq_bucket=16, tk_bucket=4096) == cfgs[1:]  # none that short: the shortest
    dkdv = [Cfg(64, 128, 8, 2), Cfg(64, 64, 8, 2)]
    assert prune("dkdv", 64, dkdv, tq_bucket=16, tk_bucket=64) == dkdv[1:]  # dK/dV's rows are keys


def test_untuned_kernel_takes_the_first_candidate_clamped():
    kernel, meta = tuning.kernel("fwd", 64, map_m=16, map_n=16)
    assert kernel is tuning.KERNELS["fwd"]
    assert meta["BLOCK_M"] <= 16 and meta["BLOCK_N"] <= 16 and meta["WARP_SPEC"] is False
