"""A BERT-style encoder built from this project's layers (MiniLM is a small BERT), and the BERT
row of the encoder families (``FAMILY``: config, weight names, tokenizer, how h_i is made).

Every layer's attention is ``selfattention.MultiHeadAttention``, so every backend of
``selfattention.attention`` can run a real pretrained model. Shapes: input ids (B, T), hidden
states (B, T, D), attention weights (B, H, T, T).

Post-LayerNorm BERT (Devlin et al., 2019), one layer:

    a = LayerNorm(x + MHA(x))                 attention, then residual and norm
    y = LayerNorm(a + W2 act(W1 a + b1) + b2)  feed-forward, then residual and norm
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..layers import MultiHeadAttention
from ..masks import from_lengths
from .family import EncoderFamily, hf_tokenizer, read_config
from .traceable import Tokens

ACTIVATIONS = {
    "gelu": lambda x: nn.functional.gelu(x),  # the exact (erf) GELU, as BERT's "gelu"
    "gelu_new": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "relu": nn.functional.relu,
}


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face ``config.json`` that this encoder uses."""

    vocab_size: int  # word-piece vocabulary
    hidden_size: int  # D, the width of every hidden state
    num_hidden_layers: int  # L
    num_attention_heads: int  # H; head size d = D / H
    intermediate_size: int  # width of the feed-forward layer
    max_position_embeddings: int = 512  # longest input, in word pieces
    type_vocab_size: int = 2  # segment ids (sentence A / B)
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        return cls.from_dict(read_config(path), source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> BertConfig:
        kind = raw.get("model_type", "bert")
        if kind not in ("bert",):
            raise ModelError(f"{source}: model_type {kind!r} is not supported; this encoder runs 'bert'")
        pos = raw.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ModelError(f"{source}: position_embedding_type {pos!r} is not supported, only 'absolute'")
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise ModelError(f"{source}: decoder configs are not supported, only the encoder")
        known = {f.name: f for f in fields(cls)}
        missing = [n for n, f in known.items() if f.default is MISSING and n not in raw]
        if missing:
            raise ModelError(f"{source}: missing {', '.join(missing)}")
        values = {n: raw[n] for n in known if n in raw}
        for n, v in values.items():
            if n == "hidden_act":
                ok = isinstance(v, str)
            elif n == "layer_norm_eps":
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            else:  # sizes must be positive; only pad_token_id may be 0
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= (0 if n == "pad_token_id" else 1)
            if not ok:
                want = "a finite number > 0" if n == "layer_norm_eps" else (
                    "a string" if n == "hidden_act" else
                    "an integer ≥ 0" if n == "pad_token_id" else "an integer ≥ 1")
                raise ModelError(f"{source}: {n} = {v!r} is not valid (expected {want})")
        cfg = cls(**values)
        if cfg.hidden_act not in ACTIVATIONS:
            raise ModelError(
                f"{source}: hidden_act {cfg.hidden_act!r} is not supported, one of {sorted(ACTIVATIONS)}"
            )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ModelError(
                f"{source}: hidden_size {cfg.hidden_size} is not divisible by "
                f"num_attention_heads {cfg.num_attention_heads}"
            )
        if cfg.pad_token_id >= cfg.vocab_size:
            raise ModelError(f"{source}: pad_token_id {cfg.pad_token_id} is not a word piece of the "
                             f"vocabulary (vocab_size {cfg.vocab_size})")
        if cfg.max_position_embeddings < 3:
            raise ModelError(f"{source}: max_position_embeddings {cfg.max_position_embeddings} leaves no "
                             "room for a word between [CLS] and [SEP] (expected ≥ 3)")
        return cfg


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, D)
    hidden_states: list[torch.Tensor] | None  # L + 1 of (B, T, D): embeddings, then each layer
    attentions: list[torch.Tensor] | None  # L of (B, H, T, T), the softmax weights


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        D = cfg.hidden_size
        self.attention = MultiHeadAttention(D, cfg.num_attention_heads, bias=True)
        self.attention_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(D, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, D)
        self.ffn_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x, mask, *, need_weights: bool, backend: str):
        """x (B, T, D), mask (B, 1, 1, T) → (B, T, D) and weights (B, H, T, T) or None."""
        out = self.attention(x, mask=mask, need_weights=need_weights, backend=backend)
        a, w = out if need_weights else (out, None)
        x = self.attention_norm(x + a)  # (B, T, D)
        x = self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))  # (B, T, D)
        return x, w


class BertEncoder(nn.Module):
    """Embeddings (word + position + segment, LayerNorm) and L ``BertLayer``s."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        D = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, D)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, D)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, D)
        self.embedding_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        backend: str = "auto",
        need_weights: bool = False,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """input_ids (B, T) int; ``lengths`` (B,) real tokens per row (the rest is padding).

        Padding never changes the real tokens' states: padded keys are masked out.
        """
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"input has {T} positions, the model has {self.config.max_position_embeddings}")
        positions = torch.arange(T, device=input_ids.device)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, D)
        x = self.embedding_norm(x + self.token_type_embeddings(types))  # (B, T, D)
        mask = None if lengths is None else from_lengths(lengths, T)  # (B, 1, 1, T)
        hidden = [x] if output_hidden_states else None
        weights = [] if need_weights else None
        for layer in self.layers:
            x, w = layer(x, mask, need_weights=need_weights, backend=backend)
            if hidden is not None:
                hidden.append(x)
            if weights is not None:
                weights.append(w)
        return EncoderOutput(x, hidden, weights)


def _hf_names(i: int) -> dict[str, str]:
    """Our parameter name → the Hugging Face BERT name, for layer i (q/k/v handled apart)."""
    p, o = f"layers.{i}.", f"encoder.layer.{i}."
    return {
        p + "attention.out_proj.weight": o + "attention.output.dense.weight",
        p + "attention.out_proj.bias": o + "attention.output.dense.bias",
        p + "attention_norm.weight": o + "attention.output.LayerNorm.weight",
        p + "attention_norm.bias": o + "attention.output.LayerNorm.bias",
        p + "ffn_in.weight": o + "intermediate.dense.weight",
        p + "ffn_in.bias": o + "intermediate.dense.bias",
        p + "ffn_out.weight": o + "output.dense.weight",
        p + "ffn_out.bias": o + "output.dense.bias",
        p + "ffn_norm.weight": o + "output.LayerNorm.weight",
        p + "ffn_norm.bias": o + "output.LayerNorm.bias",
    }


def expected_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """The Hugging Face name → shape of every tensor this config needs (q, k, v separate)."""
    D, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    shapes = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, D),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, D),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, D),
        "embeddings.LayerNorm.weight": (D,), "embeddings.LayerNorm.bias": (D,),
    }
    for i in range(L):
        o = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            shapes[o + f"attention.self.{part}.weight"] = (D, D)
            shapes[o + f"attention.self.{part}.bias"] = (D,)
        shapes.update({
            o + "attention.output.dense.weight": (D, D), o + "attention.output.dense.bias": (D,),
            o + "attention.output.LayerNorm.weight": (D,), o + "attention.output.LayerNorm.bias": (D,),
            o + "intermediate.dense.weight": (F, D), o + "intermediate.dense.bias": (F,),
            o + "output.dense.weight": (D, F), o + "output.dense.bias": (D,),
            o + "output.LayerNorm.weight": (D,), o + "output.LayerNorm.bias": (D,),
        })
    return shapes


# What a BERT file may hold beside the tensors the encoder runs, and that it leaves unused: the
# pooler (BertModel's own), the id buffers older versions saved, and, beside a ``bert.`` prefix only,
# the task heads of transformers' BertFor… classes. Anything else is refused: a tensor no one reads
# means the file and config.json disagree (e.g. fewer layers in the config than in the file).
UNUSED = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids", "embeddings.token_type_ids")
HEADS = ("cls.", "classifier.", "qa_outputs.")


def _natural(name: str) -> list:
    """Sort key: numbers as numbers (layer 10 after layer 9)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def check_tensors(tensors: dict[str, torch.Tensor], cfg: BertConfig, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face BERT file (with or without a ``bert.`` prefix), checked against
    ``cfg``: none missing, none unexpected (``UNUSED`` and ``HEADS`` aside), every shape right, every
    value finite. ModelError names the tensor (of unexpected ones the first, layer 10 after layer 9)."""
    prefix = "" if any(k.startswith("embeddings.") for k in tensors) else "bert."
    want = expected_shapes(cfg)
    ours = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = [name for name in want if name not in ours]
    if missing:
        raise ModelError(f"{source} lacks {len(missing)} tensors this config needs, e.g. {missing[0]}")

    def unexpected(name: str) -> bool:
        if name.startswith(prefix):
            return name[len(prefix):] not in want and name[len(prefix):] not in UNUSED
        return not name.startswith(HEADS)  # beside a "bert." prefix: only a task head may be there

    extra = [k for k in tensors if unexpected(k)]
    if extra:
        first = min(extra, key=_natural)
        layer = re.match(rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.", first)
        hint = (f" (config.json says num_hidden_layers = {cfg.num_hidden_layers})"
                if layer and int(layer.group(1)) >= cfg.num_hidden_layers else "")
        raise ModelError(f"{source} does not match config.json: it holds {len(extra)} tensors this config "
                         f"does not use, the first {first}{hint}")
    tensors = ours
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise ModelError(f"{source} does not match config.json: {name} has shape "
                             f"{tuple(tensors[name].shape)}, expected {shape}")
    for name in want:
        t = tensors[name]
        if not t.is_floating_point():
            raise ModelError(f"{source}: {name} has dtype {t.dtype}, expected floating point weights")
        bad = t.numel() - int(torch.isfinite(t).sum())
        if bad:
            what = "NaN" if torch.isnan(t).any() else "inf"
            raise ModelError(f"{source}: {name} holds {what} ({bad} of {t.numel()} values are not finite); "
                             "the weights are damaged")
    return {name: tensors[name] for name in want}


def state_from_hf(tensors: dict[str, torch.Tensor], cfg: BertConfig, source: str) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BERT state dict to ours, after ``check_tensors``.

    Query, key and value are packed into each layer's one ``in_proj`` by
    ``MultiHeadAttention.pack_in_proj`` (the only code that knows the packing).
    """
    tensors = check_tensors(tensors, cfg, source)
    names = {
        "word_embeddings.weight": "embeddings.word_embeddings.weight",
        "position_embeddings.weight": "embeddings.position_embeddings.weight",
        "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
        "embedding_norm.weight": "embeddings.LayerNorm.weight",
        "embedding_norm.bias": "embeddings.LayerNorm.bias",
    }
    for i in range(cfg.num_hidden_layers):
        names.update(_hf_names(i))
    state = {ours: tensors[hf] for ours, hf in names.items()}
    for i in range(cfg.num_hidden_layers):
        for kind in ("weight", "bias"):
            q, k, v = (tensors[f"encoder.layer.{i}.attention.self.{part}.{kind}"]
                       for part in ("query", "key", "value"))
            state[f"layers.{i}.attention.in_proj.{kind}"] = MultiHeadAttention.pack_in_proj(q, k, v)
    return state


def input_parts(encoder: BertEncoder, tokens: Tokens, i: int) -> dict[str, object]:
    """h_i = LayerNorm(word_i + p_i + segment_0): BERT's embeddings, from the model's own tables
    (``Traceable.input_parts``)."""
    with torch.no_grad():
        word = encoder.word_embeddings.weight[int(tokens.ids[0, i])].double()  # (D,)
        pos = encoder.position_embeddings.weight[i].double()  # (D,), learned, one per position
        seg = encoder.token_type_embeddings.weight[0].double()  # (D,), segment A: one-sentence input
        total = word + pos + seg
        h = encoder.embedding_norm(total.float()[None])[0].double()  # (D,), as the model computes it
    piece = tokens.tokens[i]
    return {
        "positions": "learned",
        "formula": "h_i = LayerNorm(word-piece embedding + position embedding p_i + segment embedding)",
        "parts": [(f'word-piece embedding of "{piece}"', word.tolist()),
                  (f"+ p_{i + 1}, the learned embedding of position {i + 1}", pos.tolist()),
                  ("+ segment embedding (sentence A)", seg.tolist()),
                  ("= sum", total.tolist())],
        "h": h.tolist(),
        "norm": "LayerNorm (the embeddings' own, learned scale and shift)",
    }


def input_description(layer: int) -> str:
    """What enters ``layer`` (1-based), for a reader."""
    if layer == 1:
        return "the word-piece embeddings: word + position + segment, LayerNorm"
    return f"the output of layer {layer - 1}"


FAMILY = EncoderFamily(
    name="bert", config=BertConfig.from_dict, weights=state_from_hf, encoder=BertEncoder,
    attention_layers=lambda encoder: [layer.attention for layer in encoder.layers],
    tokenizer=hf_tokenizer, input_parts=input_parts, input_description=input_description,
)
