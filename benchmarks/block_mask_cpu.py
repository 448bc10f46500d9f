"""Block-sparse blockwise attention against dense masking, on the CPU.

For each mask pattern, float32 (B, H, T, d): the blockwise tier with a ``BlockMask`` (skips SKIP
blocks, no mask on FULL spans), the same tier with the equivalent dense boolean mask (every block
computed and masked), the tier with no mask at all (the dense work: "never slower than dense"),
and torch SDPA with the dense boolean mask (what ``backend="auto"`` runs on the CPU). Forward and
forward+backward; medians over rounds in which the candidates alternate (benchmarks/_timing.py),
ratios taken within each round. GFLOP/s count the allowed (query, key) pairs only.

    PYTHONPATH=src python benchmarks/block_mask_cpu.py [--T 2048] [--rounds 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _timing import interleaved, median_ratio

from selfattention import block_mask, blockwise_attention


def patterns(B: int, T: int, block: int) -> dict:
    """name -> a function that builds the pattern's block map (timed: it is done once per batch)."""
    g = torch.Generator().manual_seed(0)
    cuts = torch.sort(torch.randint(1, T, (B, 3), generator=g), -1).values
    doc = (torch.arange(T)[None, :, None] >= cuts[:, None, :]).sum(-1)  # (B, T)
    prefix = torch.randint(0, T // 2, (B,), generator=g)
    return {
        "causal": lambda: block_mask.causal(T, T, block=block),
        f"window {T // 8} (causal)": lambda: block_mask.sliding_window(T, T, T // 8, block=block),
        "documents (causal)": lambda: block_mask.documents(doc, causal=True, block=block),
        "prefix-LM": lambda: block_mask.prefix_lm(prefix, T, block=block),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--block", type=int, default=128, help="the block map's block size")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch threads (1 is steadier on a shared machine)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke test)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.B, a.H, a.T, a.d, a.rounds = 1, 2, 256, 16, 1
    B, H, T, d = a.B, a.H, a.T, a.d
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, T, d, generator=g) for _ in range(3))
    dout = torch.randn(B, H, T, d, generator=g)
    print(f"# CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; (B, H, T, d) = "
          f"{(B, H, T, d)}, float32, map blocks {a.block}, {a.rounds} rounds\n")
    print("| pattern | allowed | map build ms | candidate | fwd ms | fwd GFLOP/s | fwd+bwd ms "
          "| fwd+bwd GFLOP/s | time / block map (fwd, fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, build_map in patterns(B, T, a.block).items():
        t0 = time.perf_counter()
        bm = build_map()
        build = 1e3 * (time.perf_counter() - t0)
        dense = bm.to_dense()  # (B or 1, 1, T, T)
        allowed = int(dense.expand(B, H, T, T).sum())
        cands = {
            "blockwise + block map": lambda m: blockwise_attention(*m, mask=bm),  # noqa: B023
            "blockwise + dense mask": lambda m: blockwise_attention(*m, mask=dense),  # noqa: B023
            "blockwise, no mask (dense work)": lambda m: blockwise_attention(*m),
            "sdpa + dense mask": lambda m: F.scaled_dot_product_attention(*m, attn_mask=dense),  # noqa: B023
        }

        def fwd(fn):
            return lambda: fn((q, k, v))

        def both(fn):
            def run():
                qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
                fn((qg, kg, vg)).backward(dout)
            return run

        with torch.no_grad():
            tf = interleaved({n: fwd(f) for n, f in cands.items()}, a.rounds, warmup=1)
        tb = interleaved({n: both(f) for n, f in cands.items()}, a.rounds, warmup=1)
        ref_f, ref_b = tf["blockwise + block map"], tb["blockwise + block map"]
        for n in cands:
            mf, mb = statistics.median(tf[n]), statistics.median(tb[n])
            work = 4 * d * (B * H * T * T if n.startswith("blockwise, no mask") else allowed)
            print(f"| {name} | {allowed / (B * H * T * T):.0%} | {build:.0f} | {n} | {1e3 * mf:.1f} | "
                  f"{work / mf / 1e9:.1f} | {1e3 * mb:.1f} | {3.5 * work / mb / 1e9:.1f} | "
                  f"{median_ratio(tf[n], ref_f):.2f}x, {median_ratio(tb[n], ref_b):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
