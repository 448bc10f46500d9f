"""The cases of "models on a shard" (issue 19, part 2): a DecoderLM (and an Encoder with a document
mask) built the same way in every process and in the test, run on each process's shard of the
tokens with ``shard=ContextParallel(T)``; the test compares each process's output and the gradient
of every weight, summed over the group, with one process's forward and backward on the whole
sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

F64 = torch.float64
VOCAB = 29


@dataclass(frozen=True)
class ModelCase:
    name: str
    kind: str = "decoder"  # or "encoder" (with a document mask)
    positions: str = "learned"
    norm: str = "pre"
    layout: str = "zigzag"
    dtype: torch.dtype = F64
    T: int = 37  # not a multiple of 2N for N = 2, 3 (or 4): the shards differ in length
    lane: int | None = None  # the local row's lane and rows, as _ring_cases.Case
    rows: int | None = None


MODEL_CASES = [
    ModelCase("decoder, learned, zigzag"),
    ModelCase("decoder, sinusoidal, contiguous", positions="sinusoidal", layout="contiguous", T=40),
    ModelCase("decoder, post-norm, sinusoidal, zigzag, in lanes", positions="sinusoidal", norm="post", lane=4,
              rows=3),
    ModelCase("encoder, documents, zigzag", kind="encoder", positions="sinusoidal", T=41),
    ModelCase("decoder float32, learned, zigzag", dtype=torch.float32),
    ModelCase("decoder float32, sinusoidal, contiguous", dtype=torch.float32, positions="sinusoidal",
              layout="contiguous"),
]
MODELS_BY_NAME = {c.name: c for c in MODEL_CASES}


def build(c: ModelCase) -> torch.nn.Module:
    """The case's model, the same weights in every process (drawn from a fixed seed), in c.dtype."""
    from selfattention.transformer import DecoderLM, Encoder, TransformerConfig

    torch.manual_seed(sum(map(ord, c.name)))
    config = TransformerConfig(vocab_size=VOCAB, d_model=16, num_heads=4, num_layers=2, d_ff=32, max_len=48,
                               positions=c.positions, norm=c.norm)
    model = (DecoderLM if c.kind == "decoder" else Encoder)(config)
    if c.positions == "learned":  # 0.02 · randn would leave the positions a small part of x
        torch.nn.init.normal_(model.positions.table)
    return model.to(c.dtype)


def inputs(c: ModelCase) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (2, T) and the upstream gradient of the output, in c.dtype."""
    g = torch.Generator().manual_seed(7 + sum(map(ord, c.name)))
    tokens = torch.randint(0, VOCAB, (2, c.T), generator=g)
    width = VOCAB if c.kind == "decoder" else 16
    return tokens, torch.randn(2, c.T, width, generator=g, dtype=F64).to(c.dtype)


def doc_ids(c: ModelCase) -> torch.Tensor:
    """(2, T): three packed documents of unequal length, split differently in each row."""
    return torch.tensor([[0] * 7 + [1] * 20 + [2] * (c.T - 27), [0] * 18 + [1] * 3 + [2] * (c.T - 21)])


def mask_kwargs(c: ModelCase, dense: bool) -> dict:
    """The encoder's document mask: a BlockMask of the whole sequence for the shards, the dense
    (B, 1, T, T) mask from its definition for one process."""
    if c.kind != "encoder":
        return {}
    from selfattention import block_mask

    ids = doc_ids(c)
    if dense:
        return {"mask": (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)}
    return {"mask": block_mask.documents(ids, block=16)}


def whole(c: ModelCase, model: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """One process, the whole sequence: the output and every weight's gradient (the model in dtype)."""
    tokens, upstream = inputs(c)
    model = model.to(dtype)
    model.zero_grad()
    out = model(tokens, **mask_kwargs(c, dense=True))
    (out * upstream.to(dtype)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def run_models(rank: int, world: int) -> dict:
    """In each process: every case on its shard, forward and backward; the output gathered whole,
    and each weight's gradient summed over the group (what context-parallel training does)."""
    import torch.distributed as td
    from _ring_cases import local_row

    from selfattention.distributed import ContextParallel

    results = {}
    for c in MODEL_CASES:
        try:
            model = build(c)
            tokens, upstream = inputs(c)
            shard = ContextParallel(c.T, layout=c.layout)
            with local_row(c):
                out = model(shard.shard(tokens, dim=-1), shard=shard, **mask_kwargs(c, dense=False))
                (out * shard.shard(upstream)).sum().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            for grad in grads.values():
                td.all_reduce(grad)
            results[c.name] = {"out": shard.unshard(out.detach()), "grads": grads, "local": out.shape[1]}
        except Exception as err:  # noqa: BLE001 (the test reports it)
            results[c.name] = {"error": f"{type(err).__name__}: {err}"}
    return results
