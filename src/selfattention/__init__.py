"""selfattention: the lecture's self-attention layer, from explicit loops to fast kernels."""

from . import masks
from .blockwise import blockwise_attention
from .functional import attention, available_backends
from .layers import MultiHeadAttention, SelfAttention

__all__ = [
    "MultiHeadAttention",
    "SelfAttention",
    "attention",
    "available_backends",
    "blockwise_attention",
    "masks",
]
__version__ = "0.1.0"
