"""The toy model: deterministic word embeddings and random W's, the lecture's D = 64.

Nothing here is learned. Each word's embedding h is fixed by the word itself (sha256 of the
lower-cased word seeds NumPy's generator, which draws h ~ N(0, I)), so the same word always gets
the same vector, in every sentence and for every ``seed``. The three matrices W_Q, W_K, W_V are
drawn from ``seed`` with entries N(0, 1/D): then q_i and k_j have entries of variance ≈ 1, so
e_ij = q_i · k_j has variance ≈ D and the scaled score e_ij / √D has variance ≈ 1, as the
lecture's scaled dot product intends.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

# A word (letters, digits, underscores, with inner apostrophes: "don't") or one punctuation mark.
_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


def word_vector(word: str, dim: int) -> np.ndarray:
    """The embedding of one word, (dim,) float64 ~ N(0, I), a pure function of the word.

    Case is ignored ("The" and "the" are one word); the first k entries do not depend on dim.
    """
    digest = hashlib.sha256(word.casefold().encode("utf-8")).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.standard_normal(dim)


class ToyModel:
    """One self-attention head with hashed word embeddings and random W's.

    Implements ``selfattention.models.AttentionModel``: ``tokenize``, ``embed`` → H (D, T),
    ``weights`` → (W_Q, W_K, W_V), each (D, D), and ``describe``.
    """

    name = "toy"

    def __init__(self, dim: int = 64, seed: int = 0):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.dim = dim
        self.seed = seed
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((3, dim, dim)) / math.sqrt(dim)  # (3, D, D), entries N(0, 1/D)
        self.W_Q, self.W_K, self.W_V = W[0], W[1], W[2]

    def tokenize(self, text: str) -> list[str]:
        """Split text into words and punctuation marks: "I am here." → ["I", "am", "here", "."]."""
        return _TOKEN.findall(text)

    def embed(self, tokens: list[str]) -> np.ndarray:
        """H (D, T): column i is the embedding h_i of tokens[i] (the lecture's words-as-columns)."""
        H = np.zeros((self.dim, len(tokens)))
        for i, tok in enumerate(tokens):
            H[:, i] = word_vector(tok, self.dim)
        return H

    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W_Q, W_K, W_V), each (D, D) float64, drawn from ``seed``."""
        return self.W_Q, self.W_K, self.W_V

    def describe(self) -> dict[str, object]:
        """What a reader should know about where H and the W's come from (JSON-serializable)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "seed": self.seed,
            "embedding": "h = N(0, I) seeded by sha256(lower-cased word): same word, same vector",
            "weights": f"W_Q, W_K, W_V ~ N(0, 1/D) from seed {self.seed} (random, not learned)",
        }
