"""Training throughput of our Transformer against the same architecture built from
``torch.nn.TransformerEncoderLayer``.

Both models are a decoder-only LM: token embedding + learned positions, N pre-norm blocks
(causal self-attention, GELU feed-forward), a final LayerNorm and a linear head. Only the blocks
differ: ours (``selfattention.transformer.Block``, attention through ``selfattention.attention``,
backend "auto") or ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")`` with a causal
mask. The peer gets our weights, and the script checks that both compute the same logits before
timing. One training step = forward, cross-entropy, backward, AdamW step. Steps alternate between
the two in rounds; the table gives the median tokens/s and the median of per-round ratios.

Target (issue 10): ours ≥ 1.0× the peer.

    python benchmarks/transformer_throughput.py [--rounds 15] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import _quiet_threads  # noqa: F401 (before torch: idle threads sleep)
import torch
from _timing import interleaved, median_ratio
from torch import nn

from selfattention.transformer import DecoderLM, TransformerConfig

SIZES = [  # (name, B, T, D, H, layers, d_ff): the default `train reverse` model, then larger ones
    ("train reverse default", 64, 34, 64, 4, 2, 256),
    ("text default", 32, 128, 128, 4, 4, 512),
    ("larger", 16, 256, 256, 8, 4, 1024),
]


class PeerLM(nn.Module):
    """The same LM with nn.TransformerEncoderLayer blocks, weights copied from ``ours``."""

    def __init__(self, ours: DecoderLM):
        super().__init__()
        c = ours.config
        self.embed, self.positions, self.norm, self.head = ours.embed, ours.positions, ours.norm, ours.head
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(c.d_model, c.num_heads, c.d_ff, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(c.num_layers))
        with torch.no_grad():
            for peer, mine in zip(self.blocks, ours.blocks, strict=True):
                peer.self_attn.in_proj_weight.copy_(mine.attn.in_proj.weight)
                peer.self_attn.in_proj_bias.copy_(mine.attn.in_proj.bias)
                peer.self_attn.out_proj.weight.copy_(mine.attn.out_proj.weight)
                peer.self_attn.out_proj.bias.copy_(mine.attn.out_proj.bias)
                for a, b in ((peer.linear1, mine.ff.linear1), (peer.linear2, mine.ff.linear2),
                             (peer.norm1, mine.norm1), (peer.norm2, mine.norm2)):
                    a.weight.copy_(b.weight)
                    a.bias.copy_(b.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.embed(tokens) + self.positions(T)  # (B, T, D)
        mask = nn.Transformer.generate_square_subsequent_mask(T)  # (T, T) additive, -inf above the diagonal
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x))  # (B, T, V)


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"# Training throughput: our Transformer vs nn.TransformerEncoderLayer, {a.rounds} alternating "
          "rounds")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print()
    print("| model | B | T | D | H | layers | ours tokens/s | nn.TransformerEncoderLayer tokens/s | ratio "
          "(ours/peer) | max logit diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, B, T, D, H, L, d_ff in SIZES:
        torch.manual_seed(0)
        ours = DecoderLM(TransformerConfig(vocab_size=32, d_model=D, num_heads=H, num_layers=L, d_ff=d_ff,
                                           max_len=T))
        peer = PeerLM(ours)
        x = torch.randint(0, 32, (B, T))
        y = torch.randint(0, 32, (B, T))
        with torch.no_grad():
            diff = (ours(x) - peer(x)).abs().max().item()  # before any step changes the weights
        # Each model trains its own copy of the weights: separate optimizers, same starting point.
        peer_copy = PeerLM(DecoderLM(ours.config))
        peer_copy.load_state_dict(peer.state_dict())
        times = interleaved({"ours": step_fn(ours, x, y), "peer": step_fn(peer_copy, x, y)}, a.rounds)
        t_ours, t_peer = statistics.median(times["ours"]), statistics.median(times["peer"])
        ratio = median_ratio(times["peer"], times["ours"])  # > 1: ours is faster
        print(f"| {name} | {B} | {T} | {D} | {H} | {L} | {B * T / t_ours:,.0f} | {B * T / t_peer:,.0f} | "
              f"{ratio:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
