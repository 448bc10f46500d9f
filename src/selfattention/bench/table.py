"""``selfattention bench``'s tables: the measured rows of ``bench.run.run_bench`` as markdown that fits
the terminal (sizes split over several tables), ratios against the fastest attention, T-slopes."""

from __future__ import annotations

from collections.abc import Callable

from ..blockwise import DEFAULT_BLOCK
from .run import LABELS, PASSES, RNNS, TABLE_WIDTH, steps


def _ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _markdown(head: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """A markdown table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(x.ljust(w) if i < left else x.rjust(w)
                                 for i, (x, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":"
                          for i, w in enumerate(widths)) + "|"
    return [line(head), rule, *(line(x) for x in rows)]


def _fitting(render: Callable[[list[dict]], list[str]], rows: list[dict], width: int) -> list[str]:
    """``render`` applied to the rows (sizes) in as few consecutive groups as keep every line ≤ width."""
    for per in range(len(rows), 0, -1):
        lines = [line for i in range(0, len(rows), per) for line in render(rows[i:i + per])]
        if per == 1 or max(len(x) for x in lines) <= width:
            return lines
    return []


def render_table(result: dict, *, width: int = TABLE_WIDTH) -> str:
    """The results as markdown tables that fit ``width`` columns (the sizes split over several
    tables if need be): per pass, one row per method and one column per T, each cell
    'median ±spread'; then the RNN ÷ attention ratios, whose direction the header states."""
    c, mach = result["config"], result["machine"]
    methods, rows = list(result["scaling"]), result["rows"]
    where = (f"cuda ({mach.get('gpu', 'GPU')})" if c["device"] == "cuda" else
             f"cpu ({mach['cpu_count']} CPUs, {mach['torch_threads']} torch threads)")
    why = result.get("unreliable")
    out = [f"UNRELIABLE ({why}): rerun on a quiet machine"] if why else []  # the first line
    out += [f"bench: one attention head vs GRU and LSTM, B = {c['batch']}, D = {c['dim']}, float32, {where}"]
    if mach.get("load_average"):
        before = mach.get("load_average_start") or mach["load_average"]
        n = mach.get("cores", mach["cpu_count"]) or 1
        busy = max(before[0], mach["load_average"][0]) >= n
        out.append(f"load average (1 min) {before[0]:.2f} before, {mach['load_average'][0]:.2f} after, on "
                   f"{n} cores" + (": other work shared the cores" if busy else ""))
    out += ["cell: ms per call, median ±spread (interquartile range ÷ median) over rounds alternating the",
           f"candidates, until every spread ≤ {100 * c['target']:.0f} % or {c['budget']:g} s per size "
           "(!: a spread still above)",
           "steps: the sequential steps of one call (an RNN's h_t needs h_t−1; attention: all at once)", ""]

    def cell(st: dict | None) -> str:
        if st is None:
            return "—"
        return f"{_ms(st['median'])} ±{100 * st['spread']:.0f}%" + ("!" if st["spread"] > c["target"] else "")

    for p, title in (("fwd", "Forward (no gradient)"), ("fwd+bwd", "Forward + backward")):
        shown = [m for m in methods if any(row["ms"].get(m, {}).get(p) is not None for row in rows)]

        def table(part: list[dict], p: str = p, shown: list[str] = shown) -> list[str]:
            body = []
            for m in shown:
                k = result["scaling"][m][p]
                stp = sorted({steps(m, row["T"]) for row in part}, key=lambda x: (len(x), x))
                body.append([LABELS[m], stp[0] if len(stp) == 1 else f"{stp[0]}…{stp[-1]}",
                             *(cell(row["ms"].get(m, {}).get(p)) for row in part),
                             "—" if k is None else f"{k:.2f}"])
            return [*_markdown(["method", "steps", *(f"T = {row['T']}" for row in part), "∝ T^k"], body), ""]

        out += [title, *_fitting(table, rows, width)]

    def ratios(part: list[dict]) -> list[str]:
        def ratio(r: dict) -> str:
            return f"{r['median']:.3g}× ±{100 * r['spread']:.0f}%"

        body = [[f"{LABELS[rnn]}, {'forward' if p == 'fwd' else 'forward+backward'}",
                 *(ratio(row["ratio"][f"{rnn}_{p}"]) for row in part)] for p in PASSES for rnn in RNNS]
        body.append(["fastest attention (fwd, fwd+bwd)",
                     *(", ".join(_short(row["fastest_attention"][p]) for p in PASSES) for row in part)])
        return [*_markdown(["RNN ÷ attention (> 1: attention faster)", *(f"T = {row['T']}" for row in part)],
                           body, left=1), ""]

    out += ["RNN time ÷ the fastest attention backend's, per round (paired), median ±spread",
            *_fitting(ratios, rows, width)]
    out += [f"loop: the lecture's per-word loops in Python (NumPy float64, forward only; '—' above T = "
            f"{c['loop_max_t']}):",
            "  its time is Python's overhead per word pair, T² interpreted steps, not attention's arithmetic",
            f"blockwise: steps = key blocks of {DEFAULT_BLOCK}, folded in one after another",
            "∝ T^k: least-squares slope of log time against log T over the sizes measured"]
    if result["warnings"]:
        out += [f"! {len(result['warnings'])} cell(s) kept a spread above {100 * c['target']:.0f} %: the "
                "machine was busy;",
                "  compare them with care, or rerun on a quiet machine with a larger --budget"]
    return "\n".join(out)


def _short(method: str) -> str:
    return {"torch": "SDPA", "triton": "triton"}.get(method, method)
