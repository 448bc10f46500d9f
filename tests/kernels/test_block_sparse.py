"""The kernel with a block map (``flash_attention(..., block_mask=...)``) and the dense path's
unmasked/masked split, against the matrix tier on upcast inputs.

Runs in Triton's interpreter on the CPU (scripts/dev test) or on a GPU. float32 and float16 are
judged by FlashAttention's 2x rule: the error against a float64 reference at most twice that of a
same-precision matmul-softmax-matmul (plus the helper's 1e-5 floor). Sizes are small and awkward
(T = 1, 97, 130; d = 59, 64) so the interpreter stays within a minute.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed")
from _kernel_cases import naive, reference, within_flash_rule  # noqa: E402

from selfattention import block_mask  # noqa: E402
from selfattention.kernels import available, flash_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu"
pytestmark = pytest.mark.skipif(not available(DEVICE), reason="needs CUDA, or TRITON_INTERPRET=1")
BLOCK = 32  # map blocks: two 16-wide interpreter tiles per block edge, so sub-tiles are exercised


def _maps(B, Tq, Tk):
    g = torch.Generator().manual_seed(Tq * 7 + Tk)
    doc = torch.randint(0, 3, (B, Tk), generator=g).sort(-1).values.to(DEVICE)
    out = {
        "causal_tl": block_mask.causal(Tq, Tk, "top_left", block=BLOCK, device=DEVICE),
        "window_br": block_mask.sliding_window(Tq, Tk, 40, "bottom_right", block=BLOCK, device=DEVICE),
        "random": block_mask.from_mask((torch.rand(B, 1, Tq, Tk, generator=g) < 0.6).to(DEVICE), block=BLOCK),
        "padding": block_mask.key_padding(torch.tensor([Tk, Tk // 3][:B], device=DEVICE), Tq, Tk,
                                          block=BLOCK),
        # FULL in the first query block, PARTIAL in the next ones: every block is judged on its own
        "full_then_partial": block_mask.from_predicate(lambda b, h, i, j: (i < BLOCK) | (j % 2 == 0),
                                                       Tq=Tq, Tk=Tk, block=BLOCK, device=DEVICE),
    }
    if Tq == Tk:
        out["documents"] = block_mask.documents(doc, causal=True, block=BLOCK)
        out["prefix"] = block_mask.prefix_lm(torch.tensor([50, 3][:B], device=DEVICE), Tq, block=BLOCK)
    return out


def _inputs(B, H, Hkv, Tq, Tk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, d, generator=g).to(DEVICE, dtype).requires_grad_()
    k = torch.randn(B, Hkv, Tk, d, generator=g).to(DEVICE, dtype).requires_grad_()
    v = torch.randn(B, Hkv, Tk, d, generator=g).to(DEVICE, dtype).requires_grad_()
    return q, k, v


def _check_f32(q, k, v, out, mask, lengths=None):
    """Output and gradients by FlashAttention's 2x rule against a float64 reference, the peer
    being the same-precision (float32) matmul-softmax-matmul."""
    full = mask
    if lengths is not None:
        full = mask & (torch.arange(k.shape[2], device=DEVICE) < lengths[:, None, None, None])
    ref, ref_in = reference(q, k, v, mask=full)
    pt = naive(q, k, v, mask=full)
    within_flash_rule(out, pt, ref, "out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    grads_pt = torch.autograd.grad(pt, (q, k, v), dout)
    grads_ref = torch.autograd.grad(ref, ref_in, dout.double())
    for name, a, b, r in zip("qkv", grads, grads_pt, grads_ref, strict=True):
        within_flash_rule(a, b, r, f"d{name}")
    return grads


@pytest.mark.parametrize("Tq, Tk, d", [(97, 97, 59), (97, 130, 64), (130, 33, 59)])
def test_every_pattern_float32_gqa(Tq, Tk, d):
    B, H, Hkv = 2, 2, 1  # grouped-query: both query heads read one K/V head
    q, k, v = _inputs(B, H, Hkv, Tq, Tk, d, seed=Tq + d)
    for name, bm in _maps(B, Tq, Tk).items():
        out = flash_attention(q, k, v, block_mask=bm)
        dense = bm.to_dense()
        _check_f32(q, k, v, out, dense)
        dead = ~dense.expand(B, H, Tq, Tk).any(-1)  # rows that may see nothing: exactly zero
        assert (out.detach()[dead] == 0).all(), name


def test_single_query_and_single_key():
    q, k, v = _inputs(1, 2, 2, 1, 1, 64)
    _check_f32(
        q, k, v, flash_attention(q, k, v, block_mask=block_mask.causal(1, 1, block=16, device=DEVICE)),
        torch.ones(1, 1, dtype=torch.bool, device=DEVICE),
    )
    q, k, v = _inputs(1, 2, 1, 1, 130, 59, seed=3)  # decoding: one query, bottom-right window
    bm = block_mask.sliding_window(1, 130, 40, "bottom_right", block=BLOCK, device=DEVICE)
    _check_f32(q, k, v, flash_attention(q, k, v, block_mask=bm), bm.to_dense())


def test_map_with_lengths_and_empty_rows():
    B, Tq, Tk = 3, 40, 70
    q, k, v = _inputs(B, 2, 2, Tq, Tk, 59, seed=5)
    bm = block_mask.sliding_window(Tq, Tk, 20, "top_left", block=BLOCK, device=DEVICE)  # rows see j <= i
    lengths = torch.tensor([70, 10, 0], device=DEVICE)  # row 1: queries >= 29 see nothing; row 2: none
    out = flash_attention(q, k, v, block_mask=bm, lengths=lengths)
    grads = _check_f32(q, k, v, out, bm.to_dense(), lengths=lengths)
    assert (out[2] == 0).all() and (out[1, :, 29:] == 0).all()
    assert (grads[1][1, :, 10:] == 0).all() and (grads[2][2] == 0).all()


@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
@pytest.mark.parametrize("Tq, Tk", [(130, 130), (97, 130), (130, 97)])
def test_dense_causal_split_float32(alignment, Tq, Tk):
    """Without a map the causal walk is split into unmasked and boundary tiles: check both
    alignments where the diagonal falls mid-tile, and the same problem through a block map."""
    q, k, v = _inputs(1, 2, 1, Tq, Tk, 64, seed=Tq + Tk)
    out = flash_attention(q, k, v, causal=True, causal_alignment=alignment)
    from selfattention import masks

    dense = masks.causal(Tq, Tk, alignment, DEVICE)
    _check_f32(q, k, v, out, dense)
    bm = block_mask.causal(Tq, Tk, alignment, block=BLOCK, device=DEVICE)
    mapped = flash_attention(q, k, v, block_mask=bm)
    within_flash_rule(mapped, naive(q, k, v, mask=dense), reference(q, k, v, mask=dense)[0], "mapped")


@pytest.mark.parametrize("pattern", ["window_br", "documents"])
def test_float16_by_flash_rule(pattern):
    B, T = 2, 97
    q, k, v = _inputs(B, 2, 1, T, T, 64, dtype=torch.float16, seed=11)
    bm = _maps(B, T, T)[pattern]
    dense = bm.to_dense()
    out = flash_attention(q, k, v, block_mask=bm)
    assert out.dtype == torch.float16
    ref, ref_in = reference(q, k, v, mask=dense, dtype=torch.float32)
    pt = naive(q, k, v, mask=dense)
    within_flash_rule(out, pt, ref, "out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE, torch.float16)
    for name, a, b, r in zip(
        "qkv", torch.autograd.grad(out, (q, k, v), dout), torch.autograd.grad(pt, (q, k, v), dout),
        torch.autograd.grad(ref, ref_in, dout.float()), strict=True,
    ):
        within_flash_rule(a, b, r, f"d{name}")


def test_skipped_blocks_are_never_read():
    """NaN in the keys and values of blocks the map skips never reaches the output or gradients;
    the same NaN under the dense mask path does (zero weight × NaN)."""
    T = 96
    q, k, v = (x.detach() for x in _inputs(1, 1, 1, T, T, 32, seed=13))
    k[..., 64:, :] = float("nan")
    v[..., 64:, :] = float("nan")
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    bm = block_mask.causal(64, T, block=BLOCK, device=DEVICE)  # queries 0..63: keys 64.. are SKIP
    out = flash_attention(q[..., :64, :], k, v, block_mask=bm)
    assert torch.isfinite(out).all()
    (dq,) = torch.autograd.grad(out, (q,), torch.ones_like(out))
    assert torch.isfinite(dq).all()
    dense = flash_attention(q[..., :64, :], k, v, mask=bm.to_dense())
    assert torch.isnan(dense).any()


def test_deterministic_with_map():
    q, k, v = _inputs(1, 2, 1, 97, 97, 32, seed=17)
    bm = _maps(1, 97, 97)["documents"]
    runs = []
    for _ in range(3):
        out = flash_attention(q, k, v, block_mask=bm)
        runs.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    for later in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], later, strict=True))


def test_bad_block_mask_arguments():
    q, k, v = _inputs(2, 2, 2, 40, 40, 16)
    bm = block_mask.causal(40, 40, block=16, device=DEVICE)
    with pytest.raises(ValueError, match="pass it without mask= or causal=True"):
        flash_attention(q, k, v, block_mask=bm, causal=True)
    with pytest.raises(ValueError, match="pass it without mask= or causal=True"):
        flash_attention(q, k, v, block_mask=bm, mask=torch.ones(40, 40, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match=r"block mask has shape \(1, 1, 40, 39\)"):
        flash_attention(q, k, v, block_mask=block_mask.causal(40, 39, block=16, device=DEVICE))
    three = block_mask.documents(torch.zeros(3, 40, dtype=torch.long, device=DEVICE), block=16)
    with pytest.raises(ValueError, match="expected broadcastable to"):
        flash_attention(q, k, v, block_mask=three)
    with pytest.raises(TypeError, match="BlockMask"):
        flash_attention(q, k, v, block_mask=bm.to_dense())


def test_device_mismatch_is_a_value_error():
    q, k, v = _inputs(1, 1, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="k is on meta but q is on .*; expected one device"):
        flash_attention(q, k.detach().to("meta"), v)
    with pytest.raises(ValueError, match="lengths is on meta"):
        flash_attention(q, k, v, lengths=torch.tensor([4], device="meta"))


def test_dispatcher_backend_triton_with_a_block_mask():
    """attention(..., mask=BlockMask, backend="triton") reaches the kernel's block map."""
    from selfattention import attention

    g = torch.Generator().manual_seed(19)
    q = torch.randn(2, 3, 50, 16, generator=g).to(DEVICE)  # (B, H, T, d)
    k, v = (torch.randn(2, 3, 50, 16, generator=g).to(DEVICE) for _ in range(2))
    doc = torch.tensor([[0] * 30 + [1] * 20, [0] * 50], device=DEVICE)
    bm = block_mask.documents(doc, causal=True, block=BLOCK)
    got = attention(q, k, v, mask=bm, backend="triton")
    want = attention(q, k, v, mask=bm.to_dense(), backend="matrix")  # float32: the peer
    ref = attention(q.double(), k.double(), v.double(), mask=bm.to_dense(), backend="matrix")
    within_flash_rule(got, want, ref, "out")


def test_backward_on_its_own_matches_autograd():
    """flash_attention_backward(q, k, v, out, lse, dout) gives autograd's gradients bit for bit
    (the same kernels), with a block map and lengths."""
    from selfattention.kernels import flash_attention_backward

    q, k, v = _inputs(2, 2, 1, 40, 70, 32, seed=23)
    bm = block_mask.sliding_window(40, 70, 25, "bottom_right", block=BLOCK, device=DEVICE)
    lengths = torch.tensor([70, 50], device=DEVICE)
    out, lse = flash_attention(q, k, v, block_mask=bm, lengths=lengths, return_lse=True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    want = torch.autograd.grad(out, (q, k, v), dout)
    got = flash_attention_backward(q.detach(), k.detach(), v.detach(), out.detach(), lse, dout,
                                   block_mask=bm, lengths=lengths)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(ValueError, match=r"lse has shape \(2, 2\), expected \(2, 2, 40\)"):
        flash_attention_backward(q, k, v, out, lse[..., 0], dout, block_mask=bm)


def test_map_without_partial_blocks():
    """Every block FULL or SKIP (lengths on block boundaries): no stored tile at all."""
    bm = block_mask.key_padding(torch.tensor([32, 0], device=DEVICE), 16, 64, block=16)
    assert len(bm.tiles) == 0
    q, k, v = _inputs(2, 1, 1, 16, 64, 16, seed=29)
    out = flash_attention(q, k, v, block_mask=bm)
    _check_f32(q, k, v, out, bm.to_dense())
    assert (out[1] == 0).all()
