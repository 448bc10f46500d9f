"""The merge: two softmaxes over disjoint sets of keys, each given as its normalized output and
its log-sum-exp, combined into the softmax over both — the lecture's online softmax, one block at
a time, as the blockwise tier does inside one process.

With out_a = Σ_a e^(s−lse_a) v / …, the merge over a ∪ b is

    lse = log(e^lse_a + e^lse_b),  out = e^(lse_a − lse) out_a + e^(lse_b − lse) out_b.

It is computed with m = max(lse_a, lse_b) taken out first, so that no exponential exceeds 1
(e^lse itself overflows float32 past a log-sum-exp of 88.7): lse = m + log(e^(lse_a−m) + e^(lse_b−m)),
whose sum lies in [1, 2]. Rows that have seen no key yet (lse = −inf on both sides) stay 0 and −inf.
"""

from __future__ import annotations

import torch


def merge_(out: torch.Tensor, lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """In place: (out (..., T, d_v), lse (..., T)) ← their merge with (out_b, lse_b), in out's
    dtype (float32, or float64 for float64 inputs: the accumulator's, never the inputs' float16)."""
    lse_b = lse_b.to(lse.dtype)
    m = torch.maximum(lse, lse_b)
    m = m.masked_fill(m.isneginf(), 0.0)  # both −inf: any finite m gives weights 0, not NaN
    wa, wb = torch.exp(lse - m), torch.exp(lse_b - m)  # each ≤ 1
    total = wa + wb  # in [1, 2], or 0 where neither side has seen a key
    lse.copy_(m + torch.log(total))  # log 0 = −inf: still nothing seen
    total = total.masked_fill(total == 0, 1.0)
    out.mul_((wa / total).unsqueeze(-1)).add_(out_b.to(out.dtype) * (wb / total).unsqueeze(-1))
