"""An encoder family: what ``PretrainedModel`` needs to load and explain one kind of pretrained
encoder from a Hugging Face directory (``config.json``, ``model.safetensors``, ``tokenizer.json``).

One ``EncoderFamily`` per kind, in ``pretrained.FAMILIES`` under its config.json ``model_type``:
BERT (``models.bert.FAMILY``) is one row. A second family is one module that builds its row (config
reader, weight names, encoder, tokenizer, how its input is made) and one row in that table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .traceable import Tokens

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kB: anything this large is not one


@dataclass(frozen=True)
class EncoderFamily:
    """One kind of encoder. ``config`` and ``weights`` raise ModelError naming ``source`` (a file).

    The config it returns must have ``vocab_size``, ``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``max_position_embeddings`` and ``pad_token_id``; the encoder's
    ``forward(input_ids (B, T), lengths (B,), backend=, output_hidden_states=)`` returns an object
    with ``last_hidden_state`` (B, T, D) and ``hidden_states`` (L + 1 of them, or None).
    """

    name: str  # config.json's model_type
    config: Callable[[dict, str], Any]  # (config.json's object, source) → its config
    # (the file's tensors, config, source) → our state dict, every tensor checked
    weights: Callable[[dict[str, torch.Tensor], Any, str], dict[str, torch.Tensor]]
    encoder: Callable[[Any], torch.nn.Module]  # config → the encoder (our layers), to load the state into
    attention_layers: Callable[[Any], list]  # encoder → its MultiHeadAttention layers, in order
    tokenizer: Callable[[Path], Any]  # tokenizer.json → a ``tokenizers.Tokenizer``
    input_parts: Callable[[Any, Tokens, int], dict[str, object]]  # (encoder, tokens, i) → how h_i is made
    input_description: Callable[[int], str]  # layer (1-based) → what enters it, for a reader


def read_config(path: Path) -> dict:
    """config.json as a dict; ModelError for a file that is not one (too large, not JSON, not an object)."""
    try:
        if Path(path).stat().st_size > MAX_CONFIG_BYTES:
            raise ModelError(f"{path} is {Path(path).stat().st_size:,} bytes; a config.json is a few "
                             "kilobytes (refusing to read it)")
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    except RecursionError:  # arrays nested thousands deep: not a config
        raise ModelError(f"cannot read {path}: JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path} is not a JSON object")
    return raw


def hf_tokenizer(path: Path):
    """A ``tokenizers.Tokenizer`` from a tokenizer.json; ModelError when it cannot be loaded."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own Exception type for a bad file
        raise ModelError(f"{path} cannot be loaded: {e}") from None
