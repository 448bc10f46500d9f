"""The GRU baseline: reading token by token with its state equals reading the whole sequence."""

from __future__ import annotations

import torch

from selfattention.train.baseline import GRULM, gru_parameters, matched_hidden
from selfattention.transformer import parameter_count


def test_the_state_carries_the_prefix():
    torch.manual_seed(0)
    model = GRULM(13, 8, 10, num_layers=2).double()
    x = torch.randint(0, 13, (2, 9))
    full = model(x)
    state = model.new_state()
    parts = [model(x[:, :3], state=state)] + [model(x[:, t:t + 1], state=state) for t in range(3, 9)]
    steps = torch.cat(parts, 1)  # (B, T, V)
    torch.testing.assert_close(steps, full, atol=1e-12, rtol=0)


def test_parameter_count_formula_and_matching():
    for layers in (1, 2, 3):
        assert parameter_count(GRULM(13, 8, 10, layers)) == gru_parameters(13, 8, 10, layers)
    h = matched_hidden(100_000, 30, 64, 2)
    assert abs(gru_parameters(30, 64, h, 2) - 100_000) <= abs(gru_parameters(30, 64, h + 1, 2) - 100_000)
    assert abs(gru_parameters(30, 64, h, 2) - 100_000) <= abs(gru_parameters(30, 64, h - 1, 2) - 100_000)
