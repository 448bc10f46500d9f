"""The Transformer built from this project's ``MultiHeadAttention``: positions, blocks, an encoder,
a decoder-only language model, and incremental decoding with a KV cache.

Self-attention alone is blind to word order (permute the words and every word's z is the same,
only permuted): ``positions`` adds the order back, as the original Transformer's sinusoids
("sinusoidal"), as learned vectors ("learned"), or not at all ("none", to see the blindness).

    x (B, T) token ids → embed + positions (B, T, D) → N × Block (B, T, D) → [LayerNorm] → logits

A ``Block`` is attention then a feed-forward net, each inside a residual connection, with a
LayerNorm before each ("pre", GPT-2's) or after each residual sum ("post", the 2017 paper's and
``nn.TransformerEncoderLayer``'s default). Builds on ``layers.py`` only: attention runs through the
one dispatcher (``backend="auto"``: torch SDPA on the CPU; the fastest measured tier on CUDA).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .layers import KVCache, MultiHeadAttention

if TYPE_CHECKING:
    from .distributed.context import ContextParallel

POSITIONS = ("sinusoidal", "learned", "none")
NORMS = ("pre", "post")


@dataclass(frozen=True)
class TransformerConfig:
    """The sizes of an encoder or decoder; every field is checked by ``check``."""

    vocab_size: int  # token ids are 0 … vocab_size - 1
    d_model: int = 64  # D, the width of every word's vector
    num_heads: int = 4  # H; each head has d = D / H
    num_layers: int = 2  # N blocks
    d_ff: int = 256  # hidden width of the feed-forward net
    max_len: int = 128  # longest sequence the positions cover
    positions: str = "learned"  # "sinusoidal", "learned" or "none"
    norm: str = "pre"  # LayerNorm before ("pre") or after ("post") each residual branch
    dropout: float = 0.0  # on attention weights, feed-forward hidden units and residual branches

    def check(self) -> TransformerConfig:
        for name in ("vocab_size", "d_model", "num_heads", "num_layers", "d_ff", "max_len"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        return self

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# --- positions ------------------------------------------------------------------------------------

def sinusoids(T: int, d_model: int) -> torch.Tensor:
    """The original Transformer's positional encodings, (T, D) float32: for position p and
    i = 0 … D/2 - 1, PE[p, 2i] = sin(p / 10000^(2i/D)) and PE[p, 2i+1] = cos(p / 10000^(2i/D))."""
    p = torch.arange(T, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(D/2),) the even columns 2i
    angle = p / 10000.0 ** (i / d_model)  # (T, ceil(D/2))
    pe = torch.zeros(T, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # an odd D has one sine column more
    return pe.float()


class Positions(nn.Module):
    """Position vectors added to the token embeddings: ``forward(T, offset)`` → (T, D) for the
    positions offset … offset + T - 1, or None for "none" (nothing is added)."""

    def __init__(self, kind: str, max_len: int, d_model: int):
        super().__init__()
        self.kind, self.max_len = kind, max_len
        if kind == "learned":
            self.table = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        elif kind == "sinusoidal":
            self.register_buffer("table", sinusoids(max_len, d_model), persistent=False)
        else:
            self.table = None

    def forward(self, T: int, offset: int = 0) -> torch.Tensor | None:
        if self.table is None:
            return None
        if offset + T > self.max_len:
            raise ValueError(f"positions {offset}…{offset + T - 1} are beyond max_len={self.max_len} "
                             f"of the {self.kind} positions")
        return self.table[offset:offset + T]  # (T, D)

    def at(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The vectors of ``positions`` (n,) int64, in any order (a shard's global positions) → (n, D),
        or None for "none"."""
        if self.table is None:
            return None
        if len(positions) and int(positions.max()) >= self.max_len:
            raise ValueError(f"position {int(positions.max())} is beyond max_len={self.max_len} of the "
                             f"{self.kind} positions")
        return self.table[positions]  # (n, D)


# --- blocks ---------------------------------------------------------------------------------------

class FeedForward(nn.Module):
    """The position-wise net: Linear(D → d_ff), GELU, dropout, Linear(d_ff → D)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(nn.functional.gelu(self.linear1(x))))  # (B, T, D)


class Block(nn.Module):
    """One Transformer layer: x → x + attention(x) → … + feed_forward(…), with LayerNorms.

    ``norm="pre"``:  x = x + drop(attn(norm1(x)));  x = x + drop(ff(norm2(x)))
    ``norm="post"``: x = norm1(x + drop(attn(x)));  x = norm2(x + drop(ff(x)))
    The same function as ``nn.TransformerEncoderLayer(D, H, d_ff, activation="gelu",
    batch_first=True, norm_first=(norm == "pre"))`` given the same weights (tested).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, norm: str = "pre", dropout: float = 0.0):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm_first = norm == "pre"
        self.attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
        backend: str = "auto",
        shard: ContextParallel | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) → (B, T, D); with ``need_weights`` also the weights (B, H, T, Tk).

        ``mask`` as in ``MultiHeadAttention`` (True = may attend); ``cache``: x holds only the
        new positions, attending to every cached one (see ``KVCache``). ``shard``: x (B, T_local, D)
        is this process's part of a sequence; attention runs over all of it, the rest is per position."""
        h = self.norm1(x) if self.norm_first else x
        a = self.attn(h, mask=mask, causal=causal, cache=cache, need_weights=need_weights, backend=backend,
                      shard=shard)
        a, w = a if need_weights else (a, None)
        if self.norm_first:
            x = x + self.dropout(a)
            x = x + self.dropout(self.ff(self.norm2(x)))
        else:
            x = self.norm1(x + self.dropout(a))
            x = self.norm2(x + self.dropout(self.ff(x)))
        return (x, w) if need_weights else x


class _Stack(nn.Module):
    """Embedding, positions, blocks and (pre-norm) a final LayerNorm: what encoder and decoder share."""

    causal = False

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config.check()
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.positions = Positions(c.positions, c.max_len, c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.d_model, c.num_heads, c.d_ff, norm=c.norm, dropout=c.dropout) for _ in range(c.num_layers)
        )
        # Pre-norm leaves the residual stream un-normalized; post-norm already ends in a LayerNorm.
        self.norm = nn.LayerNorm(c.d_model) if c.norm == "pre" else nn.Identity()

    def _check_tokens(self, tokens: object) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() != 2:
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) \
                else type(tokens).__name__
            raise ValueError(f"tokens must be a (B, T) tensor of int64 token ids, got {got}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got "
                             f"{int(tokens.min())} … {int(tokens.max())}")
        return tokens

    def _check_shard(self, tokens, shard, refused: list[tuple[bool, str]]) -> torch.Tensor:
        """A shard's tokens, checked here and then with the other processes (one small all_gather:
        lengths that fit the layout and add up to shard.T), so a refusal stops every one at once."""
        from .distributed.context import ContextParallel

        if not isinstance(shard, ContextParallel):
            raise TypeError(f"shard must be a selfattention.distributed.ContextParallel, got "
                            f"{type(shard).__name__}")
        error, shape = None, (0, 0)
        try:
            shape = self._check_tokens(tokens).shape
            for bad, what in refused:
                if bad:
                    raise ValueError(f"a model on a shard (ContextParallel) takes no {what}")
        except ValueError as err:
            error = err
        shard.check(shape[1], shape[0], getattr(tokens, "device", torch.device("cpu")), error)
        return tokens

    def hidden(
        self,
        tokens: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        need_weights: bool = False,
        backend: str = "auto",
        shard: ContextParallel | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens (B, T) → (hidden states (B, T, D), per-layer weights (B, H, T, Tk) if asked, else []).

        ``shard``: tokens (B, T_local) are this process's positions of a sequence (see
        ``selfattention.distributed.ContextParallel``) → their hidden states (B, T_local, D)."""
        if shard is None:
            tokens = self._check_tokens(tokens)
        else:
            tokens = self._check_shard(tokens, shard, [
                (caches is not None, "KV caches"), (need_weights, "need_weights"),
                (isinstance(mask, torch.Tensor), "mask tensor (give a BlockMask of the whole sequence)")])
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"caches must hold one KVCache per layer ({len(self.blocks)}), "
                             f"got {len(caches)}")
        offset = len(caches[0]) if caches else 0
        x = self.embed(tokens)  # (B, T, D)
        if shard is None:
            pos = self.positions(tokens.shape[1], offset)
        else:  # a shard's own global positions, in its order
            pos = self.positions.at(shard.positions(tokens.device))
        if pos is not None:
            x = x + pos  # (B, T, D) + (T, D)
        x = self.dropout(x)
        # One new token after cached ones may see every key: no causal mask to build for it.
        causal = self.causal and not (caches and offset and tokens.shape[1] == 1)
        weights = []
        for i, block in enumerate(self.blocks):
            out = block(x, mask=mask, causal=causal, cache=caches[i] if caches else None,
                        need_weights=need_weights, backend=backend, shard=shard)
            if need_weights:
                x, w = out
                weights.append(w)
            else:
                x = out
        return self.norm(x), weights


class Encoder(_Stack):
    """A bidirectional Transformer encoder: every word attends to every (unmasked) word.

    ``forward(tokens (B, T), mask=None)`` → hidden states z (B, T, D); ``mask`` (True = may
    attend) broadcastable to (B, H, T, T), e.g. ``masks.from_lengths`` for padded batches.
    With ``need_weights`` also a list of per-layer weights (B, H, T, T). With ``shard=`` (a
    ``ContextParallel``), tokens (B, T_local) are this process's part of the sequence → their z
    (B, T_local, D); ``mask`` then a ``BlockMask`` of the whole sequence, or None.
    """

    def forward(self, tokens: torch.Tensor, *, mask: torch.Tensor | None = None, need_weights: bool = False,
                backend: str = "auto", shard: ContextParallel | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        z, w = self.hidden(tokens, mask=mask, need_weights=need_weights, backend=backend, shard=shard)
        return (z, w) if need_weights else z


class DecoderLM(_Stack):
    """A decoder-only language model: causal self-attention (word t sees words ≤ t), then a linear
    map of each hidden state to next-token logits.

    ``forward(tokens (B, T))`` → logits (B, T, V), the prediction for token t + 1 at position t.
    With ``caches`` (``new_caches()``), ``tokens`` are only the new positions after those cached:
    decoding one token at a time costs one position's work per layer instead of the whole prefix.
    With ``shard=`` (a ``selfattention.distributed.ContextParallel``), tokens (B, T_local) are this
    process's positions of a sequence split over processes → their logits (B, T_local, V), equal
    to those rows of one process's logits on the whole sequence: attention runs over every
    position through ring attention (causal in global positions), position encodings are the
    shard's global ones, the rest is per position. Sum each weight's gradient over the group.
    """

    causal = True

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def new_caches(self) -> list[KVCache]:
        """One empty ``KVCache`` per layer."""
        return [KVCache() for _ in self.blocks]

    def forward(self, tokens: torch.Tensor, *, caches: list[KVCache] | None = None,
                need_weights: bool = False, backend: str = "auto", shard: ContextParallel | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = self.hidden(tokens, caches=caches, need_weights=need_weights, backend=backend, shard=shard)
        logits = self.head(h)  # (B, T, V)
        return (logits, w) if need_weights else logits


def trace(model: DecoderLM | Encoder, tokens: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """What each layer's attention did for ``tokens`` (1, T), to explain a trained model.

    One dict per layer: ``x`` (T, D), the attention's input H (after norm1 under pre-norm);
    ``q``, ``k``, ``v`` (H, T, d), the heads' projections; ``weights`` (H, T, T), α. The head's
    W_Q, W_K, W_V come from ``model.blocks[layer].attn.head_projections(head)``.
    """
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"trace takes one sequence, tokens of shape (1, T); got {tuple(tokens.shape)}")
    inputs: list[torch.Tensor] = []
    hooks = [b.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for b in model.blocks]
    try:
        with torch.no_grad():
            _, weights = model.hidden(tokens, need_weights=True)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for block, x, w in zip(model.blocks, inputs, weights, strict=True):
        with torch.no_grad():
            q, k, v = block.attn.project(x)  # (1, H, T, d) each
        out.append({"x": x[0], "q": q[0], "k": k[0], "v": v[0], "weights": w[0]})
    return out


# --- generation -----------------------------------------------------------------------------------

def pick_next(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, V): argmax at temperature 0, else sampled."""
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model's logits are inf or NaN: its weights or input overflow")
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)  # (B, 1)
    # Shifted so that the largest is 0 before dividing: a tiny temperature then gives 0 and −∞
    # (the argmax), never ∞ − ∞.
    shifted = logits.double() - logits.double().amax(-1, keepdim=True)
    probs = torch.softmax(shifted / temperature, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


def context_limit(model: _Stack) -> int | None:
    """The most tokens ``model`` reads at once: ``max_len``, where its positions end; None for
    positions "none" (no position to run out of: it reads any length)."""
    return model.config.max_len if model.config.positions != "none" else None


def restart_window(length: int, limit: int | None) -> int:
    """How many of the newest tokens generation reads next, its context having grown to ``length``.

    The one window rule, for the cached and the uncached path alike: the context grows one token at
    a time up to ``limit`` (max_len) and, when one more would pass it, restarts from the last
    max(1, limit // 2) tokens, at position 0 again. Why not slide by one token: positions are
    absolute, so every sliding step would move every cached key to a new position and cost the whole
    window again; a restart recomputes limit // 2 tokens once per limit - limit // 2 new ones, so
    with the cache a token still costs about two positions' work per layer, amortized."""
    if limit is None or length <= limit:
        return length
    return max(1, limit // 2)


@torch.no_grad()
def generate(
    model: DecoderLM,
    prompt: torch.Tensor,
    max_new: int,
    *,
    stop: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue ``prompt`` (B, T0) by up to ``max_new`` tokens → (B, T0 + n).

    The model reads at most ``context_limit(model)`` tokens (max_len): of a longer prompt only the
    last max_len, and past max_len the window of ``restart_window``. With ``use_cache`` each window
    is run once and every new token attends to the cached keys and values; without, the whole
    window is recomputed each step (the slow way, for comparison): both read the same tokens at the
    same positions, so they give the same tokens up to rounding. Stops early once every sequence
    has produced ``stop``.
    """
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be (B, T0) token ids with T0 ≥ 1, got shape {tuple(prompt.shape)}")
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
        raise ValueError(f"max_new must be a non-negative int, got {max_new!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number ≥ 0, got {temperature!r}")
    limit = context_limit(model)
    context = prompt if limit is None else prompt[:, -limit:]  # (B, T) what the model reads now
    out = [prompt]
    done = torch.zeros(prompt.shape[0], dtype=torch.bool)
    caches, fresh = None, context  # fresh: the tokens of the context not yet in the cache
    for _ in range(max_new):
        keep = restart_window(context.shape[1], limit)
        if keep < context.shape[1]:  # a new window: nothing cached belongs to it (new positions)
            context = context[:, -keep:]
            caches, fresh = None, context
        if use_cache:
            if caches is None:
                caches = model.new_caches()
            logits = model(fresh, caches=caches)[:, -1]  # (B, V)
        else:
            logits = model(context)[:, -1]  # (B, V)
        nxt = pick_next(logits, temperature, generator)  # (B, 1)
        out.append(nxt)
        context, fresh = torch.cat([context, nxt], dim=1), nxt  # (B, T + 1)
        if stop is not None:
            done |= nxt[:, 0] == stop
            if bool(done.all()):
                break
    return torch.cat(out, dim=1)  # (B, T0 + n)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (a tied or shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["Block", "DecoderLM", "Encoder", "FeedForward", "Positions", "TransformerConfig", "context_limit",
           "generate", "parameter_count", "restart_window", "sinusoids", "trace"]
