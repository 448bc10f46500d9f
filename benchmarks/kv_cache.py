"""Incremental decoding with the KV cache against recomputing the whole prefix for every token.

Generates N tokens greedily from a one-token prompt with ``selfattention.transformer.generate``,
``use_cache=True`` (each new token: one position's projections, attention over the cached keys and
values) and ``use_cache=False`` (each new token: the whole sequence again), alternating the two
in rounds. Both must produce the same tokens (checked). The model is the default of
``selfattention train text`` (D = 128, 4 layers, 4 heads, d_ff = 512) with positions for N tokens.

Target (issue 10): ≥ 5× at 512 tokens on the CPU.

    python benchmarks/kv_cache.py [--tokens 64,128,256,512] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import _quiet_threads  # noqa: F401 (before torch: idle threads sleep)
import torch
from _timing import interleaved, median_ratio

from selfattention.transformer import DecoderLM, TransformerConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="64,128,256,512")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, as `selfattention generate` uses: decoding one token "
                         "at a time is a chain of tiny operations that more threads only slow down)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = [int(n) for n in a.tokens.split(",")]
    torch.manual_seed(0)
    model = DecoderLM(TransformerConfig(vocab_size=96, d_model=128, num_heads=4, num_layers=4, d_ff=512,
                                        max_len=max(sizes) + 1)).eval()
    prompt = torch.tensor([[1]])
    print(f"# KV cache vs recomputing the prefix: greedy generation, batch 1, {a.rounds} alternating rounds")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model D=128, 4 layers, 4 heads, d_ff=512")
    print()
    print("| tokens | with cache (tokens/s) | recompute (tokens/s) | speed-up | same tokens |")
    print("|---|---|---|---|---|")
    for n in sizes:
        out: dict[bool, torch.Tensor] = {}

        def run(cache: bool, n: int = n, out: dict = out) -> None:
            out[cache] = generate(model, prompt, n, use_cache=cache)

        times = interleaved({"cache": lambda: run(True), "recompute": lambda: run(False)}, a.rounds, warmup=1)
        same = "yes" if torch.equal(out[True], out[False]) else "NO"
        t_c, t_r = statistics.median(times["cache"]), statistics.median(times["recompute"])
        speedup = median_ratio(times["recompute"], times["cache"])
        print(f"| {n} | {n / t_c:,.0f} | {n / t_r:,.0f} | {speedup:.1f}× | {same} |")


if __name__ == "__main__":
    main()
