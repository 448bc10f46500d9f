"""Attention as ``nn.Module``s: the lecture's one-head layer and multi-head attention.

Modules take (B, T, D) batch-first inputs and call ``selfattention.attention`` (the dispatcher);
they never call a tier directly. They check their own inputs with the shared rules (``_checks``,
``masks``), so each door gives the same message as ``attention``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._checks import check_dtype
from ._system import check_fits
from .functional import attention, resolve_backend
from .masks import check_mask_shape

if TYPE_CHECKING:
    from .distributed.context import ContextParallel


def _check_x(name: str, x: object, d_model: int, weight: torch.Tensor) -> torch.Tensor:
    """x must be (B, T, d_model) with the layer's ``weight``'s dtype and device (torch would say
    only "mat1 and mat2 must have the same dtype")."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_dtype("the layer's weight", weight)  # e.g. layer.to(torch.float8_e4m3fn): no tier computes in it
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (B, T, {d_model})")
    if x.dtype != weight.dtype and not (x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
        # (under autocast, Linear takes mixed floating dtypes by design)
        hint = f"{name}.to({weight.dtype})" + (f" or layer.to({x.dtype})" if x.is_floating_point() else "")
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's weights have {weight.dtype}: {hint}")
    if x.device != weight.device:
        raise ValueError(f"{name} is on {x.device} but the layer's weights are on {weight.device}")
    return x


def _check_mask(mask: object, target: tuple[int, ...]) -> None:
    """A module's mask must broadcast to exactly ``target``: it may not add batch dims."""
    if isinstance(mask, torch.Tensor):  # (None, or a wrong type that attention() reports)
        check_mask_shape("mask", mask.shape, target)


def _positive(name: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


class SelfAttention(nn.Module):
    """One head of self-attention, exactly the lecture's layer.

    ``w_q``, ``w_k``, ``w_v`` are the learnable W_Q, W_K, W_V: ``w_q.weight`` has the lecture's
    shape (d_k, D). For x (B, T, D): q = x W_Qᵀ (B, T, d_k), k likewise, v (B, T, d_v), and the
    output is softmax(q kᵀ/√d_k) v, (B, T, d_v). There is no output projection (the lecture has
    none); ``MultiHeadAttention`` adds one.
    """

    def __init__(self, d_model: int, d_k: int | None = None, d_v: int | None = None, bias: bool = False):
        super().__init__()
        self.d_model = _positive("d_model", d_model)
        self.d_k = _positive("d_k", d_k if d_k is not None else d_model)
        self.d_v = _positive("d_v", d_v if d_v is not None else d_model)
        check_fits(4 * d_model * (2 * self.d_k + self.d_v), f"SelfAttention({d_model}, d_k={self.d_k}, "
                   f"d_v={self.d_v})'s float32 weights")
        self.w_q = nn.Linear(d_model, self.d_k, bias=bias)
        self.w_k = nn.Linear(d_model, self.d_k, bias=bias)
        self.w_v = nn.Linear(d_model, self.d_v, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        causal_alignment: str = "top_left",
        need_weights: bool = False,
        backend: str = "auto",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) → z (B, T, d_v), or (z, weights (B, T, T)) with ``need_weights``.

        ``mask`` is boolean (True = may attend) or additive, broadcastable to (B, T, T); a
        (B, 1, T|1, T) mask such as ``masks.from_lengths`` builds is accepted too.
        """
        _check_x("x", x, self.d_model, self.w_q.weight)
        B, T, _ = x.shape
        if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[1] == 1:
            mask = mask.squeeze(1)  # the head dim of a multi-head mask; this layer has one head
        _check_mask(mask, (B, T, T))
        q, k, v = self.w_q(x), self.w_k(x), self.w_v(x)  # (B, T, d_k), (B, T, d_k), (B, T, d_v)
        return attention(
            q, k, v,
            mask=mask,
            causal=causal,
            causal_alignment=causal_alignment,
            need_weights=need_weights,
            backend=backend,
        )


@dataclass
class KVCache:
    """Keys and values of the positions seen so far, for decoding one token at a time.

    ``MultiHeadAttention.forward(x, cache=c)`` projects only the new positions x, appends their
    k and v here, and lets the new queries attend to everything stored: generating T tokens then
    costs O(T) projections instead of O(T²). Empty until the first call.
    """

    k: torch.Tensor | None = None  # (B, Hkv, T_seen, d)
    v: torch.Tensor | None = None  # (B, Hkv, T_seen, d)

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, T_new, d) after what is there; returns all of them (B, Hkv, T_seen, d)."""
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            if k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3]:
                raise ValueError(f"cache holds keys of shape {tuple(self.k.shape)}; new keys "
                                 f"{tuple(k.shape)} must match it in all but dim 2 (positions)")
            self.k = torch.cat([self.k, k], dim=2)  # (B, Hkv, T_seen + T_new, d)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


class MultiHeadAttention(nn.Module):
    """Multi-head attention, batch-first, with an output projection.

    ``num_heads`` query heads of size d = d_model / num_heads share ``num_kv_heads`` key/value
    heads (grouped-query attention; default: one each, ordinary multi-head attention). Query head h
    reads key/value head h // (num_heads / num_kv_heads). ``forward(x, context=c)`` is
    cross-attention: queries from x, keys and values from c.

    The one packed projection ``in_proj`` holds, row-wise, W_Q (D rows), then W_K and W_V
    (num_kv_heads · d rows each); only this class reads that layout: ask ``project`` for q, k, v,
    ``head_projections`` for one head's W's, and build the packed weight with ``pack_in_proj``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.d_model = _positive("d_model", d_model)
        self.num_heads = _positive("num_heads", num_heads)
        self.num_kv_heads = _positive("num_kv_heads", num_kv_heads if num_kv_heads is not None else num_heads)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be divisible by num_kv_heads={self.num_kv_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.head_dim = d_model // num_heads
        self.dropout = float(dropout)
        check_fits(4 * d_model * (2 * d_model + 2 * self._d_kv),
                   f"MultiHeadAttention({d_model}, {num_heads})'s float32 weights")
        # One matrix for q, k and v: a single matmul when x is also the context.
        self.in_proj = nn.Linear(d_model, d_model + 2 * self._d_kv, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    @property
    def _d_kv(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def _sizes(self) -> list[int]:
        """Rows of in_proj for Q, K, V."""
        return [self.d_model, self._d_kv, self._d_kv]

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, d)

    def project(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, Tq, d) from x (B, Tq, D); k, v (B, Hkv, Tk, d) from context (B, Tk, D), or x."""
        _check_x("x", x, self.d_model, self.in_proj.weight)
        if context is None:
            q, k, v = self.in_proj(x).split(self._sizes, dim=-1)  # (B, T, D), (B, T, Dkv) ×2
        else:
            _check_x("context", context, self.d_model, self.in_proj.weight)
            if context.shape[0] != x.shape[0]:
                raise ValueError(f"context has batch {context.shape[0]}, x has {x.shape[0]}")
            w, b = self.in_proj.weight, self.in_proj.bias
            D = self.d_model
            q = nn.functional.linear(x, w[:D], None if b is None else b[:D])  # (B, Tq, D)
            kv = nn.functional.linear(context, w[D:], None if b is None else b[D:])  # (B, Tk, 2 Dkv)
            k, v = kv.split(self._sizes[1:], dim=-1)  # (B, Tk, Dkv) each
        H, Hkv = self.num_heads, self.num_kv_heads
        return self._heads(q, H), self._heads(k, Hkv), self._heads(v, Hkv)

    def head_projections(self, head: int) -> dict[str, torch.Tensor | None]:
        """The lecture's W's of query head ``head`` (0-based): {"W_Q", "W_K", "W_V": (d, D) each,
        "b_Q", "b_K", "b_V": (d,) or None}. Under grouped-query attention W_K and W_V are those
        of the key/value head it reads, head // (num_heads / num_kv_heads)."""
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.num_heads:
            raise ValueError(f"head must be an int in [0, {self.num_heads}), got {head!r}")
        d, D = self.head_dim, self.d_model
        kv = head // (self.num_heads // self.num_kv_heads)
        rows = {"Q": head * d, "K": D + kv * d, "V": D + self._d_kv + kv * d}
        w, b = self.in_proj.weight, self.in_proj.bias
        out: dict[str, torch.Tensor | None] = {}
        for part, r in rows.items():
            out[f"W_{part}"] = w[r:r + d]
            out[f"b_{part}"] = None if b is None else b[r:r + d]
        return out

    @staticmethod
    def pack_in_proj(w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
        """``in_proj``'s weight (or bias) from separate Q, K, V ones: rows stacked, Q first."""
        return torch.cat([w_q, w_k, w_v], dim=0)  # (D + 2 Dkv, D) or (D + 2 Dkv,)

    def head_rows(self, head: int) -> dict[str, object]:
        """Where query head ``head`` (0-based) lives in ``in_proj``, for a reader: the rows (start,
        end exclusive) of W_Q within the Q block and of W_K, W_V within the K and V blocks, and the
        key/value head it reads (grouped-query attention shares one among several query heads)."""
        self.head_projections(head)  # validates head
        d, G = self.head_dim, self.num_heads // self.num_kv_heads
        kv = head // G
        return {"Q": (head * d, (head + 1) * d), "K": (kv * d, (kv + 1) * d), "V": (kv * d, (kv + 1) * d),
                "kv_head": kv, "shared_by": (kv * G, (kv + 1) * G)}

    def backend_for(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    mask: torch.Tensor | None = None, causal: bool = False,
                    causal_alignment: str = "top_left", need_weights: bool = False,
                    backend: str = "auto") -> str:
        """The tier ``heads`` would run for these arguments (``"auto"`` resolved by the dispatcher)."""
        q, k, v, mask = self._grouped(q, k, v, mask, need_weights)  # as ``heads`` lays them out
        return resolve_backend(q, k, v, mask=mask, causal=causal, causal_alignment=causal_alignment,
                               need_weights=need_weights, backend=backend)

    def heads(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        causal_alignment: str = "top_left",
        need_weights: bool = False,
        backend: str = "auto",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Every head's z: q (B, H, Tq, d), k and v (B, Hkv, Tk, d) from ``project`` → (B, H, Tq, d);
        with ``need_weights`` also the weights (B, H, Tq, Tk). No output projection (see ``attend``)."""
        B, H, Tq, _ = q.shape
        Tk = k.shape[2]
        _check_mask(mask, (B, H, Tq, Tk))
        q, k, v, mask = self._grouped(q, k, v, mask, need_weights)
        result = attention(
            q, k, v,
            mask=mask,
            causal=causal,
            causal_alignment=causal_alignment,
            need_weights=need_weights,
            backend=backend,
            dropout_p=self.dropout if self.training else 0.0,
        )
        z, w = result if need_weights else (result, None)
        z = z.reshape(B, H, Tq, self.head_dim)  # (B, H, Tq, d)
        return (z, w) if need_weights else z  # w (B, H, Tq, Tk): the tensor z was computed from

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        causal_alignment: str = "top_left",
        need_weights: bool = False,
        backend: str = "auto",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``heads``, concatenated and through the output projection: → (B, Tq, D); with
        ``need_weights`` also the weights (B, H, Tq, Tk)."""
        result = self.heads(q, k, v, mask=mask, causal=causal, causal_alignment=causal_alignment,
                            need_weights=need_weights, backend=backend)
        z, w = result if need_weights else (result, None)
        B, H, Tq, d = z.shape
        out = self.out_proj(z.transpose(1, 2).reshape(B, Tq, H * d))  # (B, Tq, D): heads side by side
        return (out, w) if need_weights else out

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        causal_alignment: str | None = None,
        need_weights: bool = False,
        backend: str = "auto",
        cache: KVCache | None = None,
        shard: ContextParallel | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, Tq, D), context (B, Tk, D) or None (self-attention) → (B, Tq, D).

        ``mask``: bool (True = may attend) or additive, broadcastable to (B, H, Tq, Tk).
        ``causal_alignment`` (see ``attention``) matters when Tq ≠ Tk; default "top_left", or
        "bottom_right" with a ``cache``: the new positions are the last ones, so the query at
        position t sees keys 0 … t. With ``cache`` (self-attention only), x holds only the new
        positions; their keys and values are appended to the cache, and the mask (if any) covers
        every cached key: (B, H, Tq, len(cache) after appending). With ``need_weights`` also
        returns the weights, (B, H, Tq, Tk).

        ``shard`` (a ``selfattention.distributed.ContextParallel``): x (B, T_local, D) is this
        process's part of a sequence split over processes, and the heads attend over all of it
        through ring attention (causal, and ``mask`` a ``BlockMask``, in global positions) →
        (B, T_local, D), this part of the whole sequence's output. Self-attention only: no context,
        cache, weights, dropout or mask tensor; ``backend`` "auto" (the ring picks its local blocks).
        """
        if shard is not None:
            return self._on_shard(x, shard, context=context, mask=mask, causal=causal,
                                  causal_alignment=causal_alignment, need_weights=need_weights,
                                  backend=backend, cache=cache)
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")
        if cache is not None and context is not None:
            raise ValueError("a KVCache is for self-attention: give x only, not a context")
        q, k, v = self.project(x, context)  # (B, H, Tq, d), (B, Hkv, Tk, d) ×2
        if cache is not None:
            k, v = cache.append(k, v)  # (B, Hkv, T_seen, d)
        if causal_alignment is None:
            causal_alignment = "bottom_right" if cache is not None else "top_left"
        return self.attend(q, k, v, mask=mask, causal=causal, causal_alignment=causal_alignment,
                           need_weights=need_weights, backend=backend)

    def _on_shard(self, x, shard, *, context, mask, causal, causal_alignment, need_weights, backend, cache):
        """``forward`` on a shard (see there): q, k, v of this process's positions, ring attention.
        A refusal here is told to the other processes (in their next collective call) before it is
        raised, so none of them is left waiting for this one."""
        from .distributed.context import ContextParallel

        if not isinstance(shard, ContextParallel):
            raise TypeError(f"shard must be a selfattention.distributed.ContextParallel or None, got "
                            f"{type(shard).__name__}")
        refused = [(context is not None, "a context (cross-attention)"), (cache is not None, "a KVCache"),
                   (need_weights, "need_weights (the whole sequence's weights are never on one process)"),
                   (backend != "auto", f"backend={backend!r} (the ring picks its local blocks by device)"),
                   (self.training and self.dropout > 0,
                    f"attention dropout {self.dropout} (call .eval(), or build the layer with dropout=0)"),
                   (isinstance(mask, torch.Tensor), "mask tensor (give a BlockMask of the whole sequence)")]
        try:
            for bad, what in refused:
                if bad:
                    raise ValueError(f"attention on a shard (ContextParallel) takes no {what}")
            q, k, v = self.project(x)  # (B, H, T_local, d), (B, Hkv, T_local, d) ×2
        except (TypeError, ValueError) as err:
            shard.check(0, 0, x.device if isinstance(x, torch.Tensor) else torch.device("cpu"), error=err)
            raise
        alignment = causal_alignment or "top_left"  # (one sequence: both alignments are the same)
        z = shard.attention(q, k, v, causal=causal, causal_alignment=alignment, mask=mask)
        B, H, T, d = z.shape
        return self.out_proj(z.transpose(1, 2).reshape(B, T, H * d))  # (B, T_local, D)

    def _grouped(self, q, k, v, mask, need_weights: bool = False):
        """Grouped-query attention by broadcasting, no copies: q (B, Hkv, G, T, d) against k, v
        (B, Hkv, 1, T, d), the mask reshaped to match; unchanged when every head has its own K/V.
        With ``need_weights``, k and v repeated per query head instead, (B, H, T, d): the weights
        come out as (B, H, Tq, Tk), the very tensor z is computed from, never a reshaped view of
        it (which no gradient would reach)."""
        H, Hkv = self.num_heads, self.num_kv_heads
        if Hkv == H:
            return q, k, v, mask
        if need_weights:
            return q, k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1), mask
        return q.unflatten(1, (Hkv, H // Hkv)), k.unsqueeze(2), v.unsqueeze(2), self._group_mask(mask)

    def _group_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Reshape a mask broadcastable to (B, H, Tq, Tk) to broadcast against (B, Hkv, G, Tq, Tk)."""
        if not isinstance(mask, torch.Tensor):
            return mask
        H, Hkv = self.num_heads, self.num_kv_heads
        m = mask.reshape(*([1] * (4 - mask.dim())), *mask.shape)  # (b, h, tq, tk)
        # (b, Hkv, G, tq, tk) when the mask has a head dim, else (b, 1, 1, tq, tk)
        return m.unflatten(1, (Hkv, H // Hkv)) if m.shape[1] == H else m.unsqueeze(2)
