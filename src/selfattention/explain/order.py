"""``explain --permute``: the same words in reverse order, through the same layer, compared.

Self-attention has no notion of order: permute its input columns and its output columns are
permuted the same way, nothing else changes (z_i depends on the set of (k_j, v_j), not on their
order, and q_i, k_i, v_i on h_i alone). So a model without positions (the toy's default) gives every
word the same z in both orders; positions added to the word vectors (the toy's
``--positions sinusoidal``, MiniLM's learned p_i, a trained decoder's) change h_i with the place,
hence z_i. The markers [CLS] and [SEP] stay in place; the real tokens are reversed.

``build_order(trace, selection)`` traces the reversed order beside the trace of the original one
and compares every head's z (the layer's own output) word by word; ``render_order`` prints it.
"""

from __future__ import annotations

import numpy as np

from .._text import printable
from ..errors import UsageError
from ..models.traceable import Tokens, Traceable
from ..models.tracing import Trace, trace
from .fmt import one, vec
from .selection import Selection, select
from .walk import tolerance_for

Z_SHOWN = 3  # components of a vector shown here (two vectors side by side per row)


def reversal(tokens: Tokens) -> list[int]:
    """p with p[k] = the old position of the token now at position k: the real tokens reversed,
    markers ([CLS], [SEP]) left where they are."""
    real = [k for k, s in enumerate(tokens.special) if not s]
    p = list(range(len(tokens.tokens)))
    for k, src in zip(real, reversed(real), strict=True):
        p[k] = src
    return p


def build_order(a: Trace, selection: Selection | None = None, *,
                layer: int | None = None) -> dict[str, object]:
    """The ``selection``'s layer (without one: ``select``'s for ``layer``, 1-based) of trace ``a``'s
    model, on ``a``'s text and on its real tokens reversed (traced here, as ``a`` was).

    Per word: its old and new position, z (every head, the layer's own output) in both orders and
    max |Δz| with the word followed to its new place, over every head and over the selection's head
    alone ("head", the walk-through's); likewise for h (the layer's input) and α (α'_kl against
    α_p(k)p(l)). UsageError when reversing gives the same tokens (nothing to compare).
    """
    sel = selection or select(a, layer=layer)
    n, h = sel.layer, sel.head
    model = a.model
    p = reversal(a.tokens)
    moved = [a.tokens.tokens[k] for k in p]
    if moved == a.tokens.tokens:
        raise UsageError(f"reversed, {' '.join(printable(t) for t in moved)!r} is the same sentence: give at "
                         "least two different words")
    b = trace(model, moved, layers=[n], causal=a.causal)
    la, lb = a.layers[n], b.layers[n]
    za, zb = (t.z["auto"].double().numpy() for t in (la, lb))  # (H, T, d): every head's z
    xa, xb = (t.x.double().numpy() for t in (la, lb))  # (T, D): the layer's input, h_i as rows
    wa, wb = (t.weights.double().numpy() for t in (la, lb))  # (H, T, T)
    P = np.array(p)
    dz = np.abs(zb - za[:, P]).max(axis=(0, 2))  # (T,): word now at k vs the same word before
    dz_head = np.abs(zb[h] - za[h, P]).max(axis=1)  # (T,): the same, for head h alone
    dh = np.abs(xb - xa[P]).max(axis=1)  # (T,)
    dw = float(np.abs(wb - wa[:, P][:, :, P]).max())
    tolerance = tolerance_for(la.x.dtype)
    words = []
    for k in range(len(p)):
        old = p[k]
        words.append({"word": moved[k], "old": old + 1, "new": k + 1,
                      "z_old": za[:, old].reshape(-1).tolist(), "z_new": zb[:, k].reshape(-1).tolist(),
                      "max_abs_diff_z": float(dz[k]), "max_abs_diff_h": float(dh[k]),
                      "z_head_old": za[h, old].tolist(), "z_head_new": zb[h, k].tolist(),
                      "max_abs_diff_z_head": float(dz_head[k])})
    words.sort(key=lambda x: x["old"])
    first = next((k for k, s in enumerate(a.tokens.special) if not s), 0)  # the first real word
    parts = None
    if n == 0:
        before, after = model.input_parts(a.tokens, first), model.input_parts(b.tokens, p.index(first))
        if before is not None and after is not None:
            parts = {"word": a.tokens.tokens[first], "old": first + 1, "new": p.index(first) + 1,
                     "before": before, "after": after}
    kind = parts["before"]["positions"] if parts else _positions_of(model)
    return {
        "model": model.name, "title": a.title, "unit": model.unit,
        "layer": n + 1, "heads": int(za.shape[0]), "head": h + 1, "text": a.text, "tokens": a.tokens.tokens,
        "permuted": moved, "permutation": [x + 1 for x in p], "positions": kind, "words": words,
        "tolerance": tolerance,
        "max_abs_diff": {"z": float(dz.max()), "h": float(dh.max()), "weights": dw},
        "unchanged": bool(dz.max() < tolerance), "parts": parts,
        "masked": la.allowed is not None,  # a causal decoder: order matters through the mask too
    }


def _positions_of(model: Traceable) -> str:
    return str(model.describe().get("positions", "unknown"))


def render_order(r: dict, *, width: int = 100, wide: bool = False, color: bool = False,
                 vmax: float | None = None, verbose: bool = False) -> str:
    """The comparison as terminal text, lines of at most ``width`` (``wide``: no limit); ``color`` and
    ``vmax`` (the walk-through's heatmap) and ``verbose`` do not apply here."""
    from ..viz.terminal import format_table, paragraph, truncate

    def para(text: str, indent: str = "", hang: str = "  ") -> list[str]:
        return paragraph(text, width, wide=wide, indent=indent, hang=hang)

    show = lambda toks: truncate(printable(" ".join(toks)), 10**6 if wide else width - 14)  # noqa: E731
    title = f"the {r['title']}" if r["title"].startswith("toy model") else r["title"]
    out = para(f"Word order: the same {r['unit']} reversed, through layer {r['layer']} of {title}")
    out += [f"  original: {show(r['tokens'])}", f"  reversed: {show(r['permuted'])}"]
    out += para(_positions_line(r), "  ", "    ") + [""]
    heads, h = r.get("heads", 1), r.get("head", 1)
    if heads == 1:
        rows = [[truncate(printable(w["word"]), 10), f"{w['old']} → {w['new']}", vec(w["z_old"], Z_SHOWN),
                 vec(w["z_new"], Z_SHOWN), f"{w['max_abs_diff_z']:.1e}"] for w in r["words"]]
        out.append(format_table(["word", "place", f"z (original, first {Z_SHOWN})", "z (reversed)",
                                 "max |Δz|"], rows, left=2, indent="  "))
    else:  # one head's z shown, its own max |Δz| beside it; then every head's, said so
        shown = Z_SHOWN - 1
        d = len(r["words"][0]["z_head_old"])
        out += para(f"z of head {h} (the walk-through's head; first {shown} of its {d} components), max |Δz| "
                    f"over that head's z, and over all {heads} heads' z (the layer's output before W_O):",
                    "  ", "    ")
        rows = [[truncate(printable(w["word"]), 10), f"{w['old']} → {w['new']}", vec(w["z_head_old"], shown),
                 vec(w["z_head_new"], shown), f"{w['max_abs_diff_z_head']:.1e}", f"{w['max_abs_diff_z']:.1e}"]
                for w in r["words"]]
        out.append(format_table(["word", "place", f"head {h}: z original", "z reversed", f"|Δz| head {h}",
                                 f"all {heads} heads"], rows, left=2, indent="  "))
    d = r["max_abs_diff"]
    out.append("")
    if r["unchanged"]:
        out += para(f"Every {one(r['unit'])}'s z is unchanged, only moved with it: max |Δz| = "
                    f"{d['z']:.1e} over all of them, every component of every head (< {r['tolerance']:.0e}: "
                    "rounding). Without positions h_i is the same wherever the word stands, and "
                    "self-attention reads its input as a set: it cannot tell the two orders apart. The "
                    f"weights moved the same way: α'_kl = α_p(k)p(l), max |Δ| = {d['weights']:.1e}.")
    else:
        smallest = min(w["max_abs_diff_z"] for w in r["words"])
        why = ("With positions h_i depends on where the word stands, so the same word in another place gets "
               "another z: order is seen." if r["positions"] not in ("none", "unknown") else "")
        if r.get("masked"):
            why += (" The layer is also masked (a causal decoder): word i sees only words 1…i, so which "
                    "words a word sees depends on the order, with or without positions.")
        every = f" over all {r['heads']} heads" if r.get("heads", 1) > 1 else ""
        out += para(f"The z's changed: max |Δz|{every} = {d['z']:.3g} (the least-changed {one(r['unit'])}: "
                    f"{smallest:.3g}); "
                    f"the layer's inputs h differ by up to {d['h']:.3g}. {why.strip()}")
    if r["parts"]:
        out += [""] + _parts_lines(r["parts"], para, format_table)
    return "\n".join(out)


def _positions_line(r: dict) -> str:
    kind = r["positions"]
    if kind == "none":
        return ("positions: none — h_i is the word's vector alone, wherever it stands (add them with "
                "--positions sinusoidal)")
    if kind == "sinusoidal":
        return "positions: sinusoidal — h_i = word vector + PE(i − 1), the original Transformer's sinusoids"
    if kind == "learned":
        return (f"positions: learned — {r['model']} adds a trained vector p_i for each position i (it "
                "cannot be switched off); [CLS] and [SEP] stay in place")
    return f"positions: {kind}"


def _short(name: str) -> str:
    """A part's name without its explanation: '+ p_2, the learned …' → '+ p_2'."""
    cut = min((k for k in (name.find(", "), name.find(" (")) if k > 0), default=len(name))
    return name[:cut]


def _parts_lines(parts: dict, para, format_table) -> list[str]:
    """The first word's h in both places: where the position vectors enter."""
    w, old, new = printable(parts["word"]), parts["old"], parts["new"]
    before, after = parts["before"], parts["after"]
    out = para(f'Where positions enter: "{w}" at place {old} and at place {new}; {before["formula"]}')
    rows = []
    for (name_a, va), (name_b, vb) in zip(before["parts"], after["parts"], strict=True):
        a, b = _short(printable(name_a)), _short(printable(name_b))
        same = np.array_equal(np.array(va), np.array(vb))
        rows.append([a if a == b else f"{a} / {b.lstrip('+ ')}", vec(va, Z_SHOWN),
                     "(the same)" if same else vec(vb, Z_SHOWN)])
    norm = before.get("norm")
    last = f"{norm.split(' (')[0]} → h" if norm else "= h"
    same = np.array_equal(np.array(before["h"]), np.array(after["h"]))
    rows.append([last, vec(before["h"], Z_SHOWN), "(the same)" if same else vec(after["h"], Z_SHOWN)])
    out.append(format_table(["", f"place {old}", f"place {new}"], rows, left=1, indent="  "))
    return out
