"""The toy model: deterministic word embeddings and random W's, the lecture's D = 64.

Nothing here is learned. Each word's embedding h is fixed by the word itself (sha256 of the
lower-cased word seeds NumPy's generator, which draws h ~ N(0, I)), so the same word always gets
the same vector, in every sentence and for every ``seed``. The three matrices W_Q, W_K, W_V are
drawn from ``seed`` with entries N(0, 1/D): then q_i and k_j have entries of variance ≈ 1, so
e_ij = q_i · k_j has variance ≈ D and the scaled score e_ij / √D has variance ≈ 1, as the
lecture's scaled dot product intends.

Positions: by default none (``positions="none"``), as in the lecture, so the layer is blind to word
order: permute the words and every word's z is the same vector, only moved with its word. With
``positions="sinusoidal"`` the original Transformer's sinusoids are added, h_i = word vector +
PE(i) (``transformer.sinusoids``), and the same word at another place gets another h, hence
another z.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

import numpy as np

from .._text import printable
from ..errors import InputError
from .traceable import Tokens, Traceable

# A word (letters, digits, underscores, with inner apostrophes: "don't") or one punctuation mark.
_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


def word_vector(word: str, dim: int) -> np.ndarray:
    """The embedding of one word, (dim,) float64 ~ N(0, I), a pure function of the word.

    Case is ignored ("The" and "the" are one word); the first k entries do not depend on dim.
    """
    digest = hashlib.sha256(word.casefold().encode("utf-8")).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.standard_normal(dim)


TOY_DIM, TOY_SEED = 64, 0  # the lecture's D, and the default seed of the random W's
TOY_MAX_DIM = 2048  # W's are D × D float64: 3 · 2048² · 8 B ≈ 100 MB
TOY_POSITIONS = ("none", "sinusoidal")


class ToyModel(Traceable):
    """One self-attention head with hashed word embeddings and random W's.

    A ``Traceable`` model (see ``models.traceable``): ``tokenize`` → words, ``forward_tokens`` runs its
    one layer, a ``MultiHeadAttention`` with one head, no biases and no output projection (W_O = I)
    in float64, whose packed ``in_proj`` holds W_Q, W_K, W_V, each (D, D). ``embed`` → the word
    vectors (D, T); ``inputs`` → H (D, T), the word vectors plus the positions (if any).
    """

    name = "toy"
    unit = "words"
    toy = True  # the lecture's own setting: explain shows it without a real model's extras

    def __init__(self, dim: int = TOY_DIM, seed: int = TOY_SEED, positions: str = "none"):
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= TOY_MAX_DIM:
            raise ValueError(f"dim must be an int in 1 … {TOY_MAX_DIM}, got {dim!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if positions not in TOY_POSITIONS:
            raise ValueError(f"positions must be one of {TOY_POSITIONS}, got {positions!r}")
        self.dim = dim
        self.seed = seed
        self.positions = positions
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((3, dim, dim)) / math.sqrt(dim)  # (3, D, D), entries N(0, 1/D)
        self.W_Q, self.W_K, self.W_V = W[0], W[1], W[2]
        self._attention = None

    @property
    def title(self) -> str:
        where = ", sinusoidal positions" if self.positions == "sinusoidal" else ""
        return f"toy model, D = {self.dim}, random untrained W's (seed {self.seed}){where}"

    @property
    def label(self) -> str:
        return f"the toy model (D = {self.dim}, seed {self.seed})"

    def words(self, text: str) -> list[str]:
        """Split text into words and punctuation marks: "I am here." → ["I", "am", "here", "."]."""
        return _TOKEN.findall(text)

    def tokenize(self, text: str, *, truncate: bool = True) -> Tokens:  # noqa: ARG002 (no limit)
        """The words of ``text``; ValueError when there are none."""
        if not text.strip():
            raise InputError('the text is empty; give a sentence, e.g. "I am enjoying this lecture"')
        words = self.words(text)
        if not words:
            raise InputError(f"no words found in {printable(text)!r}")
        return self.tokens_from(words)

    def tokens_from(self, tokens: Sequence[str]) -> Tokens:
        words = [str(t) for t in tokens]
        if not words:
            raise InputError("no words to explain")
        return Tokens(words, None, [False] * len(words))

    def embed(self, tokens: Sequence[str]) -> np.ndarray:
        """H (D, T): column i is the embedding h_i of tokens[i] (the lecture's words-as-columns)."""
        H = np.zeros((self.dim, len(tokens)))
        for i, tok in enumerate(tokens):
            H[:, i] = word_vector(tok, self.dim)
        return H

    def position_vectors(self, T: int) -> np.ndarray | None:
        """(D, T): column i (0-based) is PE(i), the sinusoid added to word i + 1's vector; None without
        positions.

        ``transformer.sinusoids`` (float32 values, as every model of this project adds them)."""
        if self.positions == "none":
            return None
        from ..transformer import sinusoids

        return sinusoids(T, self.dim).double().numpy().T  # (D, T)

    def inputs(self, tokens: Sequence[str]) -> np.ndarray:
        """H (D, T), what the layer reads: h_i = word vector (+ PE(i − 1) with sinusoidal positions)."""
        H = self.embed(tokens)
        P = self.position_vectors(len(tokens))
        return H if P is None else H + P

    def input_parts(self, tokens: Tokens, i: int) -> dict[str, object]:
        """How h_i (0-based i) is made, part by part, for a reader (``Traceable.input_parts``)."""
        tokens = tokens.tokens
        word = word_vector(tokens[i], self.dim)
        parts = [(f'word vector of "{tokens[i]}" (a fixed function of the word)', word)]
        P = self.position_vectors(len(tokens))
        if P is not None:
            parts.append((f"+ PE({i}), the sinusoid of word {i + 1} (the formula counts p from 0)", P[:, i]))
        h = word if P is None else word + P[:, i]
        return {"positions": self.positions,
                "formula": "h_i = word vector" + (" + PE(i − 1)" if P is not None else " (no positions)"),
                "parts": [(name, v.tolist()) for name, v in parts], "h": h.tolist()}

    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W_Q, W_K, W_V), each (D, D) float64, drawn from ``seed``."""
        return self.W_Q, self.W_K, self.W_V

    def attention_layers(self) -> list:
        """The one layer, a ``MultiHeadAttention`` holding the W's (built on first use)."""
        if self._attention is None:
            import torch

            from ..layers import MultiHeadAttention

            m = MultiHeadAttention(self.dim, 1, bias=False).double().eval()
            with torch.no_grad():
                m.in_proj.weight.copy_(MultiHeadAttention.pack_in_proj(
                    *(torch.from_numpy(W) for W in (self.W_Q, self.W_K, self.W_V))))
                m.out_proj.weight.copy_(torch.eye(self.dim, dtype=torch.float64))  # the lecture has no W_O
            self._attention = m
        return [self._attention]

    def forward_tokens(self, tokens: Tokens):
        """Run the layer on the words' embeddings: (1, T, D) float64 → (1, T, D)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.inputs(tokens.tokens).T))[None]  # (1, T, D)
        return self.attention_layers()[0](x)

    def overflow_error(self, layer: int) -> Exception:
        return ValueError(f"the toy model's numbers are not finite at layer {layer}")

    def describe(self) -> dict[str, object]:
        """What a reader should know about where H and the W's come from (JSON-serializable)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "seed": self.seed,
            "positions": self.positions,
            "embedding": ("h = N(0, I) seeded by sha256(lower-cased word): same word, same vector"
                          + (" (+ PE(i − 1), the sinusoid of its position, counted from 0)"
                             if self.positions != "none" else "; no positions")),
            "weights": f"W_Q, W_K, W_V ~ N(0, 1/D) from seed {self.seed} (random, untrained)",
        }
