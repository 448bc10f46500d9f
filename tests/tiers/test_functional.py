"""``attention``: every backend against the float64 reference, gradients, low precision, edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _problems import call_kwargs, problems
from _rules import F64, assert_close, causal_np, flash_rule, naive_torch, randn, ref_attention
from hypothesis import given

from selfattention import attention, available_backends, reference

BACKENDS = available_backends()
ALL = ["auto", *BACKENDS]


def test_available_backends():
    assert {"matrix", "blockwise", "torch"} <= set(BACKENDS)
    assert "auto" not in BACKENDS


@given(problems())
def test_every_backend_matches_reference(p):
    out_ref, w_ref = ref_attention(p["q"], p["k"], p["v"], p["mask"], p["causal"], p["scale"])
    for backend in ALL:
        out = attention(p["q"], p["k"], p["v"], backend=backend, **call_kwargs(p))
        assert out.dtype == F64, backend
        assert_close(out, out_ref)
    out, w = attention(p["q"], p["k"], p["v"], need_weights=True, **call_kwargs(p))
    assert out.dtype == w.dtype == F64
    assert_close(out, out_ref)
    assert_close(w, w_ref)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("Tq, Tk", [(1, 1), (1, 6), (6, 1), (3, 7), (7, 3), (97, 33)])
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_causal_alignments(backend, Tq, Tk, alignment):
    gen = torch.Generator().manual_seed(Tq * 100 + Tk)
    q, k, v = randn(2, Tq, 59, gen=gen), randn(2, Tk, 59, gen=gen), randn(2, Tk, 5, gen=gen)
    out = attention(q, k, v, causal=True, causal_alignment=alignment, backend=backend)
    assert_close(out, ref_attention(q, k, v, causal=alignment)[0])


BROADCASTS = [  # q, k, v, mask shapes: leading dims broadcast, the mask may add some
    ((2, 4, 6, 8), (2, 1, 9, 8), (1, 4, 9, 3), (3, 1, 1, 1, 9)),
    ((4, 3), (2, 5, 3), (5, 2), None),
    ((2, 1, 4, 3), (3, 5, 3), (1, 3, 5, 2), (2, 1, 1, 1, 5)),
    ((4, 3), (5, 3), (5, 2), (3, 2, 4, 5)),
    ((1, 4, 3), (1, 5, 3), (6, 5, 2), (4, 1)),
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("causal", [None, "bottom_right"])
def test_broadcast_leading_dims(backend, shapes, causal):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (randn(*s, gen=gen, requires_grad=True) for s in shapes[:3])
    mask = None if shapes[3] is None else torch.rand(*shapes[3], generator=gen) < 0.7
    kw = dict(mask=mask, causal=causal is not None, causal_alignment=causal or "top_left")
    out = attention(q, k, v, backend=backend, **kw)
    out_ref = ref_attention(q, k, v, mask, causal)[0]
    assert out.shape == out_ref.shape
    assert_close(out, out_ref)
    dout = randn(*out.shape, gen=gen)
    want = torch.autograd.grad(naive_torch(q, k, v, mask, causal), (q, k, v), dout)
    got = torch.autograd.grad(out, (q, k, v), dout)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w)


@pytest.mark.parametrize("backend", ALL)
def test_lecture_word_two(backend):
    """The lecture's per-word z_2 (1-based; column index 1 of Z) is row 1 of our output."""
    rng = np.random.default_rng(7)
    D, T, d_k, d_v = 6, 5, 4, 3
    H = rng.standard_normal((D, T))
    W_Q, W_K, W_V = (rng.standard_normal((n, D)) for n in (d_k, d_k, d_v))
    steps = reference.self_attention(H, W_Q, W_K, W_V)
    x = torch.from_numpy(H.T)  # (T, D): words as rows
    q, k, v = (x @ torch.from_numpy(W).T for W in (W_Q, W_K, W_V))
    out = attention(q, k, v, backend=backend)
    z_2 = steps.Z[:, 1]
    assert out.shape == (T, d_v)
    assert_close(out[1], z_2)
    assert_close(out, steps.Z.T)
    if backend in ("auto", "matrix"):
        _, w = attention(q, k, v, backend=backend, need_weights=True)
        assert_close(w, steps.A)  # α_ij


def _dead_row_problem():
    gen = torch.Generator().manual_seed(11)
    q, k, v = (randn(2, 5, 4, gen=gen, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 5, 5, dtype=torch.bool)
    mask[0, 1] = False  # batch 0, query 1 may attend to nothing
    mask[1, :, 2] = False
    return q, k, v, mask


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_are_zero_with_zero_gradients(backend, kind):
    q, k, v, mask = _dead_row_problem()
    if kind == "float":
        mask = torch.zeros(mask.shape, dtype=F64).masked_fill(~mask, -math.inf)
    out = attention(q, k, v, mask=mask, backend=backend)
    assert torch.isfinite(out).all()
    assert (out[0, 1] == 0).all()
    assert_close(out, ref_attention(q, k, v, mask)[0])
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all(), backend
    assert (q.grad[0, 1] == 0).all()
    g_ref = torch.autograd.grad(naive_torch(q, k, v, mask).sum(), (q, k, v))
    for g, r in zip((q.grad, k.grad, v.grad), g_ref, strict=True):
        assert_close(g, r)


@pytest.mark.parametrize("backend", ALL)
def test_rows_dead_by_bottom_right_causal(backend):
    gen = torch.Generator().manual_seed(12)
    q, k, v = randn(6, 3, gen=gen, requires_grad=True), randn(2, 3, gen=gen), randn(2, 4, gen=gen)
    out = attention(q, k, v, causal=True, causal_alignment="bottom_right", backend=backend)
    assert (out[:4] == 0).all()  # queries 0..3 precede every key
    assert_close(out, ref_attention(q, k, v, causal="bottom_right")[0])
    out.sum().backward()
    assert (q.grad[:4] == 0).all() and torch.isfinite(q.grad).all()


def test_fully_masked_weights_are_zero():
    q, k, v, mask = _dead_row_problem()
    _, w = attention(q, k, v, mask=mask, need_weights=True)
    assert (w[0, 1] == 0).all()
    assert (w[1, :, 2] == 0).all()
    assert_close(w.sum(-1)[1], torch.ones(5, dtype=F64))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_logits(backend, dtype):
    gen = torch.Generator().manual_seed(13)
    q = randn(2, 9, 8, gen=gen) * 100
    k = randn(2, 9, 8, gen=gen) * 100  # scores ~ ±1e4 · scale
    v = randn(2, 9, 8, gen=gen)
    mask = torch.rand(9, 9, generator=gen) < 0.5
    s = (q @ k.transpose(-1, -2)).abs().max()
    assert s > 1e4
    q, k, v = (x.to(dtype) for x in (q, k, v))
    out = attention(q, k, v, mask=mask, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # Near-ties between huge scores are sensitive to the last bits of q·k: in float32, judged by
    # FlashAttention's rule against plain torch in float32 on the same inputs.
    ref = ref_attention(q, k, v, mask)[0]
    if dtype == F64:
        assert_close(out, ref)
    else:
        flash_rule(out, naive_torch(q, k, v, mask), ref)


def _naive_same_precision(q, k, v, mask, scale):
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask.to(s.dtype)
    return torch.matmul(torch.softmax(s, dim=-1), v)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "Tq, Tk, d, masked",
    [(1, 1, 8, None), pytest.param(97, 97, 59, "bool", marks=pytest.mark.slow), (33, 129, 64, "bool"),
     (40, 17, 16, "float")],
)
def test_low_precision_flash_rule(backend, dtype, Tq, Tk, d, masked):
    gen = torch.Generator().manual_seed(Tq + Tk + d)
    q, k, v = (randn(2, 3, T, d, gen=gen, dtype=dtype) for T in (Tq, Tk, Tk))
    mask = None
    if masked:  # random, but every row keeps its diagonal-ish key: no dead rows for out_pt
        mask = torch.rand(Tq, Tk, generator=gen) < 0.5
        mask[torch.arange(Tq), torch.arange(Tq) % Tk] = True
    if masked == "float":  # an additive bias in the same low dtype
        mask = (randn(Tq, Tk, gen=gen) * 2).masked_fill(~mask, -math.inf).to(dtype)
    scale = 1 / math.sqrt(d)
    try:
        out_pt = _naive_same_precision(q, k, v, mask, scale)
        out = attention(q, k, v, mask=mask, backend=backend)
    except RuntimeError as e:
        if "not implemented" in str(e):
            pytest.skip(f"torch on CPU: {e}")
        raise
    assert out.shape == (2, 3, Tq, d) and out.dtype == dtype
    flash_rule(out, out_pt, ref_attention(q, k, v, mask)[0])


def _gradcheck_cases():
    gen = torch.Generator().manual_seed(17)
    bool_mask = torch.rand(2, 1, 3, 4, generator=gen) < 0.6
    bool_mask[0, 0, 1] = False  # a dead row
    float_mask = randn(3, 4, gen=gen).masked_fill(torch.eye(3, 4, dtype=torch.bool), -math.inf)
    return {
        "plain": dict(Tq=3, Tk=4),
        "bool_mask": dict(Tq=3, Tk=4, mask=bool_mask),
        "float_mask": dict(Tq=3, Tk=4, mask=float_mask),
        "causal_top_left": dict(Tq=4, Tk=3, causal=True),
        "causal_bottom_right": dict(Tq=4, Tk=3, causal=True, causal_alignment="bottom_right"),
        "causal_bottom_right_wide": dict(Tq=2, Tk=5, causal=True, causal_alignment="bottom_right"),
        "scale": dict(Tq=3, Tk=3, scale=0.7),
    }


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("case", list(_gradcheck_cases()))
def test_gradcheck(backend, case):
    kw = dict(_gradcheck_cases()[case])
    Tq, Tk = kw.pop("Tq"), kw.pop("Tk")
    gen = torch.Generator().manual_seed(19)
    q = randn(2, 2, Tq, 3, gen=gen, requires_grad=True)
    k = randn(2, 1, Tk, 3, gen=gen, requires_grad=True)  # broadcast over heads
    v = randn(2, 2, Tk, 2, gen=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention(q, k, v, backend=backend, **kw), (q, k, v)
    )


def test_gradcheck_wrt_float_mask_auto():
    gen = torch.Generator().manual_seed(23)
    q, k, v = (randn(2, 3, 3, gen=gen, requires_grad=True) for _ in range(3))
    bias = randn(3, 3, gen=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, b: attention(q, k, v, mask=b), (q, k, v, bias))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("Tq, Tk", [(0, 4), (4, 0), (0, 0)])
def test_empty_sequences(backend, Tq, Tk):
    q = torch.randn(2, 3, Tq, 5, dtype=F64, requires_grad=True)
    k = torch.randn(2, 3, Tk, 5, dtype=F64)
    v = torch.randn(2, 3, Tk, 7, dtype=F64)
    out = attention(q, k, v, backend=backend)
    assert out.shape == (2, 3, Tq, 7) and out.dtype == F64
    assert (out == 0).all()
    out.sum().backward()
    assert q.grad.shape == q.shape and (q.grad == 0).all()
    if backend in ("auto", "matrix"):
        out, w = attention(q, k, v, backend=backend, need_weights=True, causal=True)
        assert out.shape == (2, 3, Tq, 7) and w.shape == (2, 3, Tq, Tk)


@pytest.mark.parametrize("backend", ALL)
def test_dtype_preserved_and_deterministic(backend):
    gen = torch.Generator().manual_seed(29)
    q, k, v = (randn(2, 37, 16, gen=gen, dtype=torch.float32) for _ in range(3))
    a = attention(q, k, v, causal=True, backend=backend)
    b = attention(q, k, v, causal=True, backend=backend)
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    flash_rule(a, naive_torch(q, k, v, causal="top_left"), ref_attention(q, k, v, causal="top_left")[0])


def test_dropout_weights_are_zeroed_or_rescaled():
    gen = torch.Generator().manual_seed(31)
    q, k, v = (randn(4, 16, 8, gen=gen) for _ in range(3))
    _, w = attention(q, k, v, need_weights=True)
    torch.manual_seed(0)
    out_d, w_d = attention(q, k, v, need_weights=True, dropout_p=0.5)
    kept = w_d != 0
    assert 0.3 < kept.double().mean() < 0.7
    assert_close(w_d[kept], w[kept] * 2)  # survivors are scaled by 1 / (1 - p)
    assert_close(out_d, w_d @ v)  # the output uses the dropped weights


@pytest.mark.parametrize("backend", ["matrix", "torch", "auto"])
def test_dropout_is_unbiased(backend):
    gen = torch.Generator().manual_seed(37)
    q, k, v = randn(1, 6, 4, gen=gen), randn(1, 5, 4, gen=gen), randn(1, 5, 3, gen=gen)
    expected = ref_attention(q, k, v)[0]
    n = 4000
    torch.manual_seed(1)
    out = attention(q.expand(n, 6, 4), k.expand(n, 5, 4), v.expand(n, 5, 3), backend=backend, dropout_p=0.3)
    assert out.shape == (n, 6, 3)
    assert not torch.allclose(out[0], torch.as_tensor(expected[0]))  # dropout did something
    # The mean over n runs estimates the output without dropout; its error is statistical: each
    # component's standard error is std/√n, and 6 standard errors bound it (a chance of ~1e-9).
    se = out.std(0, keepdim=True) / math.sqrt(n)
    gap = (out.mean(0, keepdim=True) - torch.as_tensor(expected)).abs()
    assert (gap <= 6 * se + 1e-12).all(), (gap / se).max()


def test_causal_is_mask_of_definition():
    """causal=True equals the same bool mask passed explicitly (masks built independently)."""
    gen = torch.Generator().manual_seed(41)
    q, k, v = randn(5, 4, gen=gen), randn(8, 4, gen=gen), randn(8, 2, gen=gen)
    m = torch.from_numpy(causal_np(5, 8, "bottom_right"))
    for backend in ALL:
        a = attention(q, k, v, causal=True, causal_alignment="bottom_right", backend=backend)
        assert_close(a, attention(q, k, v, mask=m, backend="matrix"))


@given(problems(max_T=13))
def test_every_backend_gradients_match_naive(p):
    q, k, v = (p[n].clone().requires_grad_() for n in "qkv")
    out_ref = naive_torch(q, k, v, p["mask"], p["causal"], p["scale"])
    dout = torch.randn(out_ref.shape, dtype=F64)
    want = torch.autograd.grad(out_ref, (q, k, v), dout)
    for backend in ALL:
        out = attention(q, k, v, backend=backend, **call_kwargs(p))
        got = torch.autograd.grad(out, (q, k, v), dout)
        for g, w in zip(got, want, strict=True):
            assert torch.isfinite(g).all(), backend
            assert_close(g, w)


@pytest.mark.parametrize("backend", ALL)
def test_float16_inputs_with_float32_bias_beyond_float16_range(backend):
    gen = torch.Generator().manual_seed(43)
    q, k, v = (randn(1, 3, T, 4, gen=gen) for T in (2, 5, 5))
    bias = torch.zeros(2, 5)
    bias[0, 2] = 1e5  # query 0 attends only to key 2
    bias[1] = -7e4  # beyond float16's range; a constant shift of row 1 changes nothing mathematically
    out = attention(q.half(), k.half(), v.half(), mask=bias, backend=backend)
    expected = ref_attention(q.half(), k.half(), v.half(), bias.double())[0]
    assert torch.isfinite(out).all()
    # 7e4 in float32 is exact only to 2**-7, which bounds the error of row 1's scores.
    assert_close(out, expected, atol=2e-2)


def test_auto_resolves_to_the_right_tier():
    from selfattention.functional import resolve_backend

    x = torch.randn(2, 3, 4)
    assert resolve_backend(x, x, x) == "torch"
    assert resolve_backend(x, x, x, need_weights=True) == "matrix"
    assert resolve_backend(x, x, x, mask=torch.zeros(3, 3, requires_grad=True)) == "matrix"
    assert resolve_backend(x, x[:, :0], x[:, :0], backend="torch") == "matrix"  # empty keys
    assert resolve_backend(x, x, x, backend="blockwise") == "blockwise"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend(x, x, x, backend="nope")


@pytest.mark.parametrize("backend", ALL)
def test_one_dim_mask_is_a_key_mask(backend):
    """A (Tk,) mask broadcasts like any other: it says which keys every query may see."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (randn(2, T, 3, gen=gen) for T in (3, 4, 4))
    keys = torch.tensor([True, False, True, True])
    out = attention(q, k, v, mask=keys, backend=backend)
    expected = ref_attention(q, k, v, keys.expand(3, 4))[0]
    assert_close(out, expected)  # float64: ATOL64


@pytest.mark.parametrize("scale", [np.float32(0.5), np.float64(0.5), 1])
def test_scale_accepts_any_real_number(scale):
    gen = torch.Generator().manual_seed(8)
    q, k, v = (randn(1, 3, 4, gen=gen, dtype=torch.float64) for _ in range(3))
    out = attention(q, k, v, scale=scale, backend="matrix")
    assert_close(out, ref_attention(q, k, v, None, scale=float(scale))[0], atol=1e-12)


def test_dropout_accepts_numpy_floats():
    x = torch.randn(2, 4, 3)
    torch.manual_seed(0)
    a = attention(x, x, x, dropout_p=np.float32(0.5), backend="matrix")
    torch.manual_seed(0)
    b = attention(x, x, x, dropout_p=0.5, backend="matrix")
    assert torch.equal(a, b)


# --- dispatcher guarantees ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d, dv", [(0, 3), (3, 0), (0, 0)])
def test_empty_vectors_work_in_every_tier(backend, d, dv):
    """d = 0: every score is 0, so the weights are uniform; d_v = 0: an empty output."""
    q, k = torch.randn(2, 4, d, dtype=F64), torch.randn(2, 5, d, dtype=F64)
    v = torch.randn(2, 5, dv, dtype=F64)
    out = attention(q, k, v, backend=backend)
    assert_close(out, ref_attention(q, k, v)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_that_overflows_the_compute_dtype_is_refused(dtype):
    """float16/bfloat16 compute in float32, so 1e39 overflows all three; float64 takes it."""
    q = torch.randn(1, 3, 4, dtype=dtype)
    with pytest.raises(ValueError, match=r"scale 1e\+39 overflows torch.float32"):
        attention(q, q, q, scale=1e39)
    q64 = q.double()
    assert torch.isfinite(attention(q64, q64, q64, scale=1e39)).all()


def test_auto_never_drops_dropout(monkeypatch):
    """Whatever ``auto`` prefers, a tier without dropout is skipped when dropout_p > 0."""
    from selfattention import functional

    q = torch.randn(1, 2, 3, 4)
    monkeypatch.setitem(functional.PREFERENCE, "cpu", ("blockwise", "triton", "torch", "matrix"))
    assert functional.resolve_backend(q, q, q) == "blockwise"
    assert functional.resolve_backend(q, q, q, dropout_p=0.5) == "torch"
    monkeypatch.setitem(functional.PREFERENCE, "cpu", ("blockwise", "matrix"))
    assert functional.resolve_backend(q, q, q, dropout_p=0.5) == "matrix"
    for backend in ("blockwise",):
        with pytest.raises(ValueError, match=f"backend '{backend}' does not support dropout_p > 0"):
            functional.resolve_backend(q, q, q, backend=backend, dropout_p=0.1)


# --- the tier table: dispatch, auto and the refusals read it -------------------------------------


def _lse(q, k, mask, dtype):
    """log Σ_j exp(s_ij) of each row's allowed scores, computed in ``dtype``, -inf where none is."""
    s = q.to(dtype) @ k.to(dtype).transpose(-2, -1) / math.sqrt(q.shape[-1])
    return s.masked_fill(~mask, -math.inf).logsumexp(-1)


@pytest.mark.parametrize("name", BACKENDS)
def test_each_row_says_what_its_function_returns(name):
    """A row's flags are the truth about its function: (out, weights) where ``weights``, (out, lse)
    where ``lse``, out alone otherwise; in float32 (every tier takes it), by FlashAttention's rule
    against a float32 peer and the float64 reference."""
    from selfattention import functional
    from selfattention._checks import check_inputs

    tier = functional.TIERS[name]
    gen = torch.Generator().manual_seed(11)
    q, k, v = (randn(2, 3, T, 4, gen=gen, dtype=torch.float32) for T in (5, 6, 6))
    mask = torch.rand(5, 6, generator=gen) > 0.3
    mask[1] = False  # a row that may see nothing: lse -inf, weights and output 0
    options = {"need_weights": True} if tier.weights else {}
    result = tier.fn(check_inputs(q, k, v, mask, False, "top_left", None), **options)
    out_ref, w_ref = ref_attention(q, k, v, mask)
    if not (tier.weights or tier.lse):
        assert isinstance(result, torch.Tensor)
        result = (result, None)
    out, extra = result
    flash_rule(out, naive_torch(q, k, v, mask), out_ref)
    if tier.weights:
        w_pt = naive_torch(q, k, torch.eye(6).expand(2, 3, 6, 6), mask)  # the weights, as w @ I
        flash_rule(extra, w_pt, w_ref, what="weights")
    if tier.lse:
        assert extra.shape == (2, 3, 5) and extra[..., 1].isneginf().all()
        live = [0, 2, 3, 4]
        flash_rule(extra[..., live], _lse(q, k, mask, torch.float32)[..., live],
                   _lse(q, k, mask, F64)[..., live], what="lse")


def _row(calls: list, **flags):
    """A throw-away tier named "example": the matrix tier's function, recording what it is given."""
    import dataclasses

    from selfattention import functional
    from selfattention.block_mask import BlockMask

    def example(p, dropout_p=0.0, *, need_weights=False):
        calls.append(p)
        if isinstance(p.mask, BlockMask):  # (a row with block_mask=True is given the map itself)
            p = dataclasses.replace(p, mask=p.mask.to_dense())
        out, w = functional.matrix(p, dropout_p, need_weights=need_weights)
        return (out, w) if flags.get("weights") else out

    return functional.Tier("example", example, **flags)


def test_a_new_tier_is_one_row(monkeypatch):
    """A row added to the table is dispatched, listed, preferred by auto and refused by what it says
    it cannot do, with nothing else changed."""
    from selfattention import functional
    from selfattention.block_mask import BlockMask
    from selfattention.block_mask import causal as block_causal

    calls: list = []
    monkeypatch.setitem(functional.TIERS, "example", _row(calls, weights=True, dropout=True))
    gen = torch.Generator().manual_seed(12)
    q, k, v = (randn(1, 2, 5, 4, gen=gen) for _ in range(3))
    assert "example" in available_backends()
    out, w = attention(q, k, v, causal=True, backend="example", need_weights=True)
    assert len(calls) == 1 and calls[0].causal == "top_left"
    assert_close(out, ref_attention(q, k, v, None, True)[0])
    assert_close(w, ref_attention(q, k, v, None, True)[1])
    monkeypatch.setitem(functional.PREFERENCE, "cpu", ("example", "torch"))
    assert functional.resolve_backend(q, k, v, dropout_p=0.1) == "example"

    # What the row says it cannot do is refused by name, and auto passes it by.
    monkeypatch.setitem(functional.TIERS, "example", _row(calls))
    with pytest.raises(ValueError, match=r"^backend 'example' cannot return weights \(need_weights=True\); "
                                         r"use 'matrix' or 'auto'$"):
        attention(q, k, v, backend="example", need_weights=True)
    with pytest.raises(ValueError, match=r"^backend 'example' does not support dropout_p > 0; use 'matrix' "
                                         r"or 'torch'$"):
        attention(q, k, v, backend="example", dropout_p=0.1)
    assert functional.resolve_backend(q, k, v, need_weights=True) == "matrix"
    assert functional.resolve_backend(q, k, v, dropout_p=0.1) == "torch"
    assert functional.resolve_backend(q, k, v, mask=torch.zeros(5, 5, requires_grad=True)) == "matrix"
    # A BlockMask reaches it dense unless its row takes one; an empty problem goes to a row that takes it.
    bm = block_causal(5, 5, block=16)
    calls.clear()
    attention(q, k, v, mask=bm, backend="example")
    assert calls[-1].mask.dtype == torch.bool and calls[-1].mask.shape == (1, 1, 5, 5)
    monkeypatch.setitem(functional.TIERS, "example", _row(calls, block_mask=True))
    attention(q, k, v, mask=bm, backend="example")
    assert isinstance(calls[-1].mask, BlockMask) and len(calls) == 2
    attention(q[..., :0, :], k, v, backend="example")
    assert len(calls) == 2  # not called: the matrix tier took it
    monkeypatch.setitem(functional.TIERS, "example", _row(calls, empty=True))
    attention(q[..., :0, :], k, v, backend="example")
    assert len(calls) == 3

    # A row that is not available here is not listed, not chosen, and refused by what it needs.
    monkeypatch.setitem(functional.TIERS, "example", _row(calls, available=lambda device: False,
                                                          needs="a device this machine lacks"))
    assert "example" not in available_backends()
    assert functional.resolve_backend(q, k, v) == "torch"
    with pytest.raises(ValueError, match=r"^backend 'example' is not available for cpu tensors: it needs a "
                                         r"device this machine lacks$"):
        attention(q, k, v, backend="example")


def test_the_public_names_of_the_table():
    from selfattention import functional

    assert functional.BACKENDS == ("auto", "matrix", "blockwise", "torch", "triton")
    assert set(functional.PREFERENCE) == {"cpu", "cuda"}
    assert all(t in functional.TIERS for order in functional.PREFERENCE.values() for t in order)
