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
  "never"); ``attention`` takes it as an additive bias.
- ``is_causal`` (a keyword, else ``module.is_causal``, else True, as SDPA's adapter) says whether
  the layer is causal. ``output_attentions=True`` arrives as a keyword: the weights are returned
  (``backend="auto"`` then runs the matrix tier). ``position_bias`` (an additive bias some models
  pass) is added to the scores. ``softcap`` and ``s_aux`` (attention sinks) change the softmax
  itself and are refused. Other keywords (positions, cache and sliding-window sizes, which the mask
  already encodes) are ignored, as SDPA's adapter ignores them.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .. import kernels
from ..functional import BACKENDS, attention
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
    if backend == "triton" and not kernels.available():
        raise ValueError(
            "backend 'triton' is not available here: it needs Triton and a CUDA device "
            "(or TRITON_INTERPRET=1 for CPU tensors)"
        )
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
    weights (B, H, S, Sk) when ``output_attentions=True`` is passed, else None).
    """
    for word, what in _UNSUPPORTED.items():
        if kwargs.get(word) is not None:
            raise ValueError(
                f"attn_implementation 'selfattention' does not support {what}; use 'eager' for this model"
            )
    B, H, S, _ = query.shape
    Hkv, Sk = key.shape[1], key.shape[2]
    if H % Hkv:
        raise ValueError(f"query has {H} heads and key {Hkv}: expected a number of key heads dividing {H}")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # A missing mask leaves causality to the flag, as SDPA's is_causal: top-left, and none for S == 1.
    causal = attention_mask is None and bool(is_causal) and S > 1
    mask = attention_mask
    if kwargs.get("position_bias") is not None:
        mask = _with_bias(mask, kwargs["position_bias"])
    need_weights = bool(kwargs.get("output_attentions", False))
    if Hkv != H:  # grouped-query attention by broadcasting, no copies of K and V
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
    return out, None if weights is None else weights.reshape(B, H, S, Sk)
