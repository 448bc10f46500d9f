"""The lecture's steps for one word, worked with the report's numbers (``explain.walk.build_report``):
step 1, one component of q_i = W_Q h_i written out as its dot product; step 2, q_i beside every
k_j and their scores; step 4, z_i as the weighted sum of the values; step 5, the shapes of the
matrix form. Terminal text only; nothing here computes attention.
"""

from __future__ import annotations

import numpy as np

from .._text import printable
from ..viz.terminal import format_table, truncate
from .fmt import SHOW, vec
from .layout import LABEL, NEG_INF, Layout


def pair(i: int, j: int) -> str:
    """The subscript of e_ij for two positions: "26", or "18,15" where a number has two digits."""
    return f"{i}{j}" if i < 10 and j < 10 else f"{i},{j}"


def _n(x: float) -> str:
    return f"{x:.3f}"


def _signed(x: float) -> str:
    return f"- {-x:.3f}" if x < 0 else f"+ {x:.3f}"


def _products(a: list[float], b: list[float], room: int) -> tuple[str, str, int]:
    """("(a1)(b1) + (a2)(b2) + … ", "p1 + p2 … ", how many) for the first pairs of a · b, as many as
    fit ``room`` columns (at most ``SHOW``, at least one)."""
    n = 1
    for n in range(min(SHOW, len(a)), 0, -1):
        if len(" + ".join(f"({_n(x)})({_n(y)})" for x, y in zip(a[:n], b[:n], strict=True))) + 12 <= room:
            break
    pairs = " + ".join(f"({_n(x)})({_n(y)})" for x, y in zip(a[:n], b[:n], strict=True))
    p = [x * y for x, y in zip(a[:n], b[:n], strict=True)]
    terms = " ".join([_n(p[0]), *(_signed(x) for x in p[1:])])
    return pairs + (" + …" if len(a) > n else ""), terms, n


def step_one(r: dict, v: Layout) -> list[str]:
    """Step 1: q_i, k_i, v_i from h_i, with one component of q_i written out as its dot product."""
    dv, b, D, d_k = r["derivation"], v.b, r["D"], r["d_k"]
    i, w, wk = dv["index"], printable(dv["word"]), dv["worked"]
    c = wk["component"]
    h = np.array(r["H"])[:, i - 1].tolist()
    where = "learned" if v.real else "random, untrained here (learned in a real model)"
    out = v.para(f"1. Three vectors from each {v.one}: q_i = W_Q h_i{b[0]}, k_i = W_K h_i{b[1]}, "
                 f"v_i = W_V h_i{b[2]}")
    out += v.para(f"W_Q, W_K, W_V: {d_k} × {D} each, {where}; h_i: column i of H, the layer's input "
                  f"({D} numbers)", "  ", "    ")
    name = f'h_{i} ("{truncate(w, LABEL)}")'
    row = f"W_Q[{c},:]"
    width = max(len(name), len(row))
    out += [f"  {name.ljust(width)} = {vec(h)}", f"  {row.ljust(width)} = {vec(wk['row'])}  (row {c} of W_Q)"]
    lhs = f"  q_{i}[{c}] = W_Q[{c},:]·h_{i}" + (f" + b_Q[{c}]" if wk["bias"] is not None else "")
    pad = " " * (len(f"  q_{i}[{c}] "))
    pairs, terms, n = _products(wk["row"], h, min(v.width, 400) - len(pad) - 2)
    out += v.para(f"{lhs}: row {c} of W_Q times h_{i}, {D} products summed"
                  + (", plus the bias" if wk["bias"] is not None else ""), "", pad + "  ")
    out.append(f"{pad}= {pairs}")
    more = f" + … ({D - n} more)" if D > n else ""
    out.append(f"{pad}= {terms}{more} = {_n(wk['sum'])}")
    if wk["bias"] is not None:
        out.append(f"{pad}+ b_Q[{c}] = {_n(wk['sum'])} {_signed(wk['bias'])} = {_n(wk['q'])}")
    out += v.para(f"q_{i} = W_Q h_{i}{b[0]} = {vec(dv['q'])}: one row of W_Q for each of its {d_k} "
                  f"components; k_j and v_j likewise, with W_K and W_V", "  ", "    ")
    return [*out, ""]


def step_two(r: dict, v: Layout) -> list[str]:
    """Step 2: q_i against every key k_j, one score worked out; the T × T table follows it."""
    dv, b, d_k = r["derivation"], v.b, r["d_k"]
    i, w = dv["index"], printable(dv["word"])
    terms = dv["terms"]
    seen = [t for t in terms if not t["masked"]]
    out = v.para(f'2. Scores: the query of "{truncate(w, LABEL)}" against every key, e_{i}j = q_{i} · k_j'
                 f"  (k_j = W_K h_j{b[1]})")
    out.append(f"  q_{i} = {vec(dv['q'])}")
    show = SHOW if v.width >= 90 else 2
    rows = [[str(t["j"]), truncate(printable(t["word"]), LABEL), vec(t["k"], show), f"{t['e']:.3f}"]
            for t in seen[:v.rows]]
    out.append(format_table(["j", v.one, f"k_j (first {min(show, d_k)} of {d_k})", f"e_{i}j = q_{i}·k_j"],
                            rows, left=3, indent="  "))
    if len(seen) > v.rows:
        out.append(f"  … {len(seen) - v.rows} more {v.unit}")
    if len(seen) < len(terms):
        hidden = [t["j"] for t in terms if t["masked"]]
        span = f"{hidden[0]}…{hidden[-1]}" if len(hidden) > 1 else str(hidden[0])
        out.append(f"  ({v.unit} {span} come after {v.one} {i}: masked, e_{i}j = {NEG_INF})" if v.causal
                   else f"  (j = {span}: masked, e_{i}j = {NEG_INF})")
    top = max(seen, key=lambda t: t["alpha"]) if seen else None
    if top is not None:
        j = top["j"]
        lhs = f"  e_{pair(i, j)} = q_{i}·k_{j} = "
        pairs, _, _ = _products(dv["q"], top["k"], min(v.width, 400) - len(lhs) - 30)
        out += v.para(f"{lhs}{pairs} ({d_k} products) = {top['e']:.3f}", "", " " * len(lhs))
    return [*out, ""]


def derivation(r: dict, v: Layout) -> list[str]:
    """Step 4: how z_i is made, term by term (score, scaled score, weight, value)."""
    dv, T = r["derivation"], r["T"]
    i, w, d_v = dv["index"], printable(dv["word"]), r["d_v"]
    show = SHOW
    for show in range(SHOW, 0, -1):  # as many of v's components as fit
        if 60 + 9 * show + 5 <= v.width:
            break

    def cell(t: dict, key: str, fmt: str) -> str:
        return NEG_INF if t["masked"] and key != "alpha" else fmt.format(t[key])

    rows = [[str(t["j"]), truncate(printable(t["word"]), LABEL), cell(t, "e", "{:.3f}"),
             cell(t, "scaled", "{:.3f}"), f"{t['alpha']:.4f}", vec(t["v"], show)]
            for t in dv["terms"][:v.rows]]
    out = [f'4. The output: How z_{i} ("{w}") is made, a weighted sum of the values']
    out += v.para(f"columns: the score e_{i}j = q_{i}·k_j; the scaled score e_{i}j / √d_k; the weight "
                  f"α_{i}j = softmax over j of the scaled scores; the value v_j = W_V h_j{v.b[2]}", "  ")
    out.append(format_table(["j", v.one, f"e_{i}j = q_{i}·k_j", f"e_{i}j / √d_k", f"α_{i}j",
                             f"v_j (first {min(show, d_v)} of {d_v})"], rows, left=2, indent="  "))
    if T > v.rows:
        out.append(f"  … {T - v.rows} more {v.unit}")
    out += [f"  Σ_j α_{i}j = {dv['alpha_sum']:.6f}"]
    seen = [t["j"] for t in dv["terms"] if not t["masked"]]
    if v.causal and len(seen) < T:
        out += v.para(f"z_{i} = Σ_(j ≤ {i}) α_{i}j v_j = {vec(dv['z'])}  ({v.unit} {i + 1}…{T}: masked, "
                      "α = 0)", "  ", "    ")
    elif len(seen) < T:
        out += v.para(f"z_{i} = Σ_j α_{i}j v_j = {vec(dv['z'])}  (over the {len(seen)} {v.unit} it may see)",
                      "  ", "    ")
    else:
        out.append(f"  z_{i} = Σ_j α_{i}j v_j = {vec(dv['z'])}")
    if v.real:
        gap = float(np.abs(np.array(dv["layer_z"]) - np.array(dv["z"])).max())
        out += v.para(f"the layer's own z_{i} (head {r['head']} in its forward pass, float32) = "
                      f"{vec(dv['layer_z'])}  max |Δ| = {gap:.1e}", "  ", "    ")
    return [*out, ""]


def shapes(r: dict, v: Layout) -> list[str]:
    """Step 5: every word at once, the matrix form and its shapes (words as columns)."""
    sh, b, one = r["shapes"], v.b, v.one

    def dims(name: str) -> str:
        return " × ".join(str(n) for n in sh[name])

    masked = v.allowed is not None  # E shows the mask as −∞, so softmax(E / √d_k) applies it
    rows = [
        ["H", dims("H"), f"h_1 … h_T, one column per {one}"],
        ["W_Q, W_K, W_V", f"{dims('W_Q')}",
         f"learned: head {r['head']}'s rows of the layer's in_proj" if v.real
         else "random (untrained) here; learned in a real model"],
        [f"Q = W_Q H{b[0]}", dims("Q"), f"q_i = W_Q h_i{b[0]}: what {one} i is looking for"],
        [f"K = W_K H{b[1]}", dims("K"), f"k_j = W_K h_j{b[1]}: what {one} j offers"],
        [f"V = W_V H{b[2]}", dims("V"), f"v_j = W_V h_j{b[2]}: what {one} j passes on"],
        ["E = Qᵀ K", dims("E"), "e_ij = q_i · k_j" + (" (−∞ where masked)" if masked else "")],
        ["A = softmax(E / √d_k)", dims("A"), "α_ij, softmax over each row" + (
            " (0 where masked)" if masked else " j = 1 … T")],
        ["Z = V Aᵀ", dims("Z"), "z_i = Σ_j α_ij v_j, column i"],
    ]
    out = v.para(f"5. All {v.unit} at once, the matrix form (the lecture's notation: {v.unit} are columns)")
    out += ["Shapes", format_table(["", "", ""], rows, left=3, indent="  ").split("\n", 1)[1]]
    out += v.para(f"{v.unit.capitalize()} are columns here, so Z is d_v × T ({dims('Z')}). The lecture's "
                  f"matrix form Z = softmax(QᵀK/√d_k)·Vᵀ has one row per {one}, T × d_v: the same numbers, "
                  "transposed.", "  ")
    return [*out, ""]
