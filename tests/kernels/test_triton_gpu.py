"""On a GPU only: FlashAttention's 2x rule over awkward shapes, and bitwise determinism.

For each case the kernel's output and dq, dk, dv are compared with a float32 reference (the
matrix tier on upcast inputs); the error must be at most twice that of a same-precision
PyTorch implementation (matmul, softmax, matmul in bf16/fp16) against the same reference.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed")
from _kernel_cases import naive, reference, within_flash_rule  # noqa: E402

from selfattention.kernels import flash_attention  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", reason="needs a CUDA GPU"
)

CASES = []  # (H, Hkv, Tq, Tk, d, causal, alignment, dtype)
for i, (T, d) in enumerate((T, d) for T in (1, 97, 1025, 4097) for d in (59, 64, 80, 128, 256)):
    Tk = T if i % 2 == 0 else T + 13  # every other case has Tq != Tk
    causal = i % 3 != 0
    alignment = "bottom_right" if i % 4 in (1, 2) else "top_left"
    Hkv = 1 if i % 5 == 0 else 2  # GQA in some
    CASES.append((2, Hkv, T, Tk, d, causal, alignment, torch.float16 if i % 7 == 3 else torch.bfloat16))


def _run(H, Hkv, Tq, Tk, d, causal, alignment, dtype, mask=None, lengths=None, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, H, Tq, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(1, Hkv, Tk, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(1, Hkv, Tk, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
    dout = torch.randn(1, H, Tq, d, device="cuda", dtype=dtype, generator=g)
    out = flash_attention(q, k, v, causal=causal, causal_alignment=alignment, mask=mask, lengths=lengths)
    full = mask
    if lengths is not None:
        keep = torch.arange(Tk, device="cuda") < lengths[:, None, None, None]
        full = keep if full is None else full & keep
    pt = naive(q, k, v, causal=causal, alignment=alignment, mask=full)
    ref, ref_in = reference(q, k, v, causal=causal, alignment=alignment, mask=full, dtype=torch.float32)
    within_flash_rule(out, pt, ref, "out")
    grads = torch.autograd.grad(out, (q, k, v), dout)
    grads_pt = torch.autograd.grad(pt, (q, k, v), dout)
    grads_ref = torch.autograd.grad(ref, ref_in, dout.float())
    for name, a, b, r in zip("qkv", grads, grads_pt, grads_ref, strict=True):
        within_flash_rule(a, b, r, f"d{name}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: "Hkv{1}-Tq{2}-Tk{3}-d{4}-{5}-{6}-{7}".format(*c))
def test_flash_rule(case):
    _run(*case)


def test_flash_rule_with_mask_and_lengths():
    g = torch.Generator(device="cuda").manual_seed(9)
    mask = torch.rand(1, 1, 1025, 1030, device="cuda", generator=g) > 0.2
    _run(
        4,
        2,
        1025,
        1030,
        128,
        True,
        "bottom_right",
        torch.bfloat16,
        mask=mask,
        lengths=torch.tensor([700], device="cuda"),
    )


def test_deterministic_50_runs():
    g = torch.Generator(device="cuda").manual_seed(10)
    q, k, v = (
        torch.randn(2, 4, 1025, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)
    )
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(q.device, q.dtype)
    first = None
    for _ in range(50):
        out = flash_attention(q, k, v, causal=True)
        run = (out, *torch.autograd.grad(out, (q, k, v), dout))
        if first is None:
            first = run
        assert all(torch.equal(a, b) for a, b in zip(first, run, strict=True))


def _block_masks(B, T):
    """Every block-map pattern of the speed table, for (B, 1, T, T)."""
    from selfattention import block_mask

    g = torch.Generator(device="cuda").manual_seed(T)
    cuts = torch.randint(1, T, (B, 3), device="cuda", generator=g)
    doc = (torch.arange(T, device="cuda")[None, :, None] >= cuts[:, None, :]).sum(-1)  # (B, T), sorted ids
    return {
        "causal": block_mask.causal(T, T, device="cuda"),
        "window": block_mask.sliding_window(T, T, 256, device="cuda"),
        "documents": block_mask.documents(doc, causal=True),
        "prefix": block_mask.prefix_lm(torch.tensor([T // 3, 5][:B], device="cuda"), T),
        "padding": block_mask.key_padding(torch.tensor([T, T // 2][:B], device="cuda"), T, T),
        "random": block_mask.from_mask(torch.rand(B, 1, T, T, device="cuda", generator=g) > 0.3),
    }


@pytest.mark.parametrize("T, d, dtype", [(1025, 128, torch.bfloat16), (2049, 64, torch.float16)])
def test_block_mask_flash_rule(T, d, dtype):
    B, H, Hkv = 2, 4, 2
    g = torch.Generator(device="cuda").manual_seed(T + d)
    q = torch.randn(B, H, T, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(B, Hkv, T, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(B, Hkv, T, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
    dout = torch.randn(B, H, T, d, device="cuda", dtype=dtype, generator=g)
    for name, bm in _block_masks(B, T).items():
        dense = bm.to_dense()
        out = flash_attention(q, k, v, block_mask=bm)
        pt = naive(q, k, v, mask=dense)
        ref, ref_in = reference(q, k, v, mask=dense, dtype=torch.float32)
        within_flash_rule(out, pt, ref, f"{name}: out")
        grads = torch.autograd.grad(out, (q, k, v), dout)
        grads_pt = torch.autograd.grad(pt, (q, k, v), dout)
        grads_ref = torch.autograd.grad(ref, ref_in, dout.float())
        for n, a, b, r in zip("qkv", grads, grads_pt, grads_ref, strict=True):
            within_flash_rule(a, b, r, f"{name}: d{n}")


def test_block_mask_deterministic_20_runs():
    from selfattention import block_mask

    g = torch.Generator(device="cuda").manual_seed(12)
    shape = (2, 4, 2049, 128)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(q.device, q.dtype)
    bm = block_mask.sliding_window(2049, 2049, 700, device="cuda")
    first = None
    for _ in range(20):
        out = flash_attention(q, k, v, block_mask=bm)
        run = (out, *torch.autograd.grad(out, (q, k, v), dout))
        if first is None:
            first = run
        assert all(torch.equal(a, b) for a, b in zip(first, run, strict=True))


def test_new_length_in_a_warm_bucket_costs_no_tuning(monkeypatch):
    """Issue 13, target 1: after one call in a length bucket, a new length of that bucket runs no
    tuning (the autotuners' caches do not grow). How long its first call takes against a warm one
    (target ≤ 2×; v1 re-tuned: 1.2-1.5 s instead of ms) is printed here and judged by
    ``benchmarks/gpu_masked.py --retune-only``: a timed assert fails on a busy card without a defect."""
    import statistics
    import time

    from selfattention.kernels import tuning

    monkeypatch.delenv("SELFATTENTION_TRITON_CONFIG", raising=False)  # tune, as users do
    tuning._TUNED.clear()

    def inputs(T):
        g = torch.Generator(device="cuda").manual_seed(T)
        xs = [torch.randn(4, 16, T, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)]
        return [x.requires_grad_() for x in xs[:3]] + [xs[3]]

    def seconds(q, k, v, dout):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        flash_attention(q, k, v, causal=True).backward(dout)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    tune = seconds(*inputs(2000))  # tunes the 2048 bucket
    tuned = {key: dict(tuner.cache) for key, tuner in tuning._TUNED.items()}
    assert {kind for kind, _ in tuned} == {"fwd", "dkdv", "dq"} and all(tuned.values())
    report = [f"tuning call at T=2000: {tune * 1e3:.0f} ms"]
    for T in (1999, 2001, 2016, 2047, 1100):  # all in the 2048 bucket, none seen before
        x = inputs(T)
        first = seconds(*x)
        warm = statistics.median(seconds(*x) for _ in range(5))
        report.append(f"T={T}: first {first * 1e3:.2f} ms, warm {warm * 1e3:.2f} ms")
        assert {key: dict(tuner.cache) for key, tuner in tuning._TUNED.items()} == tuned, (
            f"T={T} was tuned again: " + "; ".join(report))
    print("; ".join(report))
