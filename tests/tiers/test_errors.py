"""Bad input at the public boundary: TypeError/ValueError naming the argument, shape or dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from selfattention import attention, available_backends, blockwise_attention

BACKENDS = ["auto", *available_backends()]


def qkv(Tq=3, Tk=4, d=5, dv=6):
    return torch.randn(2, Tq, d), torch.randn(2, Tk, d), torch.randn(2, Tk, dv)


@pytest.fixture(params=["attention", "blockwise_attention"])
def fn(request):
    """Both public entry points validate the same way."""
    return attention if request.param == "attention" else blockwise_attention


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize(
    "bad, tname", [(np.ones((2, 3, 5)), "ndarray"), ([[1.0]], "list"), (None, "NoneType")]
)
def test_not_a_tensor(fn, which, bad, tname):
    args = dict(zip("qkv", qkv(), strict=True))
    args[which] = bad
    with pytest.raises(TypeError, match=rf"{which} must be a torch.Tensor, got {tname}"):
        fn(**args)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_one_dim(fn, which):
    args = dict(zip("qkv", qkv(), strict=True))
    args[which] = torch.randn(5)
    with pytest.raises(ValueError, match=rf"{which} has shape \(5,\), expected at least 2 dims"):
        fn(**args)


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn])
def test_not_floating(fn, which, dtype):
    args = dict(zip("qkv", qkv(), strict=True))
    args[which] = args[which].to(dtype)
    with pytest.raises(TypeError, match=rf"{which} has dtype {dtype}, expected a floating-point"):
        fn(**args)


@pytest.mark.parametrize("make", [lambda x: x.to_sparse(), lambda x: torch.nested.nested_tensor(list(x))],
                         ids=["sparse", "nested"])
def test_not_dense(fn, make):
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"q is a (torch\.sparse_coo|nested) tensor; expected a dense one"):
        fn(make(q), k, v)


def test_d_mismatch(fn):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q has shape \(2, 3, 5\) and k has shape \(2, 4, 7\)"):
        fn(q, torch.randn(2, 4, 7), v)


def test_keys_values_count_mismatch(fn):
    q, k, _ = qkv()
    with pytest.raises(ValueError, match=r"k has shape \(2, 4, 5\) and v has shape \(2, 9, 6\)"):
        fn(q, k, torch.randn(2, 9, 6))


def test_unbroadcastable_leading_dims(fn):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"leading dims of q \(2, 3, 5\), k \(3, 4, 5\) and v \(2, 4, 6\)"):
        fn(q, torch.randn(3, 4, 5), v)


@pytest.mark.parametrize("shape", [(3, 5), (5,), (2, 3, 3, 4), (3, 3, 4), (1, 4, 4), (4, 1)])
def test_unbroadcastable_mask(fn, shape):
    q, k, v = qkv()
    mask = torch.ones(shape, dtype=torch.bool)
    expected = rf"mask has shape {re_shape(shape)}, expected broadcastable to \(2, 3, 4\)"
    with pytest.raises(ValueError, match=expected):
        fn(q, k, v, mask=mask)


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("bad, match", [(np.ones((3, 4), dtype=bool), "ndarray"), ([[True]], "list")])
def test_mask_not_a_tensor(fn, bad, match):
    with pytest.raises(TypeError, match=rf"mask must be a torch.Tensor or None, got {match}"):
        fn(*qkv(), mask=bad)


def test_mask_int_dtype(fn):
    with pytest.raises(TypeError, match=r"mask has dtype torch.int64, expected bool"):
        fn(*qkv(), mask=torch.ones(3, 4, dtype=torch.int64))


@pytest.mark.parametrize("which", ["k", "v"])
def test_mixed_dtypes(fn, which):
    args = dict(zip("qkv", qkv(), strict=True))
    args[which] = args[which].double()
    with pytest.raises(TypeError, match=rf"{which} has dtype torch.float64 but q has torch.float32"):
        fn(**args)


@pytest.mark.parametrize("which", ["k", "v", "mask"])
def test_mixed_devices(fn, which):
    args = dict(zip("qkv", qkv(), strict=True))
    args["mask"] = torch.ones(3, 4, dtype=torch.bool)
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=rf"{which} is on meta but q is on cpu"):
        fn(**args)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_scale_value(fn, scale):
    with pytest.raises(ValueError, match=rf"scale must be a finite number > 0, got {scale!r}"):
        fn(*qkv(), scale=scale)


@pytest.mark.parametrize("scale", [True, "0.5", torch.tensor(0.5), [0.5]])
def test_scale_type(fn, scale):
    with pytest.raises(TypeError, match="scale must be a positive float or None"):
        fn(*qkv(), scale=scale)


@pytest.mark.parametrize("causal", [1, None, "yes"])
def test_causal_type(fn, causal):
    with pytest.raises(TypeError, match=rf"causal must be a bool, got {causal!r}"):
        fn(*qkv(), causal=causal)


@pytest.mark.parametrize("alignment", ["bottom-right", "top", None])
def test_unknown_alignment(fn, alignment):
    with pytest.raises(ValueError, match=rf"causal_alignment must be one of .*got {alignment!r}"):
        fn(*qkv(), causal=True, causal_alignment=alignment)


@pytest.mark.parametrize("backend", ["triton_typo", "Matrix", "", None])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match=rf"backend must be one of .*got {backend!r}"):
        attention(*qkv(), backend=backend)


@pytest.mark.parametrize("backend", ["blockwise", "torch"])
def test_need_weights_unsupported_backend(backend):
    with pytest.raises(ValueError, match=rf"backend '{backend}' cannot return weights"):
        attention(*qkv(), backend=backend, need_weights=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan])
def test_dropout_out_of_range(backend, p):
    with pytest.raises(ValueError, match=rf"dropout_p must be a number in \[0, 1\), got {re_repr(p)}"):
        attention(*qkv(), backend=backend, dropout_p=p)


@pytest.mark.parametrize("p", [True, "0.1", None])
def test_dropout_wrong_type(p):
    with pytest.raises(TypeError, match=rf"dropout_p must be a number in \[0, 1\), got {re_repr(p)}"):
        attention(*qkv(), dropout_p=p)


@pytest.mark.parametrize("flag", ["yes", 0, None])
def test_need_weights_must_be_bool(flag):
    with pytest.raises(TypeError, match=rf"need_weights must be a bool, got {re_repr(flag)}"):
        attention(*qkv(), need_weights=flag)


def re_repr(x):
    return repr(x).replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")


def test_errors_do_not_depend_on_backend_for_shapes():
    """Input checks run before dispatch: every backend reports the same message."""
    q, k, v = qkv()
    msgs = set()
    for backend in BACKENDS:
        with pytest.raises(ValueError) as info:
            attention(q, k[:, :, :2], v, backend=backend)
        msgs.add(str(info.value))
    assert len(msgs) == 1


@given(st.lists(st.lists(st.integers(0, 3), max_size=4), min_size=1, max_size=3))
def test_broadcast_helper_agrees_with_torch(shapes):
    """masks.broadcast replaces torch.broadcast_shapes (which imports sympy, slow to start)."""
    from selfattention.masks import broadcast

    try:
        expected = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        with pytest.raises(ValueError, match="do not broadcast"):
            broadcast(*shapes)
    else:
        assert broadcast(*shapes) == expected


# --- one rule, one message, at every door ----------------------------------------------------------


def _kernel(monkeypatch):
    """The kernel's door (``flash_attention``), its checks reachable on the CPU: told it runs in
    Triton's interpreter, it checks everything before it would launch (no input here gets that far)."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from selfattention.kernels import launch

    monkeypatch.setattr(launch, "interpreting", lambda: True)
    return launch.flash_attention


def _doors(monkeypatch):
    """Every public door that takes q (B, H, Tq, d), k, v (B, H, Tk, d) and a mask, by name."""
    from selfattention.integrations import transformers as hf
    from selfattention.integrations.torch_library import attention_op

    return {"attention": attention, "blockwise_attention": blockwise_attention, "attention_op": attention_op,
            "flash_attention": _kernel(monkeypatch),
            "transformers": lambda q, k, v, mask=None, **kw: hf.attention_forward(None, q, k, v, mask, **kw)}


def test_every_door_gives_one_alignment_message(monkeypatch):
    q = torch.randn(2, 4, 3, 8)
    want = r"^causal_alignment must be one of \('top_left', 'bottom_right'\), got 'middle'$"
    for name, door in _doors(monkeypatch).items():
        if name != "transformers":  # (it is always top-left, as SDPA's is_causal)
            with pytest.raises(ValueError, match=want):
                door(q, q, q, causal=True, causal_alignment="middle")
    from selfattention import block_mask, masks

    for build in (masks.causal, block_mask.causal, lambda *a: block_mask.sliding_window(*a[:2], 2, a[2])):
        with pytest.raises(ValueError, match=want.replace("causal_alignment", "alignment")):
            build(3, 3, "middle")


@pytest.mark.parametrize("shape", [(7,), (3, 5, 5), (1, 2, 4, 3, 5), ()])
def test_every_door_gives_one_mask_shape_message(monkeypatch, shape):
    """q (2, 4, 3, 8) against k, v (2, 4, 5, 8): a mask must broadcast to (2, 4, 3, 5); each door
    says so in the same words (attention() lets a mask add batch dims, so (1, 2, 4, 3, 5) is
    refused only by the doors whose output has a fixed shape)."""
    from selfattention import MultiHeadAttention, SelfAttention

    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 5, 8)
    mask = torch.ones(shape, dtype=torch.bool)
    want = rf"^mask has shape {re_repr(shape)}, expected broadcastable to \(2, 4, 3, 5\)"
    for name, door in _doors(monkeypatch).items():
        if len(shape) > 4 and name in ("attention", "blockwise_attention"):
            continue
        with pytest.raises(ValueError, match=("^attention_" + want[1:]) if name == "transformers" else want):
            door(q, k, k, mask=mask)
    with pytest.raises(ValueError, match=want + "$"):
        MultiHeadAttention(32, 4).heads(q, k, k, mask=mask)
    with pytest.raises(ValueError, match=rf"^mask has shape {re_repr(shape)}, expected broadcastable to "
                                         rf"\(2, 3, 3\)$"):
        SelfAttention(8)(torch.randn(2, 3, 8), mask=mask)


def test_the_kernel_names_the_dtypes_it_takes(monkeypatch):
    """The kernel's door gives the one dtype message, naming its own dtypes (float64 is not one)."""
    flash_attention = _kernel(monkeypatch)
    q = torch.randn(1, 1, 4, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^q has dtype torch\.float64, expected a floating-point dtype the "
                                        r"kernel takes: one of float16, bfloat16, float32$"):
        flash_attention(q, q, q)
    with pytest.raises(TypeError, match=r"^k has dtype torch\.float16 but q has torch\.float32; "
                                        r"expected one dtype$"):
        flash_attention(q.float(), q.half(), q.half())


def test_a_block_mask_names_the_dims_it_pairs_with():
    """A block map's (Bm, Hm) pair with the last two leading dims; with fewer or more than two,
    the message says which."""
    from selfattention import block_mask

    bm = block_mask.documents(torch.zeros(2, 9, dtype=torch.long), block=16)  # (2, 1, 9, 9)
    x = torch.randn(3, 9, 4)
    with pytest.raises(ValueError, match=r"^block mask has shape \(2, 1, 9, 9\), expected broadcastable to "
                                         r"\(1, 3, 9, 9\) \(its \(Bm, Hm\) pair with the last two leading "
                                         r"dims of \(3,\)\)$"):
        attention(x, x, x, mask=bm)
