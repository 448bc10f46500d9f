"""Shared by the Hugging Face tests: transformers itself, tiny models, padded batches, the 2× rule.

The accuracy rule (FlashAttention's, as in tests/_rules.py): run the model in float64 as the
reference; our float32 error against it must be at most K × the error of the same model's
``eager`` attention in float32 against it, plus one float32 rounding of the reference's largest
value (for an eager error that happens to be 0). K = 4, as in the transformers peer test: our
attention changes only the rounding inside attention (summation order, SDPA's or the blockwise
tier's tiling), while every other layer is the same code with the same weights, so the two float32
errors are of one size (measured 0.6–1.4× on all-MiniLM-L6-v2 and on tiny Llama and GPT-2 models,
on this project's AMD machine; K leaves room for another CPU's kernels); a wrong mask, alignment
or head mapping gives errors orders of magnitude larger (the mutants in the tests are asserted to
break the rule).

The float64 reference runs each sequence alone, without padding (positions given explicitly, so
padding cannot shift them), so no padding mask takes part in it. Llama's ``eager`` attention
computes its softmax in float32 even for a float64 model, so Llama's reference uses ``sdpa``
(PyTorch's float64 math) instead; GPT-2's and BERT's eager attention stays in float64.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("CI", "").lower() not in ("", "0", "false"):
    import transformers  # CI installs the peers: an ImportError here must fail the run
else:
    transformers = pytest.importorskip("transformers", reason="transformers (test-only peer) not installed")

from selfattention.integrations.transformers import MIN_VERSION  # noqa: E402

_v = tuple(int(x) for x in transformers.__version__.split(".")[:2])
if _v < MIN_VERSION:
    pytest.skip(f"transformers {transformers.__version__} < 4.53", allow_module_level=True)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

K = 4  # see the module docstring
VOCAB = 97


def llama(seed: int = 0):
    """A tiny random Llama: grouped-query (4 query heads, 2 key/value heads), causal, RoPE."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).eval()


def gpt2(seed: int = 0):
    """A tiny random GPT-2: 4 heads, causal, learned absolute positions."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


MODELS = {"llama": (llama, "sdpa"), "gpt2": (gpt2, "eager")}  # builder, float64 reference implementation


def padded_batch(padding: str, seed: int = 0, B: int = 3, T: int = 11):
    """(input_ids (B, T), attention_mask (B, T)): row 0 full, the others padded on ``padding``'s side
    ("left" or "right") by different amounts; "empty" adds a row that is all padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    for b, n in zip(range(1, B), (4, 7), strict=False):
        if padding == "left":
            am[b, :n] = 0
        else:
            am[b, T - n:] = 0
    if padding == "empty":
        am[-1] = 0
    return ids.masked_fill(am == 0, 0), am


def positions(am: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only: padding shifts nothing."""
    return (am.cumsum(-1) - 1).clamp(min=0)


def logits(model, impl: str, dtype: torch.dtype, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    """The model's float64-cast logits (B, T, V) with attention ``impl`` in ``dtype``."""
    model.set_attn_implementation(impl)
    model.to(dtype)
    with torch.no_grad():
        return model(ids, attention_mask=am, position_ids=positions(am)).logits.double()


def reference_logits(model, impl: str, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    """Float64 logits of each sequence alone, unpadded, placed at its real positions (0 elsewhere)."""
    ref = torch.zeros(*ids.shape, model.config.vocab_size, dtype=torch.float64)
    for b in range(ids.shape[0]):
        real = am[b].bool()
        if real.any():
            ref[b, real] = logits(model, impl, torch.float64, ids[b:b + 1, real], am[b:b + 1, real])[0]
    return ref


def error(x: torch.Tensor, ref: torch.Tensor, where: torch.Tensor) -> float:
    """max |x − ref| over the positions ``where`` (bool, broadcast over the last dim)."""
    return (x.double() - ref)[where].abs().max().item()


def within_rule(ours: float, eager: float, what: str, scale: float = 1.0) -> None:
    """ours ≤ K × eager + ε₃₂ · scale (scale: the reference's magnitude; 1 for values of unit size)."""
    floor = torch.finfo(torch.float32).eps * scale
    assert ours <= K * eager + floor, (
        f"{what}: error {ours:.3g} > {K} × eager float32's error {eager:.3g} + {floor:.2g}")
