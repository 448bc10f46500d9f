"""Hugging Face models with ``attn_implementation="selfattention"`` against the same models' ``eager``.

Offline: all-MiniLM-L6-v2 from the installed package, and tiny random Llama (grouped-query,
causal, RoPE) and GPT-2 models built here. Accuracy by the 2× rule of ``_hf.py``. Every
comparison also checks that our attention really ran (a model that silently fell back to another
implementation would pass any comparison with eager), and the mutants at the end show that the
comparisons fail when the mask's polarity or the causal alignment is wrong.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from _hf import (
    MODELS,
    error,
    llama,
    logits,
    padded_batch,
    positions,
    reference_logits,
    transformers,
    within_rule,
)

import selfattention.integrations.transformers as hf
from selfattention import masks
from selfattention.models.pretrained import default_model_path

CPU_BACKENDS = ("auto", "matrix", "blockwise", "torch")
TEXTS = [
    "Hi!",  # the most padding
    "Attention lets every word in a sentence look at all the other words and weigh them by relevance.",
    "Café naïve résumé 😀 你好世界",
]


@pytest.fixture(scope="module", autouse=True)
def registered():
    hf.register()  # "selfattention", backend auto
    for b in CPU_BACKENDS:
        hf.register(backend=b, name=f"selfattention_{b}")


@pytest.fixture
def calls(monkeypatch):
    """The backends our attention was called with during the test."""
    seen: list[str] = []
    real = hf.attention

    def counting(*args, **kwargs):
        seen.append(kwargs["backend"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "attention", counting)
    return seen


# --- all-MiniLM-L6-v2 (BERT: bidirectional, right padding) ----------------------------------------

@pytest.fixture(scope="module")
def minilm():
    path = default_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    eager = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = eager.to(torch.float64)(**batch, output_hidden_states=True, output_attentions=True)
        out32 = eager.to(torch.float32)(**batch, output_hidden_states=True, output_attentions=True)
    return path, batch, ref, out32


def test_minilm_from_pretrained(minilm, calls):
    path, batch, ref, eager = minilm
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="selfattention").eval()
    assert model.config._attn_implementation == "selfattention"
    with torch.no_grad():
        ours = model(**batch, output_hidden_states=True)
    assert calls == ["auto"] * model.config.num_hidden_layers
    real = batch["attention_mask"].bool()
    states = zip(ours.hidden_states, eager.hidden_states, ref.hidden_states, strict=True)
    for layer, (h, h_eager, h_ref) in enumerate(states):
        within_rule(error(h, h_ref, real), error(h_eager, h_ref, real), f"hidden states {layer}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_minilm_each_backend_float32_and_float64(minilm, backend, calls):
    path, batch, ref, eager = minilm
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    model.set_attn_implementation(f"selfattention_{backend}")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = model(**batch).last_hidden_state
        ours64 = model.to(torch.float64)(**batch).last_hidden_state
    assert calls and set(calls) == {backend}
    within_rule(error(ours, ref.last_hidden_state, real),
                error(eager.last_hidden_state, ref.last_hidden_state, real), "last hidden state")
    # In float64 both are float64 computations of one function: they agree to rounding.
    assert error(ours64, ref.last_hidden_state, real) < 1e-10


def test_minilm_output_attentions(minilm, calls):
    path, batch, ref, eager = minilm
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="selfattention").eval()
    with torch.no_grad():
        ours = model(**batch, output_attentions=True)
    assert calls and set(calls) == {"auto"}
    assert len(ours.attentions) == len(ref.attentions)
    rows = batch["attention_mask"].bool()[:, None, :, None]  # real query rows (B, 1, T, 1)
    weights = zip(ours.attentions, eager.attentions, ref.attentions, strict=True)
    for layer, (w, w_eager, w_ref) in enumerate(weights):
        assert w.shape == w_ref.shape
        where = rows.expand(w.shape)
        within_rule(error(w, w_ref, where), error(w_eager, w_ref, where), f"attention weights {layer}")


# --- tiny Llama and GPT-2: padded batches, fully padded rows --------------------------------------

@pytest.mark.parametrize("padding", ["left", "right", "empty"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_logits_on_padded_batches(kind, padding, calls):
    build, ref_impl = MODELS[kind]
    model = build(seed=1)
    ids, am = padded_batch(padding, seed=1)
    real = am.bool()
    ref = reference_logits(model, ref_impl, ids, am)
    eager = logits(model, "eager", torch.float32, ids, am)
    calls.clear()
    ours = logits(model, "selfattention", torch.float32, ids, am)
    assert calls, "our attention did not run"
    assert torch.isfinite(ours).all()  # fully padded rows too: zeros, never NaN
    within_rule(error(ours, ref, real), error(eager, ref, real), f"{kind} logits, {padding} padding")


def test_compiled_model_fullgraph(calls):
    """torch.compile(fullgraph=True) traces a whole model running our attention: no graph break."""
    model = llama(seed=1)
    ids, am = padded_batch("left", seed=1)
    real = am.bool()
    ref = reference_logits(model, "sdpa", ids, am)
    eager = logits(model, "eager", torch.float32, ids, am)
    model.set_attn_implementation("selfattention")
    torch._dynamo.reset()
    with torch.no_grad():
        ours = torch.compile(model, fullgraph=True)(ids, attention_mask=am, position_ids=positions(am)).logits
    torch._dynamo.reset()
    assert calls
    within_rule(error(ours, ref, real), error(eager, ref, real), "compiled Llama logits")


# --- generation with the KV cache ----------------------------------------------------------------

def _generate(model, impl, ids, am, **kwargs):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=am, max_new_tokens=8, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.scores)  # (B, T + 8), (8, B, V)


def _margin(scores: torch.Tensor) -> float:
    """The smallest gap between the best and second-best next-token score over all steps."""
    top2 = scores.topk(2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]).min().item()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_generate_greedy_same_tokens_as_eager(kind, cache, calls):
    model = MODELS[kind][0](seed=2)
    ids, am = padded_batch("left", seed=2)
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    eager, eager_scores = _generate(model, "eager", ids, am, **extra)
    # Greedy tokens are a fair test only where no two candidates are within float noise of each
    # other: float32 noise in these logits is ~1e-7 (the logits tests), the margin must be far above.
    assert _margin(eager_scores) > 1e-4
    calls.clear()
    ours, _ = _generate(model, "selfattention", ids, am, **extra)
    assert calls
    assert torch.equal(ours, eager)


def _with_cache(model, cache) -> dict:
    """The cache keyword of ``model.forward``: ``cache`` (transformers >= 5.x), else ``past_key_values``."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _static_prefill(model, impl, ids):
    """Logits of a prefill into an empty static cache of 16 slots: (B, T, V). The mask function
    returns None here (no padding), so causality is the flag's, with query length < key length."""
    model.set_attn_implementation(impl)
    cache = transformers.StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        return model(ids, **_with_cache(model, cache), use_cache=True).logits.double()


def _chunk_after_prefill(model, impl, ids, am):
    """Logits of the last 3 tokens fed at once after a cached prefill (query 3 < keys 11)."""
    model.set_attn_implementation(impl)
    pos = positions(am)
    with torch.no_grad():
        first = model(ids[:, :8], attention_mask=am[:, :8], position_ids=pos[:, :8], use_cache=True)
        cache = first.cache if hasattr(first, "cache") else first.past_key_values
        return model(ids[:, 8:], attention_mask=am, position_ids=pos[:, 8:], **_with_cache(model, cache),
                     use_cache=True).logits.double()


def test_static_cache_prefill_is_top_left(calls):
    model = llama(seed=3)
    ids, _ = padded_batch("left", seed=3)
    ids = ids[:1]  # no padding: the mask function returns None
    ref = _static_prefill(copy.deepcopy(model).to(torch.float64), "sdpa", ids)
    eager = _static_prefill(model, "eager", ids)
    calls.clear()
    ours = _static_prefill(model, "selfattention", ids)
    assert calls
    everywhere = torch.ones(ids.shape, dtype=torch.bool)
    within_rule(error(ours, ref, everywhere), error(eager, ref, everywhere), "static-cache prefill")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_chunk_after_cached_prefill(kind, calls):
    build, ref_impl = MODELS[kind]
    model = build(seed=4)
    ids, am = padded_batch("left", seed=4)
    ref = reference_logits(model, ref_impl, ids, am)[:, 8:]
    eager = _chunk_after_prefill(model.to(torch.float32), "eager", ids, am)
    calls.clear()
    ours = _chunk_after_prefill(model, "selfattention", ids, am)
    assert calls
    within_rule(error(ours, ref, am[:, 8:].bool()), error(eager, ref, am[:, 8:].bool()), "chunk")


# --- the comparisons can fail: mutants ------------------------------------------------------------

def _flipped(module, query, key, value, attention_mask, **kwargs):
    """Our attention with the mask's polarity inverted (True read as "masked")."""
    flipped = None if attention_mask is None else ~attention_mask
    return hf.attention_forward(module, query, key, value, flipped, **kwargs)


def _bottom_right(module, query, key, value, attention_mask, **kwargs):
    """Our attention reading a missing mask as bottom-right causal instead of top-left."""
    S, Sk = query.shape[2], key.shape[2]
    if attention_mask is None and S > 1:
        attention_mask = masks.causal(S, Sk, "bottom_right")
    return hf.attention_forward(module, query, key, value, attention_mask, **kwargs)


@pytest.fixture(scope="module")
def mutants():
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for name, fn in (("mutant_flipped", _flipped), ("mutant_bottom_right", _bottom_right)):
        transformers.AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, sdpa_mask)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_flipped_mask_polarity_fails_the_rule(mutants, padding):
    model = llama(seed=1)
    ids, am = padded_batch(padding, seed=1)
    real = am.bool()
    ref = reference_logits(model, "sdpa", ids, am)
    eager = error(logits(model, "eager", torch.float32, ids, am), ref, real)
    with pytest.raises(AssertionError):
        within_rule(error(logits(model, "mutant_flipped", torch.float32, ids, am), ref, real), eager, "")


def test_bottom_right_alignment_fails_the_rule(mutants):
    model = llama(seed=3)
    ids = padded_batch("left", seed=3)[0][:1]
    ref = _static_prefill(copy.deepcopy(model).to(torch.float64), "sdpa", ids)
    everywhere = torch.ones(ids.shape, dtype=torch.bool)
    eager = error(_static_prefill(model, "eager", ids), ref, everywhere)
    with pytest.raises(AssertionError):
        within_rule(error(_static_prefill(model, "mutant_bottom_right", ids), ref, everywhere), eager, "")
