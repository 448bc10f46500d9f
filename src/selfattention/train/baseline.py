"""The recurrent baseline: a GRU language model with about as many parameters as the Transformer.

The lecture's claim is that attention lets every word look at every other word directly, where an
RNN must carry everything through one hidden state. Training both on the same task and budget
measures that claim. The GRU reads the same strings left to right and predicts the next token, so
it gets the same data, loss and accuracy as the decoder-only Transformer.
"""

from __future__ import annotations

import torch
from torch import nn


class GRULM(nn.Module):
    """Embedding (V → D), an ``num_layers``-layer GRU of width ``hidden``, Linear(hidden → V).

    ``forward(tokens (B, T))`` → logits (B, T, V); with ``state`` (from ``new_state`` or a
    previous call; updated in place) only the new tokens are read: the RNN's own "cache".
    """

    def __init__(self, vocab_size: int, d_model: int, hidden: int, num_layers: int = 2):
        super().__init__()
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden, num_layers
        self.embed = nn.Embedding(vocab_size, d_model)
        self.gru = nn.GRU(d_model, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def new_state(self) -> list[torch.Tensor]:
        """An empty recurrent state (filled by the first ``forward`` that is given it)."""
        return []

    def forward(self, tokens: torch.Tensor, *, state: list[torch.Tensor] | None = None) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a (B, T) tensor of int64 token ids, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        h0 = state[0] if state else None  # (num_layers, B, hidden)
        out, h = self.gru(self.embed(tokens), h0)  # (B, T, hidden), (num_layers, B, hidden)
        if state is not None:
            state[:] = [h]
        return self.head(out)  # (B, T, V)


def gru_parameters(vocab_size: int, d_model: int, hidden: int, num_layers: int) -> int:
    """The parameter count of ``GRULM`` (three gates, each with input and hidden weights and biases)."""
    gru = 3 * (hidden * d_model + hidden * hidden + 2 * hidden)
    gru += (num_layers - 1) * 3 * (2 * hidden * hidden + 2 * hidden)
    return vocab_size * d_model + gru + hidden * vocab_size + vocab_size


def matched_hidden(target: int, vocab_size: int, d_model: int, num_layers: int) -> int:
    """The GRU width whose parameter count is closest to ``target``."""
    best, h = 1, 1
    while True:
        if abs(gru_parameters(vocab_size, d_model, h, num_layers) - target) < abs(
                gru_parameters(vocab_size, d_model, best, num_layers) - target):
            best = h
        if gru_parameters(vocab_size, d_model, h, num_layers) > target:
            return best
        h += 1
