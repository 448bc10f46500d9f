"""torch.compile on the CPU: MultiHeadAttention compiled vs eager, and vs nn.MultiheadAttention compiled.

Four candidates with the same weights on the same input: ours eager, ours ``torch.compile``d,
``nn.MultiheadAttention`` eager and compiled (default mode, Inductor, ``fullgraph=True``).
Forward (no grad) and forward+backward; one timing of each candidate per round, alternating,
medians over rounds, and ratios taken within each round (median of the per-round ratios). The
first call of each compiled candidate (dynamo + Inductor's C++ build, less with a warm Inductor
cache) is reported apart as compile time.

    python benchmarks/compile_cpu.py [--batch 4 --T 1024 --dim 512 --heads 8 --rounds 15 --causal]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from _timing import interleaved, median_ratio

from selfattention import MultiHeadAttention


def _models(dim: int, heads: int) -> tuple[MultiHeadAttention, torch.nn.MultiheadAttention]:
    torch.manual_seed(0)
    ours = MultiHeadAttention(dim, heads)
    peer = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():  # the same weights, so all four compute the same function
        peer.in_proj_weight.copy_(ours.in_proj.weight)
        peer.in_proj_bias.copy_(ours.in_proj.bias)
        peer.out_proj.weight.copy_(ours.out_proj.weight)
        peer.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, peer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--causal", action="store_true", help="causal self-attention (default: full)")
    a = ap.parse_args()

    ours, peer = _models(a.dim, a.heads)
    x = torch.randn(a.batch, a.T, a.dim, requires_grad=True)
    peer_mask = torch.nn.Transformer.generate_square_subsequent_mask(a.T) if a.causal else None

    def ours_call(m):
        return lambda: m(x, causal=a.causal)

    def peer_call(m):
        return lambda: m(x, x, x, attn_mask=peer_mask, is_causal=a.causal, need_weights=False)[0]

    calls = {
        "ours eager": ours_call(ours),
        "ours compiled": ours_call(torch.compile(ours, fullgraph=True)),  # a graph break would raise
        "nn.MHA eager": peer_call(peer),
        "nn.MHA compiled": peer_call(torch.compile(peer, fullgraph=True)),
    }

    def fwd(f):
        def run():
            with torch.no_grad():
                f()
        return run

    def fwd_bwd(f):
        def run():
            x.grad = None
            f().sum().backward()
        return run

    compile_s = {}
    for name, f in calls.items():  # first calls: compile forward and forward+backward graphs
        if "compiled" in name:
            t0 = time.perf_counter()
            fwd(f)()
            fwd_bwd(f)()
            compile_s[name] = time.perf_counter() - t0
    with torch.no_grad():
        ref = calls["ours eager"]()
        diffs = {name: (f() - ref).abs().max().item() for name, f in calls.items()}

    print(f"# torch.compile on the CPU: B={a.batch} T={a.T} D={a.dim} H={a.heads}"
          f"{' causal' if a.causal else ''}, float32")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {a.rounds} interleaved rounds")
    print("# max |out − ours eager|: " + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items()))
    print("# first call (compile) seconds: " + ", ".join(f"{n} {s:.1f}" for n, s in compile_s.items()) + "\n")
    print("| pass | " + " | ".join(f"{n} ms" for n in calls) +
          " | ours compiled / ours eager | ours compiled / nn.MHA compiled |")
    print("|---" * (len(calls) + 3) + "|")
    for label, wrap in (("forward", fwd), ("forward+backward", fwd_bwd)):
        t = interleaved({n: wrap(f) for n, f in calls.items()}, a.rounds)
        medians = " | ".join(f"{1e3 * statistics.median(t[n]):.1f}" for n in calls)
        print(f"| {label} | {medians} | {median_ratio(t['ours compiled'], t['ours eager']):.3f} | "
              f"{median_ratio(t['ours compiled'], t['nn.MHA compiled']):.3f} |")


if __name__ == "__main__":
    main()
