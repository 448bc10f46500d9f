"""Ring attention against one process's attention(), on a sequence split over the processes:

    torchrun --standalone --nproc_per_node 2 -m selfattention.distributed --T 4096 --causal

Every process draws the same whole sequence (from --seed), takes its shard, runs ring_attention
forward and backward, and gathers the result; rank 0 prints the largest difference from
attention() on the whole sequence (out, dq, dk, dv) and the ring's time. Without torchrun: one
process, the ring of one.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .. import attention
from ..errors import UserError
from . import ring_attention, shard_sequence, unshard_sequence
from .comm import PEERS
from .peers import setup, teardown

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _positive(text: str) -> int:
    n = int(text) if text.isascii() and text.isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m selfattention.distributed",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=_positive, default=1024, help="sequence length (default 1024)")
    ap.add_argument("--batch", type=_positive, default=1)
    ap.add_argument("--heads", type=_positive, default=4)
    ap.add_argument("--kv-heads", type=_positive, default=None, help="K/V heads (default: --heads)")
    ap.add_argument("--dim", type=_positive, default=64, help="head dim d (default 64)")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--layout", choices=("zigzag", "contiguous"), default="zigzag")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for another process")
    a = ap.parse_args(argv)
    kv = a.kv_heads or a.heads
    if a.heads % kv:
        ap.error(f"--kv-heads {kv} must divide --heads {a.heads}")
    try:
        dist = setup(a.timeout, who=PEERS)
    except UserError as err:
        print(f"selfattention.distributed: error: {err}", file=sys.stderr)
        return 2
    try:
        g = torch.Generator().manual_seed(a.seed)
        dtype = DTYPES[a.dtype]
        shapes = [(a.batch, a.heads, a.T, a.dim), (a.batch, kv, a.T, a.dim), (a.batch, kv, a.T, a.dim),
                  (a.batch, a.heads, a.T, a.dim)]
        q, k, v, do = (torch.randn(s, generator=g).to(dtype) for s in shapes)
        mine = [shard_sequence(x, layout=a.layout).to(dist.device).requires_grad_() for x in (q, k, v)]
        start = time.perf_counter()
        out = ring_attention(*mine, layout=a.layout, causal=a.causal)
        grads = torch.autograd.grad(out, mine, shard_sequence(do, layout=a.layout).to(dist.device))
        seconds = time.perf_counter() - start
        got = [unshard_sequence(x.detach(), layout=a.layout).cpu() for x in (out, *grads)]
        if dist.main:
            G = a.heads // kv
            whole = [x.requires_grad_() for x in (q, k, v)]
            ref = attention(whole[0].unflatten(1, (kv, G)), whole[1].unsqueeze(2), whole[2].unsqueeze(2),
                            causal=a.causal).flatten(1, 2)
            want = [ref, *torch.autograd.grad(ref, whole, do)]
            diffs = ", ".join(f"{name} {(x.double() - y.double()).abs().max().item():.1e}"
                              for name, x, y in zip(("out", "dq", "dk", "dv"), got, want, strict=True))
            print(f"ring attention over {dist.world} process{'es' if dist.world > 1 else ''} "
                  f"({dist.backend or 'none'}, layout {a.layout}{', causal' if a.causal else ''}): "
                  f"B = {a.batch}, H = {a.heads}, Hkv = {kv}, T = {a.T}, d = {a.dim}, {a.dtype}")
            print(f"max |Δ| against attention() on the whole sequence in one process: {diffs}")
            print(f"forward + backward: {seconds:.2f} s (rank 0)")
    except UserError as err:
        print(f"selfattention.distributed: error: {err}", file=sys.stderr)
        return 2
    finally:
        teardown(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
