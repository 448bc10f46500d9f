"""What ``train --context-parallel N`` does besides the training step: evaluation on the shards, the
bounded attention snapshot, and the memory estimate of one process's shard.

- **Evaluation** is collective: the data-parallel groups split each held-out batch (group g of G
  takes sequences [g·n/G, (g+1)·n/G)), and every process of a group runs the model on its zigzag
  shard of those sequences' positions. Each process sums its positions' loss (float64), loss
  tokens and right tokens, and writes each of its group's sequences' count of wrong answer tokens;
  one all_reduce over every process then gives the whole batch's sums and each sequence's wrong
  count (its group's shards added up: a sequence is right when its count is 0 — a sum of wrong
  counts, so one wrong position anywhere makes it wrong).
- **The snapshot** needs the whole T × T weights of one example: rank 0 draws it alone, on at most
  ``SNAPSHOT_MAX`` positions of it, so a long context never allocates L × H × T × T.
- **Memory**: a process holds T/N positions' activations and logits, and ring attention's own
  working set per layer is a few lanes and score tiles (docs/distributed.md, *Measured*), not the
  B × H × T² weights of a whole-sequence step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..distributed import ContextParallel
from ..distributed.local import local_blocks
from ..errors import OptionError
from .config import EVAL_CHUNK, TrainConfig, available_memory, parameters_estimate
from .data import Batch
from .distributed import Split, guard, sum_over_processes

SNAPSHOT_MAX = 256  # positions of the example drawn in a snapshot under --context-parallel


def evaluate_batch(model: torch.nn.Module, batch: Batch, split: Split, device: torch.device,
                   chunk: int = EVAL_CHUNK) -> tuple[float, int, int, int]:
    """(loss summed in float64, loss tokens, sequences right, loss tokens right) of ``batch``
    (inputs, targets, weight: (n, T)) over every process of the run (collective: each calls it
    with the same batch). A sequence is right when every one of its loss tokens is."""
    sp, n = split, len(batch)
    lo, hi = sp.data_rank * n // sp.data, (sp.data_rank + 1) * n // sp.data  # this group's sequences
    # loss, tokens, right tokens, then each sequence's wrong tokens (exact in float64 up to 2^53)
    sums = torch.zeros(3 + n, dtype=torch.float64, device=device)
    with guard(sp.dist, "evaluating on the shards"):
        for i in range(lo, hi, chunk):
            j = min(i + chunk, hi)
            shard = ContextParallel(batch.inputs.shape[1], group=sp.group)
            x, y, w = (shard.shard(t[i:j], dim=-1).to(device)
                       for t in (batch.inputs, batch.targets, batch.weight))
            logits = model(x, shard=shard).double()  # (b, T_local, V)
            sums[0] += F.cross_entropy(logits[w], y[w], reduction="sum")
            sums[1] += w.sum()
            hit = logits.argmax(-1) == y  # (b, T_local)
            sums[2] += (hit & w).sum()
            sums[3 + i: 3 + j] = (~hit & w).sum(1)
    total = sum_over_processes(sums, sp.dist, "summing the evaluation").cpu()
    return float(total[0]), int(total[1]), int((total[3:] == 0).sum()), int(total[2])


def snapshot_text(text: str) -> tuple[str, str | None]:
    """The part of the example a context-parallel snapshot draws, and the one line that says it was
    cut (None: it is whole)."""
    if len(text) <= SNAPSHOT_MAX:
        return text, None
    return text[:SNAPSHOT_MAX], (f"attention snapshots: the first {SNAPSHOT_MAX} of the example's "
                                 f"{len(text)} positions (drawn whole on rank 0 under --context-parallel)")


def shard_length(T: int, context: int) -> int:
    """The most positions of a sequence of T one process of ``context`` holds (zigzag: 2 chunks of
    ⌈T / 2N⌉)."""
    return min(T, 2 * math.ceil(T / (2 * context)))


def memory_needed_on_shard(config: TrainConfig, vocab_size: int, context: int, data: int = 1,
                           device: object = "cpu") -> int:
    """Bytes one process of ``--context-parallel context`` (``data`` data-parallel groups) needs, on
    the high side, as ``config.memory_needed`` counts a whole-sequence step: the parameters (with
    gradients and AdamW's moments) and the held-out batches whole, and the larger of a training
    step and an evaluation chunk on the shard — per position and layer 12·D + 2·d_ff numbers, the
    logits as there, and per layer (one at a time) ring attention's working set: two lanes of K and
    V in flight, three lanes of dK and dV sums and three score tiles of rows × lane per head."""
    size = 8 if config.dtype == "float64" else 4
    params = parameters_estimate(config, vocab_size)
    T, V = shard_length(config.sequence_len(), context), vocab_size
    L, D, H = config.num_layers, config.d_model, config.num_heads
    blocks = local_blocks(torch.device(getattr(device, "type", device)))
    tile = 3 * H * (blocks.rows or 0) * blocks.lane  # the Triton kernel keeps its tiles on chip

    def activations(B: int) -> int:
        return B * T * L * (12 * D + 2 * config.d_ff) + B * (10 * blocks.lane * D + tile)

    B, E = math.ceil(config.batch_size / data), min(math.ceil(config.eval_size / data), EVAL_CHUNK)
    train = (activations(B) + 6 * B * T * V) * size
    evaluation = activations(E) * size + E * T * V * (size + 3 * 8)
    held_out = 2 * config.eval_size * config.sequence_len() * (8 + 8 + 1)
    return 4 * params * size + max(train, evaluation) + held_out


def check_memory_on_shard(config: TrainConfig, vocab_size: int, context: int, data: int = 1,
                          device: object = "cpu") -> None:
    """OptionError, with the estimate and what is available, when one process's shard would not fit."""
    need, have = memory_needed_on_shard(config, vocab_size, context, data, device), available_memory(device)
    if have is not None and need > have:
        c, T = config, config.sequence_len()
        raise OptionError(f"training this model with --context-parallel {context} (batch {c.batch_size}, "
                          f"sequences of {T}, {shard_length(T, context)} positions "
                          f"per process, {c.num_layers} layers, D = {c.d_model}, d_ff = {c.d_ff}, "
                          f"{c.num_heads} heads) needs about {need / 2**30:.3g} GiB per process but "
                          f"{have / 2**30:.1f} GiB are available; raise --context-parallel, or lower "
                          "--batch-size, --layers, --d-model, --d-ff or --context")
