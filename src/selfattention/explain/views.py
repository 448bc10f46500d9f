"""The views of ``explain``, one row each: the option that asks for it, what computes and shows it,
and what it cannot be combined with. The command (``explain.cli``) reads the table for its options,
its refusals and what to run; nothing else names a view.

A step of the lecture (``--multihead``, ``--permute``, ``--ring N``; the walk-through when none is
asked) builds a JSON-ready report from the trace and the ``Selection`` and renders it as text
(``--json`` prints the report instead); one is shown at a time. A step whose row has a ``value``
takes one (``--ring N``), passed to its build as the keyword of its name. A picture (``--png``,
``--html``) is written to a file, as many as are asked, from the same trace. The quiz is an
exercise of its own: it asks its questions instead of showing a trace.

Functions are named "module:function" (modules of this package) and imported when the view runs,
so that building the parser loads no model code. A new view is its module and one row here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from .._options import integer
from ..errors import UsageError


@dataclass(frozen=True)
class View:
    """One row of ``VIEWS``. ``refuses`` and ``needs`` name options by their argparse dest ("head",
    "all_heads"); a message is the whole error line."""

    name: str  # its option, --NAME; the walk-through (WALK) is asked by none
    help: str = ""  # the option's --help
    build: str | None = None  # a step: (trace, selection) → its report, JSON-ready
    render: str | None = None  # a step: (report, *, width, wide, color, vmax, verbose) → text
    write: str | None = None  # a picture, --NAME FILE: (pictures.Scene, path) → the line saying so
    command: str | None = None  # an exercise: (text, *, model, dim, seed, positions, word, answers) → status
    refuses: tuple[tuple[str, str], ...] = ()  # (option, message): given with this view, refused
    needs: tuple[tuple[str, str], ...] = ()  # (option, message): options only this view takes
    verify: bool = False  # its trace recomputes the shown head with every tier, to verify it
    value: tuple[str, Callable[[str], Any]] | None = None  # a step's value, --NAME METAVAR: (metavar, type)

    @property
    def picture(self) -> bool:
        return self.write is not None


def _drop(why: str, *options: str) -> tuple[tuple[str, str], ...]:
    """Refusals that say ``why``, then which option to drop."""
    return tuple((o, f"{why}; drop --{o.replace('_', '-')}") for o in options)


WALK = View("walk", build="walk:build_report", render="text:render", verify=True)
VIEWS: tuple[View, ...] = (
    View("multihead",
         help="walk the layer's multi-head attention: every head's Z, their concatenation, W_O and the "
              "layer's output, verified against the layer's own output",
         build="heads:build_multihead", render="heads:render_multihead",
         refuses=_drop("--multihead shows every head of the layer", "head")),
    View("permute",
         help="explain the same words in reverse order too and compare every word's z: unchanged without "
              "positions (--model toy), changed with them (--positions sinusoidal, MiniLM's learned "
              "positions)",
         build="order:build_order", render="order:render_order",
         refuses=(*_drop("--permute compares every head, without a mask", "head", "causal"),
                  *((o, "--permute prints a comparison of two orders; draw pictures without it")
                    for o in ("png", "html")))),
    View("ring",
         help="the walk-through's word's z_i computed in N pieces (N ≥ 2), as ring attention over N "
              "processes computes it (selfattention.distributed, simulated here in one process): each "
              "piece's keys, scores, max m, partial Σ e^(s−m) v_j and log-sum-exp, then their merge, "
              "checked against the one-process z_i",
         build="ring:build_ring", render="ring:render_ring", value=("N", integer(2)),
         refuses=tuple((o, "--ring prints one word's z_i in pieces; draw pictures without it")
                       for o in ("png", "html"))),
    View("quiz",
         help="exercises: the toy model (D = 4) on two or three words asks, in the lecture's order, for one "
              "component of q_i = W_Q h_i, one e_ij, one α_ij, one component of z_i, the shapes of QᵀK "
              "and Z, one α of a causal row and one component of a two-head output W_O [z¹; z²]; reads "
              "the answers from stdin (or --answers) and shows the worked step when one is wrong; exit "
              "0 when all are right, 1 when any is wrong",
         command="quiz:ask",
         refuses=_drop("--quiz asks its own questions", "json", "png", "html", "causal", "layer", "head",
                       "all_heads", "no_truncate", "verbose"),
         needs=(("answers", "--answers goes with --quiz"),)),
    View("png",
         help="write a heatmap of --layer/--head's weights (default: the walk-through's layer and head) as "
              "a PNG image",
         write="pictures:write_png",
         needs=(("all_heads", "--all-heads applies to --png (the HTML explorer always has every head)"),
                ("scale", "--scale applies to --png --all-heads (the colour scales of a grid of heads)"))),
    View("html",
         help="write a self-contained interactive explorer of every layer and head (one HTML file that "
              "works offline in any browser), opening on the walk-through's layer, head and word",
         write="pictures:write_html"),
)


def chosen(given: Collection[str]) -> tuple[View, tuple[View, ...]]:
    """(the step or exercise to show, the pictures to write) for the options ``given`` (their
    argparse dests); UsageError, before anything is computed, for options that do not go together."""
    for view in VIEWS:
        for option, message in view.needs:
            if option in given and view.name not in given:
                raise UsageError(message)
    steps = [v for v in VIEWS if v.name in given and not v.picture]
    if len(steps) > 1:
        raise UsageError(f"--{steps[0].name} and --{steps[1].name}: give one of them")
    for view in VIEWS:
        if view.name in given:
            for option, message in view.refuses:
                if option in given:
                    raise UsageError(message)
    return (steps[0] if steps else WALK), tuple(v for v in VIEWS if v.picture and v.name in given)


def function(name: str) -> Callable[..., Any]:
    """The function a row names, "module:function" (a module of this package), imported now."""
    module, attr = name.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), attr)
