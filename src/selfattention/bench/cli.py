"""The ``bench`` command: its options and what it does with them. Heavy modules (torch, the
measurement) are imported when the command runs, not when the parser is built."""

from __future__ import annotations

import argparse
import json
import sys

from .._options import integer, number, sizes

MAX_DIM = 2048  # D
MAX_T = 8192  # the matrix tier materializes B · T² weights


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``bench`` subcommand and its options."""
    b = sub.add_parser("bench", help="time attention against GRU/LSTM for growing T",
                       description="Time one head of self-attention (per-word loop, matrix, blockwise, "
                                   "torch SDPA; the Triton kernel on CUDA) against nn.GRU and nn.LSTM, in "
                                   "rounds that alternate the candidates, each cell a median with its "
                                   "spread; the sequential steps of each and how time grows with T.")
    b.add_argument("--sizes", type=sizes(MAX_T), default=[16, 64, 256, 1024],
                   help="comma-separated sequence lengths T (default 16,64,256,1024)")
    b.add_argument("--dim", type=integer(1, MAX_DIM), default=64, help="D (default 64)")
    b.add_argument("--batch", type=integer(1, 256), default=1, help="B (default 1)")
    b.add_argument("--rounds", "--repeats", dest="rounds", type=integer(1, 1000), default=5,
                   help="at least this many rounds per size (default 5); more until every spread is "
                        "small or --budget is spent")
    b.add_argument("--target", type=number(0.0, 10.0, above=True, below=True, expected="a number such as 0.1",
                                           rule="must be above 0 (and below 10)"), default=0.10,
                   help="the spread (interquartile range ÷ median) every cell should reach (default 0.10)")
    b.add_argument("--budget", type=number(0.0, 86400.0, expected="a number of seconds such as 5",
                                           rule="must be between 0 and 86400 seconds"), default=5.0,
                   help="seconds of rounds per size beyond the first --rounds (default 5); a cell whose "
                        "spread is still above --target is marked and warned about")
    b.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where attention and the RNNs run (default auto: cuda when a GPU is present, "
                        "where attention's parallelism shows best; the loop stays on the CPU)")
    b.add_argument("--loop-max-t", type=integer(0, MAX_T), default=256,
                   help="skip the per-word Python loop above this T (default 256)")
    b.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """The ``bench`` command: measure, print the tables (or JSON), warn about noisy cells."""
    # OpenMP's wait policy is left as the user has it: making idle threads sleep (PASSIVE) steadies
    # a busy machine, but on a quiet one it adds a wake-up to every parallel region, which made the
    # small attention calls (several ops each) 3-4× slower at T = 16 and tilted the comparison
    # against attention (measured). The load line says when the cores were shared.
    from .._command import say
    from ..errors import UsageError
    from .run import check_memory, resolve_device, run_bench
    from .table import render_table

    tty = sys.stderr.isatty()

    def progress(T: int, k: int, n: int, step: str) -> None:
        # Progress goes to stderr so stdout stays a clean table; a TTY line is overwritten.
        msg = f"bench: T={T} [{k}/{n}] {step}"
        sys.stderr.write(f"\r\x1b[K{msg}" if tty else msg + "\n")
        sys.stderr.flush()

    try:
        device = resolve_device(args.device)
        check_memory(args.sizes, dim=args.dim, batch=args.batch, loop_max_t=args.loop_max_t)
    except ValueError as e:
        raise UsageError(f"bench: {e}") from None
    result = run_bench(args.sizes, dim=args.dim, batch=args.batch, min_rounds=args.rounds,
                       target=args.target, budget=args.budget, loop_max_t=args.loop_max_t, device=device,
                       progress=progress)
    if tty:
        sys.stderr.write("\r\x1b[K")
    # A loaded machine: the table's first line says so. Noisy cells are warned about on stderr, which
    # a terminal shows first: then the load, their likely cause, is the first warning.
    if result["unreliable"] and result["warnings"]:
        say(f"selfattention: warning: bench: unreliable, {result['unreliable']}")
    for w in result["warnings"]:
        say(f"selfattention: warning: bench: {w}")
    print(json.dumps(result) if args.json else render_table(result))
    return 0
