"""The traceable-model protocol (``models.traceable``): every member declared once, with its
default, in ``Traceable``; the project's models derive from it, and a model written from the outside
to its required members only is traced and explained with the defaults."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from selfattention.explain.walk import build_report
from selfattention.layers import MultiHeadAttention
from selfattention.models import ToyModel, Traceable, trace, traceable
from selfattention.models.pretrained import PretrainedModel
from selfattention.models.traceable import OPTIONAL, REQUIRED, Tokens
from selfattention.train.traced import TracedDecoder


class Outside:
    """Only the required members, as a user might write a model."""

    name = "outside"

    def __init__(self):
        torch.manual_seed(0)
        self.layer = MultiHeadAttention(8, 2).double().eval()

    def tokenize(self, text: str, *, truncate: bool = True) -> Tokens:
        return self.tokens_from(text.split())

    def tokens_from(self, tokens: Sequence[str]) -> Tokens:
        return Tokens(list(tokens), None, [False] * len(tokens))

    def forward_tokens(self, tokens: Tokens) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1, len(tokens.tokens), 8, generator=g, dtype=torch.float64)  # (1, T, D)
        return self.layer(x, causal=getattr(self, "causal", False))

    def attention_layers(self) -> list:
        return [self.layer]

    def overflow_error(self, layer: int) -> Exception:
        return ValueError(f"layer {layer}")


def test_the_projects_models_derive_from_the_base():
    for cls in (ToyModel, PretrainedModel, TracedDecoder):
        assert issubclass(cls, Traceable), cls
    with pytest.raises(TypeError):
        Traceable()  # the required members are abstract


def test_a_model_from_the_outside_gets_the_defaults():
    m = traceable(Outside())
    assert (m.name, m.unit, m.title, m.label, m.causal, m.toy) == ("outside", "words", "outside", "outside",
                                                                   False, False)
    assert m.describe() == {} and m.input_description(1) == "" and m.input_parts(None, 0) is None
    t = trace(Outside(), "a b c", causal=True)
    assert t.title == "outside, causal mask" and t.added_causal
    r = build_report(t, head=2)
    assert r["model"]["name"] == "outside" and r["input"] is None and r["verification"]["ok"]


def test_a_model_from_the_outside_keeps_its_own_optional_members():
    class Own(Outside):
        unit, causal, title = "tokens", True, "my model"

        def describe(self) -> dict[str, object]:
            return {"size": 8}

        def input_description(self, layer: int) -> str:
            return f"what enters {layer}"

    m = traceable(Own())
    assert (m.unit, m.causal, m.title, m.label) == ("tokens", True, "my model", "my model")
    assert m.describe() == {"size": 8} and m.input_description(2) == "what enters 2"
    t = trace(Own(), "a b c", causal=True)
    assert t.title == "my model" and not t.added_causal  # a decoder's own mask is not an addition
    r = build_report(t)
    assert r["model"]["size"] == 8 and r["model"]["embedding"].endswith("(what enters 1)")
    assert r["unit"] == "tokens" and r["derivation"]["index"] == 2  # causal: the middle word


def test_what_is_not_a_model_is_named():
    class Half:
        name = "half"

        def tokenize(self, text: str, *, truncate: bool = True) -> Tokens: ...

    with pytest.raises(TypeError, match=r"got Half \(it has no tokens_from, forward_tokens, "
                                        r"attention_layers, overflow_error\)"):
        trace(Half(), "a")
    assert set(REQUIRED).isdisjoint(OPTIONAL)
