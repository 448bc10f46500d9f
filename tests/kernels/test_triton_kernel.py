"""The Triton kernel against the matrix tier, forward and gradients.

Runs on a GPU, or on the CPU through Triton's interpreter: scripts/dev test runs this folder in
a second pytest process with TRITON_INTERPRET=1 (the variable must be set before Triton is
imported). Sizes are small and awkward so the interpreter stays fast.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed")
from _kernel_cases import exp2_amplification, naive, reference, within_flash_rule  # noqa: E402

from selfattention import MultiHeadAttention, attention, available_backends, masks  # noqa: E402
from selfattention.kernels import available, flash_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu"
pytestmark = pytest.mark.skipif(not available(DEVICE), reason="needs CUDA, or TRITON_INTERPRET=1")

CASES = [  # B, H, Hkv, Tq, Tk, d, causal, alignment
    (1, 1, 1, 1, 1, 16, False, "top_left"),
    (2, 2, 2, 37, 37, 59, False, "top_left"),
    (1, 2, 2, 33, 33, 32, True, "top_left"),
    (1, 4, 2, 20, 45, 24, True, "bottom_right"),
    (1, 2, 1, 45, 20, 16, True, "bottom_right"),  # Tq > Tk: the first 25 rows see nothing
    (1, 2, 1, 45, 20, 16, True, "top_left"),
    (2, 3, 1, 17, 50, 80, False, "top_left"),
]


def _inputs(B, H, Hkv, Tq, Tk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, d, generator=g).to(DEVICE, dtype).requires_grad_()
    k = torch.randn(B, Hkv, Tk, d, generator=g).to(DEVICE, dtype).requires_grad_()
    v = torch.randn(B, Hkv, Tk, d, generator=g).to(DEVICE, dtype).requires_grad_()
    return q, k, v


def _dout(out, seed=2):
    """The upstream gradient, seeded: the same numbers whatever ran before in the session."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.device, out.dtype)


def _grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}Hkv{}Tq{}Tk{}d{}-{}-{}".format(*c))
def test_float32_matches_reference(case):
    B, H, Hkv, Tq, Tk, d, causal, alignment = case
    q, k, v = _inputs(B, H, Hkv, Tq, Tk, d)
    out = flash_attention(q, k, v, causal=causal, causal_alignment=alignment)
    ref, ref_in = reference(q, k, v, causal=causal, alignment=alignment)
    assert out.shape == (B, H, Tq, d) and out.dtype == torch.float32
    pt = naive(q, k, v, causal=causal, alignment=alignment)  # float32, the peer's own error
    amp = exp2_amplification(q, k)
    within_flash_rule(out, pt, ref, "out", amp=amp)
    dout = _dout(out)
    ours, theirs = _grads(out, (q, k, v), dout), _grads(pt, (q, k, v), dout)
    refs = _grads(ref, ref_in, dout.double())
    for name, g, gp, gr in zip("qkv", ours, theirs, refs, strict=True):
        assert torch.isfinite(g).all(), name
        within_flash_rule(g, gp, gr, f"d{name}", amp=amp)


@pytest.mark.parametrize("case", CASES[1:5], ids=lambda c: "Tq{}Tk{}d{}-{}".format(*c[3:6], c[7]))
def test_float16_by_flash_rule(case):
    B, H, Hkv, Tq, Tk, d, causal, alignment = case
    q, k, v = _inputs(B, H, Hkv, Tq, Tk, d, dtype=torch.float16, seed=1)
    out = flash_attention(q, k, v, causal=causal, causal_alignment=alignment)
    assert out.dtype == torch.float16
    ref, ref_in = reference(q, k, v, causal=causal, alignment=alignment, dtype=torch.float32)
    pt = naive(q, k, v, causal=causal, alignment=alignment)
    within_flash_rule(out, pt, ref, "out")
    dout = _dout(out)
    ours = _grads(out, (q, k, v), dout)
    theirs = _grads(pt, (q, k, v), dout)
    refs = _grads(ref, ref_in, dout.float())
    for name, a, b, r in zip("qkv", ours, theirs, refs, strict=True):
        within_flash_rule(a, b, r, f"d{name}")


@pytest.mark.parametrize("causal", [False, True])
def test_lengths_mask_and_empty_rows(causal):
    B, H, Tq, Tk, d = 3, 2, 21, 30, 40
    q, k, v = _inputs(B, H, H, Tq, Tk, d, seed=2)
    lengths = torch.tensor([30, 7, 0], device=DEVICE)  # the last row has no keys at all
    mask = torch.rand(B, 1, Tq, Tk, generator=torch.Generator().manual_seed(3)).to(DEVICE) > 0.3
    out, lse = flash_attention(q, k, v, causal=causal, lengths=lengths, mask=mask, return_lse=True)
    ref, ref_in = reference(q, k, v, causal=causal, mask=mask, lengths=lengths)
    full = mask & masks.from_lengths(lengths.cpu(), Tk).to(DEVICE)
    pt = naive(q, k, v, causal=causal, mask=full)  # float32, the peer's own error
    within_flash_rule(out, pt, ref, "out")
    assert (out[2] == 0).all()  # nothing to attend to: zeros, not NaN
    dout = _dout(out)
    grads = _grads(out, (q, k, v), dout)
    theirs = _grads(pt, (q, k, v), dout)
    for name, g, gp, gr in zip("qkv", grads, theirs, _grads(ref, ref_in, dout.double()), strict=True):
        within_flash_rule(g, gp, gr, f"d{name}")
    assert (grads[0][2] == 0).all() and (grads[1][1, :, 7:] == 0).all()  # dead rows, padded keys
    # log-sum-exp of each row's scaled, masked scores; -inf where nothing is visible
    qr, kr, _ = ref_in
    s = (qr @ kr.transpose(-2, -1)) * d**-0.5
    allowed = mask & (torch.arange(Tk, device=DEVICE) < lengths[:, None, None, None])
    if causal:
        allowed = allowed & torch.ones(Tq, Tk, dtype=torch.bool, device=DEVICE).tril()
    expected = torch.logsumexp(s.masked_fill(~allowed, float("-inf")), -1)  # float64
    assert torch.equal(lse.isneginf(), expected.isneginf())
    finite = ~expected.isneginf()
    s32 = (q.detach() @ k.detach().transpose(-2, -1)) * d**-0.5  # the peer: float32 scores and logsumexp
    peer = torch.logsumexp(s32.masked_fill(~allowed, float("-inf")), -1)
    within_flash_rule(lse[finite], peer[finite], expected[finite], "lse")


def test_deterministic():
    q, k, v = _inputs(1, 2, 1, 40, 40, 32, seed=4)
    runs = []
    for _ in range(3):
        out = flash_attention(q, k, v, causal=True)
        runs.append((out, *_grads(out, (q, k, v), torch.ones_like(out))))
    for later in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], later, strict=True))


def test_dispatcher_backend_triton_with_broadcast_and_gqa_module():
    assert "triton" in available_backends()
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 2, 3, 9, 16, generator=g).to(DEVICE)  # (B, Hkv, G, T, d)
    k, v = (torch.randn(2, 2, 1, 11, 16, generator=g).to(DEVICE) for _ in range(2))
    m = torch.rand(2, 1, 1, 1, 11, generator=g).to(DEVICE) > 0.3
    kw = dict(mask=m, causal=True, causal_alignment="bottom_right")
    got = attention(q, k, v, backend="triton", **kw)
    want = attention(q, k, v, backend="matrix", **kw)  # float32: the peer
    ref = attention(q.double(), k.double(), v.double(), backend="matrix", **kw)
    within_flash_rule(got, want, ref, "attention")
    torch.manual_seed(6)
    mha = MultiHeadAttention(32, 4, num_kv_heads=2).to(DEVICE)
    x = torch.randn(2, 7, 32, device=DEVICE)
    with torch.no_grad():
        ref = mha.double()(x.double(), backend="matrix")
        mha.float()
        within_flash_rule(mha(x, backend="triton"), mha(x, backend="matrix"), ref, "module")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(mask=torch.zeros(1, 1, 4, 4)), TypeError, "bool mask"),
        (dict(lengths=torch.tensor([1.0])), ValueError, "lengths must be an int tensor"),
        (dict(scale=0.0), ValueError, "scale must be a finite number > 0"),
        (dict(causal_alignment="middle"), ValueError, "causal_alignment must be one of"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    q, k, v = _inputs(1, 1, 1, 4, 4, 16)
    if "mask" in kwargs:
        kwargs["mask"] = kwargs["mask"].to(DEVICE)
    with pytest.raises(exc, match=match):
        flash_attention(q, k, v, **kwargs)


def test_bad_shapes_and_dtypes():
    q, k, v = _inputs(1, 4, 1, 4, 4, 16)
    with pytest.raises(ValueError, match=r"q has 4 heads, k has 3"):
        flash_attention(q, k.expand(1, 3, 4, 16), v.expand(1, 3, 4, 16))
    with pytest.raises(ValueError, match=r"head dim 300 is outside"):
        big = torch.zeros(1, 1, 2, 300, device=DEVICE)
        flash_attention(big, big, big)
    with pytest.raises(TypeError, match=r"dtype torch.float64"):
        flash_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="4 dims"):
        flash_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="takes a bool mask only"):
        attention(q, k, v, mask=torch.zeros(4, 4, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="cannot return weights"):
        attention(q, k, v, need_weights=True, backend="triton")


def test_descriptor_and_pointer_paths_agree(monkeypatch):
    """The forward reads K/V through tensor descriptors when strides allow (d = 32 here) and
    through pointer tiles otherwise (d = 59: rows of 236 bytes are not 16-byte aligned)."""
    from selfattention.kernels.launch import _descriptors_ok

    q, k, v = _inputs(1, 2, 1, 30, 41, 32, seed=7)
    assert _descriptors_ok(k, v)
    assert not _descriptors_ok(*_inputs(1, 1, 1, 3, 3, 59)[1:])
    with_desc = flash_attention(q, k, v, causal=True, causal_alignment="bottom_right")
    monkeypatch.setenv("SELFATTENTION_TRITON_DESCRIPTORS", "0")
    assert not _descriptors_ok(k, v)
    with_ptrs = flash_attention(q, k, v, causal=True, causal_alignment="bottom_right")
    ref, _ = reference(q, k, v, causal=True, alignment="bottom_right")
    within_flash_rule(with_desc, with_ptrs, ref, "descriptors")  # the same kernel, two ways to load
