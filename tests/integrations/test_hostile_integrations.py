"""Hostile input at the doors (issue 17, items 8, 9, 10 and 16's library half): every case ends in a
correct result or one clear error — exit status 2 on the command line, the project's error types
or TypeError/ValueError in the library — and nothing is silently dropped or detached.

One section per class of problem: a model folder holding tensors its config does not use; a mask
or bias with one entry per key/value head under grouped-query attention; attention weights handed
back without the gradient the output took through them; tensors of a dtype no tier computes in.
Tests that need transformers import it through ``_hf`` inside them (a skip where it is missing),
so the others run everywhere.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from _cli import model_dir_copy, one_error, run_cli
from _rules import F64, assert_close, randn

import selfattention.integrations.transformers as hf
from selfattention import MultiHeadAttention, SelfAttention, attention
from selfattention.errors import ModelError
from selfattention.integrations.torch_library import attention_op
from selfattention.models.bert import BertConfig, expected_shapes, state_from_hf
from selfattention.models.pretrained import PretrainedModel, default_model_path


def _tf():
    """transformers, or a skip (``_hf`` decides: CI must have it)."""
    import _hf

    return _hf


# --- 8. a model folder holding tensors its config does not use ----------------------------------------

TINY = {"model_type": "bert", "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 12,
        "num_attention_heads": 2, "intermediate_size": 12, "max_position_embeddings": 16}


def _state(cfg: BertConfig, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.randn(s) for k, s in expected_shapes(cfg).items()}


def test_config_with_fewer_layers_than_the_weights_is_refused_naming_the_first_extra(tmp_path):
    config = json.loads((default_model_path() / "config.json").read_text())
    d = model_dir_copy(tmp_path, replace={"config.json": json.dumps({**config, "num_hidden_layers": 3})})
    first = r"encoder\.layer\.3\.attention\.output\.LayerNorm\.bias"
    with pytest.raises(ModelError, match=rf"does not match config\.json: .* the first {first} "
                                         r"\(config\.json says num_hidden_layers = 3\)") as info:
        PretrainedModel(d)
    assert "\n" not in str(info.value)
    for argv in (["explain", "hi", "--model", str(d)], ["embed", "hi", "--model", str(d)]):
        one_error(*run_cli(*argv), first)


@pytest.mark.parametrize("prefix", ["", "bert."])
@pytest.mark.parametrize("extra, named", [
    # the config says 2 layers, the file holds 12: layer 2 is the first (not layer 10, as text sorts)
    ("layers", r"{p}encoder\.layer\.2\.attention\.output\.LayerNorm\.bias \(config\.json says .* = 2\)$"),
    # what a relative-position BERT adds to each layer, under a config saying "absolute"
    ("{p}encoder.layer.0.attention.self.distance_embedding.weight",
     r"{p}encoder\.layer\.0\.attention\.self\.distance_embedding\.weight$"),
    ("{p}embeddings.extra.weight", r"{p}embeddings\.extra\.weight$"),
    ("lm_head.weight", r"lm_head\.weight$"),  # beside the encoder, but no head of a BertFor… class
])
def test_any_tensor_no_one_reads_is_refused(prefix, extra, named):
    full = BertConfig.from_dict(TINY)
    cfg = BertConfig.from_dict({**TINY, "num_hidden_layers": 2})
    tensors = _state(full if extra == "layers" else cfg, prefix)
    if extra != "layers":
        tensors[extra.format(p=prefix)] = torch.zeros(3)
    named = named.replace("{p}", re.escape(prefix))
    with pytest.raises(ModelError, match=rf"^w\.safetensors does not match config\.json: it holds \d+ "
                                         rf"tensors this config does not use, the first {named}") as info:
        state_from_hf(tensors, cfg, "w.safetensors")
    if extra == "layers":
        assert "holds 160 tensors" in str(info.value)  # 16 in each of layers 2 … 11


def test_a_head_in_a_file_without_the_bert_prefix_is_refused():
    cfg = BertConfig.from_dict({**TINY, "num_hidden_layers": 2})
    tensors = {**_state(cfg), "cls.predictions.bias": torch.zeros(cfg.vocab_size)}  # no BertFor… file
    with pytest.raises(ModelError, match=r"the first cls\.predictions\.bias$"):
        state_from_hf(tensors, cfg, "w.safetensors")


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_tensors_bert_files_hold_and_the_encoder_leaves_unused_are_accepted(prefix):
    cfg = BertConfig.from_dict({**TINY, "num_hidden_layers": 2})
    tensors = _state(cfg, prefix)
    D = cfg.hidden_size
    tensors.update({prefix + "pooler.dense.weight": torch.zeros(D, D),
                    prefix + "pooler.dense.bias": torch.zeros(D),
                    prefix + "embeddings.position_ids": torch.arange(16)[None]})
    if prefix:  # the heads of BertForPreTraining, …ForSequenceClassification, …ForQuestionAnswering
        tensors.update({"cls.predictions.bias": torch.zeros(50),
                        "cls.seq_relationship.weight": torch.zeros(2, D),
                        "classifier.weight": torch.zeros(3, D), "qa_outputs.weight": torch.zeros(2, D)})
    state = state_from_hf(tensors, cfg, "w.safetensors")
    assert torch.equal(state["word_embeddings.weight"], tensors[prefix + "embeddings.word_embeddings.weight"])


# --- 9. a mask or bias per key/value head under grouped-query attention ----------------------------


def _qkv(B=2, H=4, Hkv=2, S=5, Sk=5, d=8, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return (randn(B, H, S, d, gen=gen, dtype=dtype), randn(B, Hkv, Sk, d, gen=gen, dtype=dtype),
            randn(B, Hkv, Sk, d, gen=gen, dtype=dtype))


PER_KV = r"has shape \(2, 2, 5, 5\), expected broadcastable to \(2, 4, 5, 5\)"


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_transformers_refuses_a_mask_per_key_value_head(kind, need_weights):
    q, k, v = _qkv()
    mask = torch.rand(2, 2, 5, 5) > 0.3  # one per key/value head: would be applied per group
    mask = mask if kind == "bool" else torch.zeros(2, 2, 5, 5, dtype=F64).masked_fill(~mask, -math.inf)
    with pytest.raises(ValueError, match=rf"^attention_mask {PER_KV}, 4 query heads \(one per key/value"):
        hf.attention_forward(None, q, k, v, mask, output_attentions=need_weights)
    with pytest.raises(ValueError, match=rf"^position_bias {PER_KV}"):
        hf.attention_forward(None, q, k, v, None, position_bias=randn(2, 2, 5, 5, gen=torch.Generator()))


def test_every_door_refuses_a_mask_per_key_value_head():
    q, k, v = _qkv()
    mask = torch.rand(2, 2, 5, 5) > 0.3
    with pytest.raises(ValueError, match="attention_mask has shape"):
        hf.attention_forward(None, q, k, v, mask)
    with pytest.raises(ValueError, match="mask has shape"):
        attention_op(q, k, v, mask=mask)
    with pytest.raises(ValueError, match="mask has shape"):
        attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), mask=mask)
    mha = MultiHeadAttention(32, 4, num_kv_heads=2).double()
    with pytest.raises(ValueError, match="mask has shape"):
        mha.heads(q, k, v, mask=mask)


def test_the_shared_grouping_refuses_a_mask_per_key_value_head():
    """``_gqa.grouped_mask``, which both integrations use, guards itself too (not only its callers)."""
    from selfattention.integrations._gqa import grouped_mask

    for shape in [(2, 2, 5, 5), (2, 5, 5), (1, 2, 2, 5, 5)]:
        with pytest.raises(ValueError, match=rf"mask has shape {re.escape(str(shape))}: .* not one per key"):
            grouped_mask(torch.ones(shape, dtype=torch.bool), 4, 2)
    assert grouped_mask(torch.ones(2, 4, 5, 5), 4, 2).shape == (2, 2, 2, 5, 5)
    assert grouped_mask(torch.ones(5, 5), 4, 2).shape == (1, 1, 1, 5, 5)


@pytest.mark.parametrize("shape", [(2, 1, 5, 5), (1, 4, 5, 5), (4, 5, 5), (5, 5), (2, 4, 1, 5)])
def test_transformers_takes_every_mask_that_broadcasts_to_the_query_heads(shape):
    """The same masks give what attention() gives with K and V repeated per query head."""
    q, k, v = _qkv()
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.3
    bias = randn(*shape, gen=torch.Generator().manual_seed(2))
    want = attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                     mask=bias.masked_fill(~mask, -math.inf)).transpose(1, 2)
    for need_weights in (False, True):
        out, _ = hf.attention_forward(None, q, k, v, mask, position_bias=bias, output_attentions=need_weights)
        assert_close(out, want)


@pytest.mark.parametrize("call, message", [
    (lambda q, k, v: hf.attention_forward(None, q[0], k, v, None),
     r"^query has shape \(4, 5, 8\), expected 4 dims"),
    (lambda q, k, v: hf.attention_forward(None, q, k[:, :0], v[:, :0], None),
     r"^query has 4 heads and key 0"),
    (lambda q, k, v: hf.attention_forward(None, q, k[:1], v[:1], None),
     r"^query \(2, 4, 5, 8\), key \(1, 2, 5, 8\)"),
    (lambda q, k, v: hf.attention_forward(None, q, k, v, torch.ones(2, 1, 5, 5, dtype=torch.long)),
     r"^attention_mask has dtype torch\.int64, expected bool"),
    (lambda q, k, v: hf.attention_forward(None, q, k, v, None, position_bias=torch.ones(1, 4, 5, 5) > 0),
     r"^position_bias has dtype torch\.bool, expected floating point"),
    (lambda q, k, v: hf.attention_forward(None, q, k, v, torch.ones(1, 2, 1, 4, 5, 5) > 0),
     r"^attention_mask has shape \(1, 2, 1, 4, 5, 5\), expected broadcastable"),
])
def test_transformers_names_the_bad_tensor(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(*_qkv())


# --- 10. attention weights carry the gradient the output took through them ------------------------


def _attention_models(_hf):
    """name → (model, inputs): MiniLM (BERT, padded batch) and tiny random Llamas, 4/4 and 4/2 heads."""
    t = _hf.transformers
    path = default_model_path()
    tok = t.AutoTokenizer.from_pretrained(path)
    bert = t.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    found = {"bert": (bert, dict(tok(["Hi!", "Attention looks at every word."], padding=True,
                                     return_tensors="pt")))}
    ids = torch.randint(1, _hf.VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    for kv in (4, 2):
        torch.manual_seed(kv)
        config = t.LlamaConfig(vocab_size=_hf.VOCAB, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv,
                               max_position_embeddings=64)
        found[f"llama 4/{kv}"] = (t.LlamaForCausalLM(config).eval(), {"input_ids": ids})
    return found


def _ref64(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention written from its definition, all in float64 (Llama's eager takes its softmax in float32):
    the reference the float32 gradients are measured against. Gets transformers' eager (additive) mask."""
    G = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(G, 1), value.repeat_interleave(G, 1)
    s = query @ key.transpose(-2, -1) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is not None:
        s = s + attention_mask
    elif getattr(module, "is_causal", False) and s.shape[-2] > 1:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), -math.inf)
    w = torch.softmax(s, dim=-1)
    return (w @ value).transpose(1, 2).contiguous(), w


def _weight_grads(model, inputs, impl: str, dtype) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
    """(∂loss/∂weights by autograd.grad, the same by retain_grad + backward), loss a fixed random
    projection of the model's last output."""
    model.set_attn_implementation(impl)
    model.to(dtype)
    out = model(**inputs, output_attentions=True)
    last = out.logits if hasattr(out, "logits") else out.last_hidden_state
    c = torch.randn(last.shape, generator=torch.Generator().manual_seed(5), dtype=F64).to(dtype)
    loss = (last * c).sum()
    assert out.attentions and all(w is not None for w in out.attentions)
    by_grad = torch.autograd.grad(loss, out.attentions, retain_graph=True)
    for w in out.attentions:
        w.retain_grad()
    loss.backward()
    return by_grad, [w.grad for w in out.attentions]


@pytest.mark.slow
def test_attention_weights_carry_gradients_like_eager(monkeypatch):
    """For every layer, ∂loss/∂weights from our attention is within FlashAttention's rule of the float64
    reference (≤ K × eager float32's error + one rounding), by autograd.grad and by .grad alike."""
    _hf = _tf()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    hf.register()
    # registered for this test only (the interfaces' register is a global dict update)
    monkeypatch.setitem(AttentionInterface._global_mapping, "test_ref64", _ref64)
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, "test_ref64", eager_mask)
    calls: list[bool] = []
    real = hf.attention
    monkeypatch.setattr(hf, "attention", lambda *a, **kw: calls.append(kw["need_weights"]) or real(*a, **kw))
    for name, (model, inputs) in _attention_models(_hf).items():
        ref, _ = _weight_grads(model, inputs, "test_ref64", F64)
        eager, _ = _weight_grads(model, inputs, "eager", torch.float32)
        calls.clear()
        ours, ours_retained = _weight_grads(model, inputs, "selfattention", torch.float32)
        assert calls and all(calls), name  # ours ran, and was asked for the weights
        layers = zip(ours, ours_retained, eager, ref, strict=True)
        for layer, (g, g_kept, g_eager, g_ref) in enumerate(layers):
            assert torch.equal(g, g_kept), (name, layer)
            every = torch.ones_like(g_ref, dtype=torch.bool)
            _hf.within_rule(_hf.error(g, g_ref, every), _hf.error(g_eager, g_ref, every),
                            f"{name}: ∂loss/∂weights of layer {layer}", scale=g_ref.abs().max().item())


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Hkv", [4, 2])
def test_transformers_weights_are_what_the_output_is_made_of(Hkv, dtype):
    """out = weights @ v in the graph: ∂(Σ c ∘ out)/∂weights is c vᵀ (v per query head), to the
    rounding of a d-term dot product and one rounding to dtype: |error| ≤ (d + 1) ε Σ|c||v|."""
    q, k, v = (x.to(dtype).requires_grad_() for x in _qkv(Hkv=Hkv))
    mask = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    out, w = hf.attention_forward(None, q, k, v, mask, output_attentions=True, is_causal=False)
    c = randn(*out.shape, gen=torch.Generator().manual_seed(2)).to(dtype)  # (B, S, H, d)
    (g,) = torch.autograd.grad((out * c).sum(), w)
    c = c.transpose(1, 2).double()  # (B, H, S, d)
    v = v.repeat_interleave(4 // Hkv, 1).double()  # (B, H, Sk, d)
    assert g.dtype == dtype and g.shape == (2, 4, 5, 5)
    bound = (v.shape[-1] + 1) * torch.finfo(dtype).eps * (c.abs() @ v.abs().transpose(-2, -1))
    assert ((g.double() - c @ v.transpose(-2, -1)).abs() <= bound).all()


@pytest.mark.parametrize("Hkv", [4, 2])
def test_multi_head_attention_weights_are_what_z_is_made_of(Hkv):
    mha = MultiHeadAttention(32, 4, num_kv_heads=Hkv).double()
    q, k, v = (x.requires_grad_() for x in _qkv(Hkv=Hkv))
    z, w = mha.heads(q, k, v, need_weights=True, causal=True)
    c = randn(*z.shape, gen=torch.Generator().manual_seed(2))
    (g,) = torch.autograd.grad((z * c).sum(), w)
    assert_close(g, c @ v.repeat_interleave(4 // Hkv, 1).transpose(-2, -1))
    x = randn(2, 5, 32, gen=torch.Generator().manual_seed(3))
    out, w = mha(x, need_weights=True)
    assert torch.autograd.grad(out.sum(), w)[0].shape == (2, 4, 5, 5)


def test_gpt2_never_asks_for_weights_and_gets_none():
    """docs/integrations.md: GPT-2 in transformers 5.x drops output_attentions before its layers (its
    forward pops the keyword), so no attention function is asked for weights; eager computes them anyway."""
    _hf = _tf()
    if int(_hf.transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the statement is about transformers 5.x")
    hf.register()
    seen: list[dict] = []
    real = hf.attention_forward

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    model = _hf.gpt2()
    ids = torch.randint(1, _hf.VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    model.set_attn_implementation("eager")
    assert len(model(ids, output_attentions=True).attentions) == 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf, "attention_forward", spy)
        model.set_attn_implementation("selfattention")
        assert not model(ids, output_attentions=True).attentions
    assert seen and not any(kw.get("output_attentions") for kw in seen)


# --- 16. tensors of a dtype no tier computes in -----------------------------------------------------

FLOATS = r"expected a floating-point dtype: one of float16, bfloat16, float32, float64$"


@pytest.mark.filterwarnings("ignore:Complex modules:UserWarning")  # torch: complex modules are new
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn])
def test_every_door_names_the_floating_point_dtypes_expected(dtype):
    q, k, v = (x.to(dtype) for x in _qkv(Hkv=4))
    want = rf"has dtype {re.escape(str(dtype))}, {FLOATS}"
    with pytest.raises(TypeError, match=rf"^q {want}"):
        attention(q, k, v)
    with pytest.raises(TypeError, match=rf"^q {want}"):
        attention_op(q, k, v)
    with pytest.raises(TypeError, match=rf"^query {want}"):
        hf.attention_forward(None, q, k, v, None)
    f32 = _qkv(Hkv=4, dtype=torch.float32)
    with pytest.raises(TypeError, match=rf"^k {want}"):
        attention_op(f32[0], k, v)
    with pytest.raises(TypeError, match=rf"^value {want}"):
        hf.attention_forward(None, *f32[:2], v, None)
    if dtype.is_floating_point or dtype.is_complex:  # a module can be moved to these
        layer = SelfAttention(4).to(dtype)
        with pytest.raises(TypeError, match=rf"^the layer's weight {want}"):
            layer(torch.ones(1, 3, 4).to(dtype))
    with pytest.raises(TypeError, match=r"^x has dtype .* but the layer's weights have torch\.float32"):
        SelfAttention(4)(torch.ones(1, 3, 4).to(dtype))
