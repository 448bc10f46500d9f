"""``explain``'s walk-through as terminal text: one function per section, from a report dict
(``explain.build_report``); nothing here computes attention."""

from __future__ import annotations

import numpy as np

from ._text import printable
from .explain import DERIVATION_ROWS, SHOW, TABLE_WORDS
from .viz.terminal import format_matrix, format_table, heatmap, truncate


def _wrap(items: list[str], width: int, *, max_lines: int) -> list[str]:
    """items joined by two spaces, indented 2, in lines of at most ``width``; '…' if cut."""
    lines, cur = [], ""
    for k, item in enumerate(items):
        if cur and len(cur) + 2 + len(item) > width - 2:
            if len(lines) + 1 == max_lines:
                return [*lines, f"  {cur}  … ({len(items) - k} more)"]
            lines.append(f"  {cur}")
            cur = ""
        cur = f"{cur}  {item}" if cur else item
    return [*lines, f"  {cur}"]


def _vec(x: list[float], n: int = SHOW) -> str:
    shown = ", ".join(f"{v: .3f}" for v in x[:n])
    return f"[{shown}{', …' if len(x) > n else ''}]"


def render(report: dict, *, color: bool = False, width: int = 80) -> str:
    """The walk-through as terminal text (ANSI colour in the heatmap only when ``color``)."""
    r = report
    v = _View(r)
    out = _header(r, v) + _sentence(r, v, width) + _shapes(r, v) + _tables(r, v) + _derivation(r, v)
    out += ["", "Heatmap of the weights A (row i attends to column j)",
            heatmap(np.array(r["A"]), v.labels, v.labels, color=color, vmin=0.0, width=width), ""]
    if v.real:
        out += _render_heads(r, width) + [""]
    out.append(_render_verification(r["verification"], v.real))
    return "\n".join(out)


class _View:
    """What every section of the text needs: escaped tokens, labels, the words for a token."""

    def __init__(self, r: dict):
        self.tokens = [printable(t) for t in r["tokens"]]  # a word may hold ESC, BEL, …: shown, never obeyed
        self.labels = [truncate(t, 10) for t in self.tokens]
        self.unit = r.get("unit", "words")
        self.real = "biases" in r  # a head of a real model (biases, its own output, other heads)
        self.one = "word piece" if self.real else "word"
        has_b = self.real and r["biases"]["b_Q"] is not None
        self.b = (" + b_Q", " + b_K", " + b_V") if has_b else ("", "", "")


def _header(r: dict, v: _View) -> list[str]:
    m, D, d_k = r["model"], r["D"], r["d_k"]
    if v.real:
        choice = ("chosen with --head" if m["head_choice"] == "--head" else
                  f"{m['head_choice']}; --head 1…{r['num_heads']} picks any")
        return [f"Layer {r['layer']}, head {r['head']} of {m['name']}, word by word "
                "(the lecture's notation: words are columns)",
                f"model: {m['name']}, {r['num_layers']} layers × {r['num_heads']} heads, D = {D}, "
                f"d = {d_k} per head",
                f"  {m['embedding']}", f"  {m['weights']}", f"  head {r['head']}: {choice}"]
    out = ["One self-attention layer, word by word (the lecture's notation: words are columns)",
           f"model: {m.get('name')}, D = {D}" + (f", seed {m['seed']}" if "seed" in m else "")]
    return out + [f"  {m[key]}" for key in ("embedding", "weights") if key in m]


def _sentence(r: dict, v: _View, width: int) -> list[str]:
    sentence = printable(" ".join(r["text"].split()))
    out = [f'sentence: "{truncate(sentence, max(width - 40, 40))}"  (T = {r["T"]} {v.unit})',
           *_wrap([f"{n}:{t}" for n, t in enumerate(v.tokens, 1)], max(width, 60), max_lines=4), ""]
    if r.get("dropped"):
        out[-1:] = [f"  (truncated: the last {r['dropped']} {v.unit} did not fit the model)", ""]
    return out


def _shapes(r: dict, v: _View) -> list[str]:
    sh, b, one = r["shapes"], v.b, v.one

    def dims(name: str) -> str:
        return " × ".join(str(n) for n in sh[name])

    rows = [
        ["H", dims("H"), f"h_1 … h_T, one column per {one}"],
        ["W_Q, W_K, W_V", f"{dims('W_Q')}",
         f"learned: head {r['head']}'s rows of the layer's in_proj" if v.real else "the learnable matrices"],
        [f"Q = W_Q H{b[0]}", dims("Q"), f"q_i = W_Q h_i{b[0]}: what {one} i is looking for"],
        [f"K = W_K H{b[1]}", dims("K"), f"k_j = W_K h_j{b[1]}: what {one} j offers"],
        [f"V = W_V H{b[2]}", dims("V"), f"v_j = W_V h_j{b[2]}: what {one} j passes on"],
        ["E = Qᵀ K", dims("E"), "e_ij = q_i · k_j"],
        ["A = softmax(E / √d_k)", dims("A"), "α_ij, softmax over each row j = 1 … T"],
        ["Z = V Aᵀ", dims("Z"), "z_i = Σ_j α_ij v_j  (Zᵀ = softmax(QᵀK / √d_k) Vᵀ)"],
    ]
    return ["Shapes", format_table(["", "", ""], rows, left=3, indent="  ").split("\n", 1)[1], ""]


def _tables(r: dict, v: _View) -> list[str]:
    T, d_v, one, labels = r["T"], r["d_v"], v.one, v.labels
    E, A, Z = np.array(r["E"]), np.array(r["A"]), np.array(r["Z"])  # (T,T), (T,T), (d_v,T)
    out = []
    if T > TABLE_WORDS:
        out += [f"(T = {T}: tables show the first {TABLE_WORDS} {v.unit}; the heatmap shows every "
                f"{one}; --json has every number)", ""]
    cut = {"max_rows": TABLE_WORDS, "max_cols": TABLE_WORDS, "indent": "  "}
    out += [f"Scores e_ij = q_i · k_j  (row i: the {one} asking; column j: the {one} answering)",
            format_matrix(E, labels, labels, fmt="{:.2f}", **cut), ""]
    out += [f"Weights α_ij = softmax_j(e_ij / √d_k), √{r['d_k']} = {1 / r['scale']:.4g}  "
            "(each row sums to 1)",
            format_matrix(A, labels, labels, fmt="{:.3f}", extra={"row sum": r["row_sums"]}, **cut), ""]
    comps = [f"[{c}]" for c in range(1, d_v + 1)]
    out += [f"Z: z_i for each {one} (first {min(d_v, 6)} of {d_v} components)",
            format_matrix(Z.T, labels, comps, fmt="{:.3f}", max_rows=TABLE_WORDS, max_cols=6,
                          indent="  "), ""]
    return out


def _derivation(r: dict, v: _View) -> list[str]:
    dv, b, one, d_v, T = r["derivation"], v.b, v.one, r["d_v"], r["T"]
    i, w = dv["index"], printable(dv["word"])
    rows = [[str(t["j"]), truncate(printable(t["word"]), 10), f"{t['e']:.3f}", f"{t['scaled']:.3f}",
             f"{t['alpha']:.4f}", _vec(t["v"])] for t in dv["terms"][:DERIVATION_ROWS]]
    out = [f'How z_{i} ("{w}") is made', f"  q_{i} = W_Q h_{i}{b[0]} = {_vec(dv['q'])}",
           format_table(["j", one, f"e_{i}j = q_{i}·k_j", "/ √d_k", f"α_{i}j",
                         f"v_j (first {min(SHOW, d_v)} of {d_v})"], rows, left=2, indent="  ")]
    if T > DERIVATION_ROWS:
        out.append(f"  … {T - DERIVATION_ROWS} more {v.unit}")
    out += [f"  Σ_j α_{i}j = {dv['alpha_sum']:.6f}", f"  z_{i} = Σ_j α_{i}j v_j = {_vec(dv['z'])}"]
    if v.real:
        gap = float(np.abs(np.array(dv["layer_z"]) - np.array(dv["z"])).max())
        out.append(f"  the layer's own z_{i} (head {r['head']} in its forward pass, float32) = "
                   f"{_vec(dv['layer_z'])}  max |Δ| = {gap:.1e}")
    return out


def _render_heads(r: dict, width: int) -> list[str]:
    """Where every head of the layer looks: shares by kind of key, then each word's favourite."""
    heads, tokens = r["heads"], [printable(t) for t in r["tokens"]]
    kinds = list(heads[0]["share"])
    mark = {h["head"]: (" ◀" if h["head"] == r["head"] else "") for h in heads}
    rows = [[f"{h['head']}{mark[h['head']]}", *(f"{h['share'][k]:.2f}" for k in kinds), h["mostly"]]
            for h in heads]
    out = [f"Where each head of layer {r['layer']} looks: mean α by kind of key "
           "(◀ = the head above)",
           format_table(["head", *kinds, "mostly"], rows, left=1, indent="  "), ""]
    room = max((width - 10) // 10, 1)
    n = min(len(tokens), TABLE_WORDS, room)
    grid = [[f"{h['head']}{mark[h['head']]}",
             *(truncate(printable(h["argmax_words"][q]), 9) for q in range(n))] for h in heads]
    out += ["The word piece each word piece (column) attends to most, per head (row)",
            format_table(["head", *(truncate(t, 9) for t in tokens[:n])], grid, left=n + 1, indent="  ")]
    if n < len(tokens):
        out.append(f"  (first {n} of {len(tokens)} columns; --json has all)")
    return out


def _render_verification(v: dict, real: bool) -> str:
    d = v["max_abs_diff"]
    mark = f"all < {v['tolerance']:.0e} ✓" if v["ok"] else f"NOT all < {v['tolerance']:.0e} ✗"
    skip = ("matrix_form", "auto", "weights")
    rest = "; ".join(f"{b} {d[b]:.1e}" for b in d if b not in skip)
    if not real:
        return (f"verify (max |Δ| vs the per-word loop): matrix form {d['matrix_form']:.1e}; "
                f"attention(backend=\"auto\" → {v['auto_backend']}) {d['auto']:.1e}; "
                f"{rest} — {mark}")
    return (f"verify (max |Δ| of the loops' Z, float64, vs the layer's own output for this head, "
            f"float32): backend \"auto\" → {v['auto_backend']} {d['auto']:.1e}; {rest}; "
            f"weights α {d['weights']:.1e}; (matrix form {d['matrix_form']:.1e}) — {mark}")
