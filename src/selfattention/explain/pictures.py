"""``explain --png`` and ``--html``: pictures of one trace (every layer), each written atomically to
its file, complete or not at all, and said in one line. They open on the ``Selection``'s layer, head
and word. The files are checked before any work (``check_files``): writable, and never one of the
files the command reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._text import printable
from ..errors import UsageError
from ..models.tracing import Trace
from ..viz.data import AttentionData
from .fmt import one
from .selection import Selection


def check_files(files: dict[str, str], *, model: str | None, all_heads: bool, head: int | None,
                word: str | None, json: bool, vmax: float | None, scale: str | None = None) -> None:
    """UsageError, before any work, for pictures' options that do not go together, or a file
    (``files``: view → path, e.g. {"png": "a.png"}) that cannot be written or would destroy what the
    ``model`` option reads, or the other file."""
    from .._command import check_outputs, model_read
    from .._io import check_path

    if all_heads and head is not None:
        raise UsageError("--head draws one head and --all-heads every head of the layer; give one of them")
    if "png" in files and "html" not in files and word is not None and not json:
        raise UsageError("--word picks the walk-through's word (and the explorer's, with --html), but a "
                         "--png alone draws no word and no walk-through is printed; drop --word, or add "
                         "--json or --html")
    if scale is not None and not all_heads:
        raise UsageError("--scale chooses the colour scales of a grid of heads; add --png FILE --all-heads "
                         "(one head has one scale; the explorer's model view scales each head to its own "
                         "largest weight)")
    if scale == "per-head" and vmax is not None:
        raise UsageError("--vmax fixes one scale for every head and --scale per-head gives each head its "
                         "own; give one of them")
    if vmax is not None and not files and json:
        raise UsageError("--vmax sets the colour scale of a picture; --json has none")
    for kind, path in files.items():
        try:
            check_path(path, example=f"attention.{kind}")
        except OSError as err:
            raise UsageError(f"--{kind}: {err}") from None
    # Neither may destroy the model read (its folder, a run's checkpoints and metrics), nor the other.
    check_outputs({f"--{kind}": path for kind, path in files.items()}, model_read(model))


@dataclass(frozen=True)
class Scene:
    """What every picture of one trace draws, and how its line names it."""

    data: AttentionData  # every layer's weights, q, k, v
    selection: Selection
    name: str  # the model, as one line names it
    size: str  # "7 word pieces"
    unit: str
    all_heads: bool  # --png: every head of the layer
    vmax: float | None  # a fixed top of the colour scale
    scale: str = "shared"  # --all-heads: one colour scale, or one per head ("per-head")


def scene(trace: Trace, selection: Selection, *, all_heads: bool, vmax: float | None,
          scale: str = "shared") -> Scene:
    """The ``Scene`` of ``trace`` (traced with every layer) for the ``selection``."""
    data = trace.attention_data()
    T, unit = len(data.tokens), trace.model.unit
    size = f"{T} {unit}" if T != 1 else f"1 {one(unit)}"
    return Scene(data, selection, trace.label, size, unit, all_heads, vmax, scale)


def write_png(s: Scene, path: str) -> str:
    """The heatmap of the selected head (or, with ``all_heads``, of every head of the layer) in
    ``path``; the line saying so."""
    from ..viz.png import save_png

    layer, head = s.selection.layer + 1, s.selection.head + 1
    _write("png", path, lambda: save_png(s.data, path, layer=layer, head=head, all_heads=s.all_heads,
                                         vmax=s.vmax, scale=s.scale))
    default = s.data.num_heads > 1 and not s.selection.head_given
    why = f" (default: the head mixing the most {s.unit})" if default else ""
    which = _count(s.data.num_heads, "head", "all") if s.all_heads else f"head {head}{why}"
    own = ", each head on its own colour scale" if s.all_heads and s.scale == "per-head" else ""
    return f"wrote {printable(path)}: layer {layer}, {which} of {s.name}, {s.size}{own}"


def write_html(s: Scene, path: str) -> str:
    """The explorer of every layer and head in ``path``, opening on the selection; the line saying so."""
    try:
        from ..viz.html import write_html as write
    except ImportError as err:
        raise UsageError(f"--html is not available in this installation ({err})") from None
    sel = s.selection
    layer, head, word = sel.layer + 1, sel.head + 1, sel.word + 1
    _write("html", path, lambda: write(s.data, path, layer=layer, head=head, word=word, vmax=s.vmax))
    return (f"wrote {printable(path)}: {_count(s.data.num_layers, 'layer', 'all')} × "
            f"{_count(s.data.num_heads, 'head')} of {s.name}, {s.size}; it opens on layer {layer}, "
            f"head {head}, {one(s.unit)} {word}")


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
