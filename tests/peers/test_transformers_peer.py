"""Our BERT encoder against Hugging Face ``transformers`` on the same all-MiniLM-L6-v2 files.

On a padded batch of sentences of different lengths: every layer's hidden states, every layer's
attention probabilities and the final normalized sentence embeddings, for each CPU backend. The
peer runs with ``attn_implementation="eager"``, the only one that returns probabilities, and is
fed by its own tokenizer (``AutoTokenizer``), so our tokenization is checked too.

The rule (FlashAttention's, for a whole model): in float64 the two models agree to rounding
(``test_same_function_in_float64``); in float32, our error against transformers-in-float64 is at
most ``K`` times transformers' own float32 error against it, layer by layer. A fixed float32 bound
would depend on the CPU and thread count (issue 8: 1.03e-5 on an Intel Xeon where an AMD EPYC gave
8e-6); this ratio does not. Measured on an AMD EPYC (1 and 2 threads, and with
ATEN_CPU_CAPABILITY=default, another CPU's kernels): at most 2.2 for any layer and backend.

Padded positions: both models compute *something* at a padded query position, but nothing reads
it (pooling and every real query ignore padded keys), so only real-token positions are compared.

``transformers`` is a test-only peer: without it these tests skip, except under CI (CI=true),
where a missing peer is a failure.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from selfattention import available_backends
from selfattention.models.pretrained import PretrainedModel, default_model_path, mean_pool

pytestmark = pytest.mark.numerics  # rounding-sensitive: run on 1 thread too (scripts/dev test)

if os.environ.get("CI", "").lower() not in ("", "0", "false"):
    import transformers  # CI installs the peers: an ImportError here must fail the run
else:
    transformers = pytest.importorskip("transformers", reason="transformers (test-only peer) not installed")

K = 4  # our float32 error may be at most K × transformers' own (measured: ≤ 2.2, see above)
TEXTS = [
    "Hi!",  # 4 word pieces with [CLS] and [SEP]: the most padding
    "Attention lets every word in a sentence look at all the other words and weigh them by "
    "relevance before mixing their values together.",  # 26 word pieces
    # accents, emoji, a combining acute, Arabic and Hebrew (right to left), CJK, a ZWJ family, a ligature
    "Café naïve résumé 😀 e\u0301 مرحبا بالعالم שלום עולם 你好世界 👨\u200d👩\u200d👧 ﬁn",
]
BACKENDS = [b for b in available_backends() if b in ("matrix", "blockwise", "torch")]


def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="module")
def ours() -> PretrainedModel:
    return PretrainedModel()


@pytest.fixture(scope="module")
def hf():
    _quiet_transformers()
    model = transformers.BertModel.from_pretrained(default_model_path(), attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="module")
def hf_inputs():
    _quiet_transformers()
    tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    return tok(TEXTS, padding=True, return_tensors="pt")


def _hf_run(model, inputs):
    with torch.inference_mode():
        return model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=torch.zeros_like(inputs["input_ids"]),
            output_hidden_states=True,
            output_attentions=True,
        )


@pytest.fixture(scope="module")
def theirs(hf, hf_inputs):
    return _hf_run(hf, hf_inputs)


def _hf_embeddings(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' recipe for this model, written out: mean over real tokens, L2-normalize."""
    m = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)  # (B, T, 1)
    mean = (last_hidden_state * m).sum(1) / m.sum(1)  # (B, D)
    return mean / mean.norm(dim=-1, keepdim=True)


def _real_rows_diff(a: torch.Tensor, b: torch.Tensor, lengths: list[int], dim: int) -> float:
    """max |a − b| over each batch row's first ``lengths`` positions along ``dim`` (1 or 2)."""
    worst = 0.0
    for i, n in enumerate(lengths):
        x, y = a[i].narrow(dim - 1, 0, n), b[i].narrow(dim - 1, 0, n)
        worst = max(worst, (x.double() - y.double()).abs().max().item())
    return worst


def _ours_run(encoder, batch, backend):
    with torch.inference_mode():
        return encoder(
            batch.input_ids,
            batch.lengths,
            backend=backend,
            need_weights=backend == "matrix",
            output_hidden_states=True,
        )


def test_tokenization_matches_transformers(ours, hf_inputs):
    batch = ours.encode(TEXTS)
    assert batch.input_ids.shape == hf_inputs["input_ids"].shape
    assert torch.equal(batch.input_ids, hf_inputs["input_ids"])
    assert batch.lengths.tolist() == hf_inputs["attention_mask"].sum(1).tolist()
    assert len(set(batch.lengths.tolist())) == len(TEXTS), "the batch must need padding"
    assert 20 <= max(batch.lengths.tolist()) <= 40 and min(batch.lengths.tolist()) <= 5


def _within_rule(ours: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor, lengths: list[int], dim: int,
                 what: str) -> None:
    """max|ours − ref| ≤ K · max|theirs − ref| + one float32 rounding of ref, over real positions."""
    err = _real_rows_diff(ours, ref, lengths, dim)
    err_peer = _real_rows_diff(theirs, ref, lengths, dim)
    floor = torch.finfo(torch.float32).eps * ref.abs().max().item()
    assert err <= K * err_peer + floor, (
        f"{what}: ours {err:.3g} vs transformers' own float32 error {err_peer:.3g} (allowed {K}×)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hidden_states_match(ours, theirs, theirs64, backend):
    batch = ours.encode(TEXTS)
    out = _ours_run(ours.encoder, batch, backend)
    L = ours.config.num_hidden_layers
    assert len(out.hidden_states) == len(theirs.hidden_states) == L + 1
    lengths = batch.lengths.tolist()
    for layer, (a, b, ref) in enumerate(zip(out.hidden_states, theirs.hidden_states, theirs64.hidden_states,
                                            strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        _within_rule(a, b, ref, lengths, dim=1, what=f"layer {layer}")
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])


def test_attention_probabilities_match(ours, theirs, theirs64):
    batch = ours.encode(TEXTS)
    out = _ours_run(ours.encoder, batch, "matrix")
    lengths = batch.lengths.tolist()
    assert len(out.attentions) == len(theirs.attentions) == ours.config.num_hidden_layers
    for layer, (a, b, ref) in enumerate(zip(out.attentions, theirs.attentions, theirs64.attentions,
                                            strict=True)):
        assert a.shape == b.shape  # (B, H, T, T)
        # real query rows, every key column: padded keys must get weight 0 in both
        _within_rule(a, b, ref, lengths, dim=2, what=f"layer {layer}")
        for i, n in enumerate(lengths):
            assert a[i, :, :n, n:].sum().item() == 0, f"layer {layer}: text {i} attends to padding"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sentence_embeddings_match(ours, theirs, theirs64, hf_inputs, backend):
    mask = hf_inputs["attention_mask"]
    peer = _hf_embeddings(theirs.last_hidden_state, mask)  # (B, D)
    ref = _hf_embeddings(theirs64.last_hidden_state, mask)  # (B, D) float64
    got = torch.from_numpy(ours.embed(TEXTS, backend=backend))
    assert got.shape == peer.shape and got.dtype == torch.float32
    _within_rule(got.unsqueeze(1), peer.unsqueeze(1), ref.unsqueeze(1), [1] * len(TEXTS), dim=1, what="embed")
    batch = ours.encode(TEXTS)
    pooled = mean_pool(_ours_run(ours.encoder, batch, backend).last_hidden_state, batch.lengths)
    _within_rule(pooled[:, None], peer[:, None], ref[:, None], [1] * len(TEXTS), dim=1, what="pooled")
    assert (ref[0] - ref[1]).abs().max().item() > 0.05  # the sentences differ


@pytest.fixture(scope="module")
def theirs64(hf, hf_inputs):
    return _hf_run(copy.deepcopy(hf).double(), hf_inputs)


@pytest.fixture(scope="module")
def ours64(ours):
    return copy.deepcopy(ours.encoder).double()


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_function_in_float64(ours, ours64, theirs64, backend):
    """In float64 the two models agree to rounding: the float32 gap is float32's, not a formula's.

    Float64 rounding of this 6-layer encoder is ~1e-14 (measured 5e-15 for |h| ≤ ~10); the bounds
    leave 1000× to spare, and any difference of formula would show at 1e-3 or more."""
    batch = ours.encode(TEXTS)
    out = _ours_run(ours64, batch, backend)
    lengths = batch.lengths.tolist()
    for layer, (a, b) in enumerate(zip(out.hidden_states, theirs64.hidden_states, strict=True)):
        assert a.dtype == b.dtype == torch.float64
        assert _real_rows_diff(a, b, lengths, dim=1) <= 1e-11, f"layer {layer}"
    for a, b in zip(out.attentions or [], theirs64.attentions, strict=False):
        assert _real_rows_diff(a, b, lengths, dim=2) <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_does_not_change_real_tokens(ours, ours64, theirs, theirs64, backend):
    """Each text alone gives what it gives in the padded batch: exactly (to float64 rounding) in
    float64, and in float32 within the rule against the padded batch's float64 reference."""
    batch = ours.encode(TEXTS)
    padded = _ours_run(ours64, batch, backend)
    assert batch.input_ids.shape[1] > min(batch.lengths.tolist())
    for i, text in enumerate(TEXTS):
        alone_batch = ours.encode([text])
        n = alone_batch.lengths.item()
        assert n == batch.lengths[i].item() and alone_batch.input_ids.shape == (1, n)
        alone64 = _ours_run(ours64, alone_batch, backend)
        alone32 = _ours_run(ours.encoder, alone_batch, backend)
        for layer, (a, b) in enumerate(zip(alone64.hidden_states, padded.hidden_states, strict=True)):
            assert (a[0] - b[i, :n]).abs().max().item() <= 1e-11, f"text {i}, layer {layer}"
        for layer, (a, b, ref) in enumerate(zip(alone32.hidden_states, theirs.hidden_states,
                                                theirs64.hidden_states, strict=True)):
            _within_rule(a, b[i:i + 1], ref[i:i + 1], [n], dim=1, what=f"text {i}, layer {layer}")
