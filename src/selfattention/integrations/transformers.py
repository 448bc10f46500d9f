"""Our attention under Hugging Face ``transformers`` models.

    from selfattention.integrations.transformers import register
    register()                      # once per process; register(backend="blockwise") picks a tier
    model = AutoModel.from_pretrained(path, attn_implementation="selfattention")
    model.set_attn_implementation("selfattention")      # or switch a model already loaded

Every attention of the model then runs through ``selfattention.attention``. Needs transformers
>= 4.53 (``AttentionInterface`` appeared in 4.51, but until ``AttentionMaskInterface`` in 4.53 a
model gave a new implementation no padding mask at all); tested with 5.24.

The contract, as transformers defines it (``integrations/sdpa_attention.py``, ``masking_utils.py``):

- The model calls ``fn(module, query, key, value, attention_mask, scaling=, dropout=, **kwargs)``
  with query (B, H, S, d) and key, value (B, Hkv, Sk, d), Hkv dividing H (grouped-query
  attention: query head h reads key/value head h // (H / Hkv)), and wants ``(out, weights)``
  back: out (B, S, H, d) contiguous, weights (B, H, S, Sk) or None. ``dropout`` is already 0
  outside training; ``scaling`` None means 1/√d.
- The mask comes from the mask function registered under the same name: transformers' own SDPA
  mask builder, boolean, **True = may attend** (our polarity), (B, 1, S, Sk), with causality,
  padding, sliding windows and cache offsets already in it. It returns None where a flag can do
  the work: no padding and S == Sk or S == 1, or a prefill into an empty static cache (S < Sk,
  the unused slots last). None then means what it means to SDPA: causal along the *top-left*
  diagonal when the layer is causal and S > 1 (query i sees keys 0…i; bottom-right would let the
  prefill see the empty slots), and no mask when S == 1 (one new token sees every cached key).
  A 4-D mask a user or an older model passes may instead be float (additive, finfo.min for
  "never"); ``attention`` takes it as an additive bias. A mask or bias must broadcast to
  (B, H, S, Sk), H the query heads: one per key/value head would act on a whole group and is
  refused, as ``attention()``, ``MultiHeadAttention`` and the custom operator refuse it.
- ``is_causal`` (a keyword, else ``module.is_causal``, else True, as SDPA's adapter) says whether
  the layer is causal. ``output_attentions=True`` arrives as a keyword: the weights are returned
  (``backend="auto"`` then runs the matrix tier), and they are the tensor the output is computed
  from, so gradients reach them as eager's (K and V are then repeated per query head, as eager
  does, instead of broadcast). GPT-2 in transformers 5.x never passes the keyword.
  ``position_bias`` (an additive bias some models pass) is added to the scores. ``softcap`` and
  ``s_aux`` (attention sinks) change the softmax itself and are refused. Other keywords
  (positions, cache and sliding-window sizes, which the mask already encodes) are ignored, as
  SDPA's adapter ignores them.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .._checks import check_dtype
from ..functional import BACKENDS, TIERS, attention, available_backends
from ..masks import check_mask_shape
from ._gqa import grouped_mask

MIN_VERSION = (4, 53)
_OURS: set[str] = set()  # names this module registered (and may register again)
_UNSUPPORTED = {
    "softcap": "logit soft-capping (softcap)",
    "s_aux": "attention sinks (s_aux)",
}


def _transformers():
    """``transformers``, or ImportError when it is missing or older than ``MIN_VERSION``."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "selfattention.integrations.transformers needs the transformers package (>= 4.53): "
            "pip install 'transformers>=4.53'"
        ) from e
    found = re.match(r"(\d+)\.(\d+)", transformers.__version__)
    if found is None or tuple(int(x) for x in found.groups()) < MIN_VERSION:
        raise ImportError(
            f"selfattention.integrations.transformers needs transformers >= 4.53 (its "
            f"AttentionMaskInterface), found {transformers.__version__}"
        )
    return transformers


def register(backend: str = "auto", name: str = "selfattention") -> str:
    """Register our attention (and its mask function) with transformers under ``name``; returns it.

    ``backend`` is any of ``selfattention.functional.BACKENDS`` (``"auto"``: the fastest tier that
    can do each call). Registering a name again replaces what it runs, so
    ``register(backend="matrix")`` switches every model already using ``"selfattention"``.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto" and backend not in available_backends():
        raise ValueError(f"backend {backend!r} is not available here: it needs {TIERS[backend].needs}")
    if not isinstance(name, str) or not name or name.startswith("paged|"):
        raise ValueError(f"name must be a non-empty string without the 'paged|' prefix, got {name!r}")
    _transformers()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if name not in _OURS and (name == "eager" or name in AttentionInterface._global_mapping):
        raise ValueError(
            f"name {name!r} is an attention implementation of transformers itself; choose another name"
        )

    def selfattention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, backend=backend,
            **kwargs,
        )

    AttentionInterface.register(name, selfattention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)  # bool, True = may attend: see the module notes
    _OURS.add(name)
    return name


def _with_bias(mask: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
    """One additive mask from ``position_bias`` and the model's mask (bool or additive)."""
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return bias.masked_fill(~mask, float("-inf"))
    return bias + mask


def _check_call(query, key, value, biases: dict[str, Any]) -> None:
    """The model's tensors, or TypeError / ValueError naming the bad one: query (B, H, S, d), key
    and value (B, Hkv, Sk, d) with Hkv dividing H, and each mask or bias broadcastable to
    (B, H, S, Sk): one per query head or one for all, never one per key/value head (that would be
    applied to a whole group of query heads)."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected 4 dims (B, heads, T, d)")
        check_dtype(name, x, same_as=None if name == "query" else ("query", query))
    (B, H, S, d), (Bk, Hkv, Sk, dk) = query.shape, key.shape
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"query has {H} heads and key {Hkv}: expected a number of key heads dividing {H}")
    if Bk != B or dk != d or value.shape[:3] != key.shape[:3]:
        raise ValueError(f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}: "
                         f"expected query (B, H, S, d), key (B, Hkv, Sk, d) and value (B, Hkv, Sk, d_v)")
    full = (B, H, S, Sk)
    for name, m in biases.items():
        if m is None:
            continue
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(m).__name__}")
        if not m.is_floating_point() and (name == "position_bias" or m.dtype != torch.bool):
            want = "floating point (an additive bias)" if name == "position_bias" else (
                "bool (True = may attend) or floating point (additive)")
            raise TypeError(f"{name} has dtype {m.dtype}, expected {want}")
        per_kv = " (one per key/value head is not: expand it to the query heads)" if Hkv != H else ""
        check_mask_shape(name, m.shape, full, note=f", {H} query heads{per_kv}")


def attention_forward(
    module: torch.nn.Module | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    backend: str = "auto",
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention contract on ``selfattention.attention`` (see the module notes).

    query (B, H, S, d), key and value (B, Hkv, Sk, d) → (out (B, S, H, d) contiguous,
    weights (B, H, S, Sk) when ``output_attentions=True`` is passed, else None). The weights are
    the very tensor out is computed from (as eager's), so gradients reach them.
    """
    for word, what in _UNSUPPORTED.items():
        if kwargs.get(word) is not None:
            raise ValueError(
                f"attn_implementation 'selfattention' does not support {what}; use 'eager' for this model"
            )
    bias = kwargs.get("position_bias")
    _check_call(query, key, value, {"attention_mask": attention_mask, "position_bias": bias})
    B, H, S, _ = query.shape
    Hkv = key.shape[1]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # A missing mask leaves causality to the flag, as SDPA's is_causal: top-left, and none for S == 1.
    causal = attention_mask is None and bool(is_causal) and S > 1
    mask = attention_mask if bias is None else _with_bias(attention_mask, bias)
    need_weights = bool(kwargs.get("output_attentions", False))
    if Hkv != H and need_weights:
        # Weights (B, H, S, Sk) straight from the tier, never a reshaped view of them (which the
        # output would not be computed from): K and V repeated per query head, as eager does.
        key, value = key.repeat_interleave(H // Hkv, 1), value.repeat_interleave(H // Hkv, 1)
    elif Hkv != H:  # grouped-query attention by broadcasting, no copies of K and V
        query = query.unflatten(1, (Hkv, H // Hkv))  # (B, Hkv, G, S, d)
        key, value = key.unsqueeze(2), value.unsqueeze(2)  # (B, Hkv, 1, Sk, d)
        mask = grouped_mask(mask, H, Hkv)
    result = attention(
        query, key, value,
        mask=mask,
        causal=causal,
        causal_alignment="top_left",
        scale=scaling,
        need_weights=need_weights,
        backend=backend,
        dropout_p=dropout,
    )
    out, weights = result if need_weights else (result, None)
    out = out.reshape(B, H, S, value.shape[-1]).transpose(1, 2).contiguous()  # (B, S, H, d_v)
    return out, weights  # weights: (B, H, S, Sk), the tensor out was computed from, or None
