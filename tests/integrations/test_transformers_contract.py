"""The attention function's side of transformers' contract, called directly, and ``register``'s errors.

Expected values come from ``tests/_rules.py``'s float64 NumPy reference (loops over rows), with
grouped-query heads expanded there by repetition: head h reads key/value head h // (H / Hkv).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from _hf import transformers
from _rules import assert_close, causal_np, randn, ref_attention

import selfattention.integrations.transformers as hf
from selfattention import kernels


def _qkv(B=2, H=4, Hkv=2, S=5, Sk=7, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return randn(B, H, S, d, gen=gen), randn(B, Hkv, Sk, d, gen=gen), randn(B, Hkv, Sk, d, gen=gen)


def _expected(q, k, v, mask=None, causal=None, scale=None):
    G = q.shape[1] // k.shape[1]
    out, w = ref_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), mask=mask,
                           causal=causal, scale=scale)
    return torch.from_numpy(out).transpose(1, 2), torch.from_numpy(w)  # (B, S, H, d), (B, H, S, Sk)


def _module(is_causal=True, training=False):
    return SimpleNamespace(is_causal=is_causal, training=training)


def test_output_layout_and_grouped_heads():
    q, k, v = _qkv()
    mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    out, w = hf.attention_forward(_module(), q, k, v, mask, scaling=0.3)
    assert w is None  # weights only when output_attentions=True
    assert out.shape == (2, 5, 4, 8) and out.is_contiguous()
    assert_close(out, _expected(q, k, v, mask=mask, scale=0.3)[0])


@pytest.mark.parametrize("backend", ["auto", "matrix"])
def test_weights_when_asked(backend):
    q, k, v = _qkv()
    mask = torch.rand(2, 4, 5, 7, generator=torch.Generator().manual_seed(2)) > 0.3  # per-head mask
    out, w = hf.attention_forward(_module(), q, k, v, mask, backend=backend, output_attentions=True)
    exp_out, exp_w = _expected(q, k, v, mask=mask)
    assert_close(out, exp_out)
    assert_close(w, exp_w)


def test_missing_mask_is_causal_top_left_like_sdpa():
    q, k, v = _qkv(S=5, Sk=9)  # the static-cache prefill: fewer queries than keys, unused slots last
    out, _ = hf.attention_forward(_module(is_causal=True), q, k, v, None)
    assert_close(out, _expected(q, k, v, causal="top_left")[0])
    assert not torch.allclose(out, _expected(q, k, v, causal="bottom_right")[0].to(out.dtype))


def test_missing_mask_one_query_sees_every_key():
    q, k, v = _qkv(S=1, Sk=9)  # decoding one token: a top-left diagonal would let it see key 0 only
    out, _ = hf.attention_forward(_module(is_causal=True), q, k, v, None)
    assert_close(out, _expected(q, k, v)[0])


def test_is_causal_keyword_wins_over_the_module():
    q, k, v = _qkv(S=6, Sk=6)
    out, _ = hf.attention_forward(_module(is_causal=True), q, k, v, None, is_causal=False)
    assert_close(out, _expected(q, k, v)[0])
    out, _ = hf.attention_forward(_module(is_causal=False), q, k, v, None)
    assert_close(out, _expected(q, k, v)[0])
    out, _ = hf.attention_forward(_module(is_causal=False), q, k, v, None, is_causal=True)
    assert_close(out, _expected(q, k, v, causal="top_left")[0])


def test_fully_masked_rows_give_zeros():
    q, k, v = _qkv()
    mask = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    mask[0, :, 1:3] = False  # two query rows that may attend to nothing
    mask[1] = False  # a sequence that is all padding
    for backend in ("auto", "matrix", "blockwise", "torch"):
        out, _ = hf.attention_forward(_module(), q, k, v, mask, backend=backend)
        assert torch.isfinite(out).all()
        assert (out[0, 1:3] == 0).all() and (out[1] == 0).all()
        assert_close(out, _expected(q, k, v, mask=mask)[0])


def test_float_mask_and_position_bias_are_added():
    q, k, v = _qkv()
    gen = torch.Generator().manual_seed(3)
    bias = randn(1, 4, 5, 7, gen=gen)
    allowed = torch.rand(2, 1, 5, 7, generator=gen) > 0.2
    never = torch.finfo(torch.float64).min  # how eager-style masks say "never"
    additive = torch.zeros(2, 1, 5, 7, dtype=torch.float64).masked_fill(~allowed, never)
    for mask in (allowed, additive):
        out, _ = hf.attention_forward(_module(is_causal=False), q, k, v, mask, position_bias=bias)
        assert_close(out, _expected(q, k, v, mask=bias.masked_fill(~allowed, float("-inf")))[0])


def test_position_bias_without_mask_keeps_causality():
    q, k, v = _qkv(S=6, Sk=6)
    bias = randn(1, 4, 6, 6, gen=torch.Generator().manual_seed(4))
    out, _ = hf.attention_forward(_module(is_causal=True), q, k, v, None, position_bias=bias)
    keep = torch.from_numpy(causal_np(6, 6))
    assert_close(out, _expected(q, k, v, mask=bias.masked_fill(~keep, float("-inf")))[0])


@pytest.mark.parametrize("word", ["softcap", "s_aux"])
def test_unsupported_keywords_are_refused(word):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=f"does not support .*{word}"):
        hf.attention_forward(_module(), q, k, v, None, **{word: torch.ones(1) if word == "s_aux" else 30.0})
    hf.attention_forward(_module(), q, k, v, None, softcap=None, s_aux=None)  # None means "not used"


def test_heads_that_do_not_group_are_refused():
    q, k, v = _qkv(H=4, Hkv=3)
    with pytest.raises(ValueError, match="query has 4 heads and key 3"):
        hf.attention_forward(_module(), q, k, v, None)


def test_dropout_reaches_the_tier():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="does not support dropout_p > 0"):
        hf.attention_forward(_module(training=True), q, k, v, None, dropout=0.1, backend="blockwise")
    torch.manual_seed(0)
    out, _ = hf.attention_forward(_module(training=True), q, k, v, None, dropout=0.5, is_causal=False)
    assert not torch.allclose(out, _expected(q, k, v)[0].to(out.dtype))


# --- register ------------------------------------------------------------------------------------

def test_register_returns_the_name_and_fills_both_interfaces():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert hf.register(name="selfattention_test") == "selfattention_test"
    assert "selfattention_test" in transformers.AttentionInterface._global_mapping
    assert "selfattention_test" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    hf.register(backend="matrix", name="selfattention_test")  # again: replaces what it runs


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(backend="fast"), "backend must be one of"),
        (dict(backend=None), "backend must be one of"),
        (dict(name=""), "name must be a non-empty string"),
        (dict(name="paged|x"), "name must be a non-empty string"),
        (dict(name="sdpa"), "'sdpa' is an attention implementation of transformers itself"),
        (dict(name="eager"), "'eager' is an attention implementation of transformers itself"),
    ],
)
def test_register_errors(kwargs, error):
    with pytest.raises(ValueError, match=error):
        hf.register(**kwargs)


@pytest.mark.skipif(kernels.available(), reason="Triton can run here")
def test_register_triton_where_it_cannot_run():
    with pytest.raises(ValueError, match="backend 'triton' is not available here"):
        hf.register(backend="triton")


def test_register_refuses_old_or_missing_transformers(monkeypatch):
    # sys.modules' entry, not our handle: loading a model can swap transformers' module object.
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.52.4")
    with pytest.raises(ImportError, match=r"needs transformers >= 4\.53 .*found 4\.52\.4"):
        hf.register()
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ImportError, match="needs the transformers package"):
        hf.register()
