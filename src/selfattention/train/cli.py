"""The ``train`` and ``generate`` commands of ``selfattention`` (argument parsing only: heavy
modules are imported by the handlers, in ``commands``, not here)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from .._text import ascii_float, ascii_int

TASKS = ("copy", "reverse", "sort", "recall", "text")
POSITIONS = ("learned", "sinusoidal", "none")


def _positive(s: str) -> int:
    try:
        n = ascii_int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _non_negative(s: str) -> int:
    try:
        n = ascii_int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {s!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {n}")
    return n


def _number(s: str) -> float:
    try:
        x = ascii_float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {s!r}")
    return x


def _positive_number(s: str) -> float:
    x = _number(s)
    if x == 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s!r}")
    return x


MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
MIN_TIMEOUT, MAX_TIMEOUT = 1.0, 7 * 24 * 3600.0  # --timeout: below 1 s a healthy group cannot even form
MAX_NEW = 100_000  # generate --max-new: a character-level toy model has nothing more to say


def _timeout(s: str) -> float:
    x = _number(s)
    if not MIN_TIMEOUT <= x <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"expected {MIN_TIMEOUT:g} … {MAX_TIMEOUT:g} seconds, got {s}")
    return x


def _max_new(s: str) -> int:
    n = _non_negative(s)
    if n > MAX_NEW:
        raise argparse.ArgumentTypeError(f"expected an integer in 0 … {MAX_NEW:,}, got {s}")
    return n


def _seed(s: str) -> int:
    n = _non_negative(s)
    if n > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in 0 … 2**63-1 (9223372036854775807), got {s}")
    return n


def max_threads() -> int:
    """The most --threads taken: far more than cores only slows a run down, and torch crashes
    (a segmentation fault) when asked for tens of thousands."""
    return max(256, 4 * (os.cpu_count() or 1))


def _threads(s: str) -> int:
    n = _positive(s)
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
                    "torchrun the run is data-parallel (DDP; gloo on CPU, NCCL on CUDA). Options left out "
                    "with --resume keep the checkpoint's values.")
    t.add_argument("task", choices=TASKS, metavar="TASK",
                   help="copy (abc=abc.), reverse (abc=cba.), sort (cab=abc.), recall (a1b7?b7.), or text "
                        "(a character-level language model of --text FILE)")
    t.add_argument("--text", metavar="FILE", help="the UTF-8 text file of the text task")
    t.add_argument("--steps", type=_positive, metavar="N", help="optimizer steps in all (default 2000)")
    t.add_argument("--batch-size", type=_positive, metavar="N",
                   help="sequences per step, all processes together (default 64 for tasks, 32 for text)")
    t.add_argument("--model", choices=("transformer", "gru"),
                   help="transformer (default), or gru: the recurrent baseline with about as many parameters")
    t.add_argument("--seed", type=_seed, metavar="S",
                   help="seed of the initial weights and of every batch (default 0)")
    t.add_argument("--out", type=_folder, metavar="DIR", help="where the run is written (default runs/TASK)")
    t.add_argument("--checkpoint-every", type=_positive, metavar="N",
                   help="steps between checkpoints (default 500)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest usable checkpoint (or start one)")
    t.add_argument("--eval-every", type=_positive, metavar="N",
                   help="steps between evaluations (default 100)")
    t.add_argument("--keep", type=_positive, metavar="N", help="checkpoints kept, the newest (default 3)")
    return t


def _model_options(t: argparse.ArgumentParser) -> None:
    m = t.add_argument_group("model and optimizer (identity of the run: fixed once it started)")
    m.add_argument("--d-model", type=_positive, metavar="N",
                   help="D, width of the word vectors (default 64; text 128)")
    m.add_argument("--layers", type=_positive, metavar="N", help="blocks, or GRU layers (default 2; text 4)")
    m.add_argument("--heads", type=_positive, metavar="N", help="attention heads (default 4)")
    m.add_argument("--d-ff", type=_positive, metavar="N", help="feed-forward width (default 256; text 512)")
    m.add_argument("--positions", choices=POSITIONS,
                   help="position vectors: learned (default), sinusoidal, none")
    m.add_argument("--norm", choices=("pre", "post"),
                   help="LayerNorm before (default) or after each residual")
    m.add_argument("--dropout", type=_number, metavar="P",
                   help="dropout on attention weights, feed-forward units and residual branches (default 0; "
                        "text 0.1)")
    m.add_argument("--lr", type=_positive_number, metavar="LR",
                   help="peak learning rate of AdamW (default 3e-3; text 1e-3)")
    m.add_argument("--decay-steps", type=_positive, metavar="N",
                   help="cosine decay to lr/10 ends at this step (default 2000); it does not depend on "
                        "--steps, so a resumed run can go on longer")
    m.add_argument("--min-len", type=_positive, metavar="N", help="shortest training prompt (default 1)")
    m.add_argument("--max-len", type=_positive, metavar="N",
                   help="longest training prompt (default 16; recall: 8 pairs)")
    m.add_argument("--longer-len", type=_positive, metavar="N",
                   help="length generalisation is measured on max-len+1 … this (default 24; recall 12)")
    m.add_argument("--context", type=_positive, metavar="N",
                   help="text: characters per training window (default 128)")


def _running_options(t: argparse.ArgumentParser) -> None:
    r = t.add_argument_group("running")
    r.add_argument("--threads", type=_threads, metavar="N",
                   help="CPU threads of this process (default: torch's)")
    r.add_argument("--timeout", type=_timeout, default=120.0, metavar="SECONDS",
                   help="torchrun: seconds to wait for another process before stopping (1 … 604800; "
                        "default 120)")
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
    g.add_argument("--temperature", type=_number, default=None, metavar="T",
                   help="0 = always the likeliest token (default for tasks); text default 0.8")
    g.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the sampling (default 0)")
    g.add_argument("--no-cache", action="store_true",
                   help="recompute the whole window for every token instead of using the KV cache (slow; for "
                        "comparison: the same window rule, the same text)")
