"""The ``train`` and ``generate`` commands of ``selfattention`` (argument parsing only: heavy
modules are imported by the handlers, in ``commands``, not here)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from .._options import integer, non_negative_number, number, positive, positive_number, seed
from .tasks import TASKS

POSITIONS = ("learned", "sinusoidal", "none")
MIN_TIMEOUT, MAX_TIMEOUT = 1.0, 7 * 24 * 3600.0  # --timeout: below 1 s a healthy group cannot even form
MAX_NEW = 100_000  # generate --max-new: a character-level toy model has nothing more to say

_timeout = number(MIN_TIMEOUT, MAX_TIMEOUT, rule=f"expected {MIN_TIMEOUT:g} … {MAX_TIMEOUT:g} seconds")
_max_new = integer(0, MAX_NEW, expected=f"an integer in 0 … {MAX_NEW:,}")


def max_threads() -> int:
    """The most --threads taken: far more than cores only slows a run down, and torch crashes
    (a segmentation fault) when asked for tens of thousands."""
    return max(256, 4 * (os.cpu_count() or 1))


def _threads(s: str) -> int:
    n = positive(s)
    if n > max_threads():
        raise argparse.ArgumentTypeError(f"expected 1 … {max_threads()} threads "
                                         f"(this machine has {os.cpu_count() or 'an unknown number of'} "
                                         "cores), "
                                         f"got {n}")
    return n


def _folder(s: str) -> str:
    if not s:
        raise argparse.ArgumentTypeError("expected a folder name, got ''")
    return s


def _quiet_threads() -> None:
    """Let idle OpenMP threads sleep instead of spin (unless the user chose): on a machine whose cores
    are busy with other work, spinning threads made a training step of the default model 5-10× slower
    (measured on a shared 2-core machine: 180-300 ms against 33 ms). Only effective before torch is
    imported, which the command line has not done yet."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add this package's subcommands to ``sub``; returns {command: handler(args) -> exit status}."""
    t = _train_parser(sub)
    _model_options(t)
    _running_options(t)
    _generate_parser(sub)

    def train(args: argparse.Namespace) -> int:
        _quiet_threads()
        from .commands import train_command

        return train_command(args)

    def generate(args: argparse.Namespace) -> int:
        _quiet_threads()
        from .commands import generate_command

        return generate_command(args)

    return {"train": train, "generate": generate}


def _train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    t = sub.add_parser(
        "train", help="train a Transformer (or a GRU) on a task and watch attention form",
        description="Train a small decoder-only Transformer (or the GRU baseline) on a synthetic task or "
                    "a text file. --out holds checkpoints (safetensors + JSON), metrics.jsonl, curves.png, "
                    "attention.png and attention.html (a step slider over the attention snapshots). Under "
                    "torchrun the run is data-parallel (DDP; gloo on CPU, NCCL on CUDA), and with "
                    "--context-parallel N each sequence is split over N processes. Options left out with "
                    "--resume keep the checkpoint's values.")
    rows = [f"{name} ({task.help})" for name, task in TASKS.items()]
    t.add_argument("task", choices=tuple(TASKS), metavar="TASK",
                   help=", ".join(rows[:-1]) + ", or " + rows[-1])
    t.add_argument("--text", metavar="FILE", help="the UTF-8 text file of the text task")
    t.add_argument("--steps", type=positive, metavar="N", help="optimizer steps in all (default 2000)")
    t.add_argument("--batch-size", type=positive, metavar="N",
                   help="sequences per step, all processes together (default 64 for tasks, 32 for text)")
    t.add_argument("--model", choices=("transformer", "gru"),
                   help="transformer (default), or gru: the recurrent baseline with about as many parameters")
    t.add_argument("--seed", type=seed, metavar="S",
                   help="seed of the initial weights and of every batch (default 0)")
    t.add_argument("--out", type=_folder, metavar="DIR", help="where the run is written (default runs/TASK)")
    t.add_argument("--checkpoint-every", type=positive, metavar="N",
                   help="steps between checkpoints (default 500)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest usable checkpoint (or start one)")
    t.add_argument("--eval-every", type=positive, metavar="N",
                   help="steps between evaluations (default 100)")
    t.add_argument("--keep", type=positive, metavar="N", help="checkpoints kept, the newest (default 3)")
    return t


def _model_options(t: argparse.ArgumentParser) -> None:
    m = t.add_argument_group("model and optimizer (identity of the run: fixed once it started)")
    m.add_argument("--d-model", type=positive, metavar="N",
                   help="D, width of the word vectors (default 64; text 128)")
    m.add_argument("--layers", type=positive, metavar="N", help="blocks, or GRU layers (default 2; text 4)")
    m.add_argument("--heads", type=positive, metavar="N", help="attention heads (default 4)")
    m.add_argument("--d-ff", type=positive, metavar="N", help="feed-forward width (default 256; text 512)")
    m.add_argument("--positions", choices=POSITIONS,
                   help="position vectors: learned (default), sinusoidal, none")
    m.add_argument("--norm", choices=("pre", "post"),
                   help="LayerNorm before (default) or after each residual")
    m.add_argument("--dropout", type=non_negative_number, metavar="P",
                   help="dropout on attention weights, feed-forward units and residual branches (default 0; "
                        "text 0.1)")
    m.add_argument("--lr", type=positive_number, metavar="LR",
                   help="peak learning rate of AdamW (default 3e-3; text 1e-3)")
    m.add_argument("--decay-steps", type=positive, metavar="N",
                   help="cosine decay to lr/10 ends at this step (default 2000); it does not depend on "
                        "--steps, so a resumed run can go on longer")
    m.add_argument("--min-len", type=positive, metavar="N", help="shortest training prompt (default 1)")
    m.add_argument("--max-len", type=positive, metavar="N",
                   help="longest training prompt (default 16; recall: 8 pairs)")
    m.add_argument("--longer-len", type=positive, metavar="N",
                   help="length generalisation is measured on max-len+1 … this (default 24; recall 12)")
    m.add_argument("--context", type=positive, metavar="N",
                   help="text: characters per training window (default 128)")


def _running_options(t: argparse.ArgumentParser) -> None:
    r = t.add_argument_group("running")
    r.add_argument("--threads", type=_threads, metavar="N",
                   help="CPU threads of this process (default: torch's)")
    r.add_argument("--context-parallel", type=positive, default=1, metavar="N",
                   help="torchrun: split each sequence's positions over N processes (ring attention; the "
                        "processes, a multiple of N, train N at a time on the same sequences; default 1)")
    r.add_argument("--timeout", type=_timeout, default=120.0, metavar="SECONDS",
                   help="torchrun: seconds to wait for another process before stopping (1 … 604800; "
                        "default 120)")
    c = r.add_mutually_exclusive_group()
    c.add_argument("--compile", action="store_true",
                   help="torch.compile the training step of a Transformer in one process, however short the "
                        "run (by default only runs long enough to repay a first compilation, about twice "
                        "the text recipe's work: a machine's first run of a model's shapes spends about a "
                        "minute of CPU compiling, later ones seconds, from Inductor's cache, so --compile "
                        "pays on runs repeated on the same shapes; eager if no C++ compiler)")
    c.add_argument("--no-compile", action="store_true", help="never torch.compile the training step")
    r.add_argument("--no-fused-adam", action="store_true",
                   help="AdamW one parameter at a time instead of its fused kernel")
    r.add_argument("--no-bf16", action="store_true",
                   help="float32 matrix products in the compiled step (default: bfloat16 autocast where the "
                        "CPU has native bfloat16, AVX512-BF16 or AMX). The speed-ups keep runs "
                        "deterministic (same seed, flags, threads, machine: the same weights; give the "
                        "same flags on --resume); all three flags give the path before them, bit for bit")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal)")
    r.add_argument("--no-pictures", action="store_true",
                   help="do not draw curves.png, attention.png and attention.html at the end")


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "generate", help="continue a prompt with a trained model (KV cache)",
        description="Continue --prompt with the newest usable checkpoint of a training --out DIR, one token "
                    "at a time with the KV cache. For a task the prompt is the question (e.g. hello for "
                    "reverse) and the answer is printed; for text, the continuation.")
    g.add_argument("dir", metavar="DIR", help="a training --out folder, or one of its checkpoints")
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument("--max-new", type=_max_new, default=None, metavar="N",
                   help="tokens to generate at most, up to 100,000 (default: a task's longest answer; text "
                        "200)")
    g.add_argument("--temperature", type=non_negative_number, default=None, metavar="T",
                   help="0 = always the likeliest token (default for tasks); text default 0.8")
    g.add_argument("--seed", type=seed, default=0, metavar="S",
                   help="seed of the sampling (default 0)")
    g.add_argument("--no-cache", action="store_true",
                   help="recompute the whole window for every token instead of using the KV cache (slow; for "
                        "comparison: the same window rule, the same text)")
