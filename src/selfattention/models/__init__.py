"""Models that give ``selfattention explain`` its words, embeddings and W's.

The seam: ``explain`` only needs an ``AttentionModel`` — tokens, H (D, T) and one head's
(W_Q, W_K, W_V) in the lecture's convention (words are columns, W is (d_out, D)). The toy model
is the only one today; a pretrained encoder (BERT / MiniLM) plugs in by implementing the same
protocol for a chosen layer and head, with H the hidden states entering that layer. A bias b_Q
(BERT has them) folds in exactly by appending a row of ones to H and the column b_Q to W_Q.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from .toy import ToyModel


@runtime_checkable
class AttentionModel(Protocol):
    """One self-attention head that can be explained word by word."""

    name: str

    def tokenize(self, text: str) -> list[str]:
        """The tokens (words) of text, in order."""
        ...

    def embed(self, tokens: list[str]) -> np.ndarray:
        """H (D, T) float64: column i is the embedding of tokens[i]."""
        ...

    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W_Q (d_k, D), W_K (d_k, D), W_V (d_v, D)) float64."""
        ...

    def describe(self) -> dict[str, object]:
        """JSON-serializable facts about the model (name, sizes, where the weights come from)."""
        ...


# name → factory taking the model's keyword options (the toy model: dim, seed).
MODELS: dict[str, Callable[..., AttentionModel]] = {"toy": ToyModel}


def load_model(name: str = "toy", **options: object) -> AttentionModel:
    """The model called ``name`` (one of ``MODELS``), built with its keyword ``options``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}, expected one of {sorted(MODELS)}")
    return MODELS[name](**options)


__all__ = ["MODELS", "AttentionModel", "ToyModel", "load_model"]
