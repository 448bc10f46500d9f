"""One head of one layer of a pretrained BERT-style encoder, as an ``AttentionModel`` for ``explain``.

For layer l and head h (1-based), with D the width, d = D / num_heads and r = (h-1)·d … h·d - 1:

    H        = the hidden states entering layer l, transposed to (D, T), float64
               (layer 1: the word-piece embeddings, word + position + segment, LayerNorm)
    W_Q, b_Q = rows r        of the layer's ``attention.in_proj`` weight (d, D) and bias (d,)
    W_K, b_K = rows D + r    (the in_proj stacks W_Q, W_K, W_V)
    W_V, b_V = rows 2D + r

and the lecture's steps (``reference.self_attention``) give this head's z_i = Σ_j α_ij v_j. The
real layer's own result is captured in the encoder's own forward pass: a pre-hook on the layer's
``attention.out_proj`` sees its input (B, T, D), every head's output side by side, head h in
columns r. The forward pass stops once layer l's attention has run (later layers are not needed).

Default layer: 1, because its H is the embeddings themselves, as in the lecture. Default head: the
one of that layer that mixes the most real word pieces for this sentence (``choose_head``), so
that z is a real weighted mix of several words rather than a copy of one or a glance at [CLS];
in all-MiniLM-L6-v2's layer 1 that is head 4 for typical multi-word sentences. With fewer than two
real word pieces nothing is mixed, and head 1 is taken. ``--head`` picks any.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import OptionError
from ..functional import available_backends, resolve_backend
from ..masks import from_lengths
from . import LayerCapture
from .pretrained import REQUIRED, PretrainedModel, TruncationWarning

DEFAULT_LAYER = 1
DEFAULT_NAME = "all-MiniLM-L6-v2"
# Tiers run for the verification. "triton" is left out: on the CPU it only runs in Triton's slow
# interpreter, and the model runs on the CPU.
VERIFY_BACKENDS = ("matrix", "blockwise", "torch")
_CACHE: dict[tuple[object, ...], PretrainedModel] = {}


def load_pretrained(path: str | Path | None = None) -> PretrainedModel:
    """``PretrainedModel(path)``, loaded once per process for an unchanged directory."""
    if path is not None:
        model_dir = Path(path).resolve()
    else:
        from .pretrained import default_model_path

        model_dir = default_model_path().resolve()
    try:
        stamp = tuple((n, (model_dir / n).stat().st_mtime_ns, (model_dir / n).stat().st_size)
                      for n in REQUIRED)
    except OSError:
        return PretrainedModel(model_dir)  # let the loader name what is missing
    key = (str(model_dir), stamp)
    if key not in _CACHE:
        _CACHE[key] = PretrainedModel(model_dir)
    return _CACHE[key]


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the chosen layer's attention has run."""


class PretrainedHead:
    """Head ``head`` of layer ``layer`` (1-based; None = the defaults above) of a BERT-style model.

    Implements ``AttentionModel`` (tokenize → word pieces with [CLS] … [SEP], embed → H (D, T),
    weights, describe) and ``RealLayer`` (biases, capture).
    """

    unit = "word pieces"

    def __init__(self, path: str | Path | None = None, *, layer: int | None = None,
                 head: int | None = None, truncate: bool = True):
        self.model = load_pretrained(path)
        cfg = self.model.config
        self.num_layers, self.num_heads = cfg.num_hidden_layers, cfg.num_attention_heads
        self.D = cfg.hidden_size
        self.d = self.D // self.num_heads
        self.name = DEFAULT_NAME if path is None else Path(path).resolve().name
        for what, n, hi in (("layer", layer, self.num_layers), ("head", head, self.num_heads)):
            if n is not None and not (isinstance(n, int) and 1 <= n <= hi):
                raise OptionError(f"{what} {n} is out of range: {self.name} has {what}s 1 to {hi}")
        self.layer = DEFAULT_LAYER if layer is None else layer
        self.head_option = head
        self.head = 1 if head is None else head
        self.head_choice = "--head"
        self.truncate = truncate
        self._tokens: list[str] = []
        self._dropped = 0
        self._runs: dict[str, dict[str, torch.Tensor]] = {}
        self._auto = "auto"

    # --- AttentionModel ------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of text, [CLS] … [SEP], cut to the model's positions (with a warning).

        Runs the encoder up to the chosen layer and keeps what it computed, for ``embed`` and
        ``capture``. Raises ValueError for a text with no word pieces, or one that is too long
        when ``truncate`` is False.
        """
        limit = self.model.max_length
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TruncationWarning)  # re-said below, in one sentence
                batch = self.model.encode([text], truncate=True)
        except ValueError:
            raise ValueError("the text is empty" if not text.strip() else
                             f"the text {text[:40]!r} has no word pieces the tokenizer keeps") from None
        tokens, dropped = batch.tokens[0], batch.dropped[0]
        if dropped and not self.truncate:
            raise ValueError(f"the text has {len(tokens) + dropped} word pieces, more than the model's "
                             f"{limit} positions; shorten it, or drop --no-truncate to cut it")
        if dropped:
            warnings.warn(f"the text has {len(tokens) + dropped} word pieces, more than the model's "
                          f"{limit} positions: kept the first {limit - 1} and [SEP], dropped the last "
                          f"{dropped}", TruncationWarning, stacklevel=2)
        self._run(batch.input_ids, batch.lengths)
        self._tokens, self._dropped = list(tokens), dropped
        return list(tokens)

    def embed(self, tokens: list[str]) -> np.ndarray:
        """H (D, T) float64: the hidden states entering the chosen layer, one column per word piece."""
        if list(tokens) != self._tokens:
            ids = [self.model.tokenizer.token_to_id(t) for t in tokens]
            if not tokens or None in ids:
                raise ValueError(f"not word pieces of this model: {tokens[:8]}")
            self._run(torch.tensor([ids]), torch.tensor([len(ids)]))
            self._tokens, self._dropped = list(tokens), 0
        return self._runs["matrix"]["x"][0].double().numpy().T.copy()  # (D, T)

    def _rows(self, part: int) -> slice:
        """Rows of in_proj for part 0 (Q), 1 (K), 2 (V) of the chosen head."""
        start = part * self.D + (self.head - 1) * self.d
        return slice(start, start + self.d)

    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W_Q, W_K, W_V), each (d, D) float64: the chosen head's rows of in_proj.weight."""
        W = self._attention().in_proj.weight.detach().double().numpy()  # (3D, D)
        return W[self._rows(0)].copy(), W[self._rows(1)].copy(), W[self._rows(2)].copy()

    def biases(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(b_Q, b_K, b_V), each (d,) float64: the chosen head's entries of in_proj.bias."""
        b = self._attention().in_proj.bias.detach().double().numpy()  # (3D,)
        return b[self._rows(0)].copy(), b[self._rows(1)].copy(), b[self._rows(2)].copy()

    def default_word(self, tokens: list[str]) -> int:
        """The first word piece after [CLS] (0-based index 1), or 0 for a one-piece text."""
        return 1 if len(tokens) > 2 else 0

    def describe(self) -> dict[str, object]:
        """Where H and the W's come from, and the model's sizes (JSON-serializable)."""
        lo, hi = (self.head - 1) * self.d, self.head * self.d
        info = self.model.describe()
        return {
            "name": self.name, **info, "head_dim": self.d,
            "layer": self.layer, "head": self.head, "head_choice": self.head_choice,
            "embedding": f"H = the hidden states entering layer {self.layer} "
                         + ("(the word-piece embeddings: word + position + segment, LayerNorm)"
                            if self.layer == 1 else f"(the output of layer {self.layer - 1})"),
            "weights": f"W_Q, W_K, W_V (and b's) = rows {lo}…{hi - 1} of the Q, K, V blocks of layer "
                       f"{self.layer}'s in_proj (learned)",
        }

    # --- RealLayer -----------------------------------------------------------------------------

    def capture(self) -> LayerCapture:
        """What the real layer computed for the last text: every head's α's, this head's Z."""
        if not self._runs:
            raise RuntimeError("tokenize a text first")
        cols = slice((self.head - 1) * self.d, self.head * self.d)
        outputs = {b: run["z"][0, :, cols].double().numpy().T.copy()  # (d, T)
                   for b, run in self._runs.items()}
        return LayerCapture(
            layer=self.layer, head=self.head, num_layers=self.num_layers, num_heads=self.num_heads,
            weights=self._runs["matrix"]["w"][0].double().numpy(),  # (num_heads, T, T)
            outputs=outputs, auto_backend=self._auto, head_choice=self.head_choice,
            dropped=self._dropped,
        )

    # --- the forward pass ----------------------------------------------------------------------

    def _attention(self) -> torch.nn.Module:
        return self.model.encoder.layers[self.layer - 1].attention

    @torch.inference_mode()
    def _run(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> None:
        """Run the encoder up to layer l's attention once per backend; keep x, the heads' z, w."""
        layer = self.model.encoder.layers[self.layer - 1]
        store: dict[str, torch.Tensor] = {}

        def layer_input(_mod, args):  # (B, T, D): the hidden states entering the layer
            store["x"] = args[0]

        def heads_output(_mod, args):  # (B, T, D): every head's z side by side
            store["z"] = args[0]

        def attention_done(_mod, _args, out):  # (B, T, D) or ((B, T, D), (B, H, T, T))
            if isinstance(out, tuple):
                store["w"] = out[1]
            raise _Stop

        hooks = [layer.register_forward_pre_hook(layer_input),
                 layer.attention.out_proj.register_forward_pre_hook(heads_output),
                 layer.attention.register_forward_hook(attention_done)]
        runs: dict[str, dict[str, torch.Tensor]] = {}
        try:
            for backend in ("matrix", "auto", *(b for b in VERIFY_BACKENDS[1:] if b in available_backends())):
                store = {}
                try:
                    self.model.encoder(input_ids, lengths, backend=backend, need_weights=backend == "matrix")
                except _Stop:
                    pass
                runs[backend] = store
        finally:
            for h in hooks:
                h.remove()
        for run in runs.values():  # weights too large for float32 give inf/NaN: say so, never show it
            if not all(torch.isfinite(t).all() for t in run.values()):
                raise self.model.overflow(input_ids, lengths)
        self._runs = runs
        T = input_ids.shape[1]
        probe = torch.zeros(1, self.num_heads, T, self.d)  # (B, H, T, d): shapes only
        self._auto = resolve_backend(probe, probe, probe, mask=from_lengths(lengths, T))
        if self.head_option is None:
            self.head = choose_head(runs["matrix"]["w"][0].double().numpy()) + 1
            self.head_choice = ("the one of this layer mixing the most real word pieces (default)" if T >= 4
                                else "the default when there are fewer than two real word pieces to mix")


def choose_head(weights: np.ndarray) -> int:
    """0-based index of the head that mixes the most real word pieces (ties: the lowest).

    weights (num_heads, T, T), [CLS] first and [SEP] last. For each real word piece i (asking),
    take its weights on the real word pieces j (keys, [CLS] and [SEP] left out): their mass m_i
    and their effective number n_i = exp(entropy of them, renormalized). The score is the mean of
    m_i · n_i — high when most weight goes to several real words at once, low for a head that
    parks its weight on [CLS]/[SEP] or copies one word.
    """
    if weights.shape[1] < 4:  # fewer than two real word pieces besides [CLS] and [SEP]: no mixing
        return 0
    rows = weights[:, 1:-1, 1:-1]  # (H, T', T'), the real word pieces
    mass = rows.sum(-1)  # (H, T')
    p = rows / np.clip(mass[..., None], 1e-30, None)
    entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)  # (H, T')
    return int(np.argmax((mass * np.exp(entropy)).mean(-1)))


def overview(weights: np.ndarray, tokens: list[str]) -> list[dict[str, object]]:
    """Where each head looks: per head, mean α by kind of key, and each word's most-attended word.

    weights (num_heads, T, T). Each α_ij is counted once, in the first kind that fits: "self"
    (j = i), "[CLS]" (j = first), "[SEP]" (j = last), "previous" (j = i - 1), "next" (j = i + 1),
    "other"; the means are over the T asking words, so each head's kinds sum to 1.
    """
    Hn, T, _ = weights.shape
    i, j = np.indices((T, T))
    kinds = np.select([j == i, j == 0, j == T - 1, j == i - 1, j == i + 1],
                      [0, 1, 2, 3, 4], default=5)  # (T, T)
    names = ("self", "[CLS]", "[SEP]", "previous", "next", "other")
    out = []
    for h in range(Hn):
        share = [float(weights[h][kinds == k].sum() / T) for k in range(len(names))]
        top = weights[h].argmax(-1)  # (T,)
        out.append({
            "head": h + 1,
            "share": dict(zip(names, share, strict=True)),
            "mostly": names[int(np.argmax(share))],
            "argmax": [int(t) + 1 for t in top],  # 1-based position each word attends to most
            "argmax_words": [tokens[t] for t in top],
            "argmax_alpha": [float(weights[h, r, t]) for r, t in enumerate(top)],
        })
    return out
