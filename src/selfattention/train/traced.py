"""A trained decoder as a ``Traceable`` model, so that ``explain --model RUN`` walks one of its heads
through the lecture's steps as it does MiniLM's.

    from selfattention.train.traced import load_traced
    m = load_traced("runs/reverse")              # a training --out folder, or one checkpoint folder
    t = models.trace(m, "abc=")                   # characters are the tokens

The tokens are characters (one character, one token, as the model was trained). Its blocks' ``attn``
are the ``MultiHeadAttention`` layers, and the decoder calls them with ``causal=True``: word i sees
words 1 … i, which the trace records as the layer's mask. What enters a layer is the block's
LayerNorm of the residual stream under pre-norm (the default), the stream itself under post-norm.
A GRU checkpoint has no attention: ``load_traced`` refuses it in one line.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .._text import printable
from ..errors import InputError, ModelError
from ..layers import MultiHeadAttention
from ..models.traceable import Tokens, Traceable
from ..transformer import context_limit
from .trained import TrainedModel, load_trained


def is_training_folder(path: str | os.PathLike[str]) -> bool:
    """True for a training --out folder (it holds ``checkpoints/``) or one checkpoint folder
    (``state.json``); a BERT directory holds neither."""
    p = Path(path)
    return p.is_dir() and ((p / "state.json").is_file() or (p / "checkpoints").is_dir())


class TracedDecoder(Traceable):
    """A ``TrainedModel`` whose model is a ``transformer.DecoderLM``, traceable (``models.traceable``)."""

    unit = "characters"
    causal = True  # the decoder's own mask: nothing to add for --causal

    def __init__(self, trained: TrainedModel, *, name: str | None = None):
        from ..transformer import DecoderLM

        if not isinstance(trained.model, DecoderLM):
            raise ModelError(f"{trained.path} holds a {trained.config.model.upper()} model: it has no "
                             "attention to explain (explain a transformer checkpoint)")
        self.trained = trained
        self.model = trained.model
        self.name = name or f"{trained.task} model"

    @property
    def title(self) -> str:
        c = self.trained.config
        return (f"{self.name}, trained {self.trained.step} steps ({c.num_layers} layers × {c.num_heads} "
                f"heads, D = {c.d_model}, {c.positions} positions)")

    def describe(self) -> dict[str, object]:
        c = self.trained.config
        return {"path": str(self.trained.path), "task": c.task, "step": self.trained.step,
                "layers": c.num_layers, "heads": c.num_heads, "hidden_size": c.d_model,
                "positions": c.positions, "norm": c.norm, "max_positions": self.model.config.max_len}

    def input_description(self, layer: int) -> str:
        c = self.trained.config
        stream = ("the character embeddings + positions" if layer == 1 else
                  f"the output of layer {layer - 1}")
        if c.positions == "none" and layer == 1:
            stream = "the character embeddings (no positions)"
        return f"{stream}, after the block's LayerNorm" if c.norm == "pre" else stream

    # --- Traceable ------------------------------------------------------------------------------

    def tokenize(self, text: str, *, truncate: bool = True) -> Tokens:
        """The characters of ``text``; InputError for an empty text, an unknown character, or (with
        ``truncate`` False) more characters than the model has positions."""
        if not text:
            raise InputError("the text is empty; give the characters to explain, e.g. \"abc=\"")
        limit = context_limit(self.model)
        chars = list(text)
        if limit is not None and len(chars) > limit:
            if not truncate:
                raise InputError(f"the text has {len(chars)} characters, more than the model's {limit} "
                                 "positions")
            warnings.warn(f"text of {len(chars)} characters, model of {limit} positions: the last "
                          f"{len(chars) - limit} were dropped", UserWarning, stacklevel=2)
            return self._tokens(chars[:limit], dropped=len(chars) - limit)
        return self._tokens(chars)

    def tokens_from(self, tokens: Sequence[str]) -> Tokens:
        return self._tokens([str(t) for t in tokens])

    def _tokens(self, chars: list[str], dropped: int = 0) -> Tokens:
        if not chars:
            raise InputError("no characters to explain")
        if any(len(c) != 1 for c in chars):
            raise InputError(f"not characters of this model: {[printable(c) for c in chars[:8]]}")
        ids = self.trained.encode("".join(chars))  # (1, T); InputError names an unknown character
        return Tokens(chars, ids, [False] * len(chars), dropped)

    def forward_tokens(self, tokens: Tokens) -> torch.Tensor:
        """The decoder on the characters: (1, T) ids → logits (1, T, V)."""
        return self.model(tokens.ids)

    def attention_layers(self) -> list[MultiHeadAttention]:
        return [block.attn for block in self.model.blocks]

    def overflow_error(self, layer: int) -> ModelError:
        where = "the embeddings" if layer == 0 else f"layer {layer}"
        return ModelError(f"{self.trained.path}: {where} of this model gives inf or NaN")

    def input_parts(self, tokens: Tokens, i: int) -> dict[str, object]:
        """How h_i (0-based i) of layer 1 is made: embedding + position, then norm1 (pre-norm)."""
        m, c = self.model, self.trained.config
        with torch.no_grad():
            word = m.embed.weight[int(tokens.ids[0, i])].double()  # (D,)
            pos = m.positions(1, i)  # (1, D): position i's vector, or None
            parts = [(f"embedding of the character {tokens.tokens[i]!r}", word.tolist())]
            total = word
            if pos is not None:
                p = pos[0].double()
                parts.append((f"+ position vector {i + 1} ({c.positions})", p.tolist()))
                total = word + p
                parts.append(("= sum", total.tolist()))
            block = m.blocks[0]
            h = block.norm1(total.float()[None])[0].double() if block.norm_first else total
        formula = "h_i = " + ("LayerNorm(" if block.norm_first else "") + "character embedding" + \
            (" + position vector" if pos is not None else "") + (")" if block.norm_first else "")
        return {"positions": c.positions, "formula": formula, "parts": parts, "h": h.tolist(),
                "norm": "LayerNorm of block 1 (pre-norm: the attention reads the normalized stream)"
                if block.norm_first else None}


def load_traced(path: str | os.PathLike[str]) -> TracedDecoder:
    """``TracedDecoder`` of the trained model in ``path`` (``load_trained``); ModelError for a GRU
    checkpoint or a folder that holds none."""
    trained = load_trained(path)
    return TracedDecoder(trained, name=Path(os.path.abspath(path)).name)
