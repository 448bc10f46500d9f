"""Launch configurations for the kernels: candidates, length buckets, pruning, the autotuner.

Version 1 keyed the autotuner on the exact Tq and Tk, so every new length (T = 1000, 1001, …)
was tuned again, 1.2–1.5 s on an H200. Now:

- the key holds ``bucket(Tq)`` and ``bucket(Tk)`` (the next power of two, 16 … 8192), so one
  tuning serves every length in a bucket;
- the exact lengths are runtime arguments the kernel is not specialised on (``flash.LENGTH_ARGS``
  are ``do_not_specialize``: Triton would otherwise compile a new kernel whenever a length
  switches between divisible by 16 and not, or equals 1);
- configurations that cannot fit (shared memory) or would waste a block on a short sequence are
  pruned before any is compiled; with a block map, tiles are clamped to the map's blocks;
- ``SELFATTENTION_TRITON_TUNING_CACHE=1`` keeps the tuned choices on disk across processes
  (Triton's own autotuning cache, keyed by Triton's version, the GPU target — sm_90: an H100 and
  an H200 share entries —, the kernel source, the key and the candidates).

``SELFATTENTION_TRITON_CONFIG=first`` (GPU tests) and the interpreter run the first candidate,
untuned.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import triton

from . import flash, flash_bwd, interpreting

BUCKET_MIN, BUCKET_CAP = 16, 8192


class Cfg(NamedTuple):
    BLOCK_M: int
    BLOCK_N: int
    warps: int
    stages: int
    warp_spec: bool = False  # forward only: tl.range(..., warp_specialize=True) on the unmasked keys


def bucket(n: int) -> int:
    """The tuning bucket of a length: the next power of two, at least 16, at most 8192."""
    return min(max(BUCKET_MIN, triton.next_power_of_2(max(int(n), 1))), BUCKET_CAP)


def candidates(kind: str, d_pad: int) -> list[Cfg]:
    """The configurations the autotuner may pick for ``kind`` ("fwd", "dkdv", "dq") at a head dim
    padded to ``d_pad``; chosen with the compiler report (benchmarks/kernel_report.py, Triton 3.6,
    sm_90): no spills, warpgroup MMAs present. First = the untuned default."""
    if interpreting():
        return [Cfg(16, 16, 1, 1)]  # the interpreter: small tiles, one config, no tuning
    if kind == "fwd":
        if d_pad <= 64:
            return [Cfg(128, 64, 4, 3), Cfg(128, 128, 8, 3), Cfg(64, 64, 4, 4), Cfg(128, 64, 8, 4)]
        if d_pad <= 128:
            return [Cfg(128, 64, 8, 3), Cfg(128, 128, 8, 3), Cfg(64, 64, 4, 3), Cfg(128, 64, 8, 2)]
        return [Cfg(64, 64, 4, 2), Cfg(128, 32, 8, 2), Cfg(64, 32, 4, 2)]
    if kind == "dq":  # BLOCK_M >= 64: a warpgroup MMA needs 64 rows; none of these spill at d <= 128
        if d_pad <= 64:
            return [Cfg(64, 64, 4, 2), Cfg(128, 64, 8, 2), Cfg(64, 128, 8, 2)]
        if d_pad <= 128:
            return [Cfg(64, 64, 4, 2), Cfg(128, 64, 8, 2), Cfg(64, 32, 4, 2)]
        return [Cfg(64, 32, 4, 1), Cfg(64, 16, 4, 1)]  # d = 256: 72-128 B of stack, the least found
    # dK/dV: the accumulators are (BLOCK_N, d) tiles; 8 warps share them. At d = 128 the first
    # spills in no variant (dense, causal, block map; descriptors or pointers); the others spill
    # in some (64 x 64 x 2 stages: 216 B through pointers, 96 B causal) and are left to the
    # autotuner's clock; 4 warps or BLOCK_M = 128 spilled 48-528 B (8-40 at 128 x 32, which has no
    # HGMMA at all; docs/kernel-report-v2.md, last section).
    if d_pad <= 64:
        return [Cfg(64, 64, 8, 2), Cfg(32, 128, 8, 2), Cfg(64, 128, 8, 2)]
    if d_pad <= 128:
        return [Cfg(64, 64, 8, 1), Cfg(64, 64, 8, 2), Cfg(32, 64, 8, 2), Cfg(32, 64, 8, 3)]
    return [Cfg(16, 64, 8, 1), Cfg(32, 64, 8, 1)]


def shared_bytes(kind: str, c: Cfg, d_pad: int, elem: int = 2) -> int:
    """Estimated shared memory of a config: the tiles the pipeline keeps ``stages`` copies of,
    plus those held once (matches the compiler report within ~10 %)."""
    if kind == "fwd":
        return elem * d_pad * (c.stages * 2 * c.BLOCK_N + c.BLOCK_M)
    if kind == "dq":
        return elem * d_pad * (c.stages * 2 * c.BLOCK_N + 2 * c.BLOCK_M)
    return elem * d_pad * (c.stages * 2 * c.BLOCK_M + 2 * c.BLOCK_N)


def clamp_to_map(c: Cfg, map_m: int, map_n: int) -> Cfg:
    """Tiles no larger than the block map's blocks (all powers of two: they then divide them)."""
    if not map_m:
        return c
    return c._replace(BLOCK_M=min(c.BLOCK_M, map_m), BLOCK_N=min(c.BLOCK_N, map_n))


def prune(
    kind: str, d_pad: int, cfgs: list[Cfg], *, tq_bucket: int, tk_bucket: int, map_m: int = 0,
    map_n: int = 0, elem: int = 2, max_shared: int | None = None,
) -> list[Cfg]:
    """The candidates worth timing for this key: clamped to the block map, within shared memory,
    and with a block no longer than the sequence when a shorter one exists. Never empty."""
    out = []
    for c in (clamp_to_map(c, map_m, map_n) for c in cfgs):
        if c not in out and (max_shared is None or shared_bytes(kind, c, d_pad, elem) <= max_shared):
            out.append(c)
    out = out or [
        min((clamp_to_map(c, map_m, map_n) for c in cfgs), key=lambda c: shared_bytes(kind, c, d_pad))
    ]
    along = "BLOCK_N" if kind == "dkdv" else "BLOCK_M"  # the block the program's own rows fill
    length = tk_bucket if kind == "dkdv" else tq_bucket
    shortest = min(getattr(c, along) for c in out)
    return [c for c in out if getattr(c, along) <= max(length, shortest)]


def _config(c: Cfg, kind: str) -> triton.Config:
    meta = {"BLOCK_M": c.BLOCK_M, "BLOCK_N": c.BLOCK_N} | (
        {"WARP_SPEC": c.warp_spec} if kind == "fwd" else {}
    )
    return triton.Config(meta, num_warps=c.warps, num_stages=c.stages)


def _cfg(config: triton.Config) -> Cfg:
    kw = config.kwargs
    return Cfg(kw["BLOCK_M"], kw["BLOCK_N"], config.num_warps, config.num_stages, kw.get("WARP_SPEC", False))


_MAX_SHARED: dict[int, int] = {}


def _max_shared() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    dev = torch.cuda.current_device()
    if dev not in _MAX_SHARED:
        _MAX_SHARED[dev] = triton.runtime.driver.active.utils.get_device_properties(dev)["max_shared_mem"]
    return _MAX_SHARED[dev]


def _early_prune(kind: str, d_pad: int):
    def run(configs, named_args, **kwargs):
        elem = named_args["Q"].element_size()
        kept = prune(
            kind, d_pad, [_cfg(c) for c in configs], tq_bucket=named_args["TQ_BUCKET"],
            tk_bucket=named_args["TK_BUCKET"], map_m=kwargs.get("MAP_M", 0), map_n=kwargs.get("MAP_N", 0),
            elem=elem, max_shared=_max_shared(),
        )
        return [_config(c, kind) for c in kept]

    return run


KERNELS = {"fwd": flash._fwd_kernel, "dkdv": flash_bwd._bwd_dkdv_kernel, "dq": flash_bwd._bwd_dq_kernel}
KEY = [
    "TQ_BUCKET", "TK_BUCKET", "D", "CAUSAL", "HAS_MASK", "HAS_LENS", "HAS_MAP", "MAP_M", "MAP_N", "USE_DESC",
]
_TUNED: dict[tuple[str, int], object] = {}


def untuned() -> bool:
    """Run the first candidate without tuning (the interpreter, or SELFATTENTION_TRITON_CONFIG=first)."""
    return interpreting() or os.environ.get("SELFATTENTION_TRITON_CONFIG") == "first"


def kernel(kind: str, d_pad: int, map_m: int = 0, map_n: int = 0):
    """(the kernel to launch, the meta-parameters to pass it): the autotuner on a GPU, else the plain
    kernel with the first candidate (clamped to the block map)."""
    base = KERNELS[kind]
    if untuned():
        c = clamp_to_map(candidates(kind, d_pad)[0], map_m, map_n)
        meta = {"BLOCK_M": c.BLOCK_M, "BLOCK_N": c.BLOCK_N} | ({"WARP_SPEC": False} if kind == "fwd" else {})
        return base, meta | ({} if interpreting() else {"num_warps": c.warps, "num_stages": c.stages})
    key = (kind, d_pad)
    if key not in _TUNED:
        _TUNED[key] = triton.autotune(
            [_config(c, kind) for c in candidates(kind, d_pad)], key=KEY + (["G"] if kind == "dkdv" else []),
            prune_configs_by={"early_config_prune": _early_prune(kind, d_pad)},
            cache_results=os.environ.get("SELFATTENTION_TRITON_TUNING_CACHE") == "1",
        )(base)
    return _TUNED[key], {}
