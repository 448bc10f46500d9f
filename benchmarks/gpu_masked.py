"""Masked attention on one GPU: our kernel with a block map against SDPA and FlexAttention.

Issue 13's cases at (B, H, T, d) = (8, 16, 4096, 128), bf16: key padding (lengths drawn from
[T/2, T]), a causal sliding window of 1024, packed documents (causal within each of ~4 documents
per row), prefix-LM (prefix drawn from [0, T/2]) and grouped-query causal (16 query heads, 4 K/V
heads). For each: ours with a block map (and, where it applies, with ``lengths`` or plain
``causal``), ours on the dense (unmasked, non-causal) problem — the "never slower than dense"
check —, SDPA's cuDNN backend with the boolean mask (or is_causal), SDPA's flash backend where it
takes the case, and FlexAttention (compiled) with its own block mask. TFLOP/s count only the
allowed (query, key) pairs: forward 4·d per pair, forward+backward 3.5× that; times are
``triton.testing.do_bench`` medians on the same inputs in the same run. Building each block map
is timed too (once per batch in real use).

Then the re-tuning measurement (target 1): the first fwd+bwd call at lengths never seen, in a
bucket that was tuned once, against warm calls at the same length.

    PYTHONPATH=src python benchmarks/gpu_masked.py [--json out.jsonl] [--cases window,documents]
    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/gpu_masked.py --smoke    # CPU check of the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from selfattention import block_mask
from selfattention.kernels import flash_attention

CASES = ("window", "documents", "prefix", "padding", "gqa_causal")  # the new ones first


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def bench_ms(fn, smoke: bool) -> float:
    if smoke:
        fn()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def case_rules(case: str, B: int, T: int, dev: str, gen: torch.Generator):
    """(predicate (b, h, i, j) -> bool, lengths or None, our block map builder) for one case."""
    if case == "padding":
        lengths = torch.randint(T // 2, T + 1, (B,), device=dev, generator=gen)
        return (lambda b, h, i, j: j < lengths[b]), lengths, lambda: block_mask.key_padding(lengths, T, T)
    if case == "window":
        W = max(T // 4, 1)  # 1024 at T = 4096
        return (lambda b, h, i, j: (j <= i) & (j > i - W)), None, lambda: block_mask.sliding_window(T, T, W)
    if case == "documents":
        cuts = torch.sort(torch.randint(1, T, (B, 3), device=dev, generator=gen), -1).values
        doc = (torch.arange(T, device=dev)[None, :, None] >= cuts[:, None, :]).sum(-1).int()  # (B, T)
        return ((lambda b, h, i, j: (doc[b, i] == doc[b, j]) & (j <= i)), None,
                lambda: block_mask.documents(doc, causal=True))
    if case == "prefix":
        prefix = torch.randint(0, T // 2 + 1, (B,), device=dev, generator=gen)
        return (lambda b, h, i, j: (j <= i) | (j < prefix[b])), None, lambda: block_mask.prefix_lm(prefix, T)
    assert case == "gqa_causal"
    return (lambda b, h, i, j: j <= i), None, lambda: block_mask.causal(T, T, device=dev)


def dense_mask(pred, B: int, T: int, dev: str) -> torch.Tensor:
    b = torch.arange(B, device=dev).view(B, 1, 1, 1)
    i = torch.arange(T, device=dev).view(1, 1, T, 1)
    j = torch.arange(T, device=dev).view(1, 1, 1, T)
    return pred(b, torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev), i, j).expand(B, 1, T, T)


def impls(case, pred, lengths, bm, mask, B, H, Hkv, T, dev, smoke):
    """name -> fn(q, k, v) for this case (k, v have Hkv heads)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    G = H // Hkv
    gqa = {"enable_gqa": True} if G > 1 else {}
    causal = case == "gqa_causal"
    out = {"ours(block map)": lambda q, k, v: flash_attention(q, k, v, block_mask=bm)}
    if lengths is not None:
        out["ours(lengths)"] = lambda q, k, v: flash_attention(q, k, v, lengths=lengths)
    if causal:
        out["ours(causal)"] = lambda q, k, v: flash_attention(q, k, v, causal=True)
    out["ours(dense, no mask)"] = lambda q, k, v: flash_attention(q, k, v)

    def sdpa(backend, **kw):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, **kw, **gqa)
        return run

    backends = [SDPBackend.MATH] if smoke else [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
    for be in backends:
        name = f"sdpa-{be.name.lower().split('_')[0]}"
        out[name] = sdpa(be, is_causal=True) if causal else sdpa(be, attn_mask=mask)
    fbm = create_block_mask(lambda b, h, i, j: pred(b, h, i, j), B, None, T, T, device=dev)
    flex = flex_attention if smoke else torch.compile(flex_attention, dynamic=False)
    out["flex(block mask, compiled)" if not smoke else "flex(eager)"] = (
        lambda q, k, v: flex(q, k, v, block_mask=fbm, **gqa))
    return out


def run_case(case, a, dev, dtype, sink) -> None:
    B, H, T, d = a.shape
    Hkv = H // 4 if case == "gqa_causal" else H
    g = torch.Generator(device=dev).manual_seed(CASES.index(case))
    pred, lengths, build = case_rules(case, B, T, dev, g)
    sync(dev)
    t0 = time.perf_counter()
    bm = build()
    sync(dev)
    build_ms = 1e3 * (time.perf_counter() - t0)
    mask = dense_mask(pred, B, T, dev)
    allowed = int(mask.sum()) * H  # useful (query, key) pairs over all heads
    flops = 4 * d * allowed
    q = torch.randn(B, H, T, d, device=dev, dtype=dtype, generator=g)
    k, v = (torch.randn(B, Hkv, T, d, device=dev, dtype=dtype, generator=g) for _ in range(2))
    dout = torch.randn_like(q)
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(H // Hkv, 1),
                                             v.float().repeat_interleave(H // Hkv, 1), attn_mask=mask)
    print(f"\n### {case}: (B, H, Hkv, T, d) = {(B, H, Hkv, T, d)}, {allowed / (B * H * T * T):.1%} of pairs "
          f"allowed, block map {bm.counts()}, built in {build_ms:.1f} ms\n")
    print("| impl | rel err | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name, fn in impls(case, pred, lengths, bm, mask, B, H, Hkv, T, dev, a.smoke).items():
        dense = name.startswith("ours(dense")
        try:
            with torch.no_grad():
                o = fn(q, k, v).float()
                err = float("nan") if dense else ((o - ref).norm() / ref.norm()).item()
                fwd = bench_ms(lambda: fn(q, k, v), a.smoke)  # noqa: B023
            qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
            both = bench_ms(lambda: fn(qg, kg, vg).backward(dout), a.smoke)  # noqa: B023
        except Exception as e:  # a backend that refuses this case
            print(f"| {name} | n/a: {' '.join(str(e).split())[:70]} | | | | |", flush=True)
            continue
        work = 4 * d * B * H * T * T if dense else flops  # the dense row counts all of its pairs
        row = dict(case=case, impl=name, rel_err=err, fwd_ms=fwd, fwd_tflops=work / fwd / 1e9, fwdbwd_ms=both,
                   fwdbwd_tflops=3.5 * work / both / 1e9, build_ms=build_ms, allowed=allowed)
        print(f"| {name} | {err:.1e} | {fwd:.3f} | {row['fwd_tflops']:.0f} | {both:.3f} | "
              f"{row['fwdbwd_tflops']:.0f} |", flush=True)
        rows[name] = row
        if sink:
            sink.write(json.dumps(row) + "\n")
    ours = rows.get("ours(block map)")
    for peer in [n for n in rows if not n.startswith("ours(block")]:
        if ours:  # time ratios, same run: > 1 means ours is faster (for the dense row: cheaper than dense)
            r = rows[peer]
            print(f"- {peer} time / ours(block map) time: fwd {r['fwd_ms'] / ours['fwd_ms']:.2f}, "
                  f"fwd+bwd {r['fwdbwd_ms'] / ours['fwdbwd_ms']:.2f}")


def retune(a, dev, dtype, sink) -> None:
    """First fwd+bwd call at new lengths in a tuned bucket, against warm calls at the same length."""
    from selfattention.kernels import tuning

    B, H, d = (1, 2, 32) if a.smoke else (4, 16, 128)
    lengths = (40, 33, 50, 63) if a.smoke else (1000, 1001, 1002, 1500, 1023, 2000)

    def call(x):
        q, k, v, dout = x
        sync(dev)
        t0 = time.perf_counter()
        flash_attention(q, k, v, causal=True).backward(dout)
        sync(dev)
        return 1e3 * (time.perf_counter() - t0)

    print("\n### re-tuning: first fwd+bwd call at a new length vs warm calls there (causal, "
          f"(B, H, d) = {(B, H, d)}; buckets {sorted({tuning.bucket(t) for t in lengths})})\n")
    print("| T | bucket | first call ms | warm ms (median of 5) | first / warm |")
    print("|---|---|---|---|---|")
    for T in lengths:
        g = torch.Generator(device=dev).manual_seed(T)
        x = [torch.randn(B, H, T, d, device=dev, dtype=dtype, generator=g) for _ in range(4)]
        x = [t.requires_grad_() for t in x[:3]] + [x[3]]
        first = call(x)
        warm = statistics.median(call(x) for _ in range(5))
        print(f"| {T} | {tuning.bucket(T)} | {first:.2f} | {warm:.2f} | {first / warm:.1f} |", flush=True)
        if sink:
            sink.write(json.dumps(dict(what="retune", T=T, bucket=tuning.bucket(T), first_ms=first,
                                       warm_ms=warm)) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", help="also write one JSON object per row to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (TRITON_INTERPRET=1)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--no-retune", action="store_true")
    ap.add_argument("--retune-only", action="store_true")
    a = ap.parse_args()
    dev = "cpu" if a.smoke else "cuda"
    dtype = torch.float16 if a.smoke else torch.bfloat16  # the interpreter miscomputes bf16 dots
    a.shape = (2, 4, 64, 32) if a.smoke else (8, 16, 4096, 128)
    if not a.smoke:
        p = torch.cuda.get_device_properties(0)
        print(f"# {p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}")
    sink = open(a.json, "a") if a.json else None  # noqa: SIM115
    for case in [] if a.retune_only else a.cases.split(","):
        run_case(case, a, dev, dtype, sink)
    if not a.no_retune:
        retune(a, dev, dtype, sink)
    if sink:
        sink.close()


if __name__ == "__main__":
    main()
