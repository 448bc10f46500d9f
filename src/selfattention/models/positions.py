"""Where word order enters a model: how h_i, the first layer's input for word i, is made.

Self-attention itself is blind to order (permute the words and every z is permuted the same way,
nothing else changes); only what is added to the word vectors before the first layer tells
positions apart. ``input_parts(model, tokens, i)`` lists those parts for one word, as numbers a
reader can add up:

- the toy model: the word vector, plus PE(i) with ``positions="sinusoidal"`` (``ToyModel``);
- a BERT encoder (all-MiniLM-L6-v2): LayerNorm(word-piece embedding + learned position embedding
  p_i + segment embedding), read from the model's own embedding tables;
- a trained decoder (``train.traced``): token embedding + position vector, then the first block's
  LayerNorm under pre-norm.

Each returns {"positions": kind, "formula": text, "parts": [(name, vector)], "h": h_i}, vectors as
lists of floats (JSON-ready); None for a model that does not say.
"""

from __future__ import annotations

from typing import Any

import torch

from .tracing import Tokens


def input_parts(model: Any, tokens: Tokens, i: int) -> dict[str, object] | None:
    """How h_i (0-based ``i``) of ``model``'s first attention layer is made, or None."""
    from .pretrained import PretrainedModel

    if isinstance(model, PretrainedModel):
        return _bert_parts(model, tokens, i)
    parts = getattr(model, "input_parts", None)  # ToyModel, train.traced.TracedDecoder
    return parts(tokens, i) if parts is not None else None


def _bert_parts(model: Any, tokens: Tokens, i: int) -> dict[str, object]:
    """h_i = LayerNorm(word_i + p_i + segment_0): BERT's embeddings, from the model's own tables."""
    enc = model.encoder
    with torch.no_grad():
        word = enc.word_embeddings.weight[int(tokens.ids[0, i])].double()  # (D,)
        pos = enc.position_embeddings.weight[i].double()  # (D,), learned, one per position
        seg = enc.token_type_embeddings.weight[0].double()  # (D,), segment A: one-sentence input
        total = word + pos + seg
        h = enc.embedding_norm(total.float()[None])[0].double()  # (D,), as the model computes it
    piece = tokens.tokens[i]
    return {
        "positions": "learned",
        "formula": "h_i = LayerNorm(word-piece embedding + position embedding p_i + segment embedding)",
        "parts": [(f'word-piece embedding of "{piece}"', word.tolist()),
                  (f"+ p_{i + 1}, the learned embedding of position {i + 1}", pos.tolist()),
                  ("+ segment embedding (sentence A)", seg.tolist()),
                  ("= sum", total.tolist())],
        "h": h.tolist(),
        "norm": "LayerNorm (the embeddings' own, learned scale and shift)",
    }
