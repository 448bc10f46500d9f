"""The ``selfattention`` command: ``explain`` a sentence, ``bench`` attention against RNNs.

User mistakes (empty text, a bad option, --dim 0, …) exit with status 2 and one line on stderr,
``selfattention: error: …``, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import NoReturn

from . import __version__

MAX_DIM = 2048  # W's are D × D float64: 3 · 2048² · 8 B ≈ 100 MB
MAX_T = 8192  # bench: the matrix tier materializes B · T² weights


class UsageError(Exception):
    """Raised for a user mistake found after parsing; reported like argparse's own errors."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"selfattention: error: {' '.join(message.split())}\n")


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an int in [lo, hi]."""
    def parse(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {n}")
        return n
    return parse


def _sizes(s: str) -> list[int]:
    """'16,64,256' → [16, 64, 256], each in [1, MAX_T]."""
    try:
        sizes = [int(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 16,64,256, got {s!r}") from None
    if not sizes or not all(1 <= n <= MAX_T for n in sizes):
        raise argparse.ArgumentTypeError(f"each size must be between 1 and {MAX_T}, got {s!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``selfattention`` and its subcommands."""
    from .models import MODELS

    p = _Parser(prog="selfattention",
                description="The lecture's self-attention layer, explained and measured.")
    p.add_argument("--version", action="version", version=f"selfattention {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{explain,bench}")

    e = sub.add_parser("explain", help="walk a sentence through one self-attention layer",
                       description="Walk a sentence through one self-attention layer, the "
                                   "lecture's way: shapes, scores, weights, Z, one word's z.")
    e.add_argument("text", nargs="+", help='the sentence, e.g. "I am enjoying this lecture"')
    e.add_argument("--dim", type=_int_in(1, MAX_DIM), default=64,
                   help="D, the embedding size (default 64, as in the lecture)")
    e.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0,
                   help="seed of the random W_Q, W_K, W_V (embeddings do not depend on it)")
    e.add_argument("--word", help="the word whose z is derived: a word (first occurrence) "
                                  "or a 1-based position (default: the first word)")
    e.add_argument("--model", choices=sorted(MODELS), default="toy",
                   help="where H and the W's come from (default: toy)")
    e.add_argument("--json", action="store_true", help="print every number as JSON")
    e.add_argument("--no-color", action="store_true", help="no ANSI colours in the heatmap")

    b = sub.add_parser("bench", help="time attention against GRU/LSTM for growing T",
                       description="Time one head of self-attention (per-word loop, matrix, "
                                   "blockwise, torch SDPA) against nn.GRU and nn.LSTM.")
    b.add_argument("--sizes", type=_sizes, default=[16, 64, 256, 1024],
                   help="comma-separated sequence lengths T (default 16,64,256,1024)")
    b.add_argument("--dim", type=_int_in(1, MAX_DIM), default=64, help="D (default 64)")
    b.add_argument("--batch", type=_int_in(1, 256), default=1, help="B (default 1)")
    b.add_argument("--repeats", type=_int_in(1, 1000), default=5,
                   help="timed calls per measurement; the median is reported (default 5)")
    b.add_argument("--loop-max-t", type=_int_in(0, MAX_T), default=256,
                   help="skip the per-word Python loop above this T (default 256)")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def _explain(args: argparse.Namespace) -> int:
    from .explain import UsageError as ExplainUsage
    from .explain import build_report, render_text
    from .models import load_model
    from .viz.terminal import color_enabled

    text = " ".join(args.text)
    model = load_model(args.model, dim=args.dim, seed=args.seed)
    try:
        report = build_report(model, text, args.word)
    except ExplainUsage as err:
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps(report))
    else:
        width = shutil.get_terminal_size((100, 24)).columns
        print(render_text(report, color=color_enabled(sys.stdout, args.no_color), width=width))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import render_table, run_bench

    tty = sys.stderr.isatty()

    def progress(T: int, k: int, n: int, step: str) -> None:
        # Progress goes to stderr so stdout stays a clean table; a TTY line is overwritten.
        msg = f"bench: T={T} [{k}/{n}] {step}…"
        sys.stderr.write(f"\r\x1b[K{msg}" if tty else msg + "\n")
        sys.stderr.flush()

    result = run_bench(args.sizes, dim=args.dim, batch=args.batch, repeats=args.repeats,
                       loop_max_t=args.loop_max_t, progress=progress)
    if tty:
        sys.stderr.write("\r\x1b[K")
    print(json.dumps(result) if args.json else render_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        return _explain(args) if args.command == "explain" else _bench(args)
    except UsageError as err:
        print(f"selfattention: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `selfattention explain … | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("selfattention: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
