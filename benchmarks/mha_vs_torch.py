"""MultiHeadAttention (backend auto) against torch.nn.MultiheadAttention on the CPU.

Target (issue 2): forward+backward at B=4, T=1024, D=512, H=8 costs at most 1.05x
nn.MultiheadAttention on the same input, as the median of per-round ratios measured in one run.

    python benchmarks/mha_vs_torch.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from _timing import interleaved, median_ratio

from selfattention import MultiHeadAttention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()

    torch.manual_seed(0)
    ours = MultiHeadAttention(a.dim, a.heads)
    peer = torch.nn.MultiheadAttention(a.dim, a.heads, batch_first=True)
    with torch.no_grad():  # the same weights, so both compute the same function
        peer.in_proj_weight.copy_(ours.in_proj.weight)
        peer.in_proj_bias.copy_(ours.in_proj.bias)
        peer.out_proj.weight.copy_(ours.out_proj.weight)
        peer.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(a.batch, a.T, a.dim, requires_grad=True)
    diff = (ours(x) - peer(x, x, x, need_weights=False)[0]).abs().max().item()

    def fwd_bwd(f):
        def run():
            x.grad = None
            f().sum().backward()
        return run

    def fwd(f):
        def run():
            with torch.no_grad():
                f()
        return run

    def ours_f():
        return ours(x)

    def peer_f():
        return peer(x, x, x, need_weights=False)[0]

    print(f"# MultiHeadAttention vs nn.MultiheadAttention: B={a.batch} T={a.T} D={a.dim} H={a.heads}")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {a.rounds} interleaved rounds; max |diff| = {diff:.2e}\n")
    print("| pass | ours median ms | nn.MultiheadAttention median ms | median ratio ours/peer |")
    print("|---|---|---|---|")
    for name, wrap in (("forward", fwd), ("forward+backward", fwd_bwd)):
        t = interleaved({"ours": wrap(ours_f), "peer": wrap(peer_f)}, a.rounds)
        print(f"| {name} | {1e3 * statistics.median(t['ours']):.1f} | "
              f"{1e3 * statistics.median(t['peer']):.1f} | {median_ratio(t['ours'], t['peer']):.3f} |")


if __name__ == "__main__":
    main()
