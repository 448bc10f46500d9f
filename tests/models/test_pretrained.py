"""PretrainedModel on the real all-MiniLM-L6-v2: loading errors, encode(), embed().

Broken model directories are built in tmp_path from the default one: files left alone are
symlinked (the weights are 87 MiB), files to break are written fresh.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import model_dir_copy
from _rules import EPS32, NORM_TOL
from safetensors.torch import load_file, save_file

from selfattention.errors import ModelError
from selfattention.models.pretrained import PretrainedModel, TruncationWarning, default_model_path

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def model() -> PretrainedModel:
    return PretrainedModel()




def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(ModelError, match=match) as info:
        PretrainedModel(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and len(msg) < 400
    return msg


# --- model directory errors ---------------------------------------------------------------------


def test_default_model_loads(model):
    assert model.describe()["layers"] == 6 and model.describe()["hidden_size"] == 384
    assert model.path == default_model_path()


def test_missing_directory(tmp_path):
    _one_line_error(tmp_path / "nowhere", r"model directory .*nowhere does not exist")


def test_a_file_is_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(tmp_path / "file", r"model directory .*file does not exist")


@pytest.mark.parametrize("name", ["config.json", WEIGHTS, "tokenizer.json"])
def test_missing_file(tmp_path, name):
    _one_line_error(model_dir_copy(tmp_path, without=(name,)), rf"model directory .* has no {name}")


UNREADABLE = rf"{WEIGHTS} is not a readable safetensors file"


def test_truncated_header(tmp_path):
    head = (default_model_path() / WEIGHTS).read_bytes()[:1000]
    _one_line_error(model_dir_copy(tmp_path, replace={WEIGHTS: head}), UNREADABLE)


@pytest.mark.parametrize("keep", [0.5, 0.999999])
def test_truncated_data(tmp_path, keep):
    """A file cut inside its data section: the header is intact, the tensors are not all there.

    safetensors checks that the header's offsets cover the file exactly ("incomplete metadata,
    file not fully covered"), so this errors instead of loading garbage.
    """
    data = (default_model_path() / WEIGHTS).read_bytes()
    cut = data[: int(len(data) * keep)]
    assert len(cut) < len(data)
    _one_line_error(model_dir_copy(tmp_path, replace={WEIGHTS: cut}), UNREADABLE)


def test_trailing_bytes(tmp_path):
    data = (default_model_path() / WEIGHTS).read_bytes() + b"\0" * 8
    _one_line_error(model_dir_copy(tmp_path, replace={WEIGHTS: data}), UNREADABLE)


@pytest.mark.parametrize("size", [0, 7, 5000])
def test_random_bytes(tmp_path, size):
    junk = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    _one_line_error(model_dir_copy(tmp_path, replace={WEIGHTS: junk}), UNREADABLE)


def _edited_weights(tmp_path: Path, name: str, shape: tuple[int, ...]) -> Path:
    tensors = load_file(default_model_path() / WEIGHTS)
    assert name in tensors
    tensors[name] = torch.zeros(shape)
    d = model_dir_copy(tmp_path, without=(WEIGHTS,))
    save_file(tensors, d / WEIGHTS)
    return d


@pytest.mark.parametrize(
    "name, shape",
    [
        ("embeddings.word_embeddings.weight", (30522, 383)),
        ("encoder.layer.2.output.dense.weight", (384, 1535)),
        ("encoder.layer.0.attention.self.query.weight", (383, 384)),
        ("encoder.layer.0.attention.self.query.weight", (384, 380)),  # torch.cat of q, k, v would fail
        ("encoder.layer.3.attention.self.value.bias", (384, 1)),  # wrong rank
    ],
)
def test_tensor_of_wrong_shape(tmp_path, name, shape):
    expected = tuple(load_file(default_model_path() / WEIGHTS)[name].shape)
    d = _edited_weights(tmp_path, name, shape)
    _one_line_error(
        d,
        rf"{WEIGHTS} does not match config\.json: {re.escape(name)} has shape "
        rf"{re.escape(str(shape))}, expected {re.escape(str(expected))}",
    )


def test_missing_tensor(tmp_path):
    tensors = load_file(default_model_path() / WEIGHTS)
    del tensors["encoder.layer.5.output.LayerNorm.bias"]
    d = model_dir_copy(tmp_path, without=(WEIGHTS,))
    save_file(tensors, d / WEIGHTS)
    _one_line_error(d, r"lacks 1 tensors this config needs, e\.g\. encoder\.layer\.5\.output\.LayerNorm")


@pytest.mark.parametrize("text", ["not json", "{}", '{"model": {"type": "Nope"}}'])
def test_bad_tokenizer(tmp_path, text):
    d = model_dir_copy(tmp_path, replace={"tokenizer.json": text})
    _one_line_error(d, r"tokenizer\.json cannot be loaded")


def test_tokenizer_larger_than_the_vocabulary(tmp_path):
    config = json.loads((default_model_path() / "config.json").read_text())
    config["vocab_size"] = 1000
    tensors = load_file(default_model_path() / WEIGHTS)
    tensors["embeddings.word_embeddings.weight"] = tensors["embeddings.word_embeddings.weight"][:1000].clone()
    d = model_dir_copy(tmp_path, without=(WEIGHTS,), replace={"config.json": json.dumps(config)})
    save_file(tensors, d / WEIGHTS)
    # a word piece past the table (e.g. "world", id 2088) would be an IndexError deep in the encoder
    _one_line_error(d, r"tokenizer\.json has word-piece ids up to 30521 \(30522 word pieces\), "
                       r"beyond config\.json's vocab_size 1000")


def test_config_the_encoder_cannot_run(tmp_path):
    config = (default_model_path() / "config.json").read_text().replace('"bert"', '"gpt2"')
    bad = model_dir_copy(tmp_path, replace={"config.json": config})
    _one_line_error(bad, r"config\.json: model_type 'gpt2'")


# --- encode -------------------------------------------------------------------------------------


def test_encode_adds_cls_and_sep_and_pads_right(model):
    batch = model.encode(["Hello world", "a much longer sentence than the first one"])
    cls, sep = model.tokenizer.token_to_id("[CLS]"), model.tokenizer.token_to_id("[SEP]")
    assert batch.tokens[0] == ["[CLS]", "hello", "world", "[SEP]"]
    assert batch.lengths.tolist() == [4, 10] and batch.input_ids.shape == (2, 10)
    assert batch.input_ids.dtype == torch.int64 and batch.dropped == [0, 0]
    assert batch.input_ids[:, 0].tolist() == [cls, cls]
    assert batch.input_ids[0, 3].item() == sep and batch.input_ids[1, 9].item() == sep
    assert batch.input_ids[0, 4:].tolist() == [model.config.pad_token_id] * 6


@pytest.mark.parametrize("bad, match", [("", r"text 2 is empty"), (" \t\n ", r"text 2 is empty"),
                                        ("\u200b\u200d", r"text 2 has no word pieces")])
def test_encode_rejects_empty_text(model, bad, match):
    with pytest.raises(ValueError, match=match):
        model.encode(["fine", bad])
    with pytest.raises(ValueError, match=match.replace("2", "1")):
        model.embed([bad])


def test_encode_rejects_non_text(model):
    with pytest.raises(TypeError, match=r"text 1 is a NoneType, expected str"):
        model.encode([None])
    with pytest.raises(TypeError, match=r"text 3 is a bytes, expected str"):
        model.embed(["a sentence", "another one", b"bytes"])


def _pieces(model, text: str) -> int:
    return len(model.tokenizer.encode(text, add_special_tokens=False).ids)


def test_long_text_truncates_with_a_count(model):
    text = " ".join(["attention"] * 300 + ["lecture"] * 300)  # one word piece per word
    n = _pieces(model, text)
    assert n == 600
    warning = rf"^text 1 has {n + 2} word pieces, more than .*512.* dropped the last {n - 510}$"
    with pytest.warns(TruncationWarning, match=warning):
        batch = model.encode([text])
    assert batch.dropped == [n - 510] and batch.input_ids.shape == (1, 512)
    assert batch.tokens[0][0] == "[CLS]" and batch.tokens[0][-1] == "[SEP]"
    assert batch.tokens[0][-2] == "lecture" and batch.tokens[0].count("attention") == 300
    with pytest.raises(ValueError, match=rf"^text 1 has {n + 2} word pieces, more than the model's 512"):
        model.encode([text], truncate=False)


def test_exactly_512_pieces_is_not_truncated(model):
    text = " ".join(["attention"] * 510)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = model.encode([text], truncate=False)
    assert batch.input_ids.shape == (1, 512) and batch.dropped == [0]


def test_embed_truncates_at_the_sentence_length(model):
    """embed() cuts where sentence-transformers does for this model (max_seq_length 256), and says so."""
    text = " ".join(["attention"] * 300)
    warning = r"^text 1 has 302 word pieces, more than the 256 .*dropped the last 46$"
    with pytest.warns(TruncationWarning, match=warning):
        long = model.embed([text])
    with pytest.raises(ValueError, match=r"text 1 has 302 word pieces, more than the 256"):
        model.embed([text], truncate=False)
    short = model.embed([" ".join(["attention"] * 254)])
    # The first 254 pieces are the same input, of the same shape: the same computation (to a
    # rounding, should a library pick another kernel on a re-run).
    assert np.abs(long - short).max() <= 4 * EPS32


UNUSUAL = [
    "😀🎉👍🏽",  # emoji, with a skin-tone modifier
    "cafe\u0301 nai\u0308ve",  # combining acute and diaeresis
    "مرحبا بالعالم",  # Arabic, right to left
    "שלום עולם",  # Hebrew, right to left
    "注意力机制",  # CJK
    "👨\u200d👩\u200d👧 family",  # zero-width joiners
    "ﬁ ℌ ① Ａ",  # compatibility characters
    "mixed English עִבְרִית and 日本語",
]


def test_unusual_unicode_encodes_and_embeds(model):
    batch = model.encode(UNUSUAL)
    assert all(t[0] == "[CLS]" and t[-1] == "[SEP]" and len(t) > 2 for t in batch.tokens)
    e = model.embed(UNUSUAL)
    assert e.shape == (len(UNUSUAL), 384) and np.isfinite(e).all()
    assert np.abs(np.linalg.norm(e, axis=1) - 1).max() <= NORM_TOL


# --- embed --------------------------------------------------------------------------------------


SUBJECTS = ["The cat", "A student", "My neighbour"]
VERBS = ["sleeps", "reads a long book about attention", "waits", "runs quickly past the station",
         "looks at every other word", "sings", "breaks down", "answers the question", "learns",
         "moves slowly through the quiet old town at night"]


def test_embed_in_batches_equals_one_at_a_time(model):
    texts = [f"{s} {v}." for s in SUBJECTS for v in VERBS]  # 30 sentences of many lengths
    n = len(texts)
    assert len(set(texts)) == n == 30 and len({len(t) for t in texts}) > 20
    together = model.embed(texts, batch_size=7)  # 5 batches, the last one of 2
    alone = np.stack([model.embed([t])[0] for t in texts])
    assert together.shape == (n, 384) and together.dtype == np.float32
    # Batching (padding, other shapes) may only change float32 rounding: against the model run in
    # float64, the batched embeddings are as accurate as one-at-a-time (FlashAttention's rule, 2×).
    ref = _float64_embeddings(model, texts)
    err_alone, err_together = np.abs(alone - ref).max(), np.abs(together - ref).max()
    assert err_together <= 2 * err_alone + EPS32, (err_together, err_alone)
    # order preserved: each sentence's nearest neighbour among the batched embeddings is itself
    assert (np.argmax(alone @ together.T, axis=1) == np.arange(n)).all()
    assert np.abs(np.linalg.norm(together, axis=1) - 1).max() <= NORM_TOL


def _float64_embeddings(model: PretrainedModel, texts: list[str]) -> np.ndarray:
    """The same embeddings from a float64 copy of the encoder, one text at a time: (N, D) float64."""
    import copy

    from selfattention.models.pretrained import mean_pool

    enc = copy.deepcopy(model.encoder).double()
    rows = []
    with torch.inference_mode():
        for t in texts:
            b = model.encode([t], max_length=model.embedding_max_length)
            h = enc(b.input_ids, b.lengths).last_hidden_state
            rows.append(mean_pool(h, b.lengths)[0].numpy())
    return np.stack(rows)


def test_embed_error_names_the_callers_text(model):
    """embed() sorts texts by length; its messages must still count in the caller's order."""
    with pytest.raises(ValueError, match=r"text 3 is empty"):
        model.embed(["the first sentence here", "second one", ""])


def test_embed_warning_names_the_callers_text(model):
    with pytest.warns(TruncationWarning, match=r"^text 2 has 402 word pieces"):
        model.embed(["first sentence", "hello world " * 200, "x"], batch_size=2)


def test_embed_empty_list_and_bad_batch_size(model):
    assert model.embed([]).shape == (0, 384)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        model.embed(["x"], batch_size=0)


def test_similarity_is_sensible(model):
    """A real model puts paraphrases together and unrelated sentences apart."""
    a, b, c, d = model.embed([
        "A man is playing a guitar.",
        "Someone is playing an instrument.",
        "The stock market fell sharply today.",
        "Share prices dropped a lot this afternoon.",
    ])
    assert a @ b > 0.5 and c @ d > 0.5
    assert a @ c < 0.2 and b @ d < 0.2
    assert a @ b > a @ c + 0.4


@pytest.mark.subprocess
def test_loading_does_not_import_dynamo():
    """Cold start: building the encoder on the meta device once pulled in torch._dynamo (~1 s)."""
    import subprocess
    import sys

    code = ("import sys; from selfattention.models.pretrained import PretrainedModel; PretrainedModel(); "
            "print(sorted(m for m in ('torch._dynamo', 'sympy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- damaged or overflowing weights (issue 8) ----------------------------------------------------


NOT_FINITE = [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")]


@pytest.mark.parametrize("value, what", NOT_FINITE)
def test_weights_that_are_not_finite_are_refused_by_name(tmp_path, value, what):
    name = "encoder.layer.3.attention.self.key.weight"
    tensors = load_file(default_model_path() / WEIGHTS)
    tensors[name][7, 11] = value
    d = model_dir_copy(tmp_path, without=(WEIGHTS,))
    save_file(tensors, d / WEIGHTS)
    _one_line_error(d, rf"{WEIGHTS}: {re.escape(name)} holds {what} \(1 of 147456 values are not finite\)")


def _overflowing(tmp_path) -> Path:
    """Finite weights whose products overflow float32: layer 2's feed-forward output."""
    tensors = load_file(default_model_path() / WEIGHTS)
    tensors["encoder.layer.1.output.dense.weight"].fill_(1e38)
    d = model_dir_copy(tmp_path, without=(WEIGHTS,))
    save_file(tensors, d / WEIGHTS)
    return d


def test_weights_that_overflow_are_named_when_run(tmp_path):
    model = PretrainedModel(_overflowing(tmp_path))  # finite: it loads
    with pytest.raises(ModelError, match=r"layer 2 of this model gives inf or NaN in float32"):
        model.embed(["a sentence"])
