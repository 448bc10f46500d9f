"""The walk-through's T × T tables (scores E, weights A), the table of Z, the heatmap and where each
head looks, as terminal text from a report (``explain.walk.build_report``).

A table shows the rows and columns that fit (``window``): by default the first ``TABLE_WORDS``
rows and the columns that fit from the first. For a model trained on a task, whose text holds a
prompt and its answer, the rows are the answer's (from the row that writes its first character),
and the columns those rows look at most: that is where a trained head's pattern is (a reversal's
anti-diagonal). ``--wide`` shows everything; the heatmap always shows every token.
"""

from __future__ import annotations

import numpy as np

from ..models.heads import MIRROR, PRIORITY
from ..viz.terminal import format_table, heatmap, truncate
from .layout import NEG_INF, Layout


def window(r: dict, v: Layout, cells: list[list[str]], extra: int = 0) -> tuple[list[int], list[int]]:
    """(rows, columns), 0-based, of the T × T tables that fit ``v.width`` with ``cells`` (the widest
    table's, T × T strings) and ``extra`` columns of width 9 after them (a row sum)."""
    T = r["T"]
    if v.wide:
        return list(range(T)), list(range(T))
    labels = v.labels

    def fit(rows: list[int], start: int) -> list[int]:
        used = 2 + max(len(labels[i]) for i in rows) + extra * 9 + 3  # indent, labels, extras, a "…"
        cols: list[int] = []
        for j in range(start, T):
            w = 2 + max(len(labels[j]), *(len(cells[i][j]) for i in rows))
            if used + w > v.width and cols:
                break
            used += w
            cols.append(j)
        return cols

    if v.answer is None:
        rows = list(range(min(T, v.words)))
        return rows, fit(rows, 0)
    A = np.array(r["A"])
    rows = list(range(v.answer["row"] - 1, min(T, v.answer["row"] - 1 + v.words)))
    while True:  # the answer's rows, and the columns they look at most; fewer rows until those fit
        looked = [int(np.argmax(A[i])) for i in rows]
        cols = fit(rows, min(looked))
        if max(looked) in cols or len(rows) == 1:
            return rows, cols
        rows = rows[:-1]


def note(r: dict, v: Layout, rows: list[int], cols: list[int]) -> list[str]:
    """What the tables leave out, and where to see it; [] when they show everything."""
    T = r["T"]
    if len(rows) == T and len(cols) == T:
        return []
    if v.answer is not None:
        a = v.answer
        text = (f"(the tables show rows {rows[0] + 1}…{rows[-1] + 1} of {T}, the answer's: row {a['row']} "
                f"writes the answer's first {v.one}, each next row the next one; and columns "
                f"{cols[0] + 1}…{cols[-1] + 1}, the {v.unit} of the prompt those rows look at most. The "
                f"heatmap shows every {v.one}; --wide for all, --json for every number)")
    else:
        text = (f"(tables show the first {len(rows)} of {T} {v.unit} as rows, and the columns that fit; the "
                f"heatmap shows every {v.one}; --wide for all of them, --json for every number)")
    return [*v.para(text), ""]


def grid(cells: list[list[str]], v: Layout, rows: list[int], cols: list[int], *,
         extra: dict[str, list[str]] | None = None, indent: str = "  ") -> str:
    """A labelled table of ready-made cells (T × T strings): ``rows`` × ``cols`` (0-based), '…'
    where columns are left out, and the ``extra`` columns (T strings each) after them."""
    extra = extra or {}
    T = len(cells)
    before = ["…"] if cols and cols[0] > 0 else []
    after = ["…"] if cols and cols[-1] < T - 1 else []
    header = ["", *before, *(v.labels[j] for j in cols), *after, *extra]
    body = [[v.labels[i], *before, *(cells[i][j] for j in cols), *after, *(col[i] for col in extra.values())]
            for i in rows]
    text = format_table(header, body, indent=indent)
    if rows and rows[0] == 0 and len(rows) < T:
        text += f"\n{indent}… {T - len(rows)} more rows"
    return text


def score_and_weight_tables(r: dict, v: Layout) -> tuple[list[str], list[str], tuple[list[int], list[int]]]:
    """(the scores E's table, the weights A's table, their window): the same rows and columns."""
    T = r["T"]
    E, A = np.array(r["E"]), np.array(r["A"])
    ok = np.ones((T, T), bool) if v.allowed is None else v.allowed
    e_cells = [[f"{E[i, j]:.2f}" if ok[i, j] else NEG_INF for j in range(T)] for i in range(T)]
    a_cells = [[f"{A[i, j]:.3f}" for j in range(T)] for i in range(T)]
    rows, cols = window(r, v, [[max(e, a, key=len) for e, a in zip(er, ar, strict=True)]
                               for er, ar in zip(e_cells, a_cells, strict=True)], extra=1)
    masked = f"; {NEG_INF} where the mask forbids j" if v.allowed is not None else ""
    e_out = v.para(f"Scores e_ij = q_i · k_j for every pair  (row i: the {v.one} asking; column j: the "
                   f"{v.one} answering{masked})")
    e_out += [grid(e_cells, v, rows, cols), ""]
    a_out = v.para(f"Weights α_ij = softmax_j(e_ij / √d_k), √{r['d_k']} = {1 / r['scale']:.4g}  "
                   "(each row sums to 1" + ("; α = 0 where e = −∞)" if v.allowed is not None else ")"))
    a_out += [grid(a_cells, v, rows, cols, extra={"row sum": [f"{s:.3f}" for s in r["row_sums"]]})]
    return e_out, a_out, (rows, cols)


def same_rows_note(r: dict, v: Layout) -> list[str]:
    """Rows that are the same because their words are (no positions): the lecture's own lesson."""
    out = []
    for group in r.get("same_rows") or []:
        where = ", ".join(str(i) for i in group[:-1]) + f" and {group[-1]}"
        words = sorted({v.tokens[i - 1] for i in group})
        what = f'"{words[0]}"' if len(words) == 1 else "their " + v.unit
        out += v.para(f"Rows {where} ({what}) are the same in E, A and Z: the same {v.one} has the same h "
                      f"wherever it stands, hence the same q, k and v, and nothing here carries its "
                      f"position — self-attention reads a set of {v.unit} (see --permute"
                      + (", and --positions sinusoidal" if not v.real else "") + ").", "  ")
    return out


def z_table(r: dict, v: Layout, rows: list[int]) -> list[str]:
    """Z with one row per token here (the rows of the other tables), the first components."""
    d_v, T = r["d_v"], r["T"]
    Z = np.array(r["Z"])  # (d_v, T)
    keep = d_v if v.wide else 6
    cut = ["…"] if keep < d_v else []
    body = [[v.labels[i], *(f"{Z[c, i]:.3f}" for c in range(min(d_v, keep))), *cut] for i in rows]
    text = format_table(["", *(f"[{c}]" for c in range(1, min(d_v, keep) + 1)), *cut], body, indent="  ")
    if rows and rows[0] == 0 and len(rows) < T:
        text += f"\n  … {T - len(rows)} more rows"
    return [f"Z: z_i for each {v.one}, one row each here (first {min(d_v, keep)} of {d_v} components)", text]


def heatmap_lines(r: dict, v: Layout, *, color: bool, vmax: float | None) -> list[str]:
    """Every weight as a shade (or colour): rows numbered as the columns."""
    return ["Heatmap of the weights A (row i attends to column j; columns numbered as the rows)",
            heatmap(np.array(r["A"]), v.numbered, v.numbered, color=color, vmin=0.0, vmax=vmax,
                    width=min(v.width, 400), label_width=14)]


def heads_lines(r: dict, v: Layout) -> list[str]:
    """Where every head of the layer looks: shares by kind of key, then each row's favourite."""
    heads = r["heads"]
    kinds = list(heads[0]["share"])
    mark = {h["head"]: (" ◀" if h["head"] == r["head"] else "") for h in heads}

    def mostly(h: dict) -> str:
        return f"offset {h['offset']:+d}".replace("-", "−") if h["mostly"] == "offset" else h["mostly"]

    rows = [[f"{h['head']}{mark[h['head']]}", *(f"{h['share'][k]:.2f}" for k in kinds), mostly(h)]
            for h in heads]
    T = r["T"]
    first = v.answer["row"] - 1 if v.answer else 0
    over = f"the answer's rows {first + 1}…{T}" if v.answer else f"all {T} {v.unit}"
    out = v.para(f"Where each head of layer {r['layer']} looks: mean α over {over}, by kind of key")
    out += [format_table(["head", *(truncate(k, 8) for k in kinds), "mostly"], rows, left=1, indent="  ")]
    rule = PRIORITY.format(first=kinds[1], last=kinds[2], mirror=MIRROR if "mirror" in kinds else "")
    out += v.para(f"({rule}; ◀: the head shown above)", "  ", "   ") + [""]
    asking = list(range(first, T))
    labels = v.numbered if v.unit == "characters" else [truncate(t, 9) for t in v.tokens]
    cols, used = [], 8
    for q in asking:
        w = 2 + max(len(labels[q]), *(len(labels[h["argmax"][q] - 1]) for h in heads))
        if used + w > min(v.width, 10**4) and cols:
            break
        cols.append(q)
        used += w
    grid_rows = [[f"{h['head']}{mark[h['head']]}", *(labels[h["argmax"][q] - 1] for q in cols)]
                 for h in heads]
    out += v.para(f"The {v.one} each {v.one} (column) attends to most, per head (row)")
    out += [format_table(["head", *(labels[q] for q in cols)], grid_rows, left=len(cols) + 1, indent="  ")]
    if len(cols) < len(asking):
        out.append(f"  (columns {cols[0] + 1}…{cols[-1] + 1} of {T}; --wide or --json for all)")
    return out
