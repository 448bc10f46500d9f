"""``explain --multihead``: one layer's multi-head attention, the step the lecture announces next.

Each head is the lecture's layer with its own W_Q, W_K, W_V: the rows h·d … (h+1)·d − 1 of the
packed projection's Q, K and V blocks (``MultiHeadAttention.head_projections``/``head_rows`` say
where; nothing here slices the packed weight). Every head reads the whole input H and gives Z_h
(d × T) by the per-word loops; the heads' outputs are stacked into C = [Z_1; …; Z_H] (H·d × T), and
the output projection gives the layer's output O = W_O C + b_O (D × T). O is verified against the
layer's own output in the model's forward pass (recorded by the trace).

``build_multihead(trace, selection)`` → a JSON-serializable dict; ``render_multihead`` → text.
"""

from __future__ import annotations

import numpy as np

from .. import reference
from .._text import printable
from ..models.tracing import Trace
from .fmt import SHOW, f64, one, vec
from .selection import Selection, mask_report, select
from .walk import tolerance_for


def build_multihead(trace: Trace, selection: Selection | None = None, *, layer: int | None = None,
                    word: str | None = None) -> dict[str, object]:
    """Every head of the ``selection``'s layer (without one: ``select``'s for ``layer``, 1-based, and
    ``word``) by the loops, their concatenation, W_O and the output.

    Lecture convention (words are columns): H (D, T); per head Z_h (d, T); C (H·d, T); W_O (D, H·d);
    O and the layer's own output (D, T), as the trace recorded it.
    """
    sel = selection or select(trace, layer=layer, word=word)
    n, i = sel.layer, sel.word
    if trace.layers[n].output is None:
        raise ValueError(f"the trace did not record layer {n + 1}'s output")
    lt, attn, tokens = trace.layers[n], trace.attention(n), trace.tokens.tokens
    H = f64(lt.x).T  # (D, T)
    allowed = None if lt.allowed is None else lt.allowed.numpy()
    heads, Zs = [], []
    for h in range(attn.num_heads):
        W = {k: f64(x) for k, x in attn.head_projections(h).items()}  # W's (d, D), b's (d,) or None
        s = reference.self_attention(H, W["W_Q"], W["W_K"], W["W_V"], b_Q=W["b_Q"], b_K=W["b_K"],
                                     b_V=W["b_V"], mask=allowed)
        rows = attn.head_rows(h)
        own = f64(lt.z["auto"][h]).T  # (d, T): this head's output in the forward pass
        top = int(np.argmax(s.A[i]))
        heads.append({"head": h + 1, "rows": {k: list(rows[k]) for k in ("Q", "K", "V")},
                      "kv_head": rows["kv_head"] + 1, "Z": s.Z.tolist(), "z": s.Z[:, i].tolist(),
                      "top": {"j": top + 1, "word": tokens[top], "alpha": float(s.A[i, top])},
                      "max_abs_diff": float(np.abs(own - s.Z).max(initial=0.0))})
        Zs.append(s.Z)
    C = np.concatenate(Zs, axis=0)  # (H·d, T): head 1's d rows, then head 2's, …
    W_O = f64(attn.out_proj.weight)  # (D, H·d)
    b_O = f64(attn.out_proj.bias)  # (D,) or None
    O = W_O @ C + (0.0 if b_O is None else b_O[:, None])  # (D, T)
    own_O = f64(trace.layers[n].output).T  # (D, T): the layer's output in the forward pass
    tolerance = tolerance_for(lt.x.dtype)
    diffs = {"output": float(np.abs(O - own_O).max(initial=0.0)),
             "heads": max(x["max_abs_diff"] for x in heads)}
    return {
        "model": trace.model.name, "title": trace.title,
        "text": trace.text, "tokens": tokens, "unit": trace.model.unit,
        "layer": n + 1, "num_layers": trace.num_layers, "num_heads": attn.num_heads,
        "num_kv_heads": attn.num_kv_heads, "D": H.shape[0], "d": attn.head_dim, "T": H.shape[1],
        "word": {"index": i + 1, "word": tokens[i]},
        "mask": mask_report(trace, n),
        "H": H.tolist(), "heads": heads, "C": C.tolist(),
        "W_O": W_O.tolist(), "b_O": None if b_O is None else b_O.tolist(),
        "O": O.tolist(), "layer_output": own_O.tolist(),
        "verification": {"max_abs_diff": diffs, "tolerance": tolerance,
                         "ok": all(x < tolerance for x in diffs.values()),
                         "compared": "the loops' W_O C + b_O (float64) vs the layer's own output in "
                                     "the model's forward pass; each head's Z vs the layer's own"},
    }


def render_multihead(r: dict, *, width: int = 100, wide: bool = False, color: bool = False,
                     vmax: float | None = None, verbose: bool = False) -> str:
    """The multi-head walk-through as terminal text, lines of at most ``width`` (``wide``: no limit);
    ``color`` and ``vmax`` (the walk-through's heatmap) and ``verbose`` do not apply here."""
    from ..viz.terminal import format_table, paragraph, truncate

    def para(text: str, indent: str = "", hang: str = "    ") -> list[str]:
        return paragraph(text, width, wide=wide, indent=indent, hang=hang)

    Hn, d, D, T = r["num_heads"], r["d"], r["D"], r["T"]
    i, w = r["word"]["index"], printable(r["word"]["word"])
    heads = f"{Hn} heads" if Hn > 1 else "one head (the lecture's; several in a real model)"
    out = para(f"Multi-head attention, layer {r['layer']} of {r['title']}: {heads} of d = {d}, then W_O")
    out += para(f"Input: H ({D} × {T}), the layer's input; every head reads all of it. Head h (h = 1…{Hn}) "
                f"is this lecture's layer with its own W_Q, W_K, W_V: rows (h−1)·{d} … h·{d} − 1 (counted "
                f"from 0) of the Q, K and V blocks of the packed projection in_proj, as the layer's "
                f"head_rows(h) says; it gives Z_h ({d} × {T}), which explain --head h derives step by step.",
                "  ")
    if r["num_kv_heads"] != Hn:
        out += para(f"(grouped-query attention: {r['num_kv_heads']} key/value heads, each shared by "
                    f"{Hn // r['num_kv_heads']} query heads)", "  ")
    if r.get("mask"):
        out += para("(masked: every head uses the layer's mask, −∞ before the softmax)", "  ")
    out.append("")
    rows = []
    for h in r["heads"]:
        q0, q1 = h["rows"]["Q"]
        top = h["top"]
        rows.append([str(h["head"]), f"{q0}…{q1 - 1}",
                     f"{truncate(printable(top['word']), 10)} {top['alpha']:.2f}", vec(h["z"])])
    out.append(format_table(["head", "W_Q rows", f'"{truncate(w, 10)}" attends most to', f"z_{i} of head h "
                             f"(first {min(SHOW, d)} of {d})"], rows, left=3, indent="  "))
    c = np.array(r["C"])[:, i - 1]
    if Hn > 1:
        out += [""] + para(f"Concatenate: C = [Z_1; Z_2; …; Z_{Hn}] stacks the heads' outputs, {Hn} × {d} = "
                           f"{Hn * d} rows × {T}: column i is c_i = [z_i of head 1; …; z_i of head {Hn}]")
    else:
        out += [""] + para(f"Concatenate: with one head there is nothing to stack, C = Z_1 ({d} × {T})")
    out.append(f"  c_{i} = {vec(c.tolist(), 6)}  (components 1…{d} are head 1's z_{i}, …)")
    O, own = np.array(r["O"])[:, i - 1], np.array(r["layer_output"])[:, i - 1]
    b = " + b_O" if r["b_O"] is not None else ""
    out += [""] + para(f"Project: O = W_O C{b}  (W_O: {D} × {Hn * d}, the layer's out_proj, learned), "
                       f"{D} × {T}: each {one(r['unit'])}'s output mixes every head")
    out.append(f"  o_{i} = W_O c_{i}{b} = {vec(O.tolist(), 6)}")
    out.append(f"  the layer's own o_{i} (its forward pass) = {vec(own.tolist(), 6)}")
    v = r["verification"]
    mark = f"all < {v['tolerance']:.0e} ✓" if v["ok"] else f"NOT all < {v['tolerance']:.0e} ✗"
    out += [""] + para(f"verify: max |W_O C{b} − the layer's own output| over all {T} {r['unit']} and {D} "
                       f"components = {v['max_abs_diff']['output']:.1e}; each head's Z vs the layer's own "
                       f"per-head output: max {v['max_abs_diff']['heads']:.1e} — {mark}", "", "  ")
    return "\n".join(out)
