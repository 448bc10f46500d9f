"""What a model offers to be traced (``models.tracing.trace``) and explained: ``Traceable``, every
member declared once, here, with its default; and ``Tokens``, a text as a model reads it.

``ToyModel``, ``PretrainedModel`` and ``train.traced.TracedDecoder`` derive from ``Traceable``. A
model written from the outside may instead offer only the required members (``REQUIRED``):
``traceable(model)`` wraps it so that each optional member is its own where it has one, else the
base's default; ``trace`` does so for every model it is given. Nothing else asks a model what it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

REQUIRED = ("name", "tokenize", "tokens_from", "forward_tokens", "attention_layers", "overflow_error")
OPTIONAL = ("unit", "causal", "toy", "title", "label", "describe", "input_description", "input_parts")


@dataclass
class Tokens:
    """A text as the model reads it."""

    tokens: list[str]  # what is shown, one per position
    ids: torch.Tensor | None  # (1, T) int64 for models with a vocabulary, else None
    special: list[bool]  # positions that are markers, not text ([CLS], [SEP])
    dropped: int | None = 0  # tokens cut from the end (None: more than were counted)
    dropped_chars: int = 0  # characters of the text after the last token kept


class Traceable(ABC):
    """A model whose attention layers can be traced and explained.

    Required: ``name`` (shown to the reader, e.g. "all-MiniLM-L6-v2") and the abstract methods below.
    Optional, with the defaults here: ``unit``, ``causal``, ``toy``, ``title``, ``label``,
    ``describe``, ``input_description``, ``input_parts``.
    """

    name: str
    unit: str = "words"  # what a token is called: "words", "word pieces", "characters"
    causal: bool = False  # its own layers are causal (a decoder): a causal trace adds no mask to it
    toy: bool = False  # the lecture's toy setting (one random head, no biases, no W_O): explain shows
    #                    it without a real model's extras (biases, every head, the layer's own output)

    @property
    def title(self) -> str:
        """How views title the model (explain's headers, the PNG, the explorer)."""
        return self.name

    @property
    def label(self) -> str:
        """How one line names the model (explain's "wrote FILE: …" lines)."""
        return self.title

    def describe(self) -> dict[str, object]:
        """What a reader should know about it (sizes, where it was read from, its positions, …),
        JSON-serializable; {} when it says nothing."""
        return {}

    def input_description(self, layer: int) -> str:
        """What enters ``layer`` (1-based), for a reader; "" when it does not say."""
        return ""

    def input_parts(self, tokens: Tokens, i: int) -> dict[str, object] | None:
        """How h_i (0-based ``i``), its first attention layer's input, is made: where word order enters.

        Self-attention itself is blind to order (permute the words and every z is permuted the same
        way); only what is added to the word vectors before the first layer tells positions apart.
        {"positions": kind ("none", "sinusoidal", "learned"), "formula": text, "parts": [(name,
        vector)], "h": h_i, "norm": a LayerNorm's name or None}, vectors as lists of floats a reader
        can add up; None when the model does not say.
        """
        return None

    @abstractmethod
    def tokenize(self, text: str, *, truncate: bool = True) -> Tokens:
        """``text`` as the model reads it (cut to its length with one warning when ``truncate``)."""

    @abstractmethod
    def tokens_from(self, tokens: Sequence[str]) -> Tokens:
        """Tokens that are already the model's own (e.g. from an earlier trace, reordered)."""

    @abstractmethod
    def forward_tokens(self, tokens: Tokens) -> torch.Tensor:
        """Run the model once on ``tokens`` (batch 1); what it returns is not read."""

    @abstractmethod
    def attention_layers(self) -> list:
        """Its ``MultiHeadAttention`` layers, in order."""

    @abstractmethod
    def overflow_error(self, layer: int) -> Exception:
        """The error for numbers that are not finite, first produced by ``layer`` (0: the embeddings)."""


def traceable(model: object) -> Traceable:
    """``model`` as a ``Traceable``: itself when it derives from it; a model written from the outside
    with the ``REQUIRED`` members is wrapped (its optional members kept, the base's defaults for the
    rest). TypeError for anything else."""
    if isinstance(model, Traceable):
        return model
    missing = [m for m in REQUIRED if not hasattr(model, m)]
    if missing:
        raise TypeError("model must be a model name or a traceable model (models.load), got "
                        f"{type(model).__name__} (it has no {', '.join(missing)})")
    return _Outside(model)


class _Outside(Traceable):
    """A model written to the protocol without deriving from ``Traceable``."""

    def __init__(self, model: Any):
        self.model = model
        self.name = model.name
        self._own = {m: getattr(model, m) for m in OPTIONAL if hasattr(model, m)}
        for member, value in self._own.items():
            if member not in ("title", "label"):  # properties of the base, answered below
                setattr(self, member, value)  # an attribute or a bound method: found before the base's

    @property
    def title(self) -> str:
        return self._own["title"] if "title" in self._own else super().title

    @property
    def label(self) -> str:
        return self._own["label"] if "label" in self._own else super().label

    def tokenize(self, text: str, *, truncate: bool = True) -> Tokens:
        return self.model.tokenize(text, truncate=truncate)

    def tokens_from(self, tokens: Sequence[str]) -> Tokens:
        return self.model.tokens_from(tokens)

    def forward_tokens(self, tokens: Tokens) -> torch.Tensor:
        return self.model.forward_tokens(tokens)

    def attention_layers(self) -> list:
        return self.model.attention_layers()

    def overflow_error(self, layer: int) -> Exception:
        return self.model.overflow_error(layer)
