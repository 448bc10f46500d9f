"""BertConfig, state_from_hf and BertEncoder, on tiny random models.

The encoder is checked two independent ways: against a from-scratch forward written here with
plain tensor ops (float64, per head, GELU from its formula) that reads the Hugging Face-named
state dict directly, and against a tiny random ``transformers.BertModel`` saved to disk and loaded
back through ``PretrainedModel`` (skipped without transformers, except under CI).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil

import pytest
import torch

from selfattention.errors import ModelError
from selfattention.models.bert import BertConfig, BertEncoder, state_from_hf
from selfattention.models.pretrained import PretrainedModel, default_model_path

TINY = {
    "model_type": "bert",
    "vocab_size": 50,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 12,
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
}


def _transformers():
    """The peer, or a skip; under CI (CI=true) a missing peer fails instead."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        import transformers  # CI installs the peers: an ImportError here must fail the test
    else:
        transformers = pytest.importorskip("transformers", reason="transformers (test-only peer) missing")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


# --- BertConfig ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "gpt2"}, r"model_type 'gpt2' is not supported"),
        ({"position_embedding_type": "relative_key"}, r"position_embedding_type 'relative_key'"),
        ({"hidden_act": "swish"}, r"hidden_act 'swish' is not supported"),
        (
            {"hidden_size": 10, "num_attention_heads": 4},
            r"hidden_size 10 is not divisible by num_attention_heads 4",
        ),
        ({"vocab_size": None}, r"missing vocab_size"),
        (
            {"num_hidden_layers": None, "intermediate_size": None},
            r"missing num_hidden_layers, intermediate_size",
        ),
        ({"num_hidden_layers": "6"}, r"num_hidden_layers = '6' is not valid"),
        ({"num_hidden_layers": True}, r"num_hidden_layers = True is not valid"),
        ({"layer_norm_eps": -1.0}, r"layer_norm_eps = -1.0 is not valid"),
        ({"num_attention_heads": 0}, r"num_attention_heads = 0 is not valid \(expected an integer ≥ 1\)"),
        # sizes of 0 would build empty tables, then fail deep in the encoder (issue 8)
        ({"type_vocab_size": 0}, r"type_vocab_size = 0 is not valid \(expected an integer ≥ 1\)"),
        ({"intermediate_size": 0}, r"intermediate_size = 0 is not valid"),
        ({"max_position_embeddings": 2}, r"max_position_embeddings 2 leaves no room"),
        ({"pad_token_id": 50}, r"pad_token_id 50 is not a word piece of the vocabulary \(vocab_size 50\)"),
        ({"pad_token_id": -1}, r"pad_token_id = -1 is not valid \(expected an integer ≥ 0\)"),
        ({"layer_norm_eps": float("inf")}, r"layer_norm_eps = inf is not valid"),
        ({"layer_norm_eps": float("nan")}, r"layer_norm_eps = nan is not valid"),
        ({"is_decoder": True}, r"decoder configs are not supported"),
    ],
)
def test_config_errors_name_the_problem(change, match):
    raw = {k: v for k, v in {**TINY, **change}.items() if v is not None}
    with pytest.raises(ModelError, match=match) as info:
        BertConfig.from_dict(raw, source="cfg.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("cfg.json: ")


def test_config_accepts_tiny_and_ignores_unknown_fields():
    cfg = BertConfig.from_dict({**TINY, "hidden_dropout_prob": 0.1, "architectures": ["BertModel"]})
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (8, 2, 2)
    assert cfg.pad_token_id == 0 and cfg.hidden_act == "gelu"


@pytest.mark.parametrize(
    "text, match",
    [("{not json", r"cannot read .*config\.json"), ("[1, 2]", r"config\.json is not a JSON object")],
)
def test_config_file_errors(tmp_path, text, match):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ModelError, match=match) as info:
        BertConfig.from_file(path)
    assert "\n" not in str(info.value)


def test_config_file_missing(tmp_path):
    with pytest.raises(ModelError, match=r"cannot read .*nothing\.json"):
        BertConfig.from_file(tmp_path / "nothing.json")


def test_default_config_file_loads():
    cfg = BertConfig.from_file(default_model_path() / "config.json")
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (6, 12, 384)


# --- state_from_hf ------------------------------------------------------------------------------


def _hf_state(cfg: BertConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Hugging Face BERT state dict of random tensors (std 0.5, so every one matters)."""
    g = torch.Generator().manual_seed(seed)
    D, F = cfg.hidden_size, cfg.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, D),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, D),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, D),
        "embeddings.LayerNorm.weight": (D,),
        "embeddings.LayerNorm.bias": (D,),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            shapes[p + f"attention.self.{part}.weight"] = (D, D)
            shapes[p + f"attention.self.{part}.bias"] = (D,)
        shapes.update({
            p + "attention.output.dense.weight": (D, D),
            p + "attention.output.dense.bias": (D,),
            p + "attention.output.LayerNorm.weight": (D,),
            p + "attention.output.LayerNorm.bias": (D,),
            p + "intermediate.dense.weight": (F, D),
            p + "intermediate.dense.bias": (F,),
            p + "output.dense.weight": (D, F),
            p + "output.dense.bias": (D,),
            p + "output.LayerNorm.weight": (D,),
            p + "output.LayerNorm.bias": (D,),
        })
    return {k: torch.randn(s, generator=g, dtype=torch.float64) * 0.5 for k, s in shapes.items()}


def test_state_from_hf_accepts_bert_prefix():
    cfg = BertConfig.from_dict(TINY)
    plain = _hf_state(cfg)
    prefixed = {"bert." + k: v for k, v in plain.items()}
    prefixed["cls.predictions.bias"] = torch.zeros(cfg.vocab_size)  # a head we do not use
    a, b = state_from_hf(plain, cfg, "plain"), state_from_hf(prefixed, cfg, "prefixed")
    assert a.keys() == b.keys() == BertEncoder(cfg).state_dict().keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    q, k, v = (plain[f"encoder.layer.1.attention.self.{p}.weight"] for p in ("query", "key", "value"))
    assert torch.equal(a["layers.1.attention.in_proj.weight"], torch.cat([q, k, v]))  # q, k, v order


@pytest.mark.parametrize(
    "drop", ["encoder.layer.1.attention.self.value.bias", "embeddings.LayerNorm.weight"]
)
def test_state_from_hf_rejects_missing_tensors(drop):
    cfg = BertConfig.from_dict(TINY)
    state = _hf_state(cfg)
    del state[drop]
    with pytest.raises(ModelError, match=rf"w\.safetensors lacks 1 tensors .* e\.g\. {drop}") as info:
        state_from_hf(state, cfg, "w.safetensors")
    assert "\n" not in str(info.value)


def test_state_from_hf_rejects_other_architectures():
    cfg = BertConfig.from_dict(TINY)
    other = {"roberta." + k: v for k, v in _hf_state(cfg).items()}
    with pytest.raises(ModelError, match=r"lacks \d+ tensors"):
        state_from_hf(other, cfg, "w.safetensors")


# --- BertEncoder against a from-scratch forward -------------------------------------------------


def _reference(sd: dict[str, torch.Tensor], cfg: BertConfig, ids: torch.Tensor, lengths: list[int]):
    """Hidden states (L + 1 of (B, T, D)) and weights from the HF-named state dict, per head."""
    act = {
        "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "gelu_new": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    }[cfg.hidden_act]

    def norm(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + cfg.layer_norm_eps) * sd[name + ".weight"] + sd[name + ".bias"]

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    T = ids.shape[1]
    e = "embeddings."
    x = sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][:T]
    x = norm(x + sd[e + "token_type_embeddings.weight"][0], e + "LayerNorm")
    hidden, weights = [x], []
    H, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    keep = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, Tk)
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        heads, ws = [], []
        for h in range(H):
            cols = slice(h * d, (h + 1) * d)
            s = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(d)  # (B, T, T)
            w = torch.softmax(s.masked_fill(~keep[:, None, :], -math.inf), dim=-1)
            heads.append(w @ v[..., cols])
            ws.append(w)
        a = lin(torch.cat(heads, -1), p + "attention.output.dense")  # (B, T, D)
        x = norm(x + a, p + "attention.output.LayerNorm")
        f = lin(act(lin(x, p + "intermediate.dense")), p + "output.dense")  # (B, T, D)
        x = norm(x + f, p + "output.LayerNorm")
        hidden.append(x)
        weights.append(torch.stack(ws, 1))  # (B, H, T, T)
    return hidden, weights


def _tiny_encoder(cfg: BertConfig, seed: int = 0):
    sd = _hf_state(cfg, seed)
    enc = BertEncoder(cfg).double().eval()
    enc.load_state_dict(state_from_hf(sd, cfg, "random"))
    return enc, sd


@pytest.mark.parametrize("backend", ["matrix", "blockwise", "torch"])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_encoder_matches_from_scratch_forward(backend, hidden_act):
    cfg = BertConfig.from_dict({**TINY, "hidden_act": hidden_act, "layer_norm_eps": 1e-5})
    enc, sd = _tiny_encoder(cfg, seed=1)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, cfg.vocab_size, (3, 11), generator=g)
    lengths = [11, 5, 1]
    out = enc(ids, torch.tensor(lengths), backend=backend, output_hidden_states=True,
              need_weights=backend == "matrix")
    hidden, weights = _reference(sd, cfg, ids, lengths)
    for layer, (a, b) in enumerate(zip(out.hidden_states, hidden, strict=True)):
        for i, n in enumerate(lengths):
            err = (a[i, :n] - b[i, :n]).abs().max().item()
            assert err < 1e-10, f"layer {layer}, row {i}: {err:.3g}"
    for a, b in zip(out.attentions or [], weights, strict=False):
        for i, n in enumerate(lengths):
            assert (a[i, :, :n] - b[i, :, :n]).abs().max().item() < 1e-12


# --- BertEncoder sanity -------------------------------------------------------------------------


def test_encoder_shapes_and_optional_outputs():
    cfg = BertConfig.from_dict(TINY)
    enc, _ = _tiny_encoder(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    bare = enc(ids)
    assert bare.last_hidden_state.shape == (2, 7, 8) and bare.last_hidden_state.dtype == torch.float64
    assert bare.hidden_states is None and bare.attentions is None
    full = enc(ids, torch.tensor([7, 3]), need_weights=True, output_hidden_states=True)
    assert [h.shape for h in full.hidden_states] == [(2, 7, 8)] * 3
    assert [w.shape for w in full.attentions] == [(2, 2, 7, 7)] * 2
    for w in full.attentions:
        assert torch.allclose(w[0].sum(-1), torch.ones(2, 7, dtype=w.dtype))
        assert w[1, :, :, 3:].abs().max().item() == 0  # padded keys get no weight
    all_real = enc(ids, torch.tensor([7, 7])).last_hidden_state
    assert torch.allclose(all_real, bare.last_hidden_state, atol=1e-12)


@pytest.mark.parametrize("backend", ["matrix", "blockwise", "torch"])
def test_padded_ids_do_not_reach_real_tokens(backend):
    cfg = BertConfig.from_dict(TINY)
    enc, _ = _tiny_encoder(cfg)
    ids = torch.randint(1, cfg.vocab_size, (2, 9))
    other = ids.clone()
    other[0, 4:] = torch.randint(1, cfg.vocab_size, (5,))  # change only what lengths call padding
    lengths = torch.tensor([4, 9])
    a = enc(ids, lengths, backend=backend).last_hidden_state
    b = enc(other, lengths, backend=backend).last_hidden_state
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-12) and torch.equal(a[1], b[1])
    c = enc(other, None, backend=backend).last_hidden_state  # no lengths: the padding is attended
    assert (c[0, :4] - a[0, :4]).abs().max().item() > 1e-3


def test_encoder_input_errors():
    cfg = BertConfig.from_dict(TINY)
    enc, _ = _tiny_encoder(cfg)
    with pytest.raises(ValueError, match=r"input has 17 positions, the model has 16"):
        enc(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"backend 'torch' cannot return weights"):
        enc(torch.zeros(1, 3, dtype=torch.long), need_weights=True, backend="torch")


# --- a tiny random transformers.BertModel, saved and loaded through PretrainedModel -------------


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_tiny_transformers_model_round_trip(tmp_path, hidden_act):
    transformers = _transformers()
    hf_cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=12, max_position_embeddings=32, hidden_act=hidden_act, layer_norm_eps=1e-6,
    )
    torch.manual_seed(3)
    hf = transformers.BertModel(hf_cfg, add_pooling_layer=False)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.5)
    hf.config._attn_implementation = "eager"
    hf.eval()
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    shutil.copy(default_model_path() / "tokenizer.json", tmp_path / "tokenizer.json")

    ours = PretrainedModel(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["hidden_size"] == 8
    texts = ["a tiny model", "with random weights and a longer sentence than the first", "ok"]
    batch = ours.encode(texts)
    mask = (torch.arange(batch.input_ids.shape[1]) < batch.lengths[:, None]).long()
    with torch.inference_mode():
        kw = dict(input_ids=batch.input_ids, attention_mask=mask, output_hidden_states=True,
                  output_attentions=True)
        theirs, ref64 = hf(**kw), copy.deepcopy(hf).double()(**kw)
        out = ours.encoder(batch.input_ids, batch.lengths, need_weights=True, output_hidden_states=True)
    # FlashAttention's rule for a whole model: our float32 error against transformers in float64 is
    # at most 4× transformers' own float32 error (see tests/peers/test_transformers_peer.py).
    real = [(i, n) for i, n in enumerate(batch.lengths.tolist())]
    pairs = [*zip(out.hidden_states, theirs.hidden_states, ref64.hidden_states, strict=True),
             *zip(out.attentions, theirs.attentions, ref64.attentions, strict=True)]
    for a, b, r in pairs:
        err = max((a[i, ..., :n, :] - r[i, ..., :n, :]).abs().max().item() for i, n in real)
        err_peer = max((b[i, ..., :n, :] - r[i, ..., :n, :]).abs().max().item() for i, n in real)
        assert err <= 4 * err_peer + 1.2e-7 * r.abs().max().item(), (err, err_peer)
    h = ref64.last_hidden_state * mask[..., None]
    ref = torch.nn.functional.normalize(h.sum(1) / mask.sum(1, keepdim=True), dim=-1)
    h32 = theirs.last_hidden_state * mask[..., None]
    peer = torch.nn.functional.normalize(h32.sum(1) / mask.sum(1, keepdim=True), dim=-1)
    got = torch.from_numpy(ours.embed(texts)).double()
    assert (got - ref).abs().max().item() <= 4 * (peer.double() - ref).abs().max().item() + 1.2e-7
