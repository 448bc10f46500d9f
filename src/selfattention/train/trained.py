"""A trained model back from its checkpoint, for ``generate`` and ``explain --model CHECKPOINT``.

    from selfattention.train import load_trained
    t = load_trained("runs/reverse")          # a run's --out (its newest usable checkpoint) or one
    t.model                                   #   checkpoint folder (…/checkpoints/step-00002000)
    ids = t.encode("hello=")                  # (1, T) token ids; one character is one token
    logits = t.model(ids)                     # (1, T, V); t.model is a DecoderLM (or GRULM), eval mode
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError, OptionError
from . import checkpoint
from .baseline import GRULM
from .config import TrainConfig, build_model, check_memory
from .tasks import END, Vocabulary, get_task


@dataclass
class TrainedModel:
    """A model as trained: ``model`` (``transformer.DecoderLM`` or ``baseline.GRULM``, float32, CPU,
    eval mode), its ``config`` (``TrainConfig``: task, sizes, …), ``vocab`` (characters ↔ ids),
    ``step`` it was saved at and the checkpoint folder ``path``."""

    model: torch.nn.Module
    config: TrainConfig
    vocab: Vocabulary
    step: int
    path: Path
    metrics: dict | None  # the evaluation saved with the checkpoint, if one was due then

    @property
    def task(self) -> str:
        return self.config.task

    def encode(self, text: str) -> torch.Tensor:
        """(1, T) int64 token ids of ``text``; InputError naming a character the model does not know."""
        return torch.tensor([self.vocab.encode(text)], dtype=torch.long)

    def prompt_for(self, text: str) -> str:
        """What the model reads before answering: "<prompt>=" for a task ("<prompt>" for recall), the
        text itself for text (the task's ``prompt_for``); InputError for a prompt it cannot take."""
        return get_task(self.task).prompt_for(text)


def load_trained(path: str | os.PathLike[str]) -> TrainedModel:
    """Load a trained model from a run folder (its newest usable checkpoint; each broken one
    skipped is a ``CheckpointWarning``) or from one checkpoint folder.

    ModelError (``checkpoint.CheckpointError``) names the file and what is wrong with it.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such folder (expected a training --out folder or one of its checkpoints)")
    if (p / "state.json").is_file():
        ckpt = checkpoint.load(p, with_train=False)
    else:
        ckpt = checkpoint.newest_valid(p, lambda c: checkpoint.load(c, with_train=False))
        if ckpt is None:
            raise ModelError(f"{p}: no checkpoints (expected a training --out folder with "
                             "checkpoints/step-*)")
    config = ckpt.config
    vocab = Vocabulary(ckpt.state["vocab"])
    try:
        check_memory(config, len(vocab), training=False)
    except OptionError as err:
        raise checkpoint.CheckpointError(f"checkpoint {ckpt.path / 'state.json'}: {err}") from None
    # In the dtype it was trained in (as --resume builds it): weights of another dtype are refused alike.
    model = build_model(config, len(vocab)).to(getattr(torch, config.dtype))
    checkpoint.check_tensors(ckpt.path, ckpt.model, model.state_dict())
    model.load_state_dict(ckpt.model)
    model = model.float().eval()
    return TrainedModel(model, config, vocab, ckpt.step, ckpt.path, ckpt.state.get("last_record"))


class NonFiniteOutput(ModelError):
    """The model's logits became NaN or infinite while generating."""


@torch.no_grad()
def continue_text(t: TrainedModel, prompt: str, max_new: int, *, temperature: float = 0.0,
                  seed: int = 0, use_cache: bool = True) -> str:
    """The model's continuation of ``prompt`` (not including it): up to ``max_new`` characters, or
    up to the final "." of a task's answer (left out). Uses the KV cache (GRU: its hidden state).

    A Transformer reads at most max_len characters (its positions): of a longer prompt (with a
    task's "=") it reads the last max_len, and a UserWarning says how many were dropped from the
    start. ``use_cache=False`` recomputes every step and gives the same text (one window rule)."""
    from ..transformer import DecoderLM, context_limit, generate

    ids = t.encode(t.prompt_for(prompt))  # (1, T0)
    limit = context_limit(t.model) if isinstance(t.model, DecoderLM) else None  # a GRU reads any length
    if limit is not None and ids.shape[1] > limit:
        # Said, not silent: two prompts that differ only there get the same answer.
        warnings.warn(f"--prompt: dropped its first {ids.shape[1] - limit} characters (the model has "
                      f"{limit} positions)", UserWarning, stacklevel=2)
    stop = get_task(t.task).stop(t.vocab)  # a task's final "."; None: a text goes on
    gen = torch.Generator().manual_seed(seed)
    calls = [0]

    def finite(module, inputs, output):  # noqa: ARG001
        # One forward per generated token (the first one also reads the prompt).
        calls[0] += 1
        logits = output[0] if isinstance(output, tuple) else output
        if not bool(torch.isfinite(logits[:, -1]).all()):
            raise NonFiniteOutput(f"checkpoint {t.path}: the model gives inf or NaN at token {calls[0]} of "
                                  "the continuation (its weights are too large: the run diverged)")

    hook = t.model.register_forward_hook(finite)
    try:
        if isinstance(t.model, DecoderLM):
            out = generate(t.model, ids, max_new, stop=stop, temperature=temperature, generator=gen,
                           use_cache=use_cache)[0, ids.shape[1]:]
        else:
            out = _generate_rnn(t.model, ids, max_new, stop, temperature, gen)
    finally:
        hook.remove()
    text = t.vocab.decode(out.tolist())
    return text[:-1] if stop is not None and text.endswith(END) else text


def _generate_rnn(model: GRULM, ids: torch.Tensor, max_new: int, stop: int | None, temperature: float,
                  gen: torch.Generator) -> torch.Tensor:
    from ..transformer import pick_next

    state = model.new_state()
    fresh, out = ids, []
    for _ in range(max_new):
        nxt = pick_next(model(fresh, state=state)[:, -1], temperature, gen)  # (1, 1)
        out.append(nxt)
        fresh = nxt
        if stop is not None and int(nxt) == stop:
            break
    return torch.cat(out, dim=1)[0] if out else torch.zeros(0, dtype=torch.long)
