"""selfattention: the lecture's self-attention layer, from explicit loops to fast kernels.

``import selfattention`` is cheap: the names below and every submodule
(``selfattention.reference``, ``.masks``, ``.viz``, ``.models``, …) are imported on first use, so
the command line starts (and answers Ctrl-C) before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import block_mask, masks, reference
    from .block_mask import BlockMask
    from .blockwise import blockwise_attention
    from .functional import attention, available_backends
    from .layers import KVCache, MultiHeadAttention, SelfAttention

__version__ = "0.1.0"

# name → the submodule that defines it
_NAMES = {
    "attention": "functional",
    "available_backends": "functional",
    "blockwise_attention": "blockwise",
    "BlockMask": "block_mask",
    "KVCache": "layers",
    "MultiHeadAttention": "layers",
    "SelfAttention": "layers",
}
_SUBMODULES = ("bench", "block_mask", "blockwise", "cli", "embed", "errors", "explain", "functional",
               "integrations", "kernels", "layers", "masks", "models", "reference", "train", "transformer",
               "viz")


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES, *_SUBMODULES])


__all__ = [
    "BlockMask",
    "KVCache",
    "MultiHeadAttention",
    "SelfAttention",
    "attention",
    "available_backends",
    "block_mask",
    "blockwise_attention",
    "masks",
    "reference",
]
