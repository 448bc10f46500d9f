"""The fused Triton kernel against torch SDPA's backends, in TFLOP/s, on one GPU.

Issue 5's table: bf16, (B, H, T, d) in SHAPES, causal and not, forward and forward+backward,
for ours (``selfattention.kernels.flash_attention``, autotuned) and SDPA's cuDNN and flash
backends (``--all`` adds the efficient backend and the naive matrix form, ``--peak`` the peak
memory at T = 131072). FLOPs are counted as FlashAttention counts them: forward 4·B·H·T²·d (half
when causal), forward+backward 3.5× that. Times are ``triton.testing.do_bench`` medians, on the
same inputs in the same run; after each shape, ours / cuDNN and ours / flash as ratios of TFLOP/s.
Masked cases and the re-tuning measurement are in ``gpu_masked.py``.

    PYTHONPATH=src python benchmarks/gpu_attention.py [--json out.jsonl] [--quick] [--all] [--peak]

``--smoke`` runs the same code paths at toy sizes on the CPU (TRITON_INTERPRET=1, wall-clock
timing, the math SDPA backend only) to check the script before a GPU is at hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from selfattention.kernels import flash_attention

SHAPES = [
    (16, 16, 1024, 128),
    (4, 16, 4096, 128),
    (1, 16, 16384, 128),
    (16, 32, 1024, 64),
    (4, 32, 4096, 64),
    (1, 32, 16384, 64),
]
SMOKE_SHAPES = [(1, 2, 40, 32), (1, 2, 33, 64)]


def sdpa(backend):
    def run(q, k, v, causal):
        from torch.nn.attention import sdpa_kernel

        ctx = sdpa_kernel(backend) if backend is not None else nullcontext()
        with ctx:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def naive(q, k, v, causal):
    s = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, -1).to(q.dtype) @ v


def ours(q, k, v, causal):
    return flash_attention(q, k, v, causal=causal)


def impls(smoke: bool, everything: bool = False):
    from torch.nn.attention import SDPBackend

    if smoke:
        return {"ours": ours, "sdpa-math": sdpa(SDPBackend.MATH), "naive": naive}
    out = {"ours": ours, "cudnn": sdpa(SDPBackend.CUDNN_ATTENTION), "flash": sdpa(SDPBackend.FLASH_ATTENTION)}
    if everything:
        out |= {"efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION), "naive": naive}
    return out


def bench_ms(fn, smoke: bool) -> float:
    if smoke:
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def check(name, fn, q, k, v, causal) -> float:
    """Relative error against float32 math SDPA, so a broken kernel is never timed as fast."""
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        out = fn(q, k, v, causal).float()
    return ((out - ref).norm() / ref.norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", help="also write one JSON object per row to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (TRITON_INTERPRET=1)")
    ap.add_argument("--quick", action="store_true", help="only the T <= 4096 shapes")
    ap.add_argument("--all", action="store_true", help="also the efficient backend and the naive form")
    ap.add_argument("--peak", action="store_true", help="also peak memory at T = 131072")
    a = ap.parse_args()
    dev = "cpu" if a.smoke else "cuda"
    dtype = torch.float16 if a.smoke else torch.bfloat16  # the interpreter miscomputes bf16 dots
    shapes = SMOKE_SHAPES if a.smoke else [s for s in SHAPES if not (a.quick and s[2] > 4096)]
    sink = open(a.json, "w") if a.json else None  # noqa: SIM115
    if not a.smoke:
        p = torch.cuda.get_device_properties(0)
        print(f"# {p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}\n")
    print("| B | H | T | d | causal | impl | rel err | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for B, H, T, d in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, H, T, d, device=dev, dtype=dtype, generator=g) for _ in range(3))
        dout = torch.randn(B, H, T, d, device=dev, dtype=dtype, generator=g)
        for causal in (False, True):
            flops = 4 * B * H * T * T * d / (2 if causal else 1)
            rows = {}
            for name, fn in impls(a.smoke, a.all).items():
                if name == "naive" and T > 4096:
                    continue  # the T x T fp32 scores alone would take B·H·T²·4 bytes
                try:
                    err = check(name, fn, q, k, v, causal)
                    with torch.no_grad():
                        fwd = bench_ms(lambda: fn(q, k, v, causal), a.smoke)  # noqa: B023
                    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                    both = bench_ms(lambda: fn(qg, kg, vg, causal).backward(dout), a.smoke)  # noqa: B023
                except (RuntimeError, ValueError) as e:  # a backend that refuses this shape
                    print(
                        f"| {B} | {H} | {T} | {d} | {causal} | {name} | n/a: {str(e).splitlines()[0][:60]} |"
                        " | | | |"
                    )
                    continue
                row = dict(
                    B=B,
                    H=H,
                    T=T,
                    d=d,
                    causal=causal,
                    impl=name,
                    rel_err=err,
                    fwd_ms=fwd,
                    fwd_tflops=flops / fwd / 1e9,
                    fwdbwd_ms=both,
                    fwdbwd_tflops=3.5 * flops / both / 1e9,
                )
                print(
                    f"| {B} | {H} | {T} | {d} | {causal} | {name} | {err:.1e} | {fwd:.3f} | "
                    f"{row['fwd_tflops']:.0f} | {both:.3f} | {row['fwdbwd_tflops']:.0f} |",
                    flush=True,
                )
                rows[name] = row
                if sink:
                    sink.write(json.dumps(row) + "\n")
            for peer in [n for n in rows if n != "ours" and "ours" in rows]:
                r, o = rows[peer], rows["ours"]
                f, fb = o["fwd_tflops"] / r["fwd_tflops"], o["fwdbwd_tflops"] / r["fwdbwd_tflops"]
                print(f"| {B} | {H} | {T} | {d} | {causal} | ours / {peer} | | | {f:.2f}x | | {fb:.2f}x |")
    if not a.smoke and a.peak:
        peak_memory(sink)
    if sink:
        sink.close()


def peak_memory(sink) -> None:
    """Forward at B=1, H=16, T=131072, d=128, bf16: peak allocated memory beyond the inputs."""
    B, H, T, d = 1, 16, 131072, 128
    q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    print(f"\n| peak memory, forward, (B, H, T, d) = {(B, H, T, d)} | impl | GiB beyond inputs | ms |")
    print("|---|---|---|---|")
    for name, fn in impls(False).items():
        if name in ("naive", "efficient", "cudnn"):
            continue
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(q, k, v, False)
        torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - t0)
        gib = (torch.cuda.max_memory_allocated() - base) / 2**30
        print(f"| | {name} | {gib:.3f} | {ms:.0f} |")
        if sink:
            sink.write(json.dumps(dict(what="peak", impl=name, T=T, gib=gib, ms=ms)) + "\n")


if __name__ == "__main__":
    main()
