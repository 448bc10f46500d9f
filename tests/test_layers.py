"""Modules: SelfAttention against the lecture's reference, MultiHeadAttention against an explicit
per-head implementation written here (nn.MultiheadAttention comparisons are in tests/peers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import F64, assert_close, causal_np, randn, ref_attention
from torch.func import functional_call

from selfattention import MultiHeadAttention, SelfAttention, available_backends, masks, reference
from selfattention.layers import KVCache

BACKENDS = ["auto", *available_backends()]


def lecture_layer(m: SelfAttention, x: torch.Tensor, mask=None):
    """The reference tier per batch element: H = x[b].T, W's = the Linear weights. A bias is
    folded in as an extra row of ones in H and an extra column in W."""
    outs, weights = [], []
    for b in range(x.shape[0]):
        H = x[b].detach().numpy().T  # (D, T)
        Ws = []
        for lin in (m.w_q, m.w_k, m.w_v):
            W = lin.weight.detach().numpy()
            if lin.bias is not None:
                W = np.hstack([W, lin.bias.detach().numpy()[:, None]])
            Ws.append(W)
        if m.w_q.bias is not None:
            H = np.vstack([H, np.ones((1, H.shape[1]))])
        mb = None if mask is None else np.broadcast_to(mask, (x.shape[0], *mask.shape[-2:]))[b]
        steps = reference.self_attention(H, *Ws, mask=mb)
        outs.append(steps.Z.T)
        weights.append(steps.A)
    return np.stack(outs), np.stack(weights)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("d_model, d_k, d_v", [(6, None, None), (5, 3, 7), (4, 1, 1)])
def test_self_attention_is_the_lecture_layer(bias, d_model, d_k, d_v):
    torch.manual_seed(0)
    m = SelfAttention(d_model, d_k, d_v, bias=bias).double()
    x = torch.randn(3, 7, d_model, dtype=F64)
    z_ref, a_ref = lecture_layer(m, x)
    for backend in BACKENDS:
        z = m(x, backend=backend)
        assert z.shape == (3, 7, d_v or d_model) and z.dtype == F64
        assert_close(z, z_ref)
    z, a = m(x, need_weights=True)
    assert a.shape == (3, 7, 7)
    assert_close(z, z_ref)
    assert_close(a, a_ref)


def test_self_attention_mask_and_causal():
    torch.manual_seed(1)
    m = SelfAttention(4, 3, 2).double()
    x = torch.randn(2, 6, 4, dtype=F64)
    mask = torch.rand(2, 6, 6) < 0.5
    mask[0, 3] = False  # a word that may attend to nothing
    z_ref, a_ref = lecture_layer(m, x, mask.numpy())
    tril = causal_np(6, 6)
    zc_ref, _ = lecture_layer(m, x, tril)
    for backend in BACKENDS:
        assert_close(m(x, mask=mask, backend=backend), z_ref)
        assert_close(m(x, causal=True, backend=backend), zc_ref)
    _, a = m(x, mask=mask, need_weights=True)
    assert_close(a, a_ref)
    assert (a[0, 3] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_attention_gradcheck(backend):
    torch.manual_seed(2)
    m = SelfAttention(3, 2, 2, bias=True).double()
    x = torch.randn(2, 4, 3, dtype=F64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *ps):
        return functional_call(m, dict(zip(names, ps, strict=True)), (x,), dict(causal=True, backend=backend))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_self_attention_errors():
    m = SelfAttention(4)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 5\), expected \(B, T, 4\)"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"x has shape \(3, 4\), expected \(B, T, 4\)"):
        m(torch.randn(3, 4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        m([[1.0]])
    bad = [(dict(d_model=0), "d_model"), (dict(d_model=4, d_k=-1), "d_k"), (dict(d_model=4, d_v=2.0), "d_v")]
    for kw, name in bad:
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            SelfAttention(**kw)


# --- MultiHeadAttention against an explicit implementation ---------------------------------------


def mha_explicit(m: MultiHeadAttention, x, context=None, mask=None, causal=None):
    """Per head, with k/v heads repeated (repeat_interleave) for grouped-query attention."""
    H, Hkv, D = m.num_heads, m.num_kv_heads, m.d_model
    hd, Dkv = D // H, (D // H) * Hkv
    W = m.in_proj.weight.detach()
    b = m.in_proj.bias.detach() if m.in_proj.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype)
    c = x if context is None else context
    q = x @ W[:D].T + b[:D]
    k = c @ W[D : D + Dkv].T + b[D : D + Dkv]
    v = c @ W[D + Dkv :].T + b[D + Dkv :]
    kv_head = torch.arange(Hkv).repeat_interleave(H // Hkv)  # query head h reads kv head kv_head[h]
    B, Tq, Tk = x.shape[0], x.shape[1], c.shape[1]
    full = None if mask is None else torch.broadcast_to(mask, (B, H, Tq, Tk))
    outs, weights = [], []
    for h in range(H):
        g = int(kv_head[h])
        o, w = ref_attention(
            q[..., h * hd : (h + 1) * hd], k[..., g * hd : (g + 1) * hd], v[..., g * hd : (g + 1) * hd],
            None if full is None else full[:, h], causal,
        )
        outs.append(o)
        weights.append(w)
    concat = torch.from_numpy(np.concatenate(outs, axis=-1))  # (B, Tq, D)
    Wo, bo = m.out_proj.weight.detach(), m.out_proj.bias
    out = concat @ Wo.T + (0 if bo is None else bo.detach())
    return out, np.stack(weights, axis=1)  # (B, H, Tq, Tk)


CONFIGS = [(8, 2, None), (12, 4, 2), (12, 6, 1), (6, 3, 3)]


@pytest.mark.parametrize("d_model, H, Hkv", CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_mha_matches_explicit(d_model, H, Hkv, bias):
    torch.manual_seed(3)
    m = MultiHeadAttention(d_model, H, num_kv_heads=Hkv, bias=bias).double()
    x = torch.randn(2, 5, d_model, dtype=F64)
    out_ref, w_ref = mha_explicit(m, x)
    for backend in BACKENDS:
        out = m(x, backend=backend)
        assert out.shape == (2, 5, d_model) and out.dtype == F64
        assert_close(out, out_ref)
    out, w = m(x, need_weights=True)
    assert w.shape == (2, H, 5, 5)
    assert_close(out, out_ref)
    assert_close(w, w_ref)


@pytest.mark.parametrize("d_model, H, Hkv", CONFIGS)
@pytest.mark.parametrize("mask_kind", ["lengths", "per_head", "float_2d", "causal"])
def test_mha_masks(d_model, H, Hkv, mask_kind):
    torch.manual_seed(4)
    m = MultiHeadAttention(d_model, H, num_kv_heads=Hkv).double()
    x = torch.randn(2, 6, d_model, dtype=F64)
    mask, causal = None, None
    if mask_kind == "lengths":
        mask = masks.from_lengths([6, 3], 6)  # (B, 1, 1, T)
    elif mask_kind == "per_head":
        mask = torch.rand(2, H, 6, 6) < 0.5
        mask[1, 0, 2] = False  # a dead row in one head
    elif mask_kind == "float_2d":
        mask = torch.randn(6, 6, dtype=F64)
    else:
        causal = "top_left"
    out_ref, w_ref = mha_explicit(m, x, mask=mask, causal=causal)
    for backend in BACKENDS:
        assert_close(m(x, mask=mask, causal=causal is not None, backend=backend), out_ref)
    _, w = m(x, mask=mask, causal=causal is not None, need_weights=True)
    assert_close(w, w_ref)


@pytest.mark.parametrize("d_model, H, Hkv", CONFIGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_mha_cross_attention(d_model, H, Hkv, backend):
    torch.manual_seed(5)
    m = MultiHeadAttention(d_model, H, num_kv_heads=Hkv).double()
    x, c = torch.randn(2, 4, d_model, dtype=F64), torch.randn(2, 7, d_model, dtype=F64)
    mask = masks.from_lengths([7, 5], 7)
    out_ref, _ = mha_explicit(m, x, context=c, mask=mask, causal="bottom_right")
    out = m(x, c, mask=mask, causal=True, backend=backend)
    assert out.shape == (2, 4, d_model)
    # without causal_alignment the module uses attention's default, top_left
    out_tl, _ = mha_explicit(m, x, context=c, mask=mask, causal="top_left")
    assert_close(out, out_tl)
    assert not torch.allclose(out, out_ref)
    assert_close(m(x, c, mask=mask, backend=backend), mha_explicit(m, x, context=c, mask=mask)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Hkv", [None, 1])
def test_mha_gradcheck(backend, Hkv):
    torch.manual_seed(6)
    m = MultiHeadAttention(4, 2, num_kv_heads=Hkv).double()
    x = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    mask = masks.from_lengths([3, 2], 3)

    def f(x, *ps):
        kw = dict(mask=mask, causal=True, backend=backend)
        return functional_call(m, dict(zip(names, ps, strict=True)), (x,), kw)

    assert torch.autograd.gradcheck(f, (x, *params))


def test_mha_dropout_only_in_training():
    torch.manual_seed(7)
    m = MultiHeadAttention(8, 2, dropout=0.5).double()
    x = torch.randn(2, 9, 8, dtype=F64)
    m.eval()
    assert_close(m(x), mha_explicit(m, x)[0])
    m.train()
    torch.manual_seed(0)
    a = m(x, backend="matrix")
    assert a.shape == (2, 9, 8) and torch.isfinite(a).all()
    assert not torch.allclose(a, mha_explicit(m, x)[0])


def test_mha_parameter_shapes():
    m = MultiHeadAttention(12, 4, num_kv_heads=2)
    assert m.head_dim == 3
    assert m.in_proj.weight.shape == (12 + 2 * 6, 12)
    assert m.out_proj.weight.shape == (12, 12)


@pytest.mark.parametrize(
    "args, kw, match",
    [
        ((10, 3), {}, "d_model=10 must be divisible by num_heads=3"),
        ((12, 4), dict(num_kv_heads=3), "num_heads=4 must be divisible by num_kv_heads=3"),
        ((12, 4), dict(num_kv_heads=8), "num_heads=4 must be divisible by num_kv_heads=8"),
        ((12, 4), dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
        ((12, 4), dict(dropout=-0.1), r"dropout must be a number in \[0, 1\)"),
        ((12, 0), {}, "num_heads must be a positive int"),
        ((0, 1), {}, "d_model must be a positive int"),
        ((12, 4), dict(num_kv_heads=0), "num_kv_heads must be a positive int"),
    ],
)
def test_mha_constructor_errors(args, kw, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(*args, **kw)


def test_mha_forward_errors():
    m = MultiHeadAttention(8, 2, num_kv_heads=1)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 6\), expected \(B, T, 8\)"):
        m(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"context has shape \(2, 5\), expected \(B, T, 8\)"):
        m(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match="context has batch 3, x has 2"):
        m(x, torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3, 5, 5\), expected .*\(2, 2, 5, 5\)"):
        m(x, mask=torch.ones(2, 3, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask has shape \(1, 2, 2, 5, 5\)"):
        m(x, mask=torch.ones(1, 2, 2, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="cannot return weights"):
        m(x, need_weights=True, backend="torch")


def test_mha_float32_default_dtype():
    m = MultiHeadAttention(8, 2)
    out = m(randn(1, 3, 8, gen=torch.Generator().manual_seed(0), dtype=torch.float32))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 8)


def test_mha_cross_attention_causal_alignment_is_passed_through():
    """With Tq != Tk the two alignments differ; the module must use the one it is given."""
    torch.manual_seed(5)
    mha = MultiHeadAttention(8, 2).double()
    x, ctx = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64)
    for alignment in ("top_left", "bottom_right"):
        got = mha(x, ctx, causal=True, causal_alignment=alignment)
        expected = mha(x, ctx, mask=masks.causal(3, 6, alignment))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(
        mha(x, ctx, causal=True, causal_alignment="top_left"),
        mha(x, ctx, causal=True, causal_alignment="bottom_right"),
    )


def test_module_masks_may_not_add_batch_dims():
    """A key-padding mask from masks.from_lengths works in both modules; one that would widen
    the batch is refused with the expected shape, not broadcast into a wrong-shaped output."""
    torch.manual_seed(12)
    x = torch.randn(3, 5, 8, dtype=F64)
    sa = SelfAttention(8).double()
    lengths = masks.from_lengths([5, 2, 1], 5)  # (3, 1, 1, 5)
    out = sa(x, mask=lengths)
    assert out.shape == (3, 5, 8)
    for b, n in enumerate([5, 2, 1]):  # padding changes nothing: each sequence alone, cut to its length
        assert_close(out[b, :n], sa(x[b : b + 1, :n])[0])
    expected = r"mask has shape \(3, 5, 5, 5\), expected broadcastable to \(3, 5, 5\)"
    with pytest.raises(ValueError, match=expected):
        sa(x, mask=torch.ones(3, 5, 5, 5, dtype=torch.bool))
    mha = MultiHeadAttention(8, 4).double()
    with pytest.raises(ValueError, match=r"expected broadcastable to \(1, 4, 5, 5\)"):
        mha(x[:1], mask=torch.ones(3, 4, 5, 5, dtype=torch.bool))
    gqa = MultiHeadAttention(12, 6, num_kv_heads=3).double()
    keys = torch.rand(7) > 0.3
    keys[0] = True
    xc, ctx = torch.randn(2, 5, 12, dtype=F64), torch.randn(2, 7, 12, dtype=F64)
    assert_close(gqa(xc, ctx, mask=keys), gqa(xc, ctx, mask=keys.expand(2, 6, 5, 7)))


# --- the packed projection: project, head_projections, pack_in_proj, KVCache ----------------------


@pytest.mark.parametrize("H, Hkv", [(4, 4), (4, 2), (4, 1)])
def test_project_matches_separate_linear_maps(H, Hkv):
    torch.manual_seed(0)
    D, d = 8, 2
    m = MultiHeadAttention(D, H, num_kv_heads=Hkv).double()
    x, c = torch.randn(2, 5, D, dtype=F64), torch.randn(2, 3, D, dtype=F64)
    for context in (None, c):
        q, k, v = m.project(x, context)
        src = x if context is None else c
        assert q.shape == (2, H, 5, d) and k.shape == v.shape == (2, Hkv, src.shape[1], d)
        for h in range(H):
            w = m.head_projections(h)
            g = h // (H // Hkv)
            torch.testing.assert_close(q[:, h], x @ w["W_Q"].T + w["b_Q"], rtol=0, atol=1e-12)
            torch.testing.assert_close(k[:, g], src @ w["W_K"].T + w["b_K"], rtol=0, atol=1e-12)
            torch.testing.assert_close(v[:, g], src @ w["W_V"].T + w["b_V"], rtol=0, atol=1e-12)


def test_pack_in_proj_is_what_project_reads():
    D, H, Hkv = 6, 3, 1
    m = MultiHeadAttention(D, H, num_kv_heads=Hkv, bias=False).double()
    W_Q, W_K, W_V = torch.randn(D, D, dtype=F64), torch.randn(2, D, dtype=F64), torch.randn(2, D, dtype=F64)
    with torch.no_grad():
        m.in_proj.weight.copy_(MultiHeadAttention.pack_in_proj(W_Q, W_K, W_V))
    w = m.head_projections(2)
    assert w["b_Q"] is None
    torch.testing.assert_close(w["W_Q"], W_Q[4:6], rtol=0, atol=0)
    torch.testing.assert_close(w["W_K"], W_K, rtol=0, atol=0)
    torch.testing.assert_close(w["W_V"], W_V, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"head must be an int in \[0, 3\), got 3"):
        m.head_projections(3)


@pytest.mark.parametrize("Hkv", [4, 2])
def test_kv_cache_decoding_equals_the_whole_prefix(Hkv):
    torch.manual_seed(1)
    m = MultiHeadAttention(8, 4, num_kv_heads=Hkv).double().eval()
    x = torch.randn(2, 9, 8, dtype=F64)
    whole = m(x, causal=True)
    cache = KVCache()
    first = m(x[:, :4], causal=True, cache=cache)  # a prompt of 4, then one token at a time
    steps = [first] + [m(x[:, t:t + 1], causal=True, cache=cache) for t in range(4, 9)]
    assert len(cache) == 9
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=0, atol=1e-12)


def test_kv_cache_errors():
    m = MultiHeadAttention(8, 4)
    with pytest.raises(TypeError, match="cache must be a KVCache or None, got dict"):
        m(torch.randn(1, 2, 8), cache={})
    with pytest.raises(ValueError, match="a KVCache is for self-attention"):
        m(torch.randn(1, 2, 8), torch.randn(1, 3, 8), cache=KVCache())
    cache = KVCache()
    m(torch.randn(1, 2, 8), cache=cache)
    with pytest.raises(ValueError, match="must match it in all but dim 2"):
        m(torch.randn(2, 1, 8), cache=cache)  # another batch size


def test_module_dropout_accepts_numpy_floats():
    m = MultiHeadAttention(4, 2, dropout=np.float32(0.25))
    assert m.dropout == pytest.approx(0.25)
    with pytest.raises(ValueError, match="dropout must be a number in"):
        MultiHeadAttention(4, 2, dropout=np.float64(1.0))


@pytest.mark.parametrize("layer", [lambda: SelfAttention(8), lambda: MultiHeadAttention(8, 2)],
                         ids=["SelfAttention", "MultiHeadAttention"])
def test_x_of_another_dtype_or_device_is_named(layer):
    m, x = layer(), torch.randn(2, 3, 8)
    for bad in (x.double(), x.half(), x.long()):
        with pytest.raises(TypeError, match=rf"x has dtype {bad.dtype} but the layer's weights have"):
            m(bad)
    with pytest.raises(ValueError, match="x is on meta but the layer's weights are on cpu"):
        m(x.to("meta"))
    if isinstance(m, MultiHeadAttention):
        with pytest.raises(TypeError, match="context has dtype torch.float16"):
            m(x, context=x.half())


def test_a_layer_too_big_for_the_machine_is_refused_before_allocating(monkeypatch):
    from selfattention import _system

    monkeypatch.setattr(_system, "available_memory", lambda: 2**30)
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(16384, 8\)'s float32 weights needs 4 GiB"):
        MultiHeadAttention(16384, 8)  # 4 bytes · 16384 · 4 · 16384: W_Q, W_K, W_V and W_O
    with pytest.raises(ValueError, match=r"SelfAttention\(10000, d_k=10000, d_v=10000\)'s float32 weights"):
        SelfAttention(10000)
    assert MultiHeadAttention(512, 8).in_proj.weight.shape == (1536, 512)  # small: not asked
    with torch.device("meta"):  # no memory is taken: not asked either
        assert MultiHeadAttention(16384, 8).in_proj.weight.is_meta


def test_autocast_takes_mixed_floating_dtypes_as_torch_does():
    m, x = MultiHeadAttention(8, 2), torch.randn(1, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x.bfloat16()).dtype == torch.bfloat16 and m(x).dtype == torch.bfloat16
        with pytest.raises(TypeError, match="x has dtype torch.int64"):
            m(x.long())


@pytest.mark.parametrize("Hkv", [4, 2])
def test_mha_on_the_shard_of_one_process_is_mha(Hkv):
    """A ContextParallel with torch.distributed not initialized is the whole sequence on one
    process: causal or with a BlockMask, the output and gradients are the ordinary forward's
    (several processes: tests/distributed/test_models_on_a_shard.py)."""
    from selfattention import block_mask
    from selfattention.distributed import ContextParallel

    torch.manual_seed(1)
    m = MultiHeadAttention(16, 4, num_kv_heads=Hkv).double()
    x = torch.randn(2, 21, 16, dtype=F64)
    window = block_mask.sliding_window(21, 21, 5, block=16)
    for plain, sharded in (({"causal": True}, {"causal": True}),
                           ({"mask": window.to_dense()}, {"mask": window})):
        want, got = (m(x, **kw) for kw in (plain, {"shard": ContextParallel(21), **sharded}))
        assert_close(got, want)
        for a, b in zip(torch.autograd.grad(got.sum(), list(m.parameters())),
                        torch.autograd.grad(want.sum(), list(m.parameters())), strict=True):
            assert_close(a, b)


def test_mha_on_a_shard_refuses_what_the_ring_cannot_do():
    from selfattention.distributed import ContextParallel

    m, x, shard = MultiHeadAttention(8, 2), torch.randn(1, 6, 8), ContextParallel(6)
    for kw, words in (({"context": x}, "a context"), ({"cache": KVCache()}, "a KVCache"),
                      ({"need_weights": True}, "need_weights"), ({"backend": "matrix"}, "backend='matrix'"),
                      ({"mask": torch.ones(6, 6, dtype=torch.bool)}, "mask tensor")):
        with pytest.raises(ValueError, match="attention on a shard") as err:
            m(x, shard=shard, **kw)
        assert words in str(err.value)
    dropping = MultiHeadAttention(8, 2, dropout=0.1)
    with pytest.raises(ValueError, match="takes no attention dropout 0.1"):
        dropping(x, shard=shard)
    dropping.eval()
    assert dropping(x, shard=shard).shape == (1, 6, 8)  # no dropout out of training
    with pytest.raises(TypeError, match="shard must be a selfattention.distributed.ContextParallel"):
        m(x, shard=6)
