"""``explain``'s walk-through as terminal text: one function per section, from a report dict
(``explain.walk.build_report``); nothing here computes attention.

Every line fits ``width`` columns (100 by default): prose is wrapped, tables show the words that
fit and say how many are left out; ``wide=True`` prints everything, unwrapped and uncut.
"""

from __future__ import annotations

import numpy as np

from .._text import printable
from ..viz.terminal import format_table, heatmap, paragraph, truncate
from .fmt import SHOW, one, vec

TABLE_WORDS = 12  # tables wider than this are cut; the heatmap and --json show everything
DERIVATION_ROWS = 24
NEG_INF = "−∞"
WIDE = 10**6  # "no limit" for --wide
LABEL = 10  # a token label in a table is cut to this many characters


class _View:
    """What every section needs: escaped tokens and labels, the unit, the width, the limits."""

    def __init__(self, r: dict, width: int, wide: bool):
        self.tokens = [printable(t) for t in r["tokens"]]  # a word may hold ESC, BEL, …: shown, never obeyed
        self.labels = [truncate(t, LABEL) for t in self.tokens]
        self.unit = r.get("unit", "words")
        self.one = one(self.unit)
        self.real = "biases" in r  # a head of a real model (biases, its own output, other heads)
        has_b = self.real and r["biases"]["b_Q"] is not None
        self.b = (" + b_Q", " + b_K", " + b_V") if has_b else ("", "", "")
        self.wide = wide
        self.width = WIDE if wide else width
        self.words = r["T"] if wide else TABLE_WORDS
        self.rows = r["T"] if wide else DERIVATION_ROWS
        mask = r.get("mask")
        self.allowed = None if mask is None else np.array(mask["allowed"], dtype=bool)  # (T, T)
        self.causal = mask is not None and mask["kind"] == "causal"

    def para(self, text: str, indent: str = "", hang: str | None = None) -> list[str]:
        """``text`` as lines of at most ``width``; continuation lines indented by ``hang``."""
        return paragraph(text, self.width, wide=self.wide, indent=indent,
                         hang=indent + "  " if hang is None else hang)


def render(report: dict, *, color: bool = False, width: int = 100, wide: bool = False,
           vmax: float | None = None) -> str:
    """The walk-through as terminal text (ANSI colour in the heatmap only when ``color``; ``vmax``: a
    fixed top of its scale, else the largest weight)."""
    r = report
    v = _View(r, width, wide)
    out = _header(r, v) + _sentence(r, v) + _input(r, v) + _shapes(r, v) + _tables(r, v) + _derivation(r, v)
    out += ["", "Heatmap of the weights A (row i attends to column j)",
            heatmap(np.array(r["A"]), v.labels, v.labels, color=color, vmin=0.0, vmax=vmax,
                    width=min(v.width, 400)),
            ""]
    if v.real:
        out += _render_heads(r, v) + [""]
    out += _render_verification(r["verification"], v)
    return "\n".join(out)


def _header(r: dict, v: _View) -> list[str]:
    m, D, d_k = r["model"], r["D"], r["d_k"]
    if v.real:
        from ..models.heads import HEURISTIC

        choice = ("chosen with --head" if m["head_choice"] == "--head" else
                  f"{m['head_choice']}; --head 1…{r['num_heads']} picks any")
        out = v.para(f"Layer {r['layer']}, head {r['head']} of {m['name']}, word by word "
                     "(the lecture's notation: words are columns)")
        out += v.para(f"model: {m['name']}, {r['num_layers']} layers × {r['num_heads']} heads, D = {D}, "
                      f"d = {d_k} per head")
        out += v.para(m["embedding"], "  ", "    ") + v.para(m["weights"], "  ", "    ")
        out += v.para(f"head {r['head']}: {choice}", "  ", "    ")
        if m["head_choice"] not in ("--head", "the layer's only head") and "fewer" not in m["head_choice"]:
            out += v.para("(" + HEURISTIC.format(one=v.one, unit=v.unit) + ")", "    ", "     ")
    else:
        out = ["One self-attention layer, word by word (the lecture's notation: words are columns)",
               f"model: {m.get('name')}, D = {D}" + (f", seed {m['seed']}" if "seed" in m else "")
               + ": random, untrained W's (--seed draws others)"]
        out += [line for key in ("embedding", "weights") if key in m for line in v.para(m[key], "  ", "    ")]
    return out + _mask_header(r, v)


def _mask_header(r: dict, v: _View) -> list[str]:
    mask = r.get("mask")
    if mask is None:
        return []
    if mask["kind"] != "causal":
        return v.para(f"mask: {mask['masked']} of the T² scores are forbidden (−∞ before the softmax, "
                      "so α = 0 there)", "  ", "    ")
    if not mask["illustration"]:
        why = "as this model computes it"
    elif v.real:
        why = f"for illustration: {r['model']['name']} was trained without it"
    else:
        why = "added with --causal"
    text = (f"mask: causal, as decoders use it ({why}): {v.one} i sees {v.unit} 1…i only, so e_ij = −∞ "
            "above the diagonal (j > i), α_ij = 0 there, and each row still sums to 1. (Alignment, when "
            "query and key lengths differ: top-left, as PyTorch, lines up the first query with the first "
            "key; bottom-right, as FlashAttention and KV-cache decoding, the last with the last. Here "
            "both lengths are T, so the two agree.)")
    return v.para(text, "  ", "    ")


def _sentence(r: dict, v: _View) -> list[str]:
    sentence = printable(" ".join(r["text"].split()))
    out = [f'sentence: "{truncate(sentence, max(min(v.width, 400) - 40, 40))}"  (T = {r["T"]} {v.unit})']
    out += _wrap([f"{n}:{t}" for n, t in enumerate(v.tokens, 1)], max(min(v.width, 400), 60),
                 max_lines=4 if not v.wide else 10**6)
    if v.unit == "word pieces":
        out += v.para("([CLS], [SEP]: markers the tokenizer adds; word pieces: the tokenizer's units, a rare "
                      "word split in parts: tokenizer → token ##izer)", "  ")
    elif v.unit == "characters":
        out += ["  (characters: one character is one token, as the model was trained)"]
    if r.get("dropped"):
        out += [f"  (truncated: the last {r['dropped']} {v.unit} did not fit the model)"]
    return [*out, ""]


def _wrap(items: list[str], width: int, *, max_lines: int) -> list[str]:
    """items joined by two spaces, indented 2, in lines of at most ``width``; '…' if cut."""
    lines, cur = [], []
    for k, item in enumerate(items):
        if cur and len("  ".join([*cur, item])) > width - 2:
            if len(lines) + 1 == max_lines:  # the last line: room for the note of what is left out
                while len(cur) > 1 and len("  ".join(cur)) + len(f"  … ({len(items) - k + 1} more)") \
                        > width - 2:
                    cur.pop()
                    k -= 1
                return [*lines, f"  {'  '.join(cur)}  … ({len(items) - k} more)"]
            lines.append("  " + "  ".join(cur))
            cur = []
        cur.append(item)
    return [*lines, "  " + "  ".join(cur)]


def _input(r: dict, v: _View) -> list[str]:
    """How h_i, the layer's input for the derived word, is made (layer 1 only): where positions enter."""
    parts = r.get("input")
    if not parts:
        return []
    i, w = r["derivation"]["index"], printable(r["derivation"]["word"])
    out = [f'How h_{i} ("{w}"), the layer\'s input, is made'] + v.para(parts["formula"], "  ")
    rows = [[printable(name), vec(x)] for name, x in parts["parts"]]
    if parts.get("norm"):
        rows.append([f"{parts['norm'].split(' (')[0]} → h_{i}", vec(parts["h"])])
    elif rows and len(rows) > 1:
        rows.append([f"= h_{i}", vec(parts["h"])])
    out.append(format_table(["", ""], [[truncate(a, 60), b] for a, b in rows], left=1,
                            indent="  ").split("\n", 1)[1])
    if parts["positions"] == "none":
        out += v.para(f"(no positions: h_{i} is the same wherever \"{w}\" stands, so the layer cannot tell "
                      "word order; see --permute, and --positions sinusoidal for the toy model)", "  ")
    else:
        kinds = {"learned": "learned, one vector per position, trained with the model",
                 "sinusoidal": "the original Transformer's sinusoids"}
        kind = kinds.get(parts["positions"], parts["positions"])
        out += v.para(f"(positions: {kind}; the only place word order enters: --permute shows what they "
                      "change)", "  ")
    return [*out, ""]


def _shapes(r: dict, v: _View) -> list[str]:
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
    out = ["Shapes", format_table(["", "", ""], rows, left=3, indent="  ").split("\n", 1)[1]]
    out += v.para(f"Words are columns here, so Z is d_v × T ({dims('Z')}). The lecture's matrix form "
                  "Z = softmax(QᵀK/√d_k)·Vᵀ has one row per word, T × d_v: the same numbers, "
                  "transposed.", "  ")
    return [*out, ""]


def _grid(cells: list[list[str]], labels: list[str], v: _View, *, extra: dict[str, list[str]] | None = None,
          indent: str = "  ") -> tuple[str, int]:
    """A labelled table of ready-made cells, as many columns as fit the width; (text, columns shown)."""
    extra = extra or {}
    T = len(labels)
    rows = min(T, v.words)
    used = len(indent) + max(len(x) for x in labels[:rows])
    used += sum(2 + max(len(k), *(len(c) for c in col[:rows])) for k, col in extra.items())
    n = 0
    for j in range(min(T, v.words)):
        w = 2 + max(len(labels[j]), *(len(cells[i][j]) for i in range(rows)))
        if used + w + (3 if j < T - 1 else 0) > v.width and n:
            break
        used, n = used + w, n + 1
    cut = ["…"] if n < T else []
    header = ["", *labels[:n], *cut, *extra]
    body = [[labels[i], *cells[i][:n], *cut, *(col[i] for col in extra.values())] for i in range(rows)]
    text = format_table(header, body, indent=indent)
    if rows < T:
        text += f"\n{indent}… {T - rows} more rows"
    return text, n


def _tables(r: dict, v: _View) -> list[str]:
    T, d_v, one, labels = r["T"], r["d_v"], v.one, v.labels
    E, A, Z = np.array(r["E"]), np.array(r["A"]), np.array(r["Z"])  # (T,T), (T,T), (d_v,T)
    ok = np.ones((T, T), bool) if v.allowed is None else v.allowed
    e_cells = [[f"{E[i, j]:.2f}" if ok[i, j] else NEG_INF for j in range(T)] for i in range(T)]
    out = []
    masked = f"; {NEG_INF} where the mask forbids j" if v.allowed is not None else ""
    out += v.para(f"Scores e_ij = q_i · k_j  (row i: the {one} asking; column j: the {one} answering"
                  f"{masked})")
    text, n = _grid(e_cells, labels, v)
    out += [text, ""]
    out += v.para(f"Weights α_ij = softmax_j(e_ij / √d_k), √{r['d_k']} = {1 / r['scale']:.4g}  "
                  "(each row sums to 1" + ("; α = 0 where e = −∞)" if v.allowed is not None else ")"))
    a_cells = [[f"{A[i, j]:.3f}" for j in range(T)] for i in range(T)]
    text, _ = _grid(a_cells, labels, v, extra={"row sum": [f"{s:.3f}" for s in r["row_sums"]]})
    out += [text, ""]
    comps = [f"[{c}]" for c in range(1, d_v + 1)]
    keep = d_v if v.wide else 6
    z_cells = [[f"{Z[c, i]:.3f}" for c in range(d_v)] for i in range(T)]
    out += [f"Z: z_i for each {one}, one row each here (first {min(d_v, keep)} of {d_v} components)"]
    out += [_z_table(z_cells, labels, comps, keep, v), ""]
    if n < T or v.words < T:
        out[:0] = [*v.para(f"(tables show the first {min(T, v.words)} of {T} {v.unit} as rows, and the "
                           f"columns that fit; the heatmap shows every {one}; --wide for all of them, "
                           "--json for every number)"), ""]
    return out


def _z_table(z_cells: list[list[str]], labels: list[str], comps: list[str], keep: int, v: _View) -> str:
    rows = len(labels) if v.wide else min(len(labels), v.words)
    cut = ["…"] if keep < len(comps) else []
    body = [[labels[i], *z_cells[i][:keep], *cut] for i in range(rows)]
    text = format_table(["", *comps[:keep], *cut], body, indent="  ")
    if rows < len(labels):
        text += f"\n  … {len(labels) - rows} more rows"
    return text


def _derivation(r: dict, v: _View) -> list[str]:
    dv, b, d_v, T = r["derivation"], v.b, r["d_v"], r["T"]
    i, w = dv["index"], printable(dv["word"])
    show = SHOW
    for show in range(SHOW, 0, -1):  # as many of v's components as fit
        if 60 + 9 * show + 5 <= v.width:
            break

    def cell(t: dict, key: str, fmt: str) -> str:
        return NEG_INF if t["masked"] and key != "alpha" else fmt.format(t[key])

    rows = [[str(t["j"]), truncate(printable(t["word"]), LABEL), cell(t, "e", "{:.3f}"),
             cell(t, "scaled", "{:.3f}"), f"{t['alpha']:.4f}", vec(t["v"], show)]
            for t in dv["terms"][:v.rows]]
    out = [f'How z_{i} ("{w}") is made', f"  q_{i} = W_Q h_{i}{b[0]} = {vec(dv['q'])}"]
    out += v.para(f"columns: the score e_{i}j = q_{i}·k_j; the scaled score e_{i}j / √d_k; the weight "
                  f"α_{i}j = softmax over j of the scaled scores; the value v_j", "  ")
    out.append(format_table(["j", v.one, f"e_{i}j = q_{i}·k_j", f"e_{i}j / √d_k", f"α_{i}j",
                             f"v_j (first {min(show, d_v)} of {d_v})"], rows, left=2, indent="  "))
    if T > v.rows:
        out.append(f"  … {T - v.rows} more {v.unit}")
    out += [f"  Σ_j α_{i}j = {dv['alpha_sum']:.6f}"]
    seen = [t["j"] for t in dv["terms"] if not t["masked"]]
    if v.causal and len(seen) < T:
        out.append(f"  z_{i} = Σ_(j ≤ {i}) α_{i}j v_j = {vec(dv['z'])}  ({v.unit} {i + 1}…{T}: masked, "
                   "α = 0)")
    elif len(seen) < T:
        out.append(f"  z_{i} = Σ_j α_{i}j v_j = {vec(dv['z'])}  (over the {len(seen)} {v.unit} it may see)")
    else:
        out.append(f"  z_{i} = Σ_j α_{i}j v_j = {vec(dv['z'])}")
    if v.real:
        gap = float(np.abs(np.array(dv["layer_z"]) - np.array(dv["z"])).max())
        out += v.para(f"the layer's own z_{i} (head {r['head']} in its forward pass, float32) = "
                      f"{vec(dv['layer_z'])}  max |Δ| = {gap:.1e}", "  ", "    ")
    return out


def _render_heads(r: dict, v: _View) -> list[str]:
    """Where every head of the layer looks: shares by kind of key, then each word's favourite."""
    heads, tokens = r["heads"], [printable(t) for t in r["tokens"]]
    kinds = list(heads[0]["share"])
    mark = {h["head"]: (" ◀" if h["head"] == r["head"] else "") for h in heads}
    rows = [[f"{h['head']}{mark[h['head']]}", *(f"{h['share'][k]:.2f}" for k in kinds), h["mostly"]]
            for h in heads]
    out = v.para(f"Where each head of layer {r['layer']} looks: mean α by kind of key (◀ = the head above)")
    out += [format_table(["head", *(truncate(k, 8) for k in kinds), "mostly"], rows, left=1, indent="  "), ""]
    room = max((min(v.width, 10**4) - 10) // 10, 1)
    n = min(len(tokens), v.words, room)
    grid = [[f"{h['head']}{mark[h['head']]}",
             *(truncate(printable(h["argmax_words"][q]), 9) for q in range(n))] for h in heads]
    out += v.para(f"The {v.one} each {v.one} (column) attends to most, per head (row)")
    out += [format_table(["head", *(truncate(t, 9) for t in tokens[:n])], grid, left=n + 1, indent="  ")]
    if n < len(tokens):
        out.append(f"  (first {n} of {len(tokens)} columns; --wide or --json for all)")
    return out


def _render_verification(ver: dict, v: _View) -> list[str]:
    d = ver["max_abs_diff"]
    mark = f"all < {ver['tolerance']:.0e} ✓" if ver["ok"] else f"NOT all < {ver['tolerance']:.0e} ✗"
    skip = ("matrix_form", "auto", "weights")
    rest = "; ".join(f"{b} {d[b]:.1e}" for b in d if b not in skip)
    if not v.real:
        text = (f"verify (max |Δ| vs the per-word loop): matrix form {d['matrix_form']:.1e}; "
                f"attention(backend=\"auto\" → {ver['auto_backend']}) {d['auto']:.1e}; {rest} — {mark}")
    else:
        text = (f"verify (max |Δ| of the loops' Z, float64, vs the layer's own output for this head, "
                f"float32): backend \"auto\" → {ver['auto_backend']} {d['auto']:.1e}; {rest}; "
                f"weights α {d['weights']:.1e}; (matrix form {d['matrix_form']:.1e}) — {mark}")
    return v.para(text, "", "  ")
