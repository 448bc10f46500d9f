"""The Transformer built from MultiHeadAttention: positions, blocks against torch's own encoder layer,
order blindness without positions, causality, and KV-cache decoding against recomputing the prefix.

Tolerances: float64 runs of one function computed two ways agree to ATOL64 = 1e-10 (round-off of
O(1) values is ~1e-15); float32 follows FlashAttention's rule: our error against a float64
reference ≤ 2 × the same-precision peer's error against it.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ATOL64, assert_close, flash_rule

from selfattention.transformer import (
    Block,
    DecoderLM,
    Encoder,
    TransformerConfig,
    generate,
    parameter_count,
    pick_next,
    sinusoids,
    trace,
)

F64 = torch.float64


def _config(**kw) -> TransformerConfig:
    base = dict(vocab_size=11, d_model=12, num_heads=3, num_layers=2, d_ff=20, max_len=40)
    return TransformerConfig(**{**base, **kw})


def _model(cls, seed: int = 0, dtype=F64, **kw):
    torch.manual_seed(seed)
    return cls(_config(**kw)).to(dtype).eval()


@pytest.mark.parametrize("D", [10, 9, 1])
def test_sinusoids_are_the_papers_formula(D: int):
    pe = sinusoids(7, D)
    assert pe.shape == (7, D) and pe.dtype == torch.float32
    for p in range(7):
        for c in range(D):
            i = c // 2  # columns 2i and 2i+1 share the frequency 1 / 10000^(2i/D)
            angle = p / 10000 ** (2 * i / D)
            want = math.sin(angle) if c % 2 == 0 else math.cos(angle)
            assert abs(pe[p, c].item() - want) < 1e-6, (p, c)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("causal", [False, True])
def test_block_is_torchs_encoder_layer(norm: str, causal: bool):
    torch.manual_seed(1)
    D, H, d_ff, T = 12, 3, 20, 7
    ours = Block(D, H, d_ff, norm=norm).to(F64).eval()
    peer = torch.nn.TransformerEncoderLayer(D, H, d_ff, dropout=0.0, activation="gelu", batch_first=True,
                                            norm_first=norm == "pre").to(F64).eval()
    with torch.no_grad():  # one set of weights for both
        peer.self_attn.in_proj_weight.copy_(ours.attn.in_proj.weight)
        peer.self_attn.in_proj_bias.copy_(ours.attn.in_proj.bias)
        peer.self_attn.out_proj.weight.copy_(ours.attn.out_proj.weight)
        peer.self_attn.out_proj.bias.copy_(ours.attn.out_proj.bias)
        for a, b in ((peer.linear1, ours.ff.linear1), (peer.linear2, ours.ff.linear2),
                     (peer.norm1, ours.norm1), (peer.norm2, ours.norm2)):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    x = torch.randn(2, T, D, dtype=F64)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=F64) if causal else None
    want = peer(x, src_mask=mask, is_causal=causal)
    assert_close(ours(x, causal=causal), want)


def test_a_permuted_sentence_gives_every_word_the_same_z_without_positions():
    enc = _model(Encoder, positions="none")
    words = torch.tensor([[3, 1, 4, 5, 9, 2, 6]])
    perm = torch.tensor([4, 0, 6, 2, 1, 5, 3])
    z = enc(words)[0]  # (T, D)
    z_perm = enc(words[:, perm])[0]
    assert_close(z_perm, z[perm])  # word perm[i], now at position i, has the same z as before
    assert (z - z[perm]).abs().max() > 0.1  # and the words' z differ (the check is not vacuous)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_positions_make_order_matter(positions: str):
    enc = _model(Encoder, positions=positions)
    if positions == "learned":  # their initial scale (0.02) is small; any trained table is larger
        with torch.no_grad():
            enc.positions.table.normal_()
    words = torch.tensor([[3, 1, 4, 5, 9, 2, 6]])
    perm = torch.tensor([4, 0, 6, 2, 1, 5, 3])
    assert (enc(words[:, perm])[0] - enc(words)[0][perm]).abs().max() > 1e-2


def test_encoder_respects_a_padding_mask():
    from selfattention import masks

    enc = _model(Encoder, positions="sinusoidal")
    short = torch.tensor([[3, 1, 4]])
    padded = torch.tensor([[3, 1, 4, 7, 7]])
    z = enc(padded, mask=masks.from_lengths([3], 5))
    assert_close(z[:, :3], enc(short))


def test_decoder_is_causal():
    lm = _model(DecoderLM)
    a = torch.tensor([[1, 2, 3, 4, 5, 6]])
    b = a.clone()
    b[0, 4:] = torch.tensor([9, 0])
    la, lb = lm(a), lm(b)
    assert_close(la[:, :4], lb[:, :4])  # positions before the change cannot see it
    assert (la[:, 4:] - lb[:, 4:]).abs().max() > 1e-3


def _incremental(lm: DecoderLM, x: torch.Tensor, first: int) -> torch.Tensor:
    """Logits of every position: the first ``first`` tokens at once, then one token at a time."""
    caches = lm.new_caches()
    parts = [lm(x[:, :first], caches=caches)]
    parts += [lm(x[:, t:t + 1], caches=caches) for t in range(first, x.shape[1])]
    assert len(caches[0]) == x.shape[1]
    return torch.cat(parts, dim=1)  # (B, T, V)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_kv_cache_equals_recomputing_the_prefix(positions: str, norm: str):
    lm = _model(DecoderLM, seed=2, positions=positions, norm=norm)
    x = torch.randint(0, 11, (2, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close(_incremental(lm, x, 5), lm(x), atol=ATOL64)
        assert_close(_incremental(lm, x, 1), lm(x), atol=ATOL64)


def test_kv_cache_in_float32_is_as_accurate_as_the_full_pass():
    lm64 = _model(DecoderLM, seed=4, d_model=32, num_heads=4, d_ff=64)
    lm32 = _model(DecoderLM, seed=4, dtype=torch.float32, d_model=32, num_heads=4, d_ff=64)
    x = torch.randint(0, 11, (2, 37), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = lm64(x)
        flash_rule(_incremental(lm32, x, 4), lm32(x), ref.numpy())


def test_generation_with_the_cache_equals_without():
    lm = _model(DecoderLM, seed=6)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    fast = generate(lm, prompt, 20)
    slow = generate(lm, prompt, 20, use_cache=False)
    assert fast.shape == (2, 23)
    assert torch.equal(fast, slow)
    assert torch.equal(fast[:, :3], prompt)
    # every generated token is the argmax given the prefix, recomputed from scratch
    logits = lm(fast[:, :-1])
    assert torch.equal(logits[:, 2:].argmax(-1), fast[:, 3:])


def test_generation_samples_reproducibly_and_stops():
    lm = _model(DecoderLM, seed=7)
    prompt = torch.tensor([[1, 2]])
    a = generate(lm, prompt, 15, temperature=1.0, generator=torch.Generator().manual_seed(0))
    b = generate(lm, prompt, 15, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    stop = int(generate(lm, prompt, 1)[0, -1])  # greedy's first token: used as the stop token
    assert generate(lm, prompt, 15, stop=stop).shape == (1, 3)


def test_generation_past_max_len_slides_the_window():
    lm = _model(DecoderLM, seed=8, max_len=10)
    seen, forward = [], lm.forward

    def spy(x, caches=None, **kw):  # what each cached step reads: the cache, then the new tokens
        before = len(caches[0]) if caches is not None else 0
        seen.append((seen[-1] if before else []) + x[0].tolist())
        assert len(seen[-1]) == before + x.shape[1]
        return forward(x, caches=caches, **kw)

    lm.forward = spy
    prompt = [1, 2, 3]
    out = generate(lm, torch.tensor([prompt]), 25)[0].tolist()
    assert len(out) == 28
    # The documented window: the context grows until it would pass max_len, then restarts from
    # the last max_len // 2 tokens (positions from 0 again). Rebuilt here from the tokens made.
    want, context = [], list(prompt)
    for k in range(25):
        want.append(list(context))
        context.append(out[3 + k])
        if len(context) > 10:
            context = context[-5:]
    assert seen == want
    lm.forward = forward
    for k in (5, 12, 24):  # and each token is the greedy choice on that context, computed whole
        assert out[3 + k] == int(lm(torch.tensor([want[k]]))[0, -1].argmax())


def test_trace_gives_each_layers_attention_input_and_weights():
    lm = _model(DecoderLM, seed=9)
    tokens = torch.tensor([[1, 5, 2, 7, 3]])
    layers = trace(lm, tokens)
    assert len(layers) == 2
    for block, t in zip(lm.blocks, layers, strict=True):
        assert t["x"].shape == (5, 12) and t["weights"].shape == (3, 5, 5)
        for h in range(3):
            W = block.attn.head_projections(h)
            q = t["x"] @ W["W_Q"].T + W["b_Q"]  # the lecture's q_i = W_Q h_i, words as rows
            k = t["x"] @ W["W_K"].T + W["b_K"]
            assert_close(q, t["q"][h])
            e = (q @ k.T) / math.sqrt(4)
            e = e.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -math.inf)  # causal
            assert_close(torch.softmax(e, -1), t["weights"][h])
    with pytest.raises(ValueError, match="one sequence"):
        trace(lm, torch.tensor([[1, 2], [3, 4]]))


@pytest.mark.parametrize("bad", [torch.tensor([[1.0, 2.0]]), torch.tensor([1, 2]), torch.tensor([[1, 11]]),
                                 torch.tensor([[-1, 2]]), [[1, 2]]])
def test_bad_tokens_are_refused(bad):
    lm = _model(DecoderLM)
    with pytest.raises(ValueError, match="token"):
        lm(bad)


@pytest.mark.parametrize("field, value", [("d_model", 10), ("positions", "rope"), ("norm", "mid"),
                                          ("dropout", 1.0), ("num_layers", 0), ("vocab_size", True)])
def test_bad_configs_are_refused(field: str, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        DecoderLM(_config(**{field: value}))


def test_gru_baseline_has_about_the_same_parameter_count():
    from selfattention.train.config import TrainConfig, build_model

    for task in ("reverse", "text"):
        c = TrainConfig(task=task)
        t = parameter_count(build_model(c, 30))
        g = parameter_count(build_model(TrainConfig(task=task, model="gru"), 30))
        assert abs(g - t) / t < 0.02, (task, t, g)


@pytest.mark.parametrize("temperature", [1e-300, 1e-320, 5e-324])
def test_a_tiny_temperature_samples_the_argmax(temperature):
    logits = torch.tensor([[0.5, 3.0, -2.0, 2.999], [1e4, -1e4, 0.0, 9999.0]])
    got = pick_next(logits, temperature, torch.Generator().manual_seed(0))
    assert got[:, 0].tolist() == [1, 0]


def test_non_finite_logits_are_an_error_not_a_token():
    with pytest.raises(ValueError, match="inf or NaN"):
        pick_next(torch.tensor([[0.0, float("nan")]]), 0.0, None)


# --- on a shard (selfattention.distributed.ContextParallel; several processes: tests/distributed) ---


def test_positions_at_any_positions_are_the_tables_rows():
    """A shard's positions are global and in the layout's order: ``at`` gives exactly those rows."""
    from selfattention.transformer import Positions

    for kind in ("learned", "sinusoidal"):
        pos = Positions(kind, 32, 8)
        where = torch.tensor([5, 6, 30, 31, 0])
        assert torch.equal(pos.at(where), pos(32)[where])
        with pytest.raises(ValueError, match="position 32 is beyond max_len=32"):
            pos.at(torch.tensor([3, 32]))
    assert Positions("none", 32, 8).at(torch.tensor([1])) is None


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_a_model_on_the_shard_of_one_process_is_the_model(kind):
    """With torch.distributed not initialized a ContextParallel is the whole sequence on one process:
    the output and every gradient are those of the ordinary forward (the ring of one process; several
    processes are compared in tests/distributed/test_models_on_a_shard.py)."""
    from selfattention import block_mask
    from selfattention.distributed import ContextParallel

    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=13, d_model=16, num_heads=4, max_len=40, positions="sinusoidal")
    model = (DecoderLM if kind == "decoder" else Encoder)(config).double()
    tokens = torch.randint(0, 13, (2, 37))
    ids = torch.tensor([[0] * 20 + [1] * 17, [0] * 5 + [1] * 32])
    dense = {} if kind == "decoder" else {"mask": (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)}
    sparse = {} if kind == "decoder" else {"mask": block_mask.documents(ids, block=16)}
    results = []
    for kw in (dense, {"shard": ContextParallel(37), **sparse}):
        model.zero_grad()
        out = model(tokens, **kw)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert_close(results[1][0], results[0][0], atol=ATOL64)
    for got, want in zip(results[1][1], results[0][1], strict=True):
        assert_close(got, want, atol=ATOL64)


@pytest.mark.parametrize("kw, words", [
    ({"need_weights": True}, "takes no need_weights"),
    ({"caches": "new"}, "takes no KV caches"),
    ({"mask": torch.ones(1, 1, 9, 9, dtype=torch.bool)}, "takes no mask tensor (give a BlockMask"),
    ({"shard": "T=9"}, "shard must be a selfattention.distributed.ContextParallel"),
    ({"tokens": torch.zeros(1, 7, dtype=torch.long)}, "hold 7 positions together, but the shard says T = 9"),
])
def test_a_model_on_a_shard_refuses_what_it_cannot_do(kw, words):
    from selfattention.distributed import ContextParallel

    model = DecoderLM(TransformerConfig(vocab_size=5, max_len=16))
    if kw.get("caches") == "new":
        kw = {"caches": model.new_caches()}
    tokens = kw.pop("tokens", torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises((TypeError, ValueError)) as err:
        model.hidden(tokens, **{"shard": ContextParallel(9), **kw})
    assert words in str(err.value) and "\n" not in str(err.value)
