"""``explain --ring N``: one word's z_i computed in N pieces, as ring attention over N processes
(``selfattention.distributed``) computes it, simulated in this one process.

The keys are cut as the library's default layout cuts them (``distributed.layout``, "zigzag": 2N
chunks, process r holding chunks r and 2N−1−r). The word's query stays on the process that holds
it; the keys and values come to it around the ring, one piece per step (step s: the piece of
process (r − s) mod N, ``distributed.ring``'s order). Each piece gives, over its keys j,

    m_p = max_j s_ij,   Σ_p = Σ_j e^(s_ij − m_p),   partial_p = Σ_j e^(s_ij − m_p) v_j,
    lse_p = m_p + log Σ_p                                  (s_ij = q_i · k_j / √d_k)

and the merge rescales each piece to the common max m = max_p m_p:

    z_i = Σ_p e^(m_p − m) partial_p / Σ_p e^(m_p − m) Σ_p,   lse = m + log Σ_p e^(m_p − m) Σ_p.

A piece with no key the mask allows for word i is empty (m_p = −∞, Σ_p = 0): it adds nothing. The
result is checked against the one-process z_i on the same q, k, v, against the ring's own merge
(``distributed.merge.merge_``, piece by piece as they arrive) and against the layer's own output.

``build_ring(trace, selection, ring=N)`` → a JSON-ready dict (−∞ as None); ``render_ring`` → text.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._text import printable
from ..errors import UsageError
from ..models.tracing import Trace
from ..reference import default_scale
from .fmt import f64, one, vec
from .selection import Selection, mask_report
from .walk import TOLERANCE, tolerance_for

LAYOUT = "zigzag"  # the library's default: what `ring_attention` does unless told otherwise
KEYS_SHOWN = 8  # keys of a piece listed in text (--wide, --json: all)
Z_SHOWN = 3


def pieces_of(T: int, N: int) -> list[list[int]]:
    """The 0-based positions each of N processes holds of a sequence of T, in its shard's order."""
    from ..distributed.layout import positions

    return [positions(T, r, N, LAYOUT).tolist() for r in range(N)]


def piece(s: np.ndarray, v: np.ndarray, ok: np.ndarray) -> dict[str, object]:
    """One piece's share of row i: ``s`` (n,) scaled scores, ``v`` (n, d_v) values, ``ok`` (n,) the
    keys the mask allows. m, Σ, partial and lse; with no allowed key m = lse = −∞, Σ = 0, partial 0."""
    if not ok.any():
        return {"m": -math.inf, "sum": 0.0, "partial": np.zeros(v.shape[1]), "lse": -math.inf,
                "e": np.zeros(len(s))}
    m = float(s[ok].max())
    e = np.where(ok, np.exp(np.where(ok, s, m) - m), 0.0)  # (n,), e^(s_ij − m) of the allowed keys
    total = float(e.sum())  # ≥ 1: the max's own term is e^0
    return {"m": m, "sum": total, "partial": e @ v, "lse": m + math.log(total), "e": e}


def merge(parts: list[dict]) -> dict[str, object]:
    """The log-sum-exp merge of ``piece`` results: rescale each to the common max, add, divide."""
    m = max(p["m"] for p in parts)  # finite: the word's own piece allows at least one key
    factors = [math.exp(p["m"] - m) if p["m"] > -math.inf else 0.0 for p in parts]  # each ≤ 1
    total = sum(c * p["sum"] for c, p in zip(factors, parts, strict=True))
    top = sum(c * p["partial"] for c, p in zip(factors, parts, strict=True))
    return {"m": m, "factors": factors, "sum": total, "numerator": top, "z": top / total,
            "lse": m + math.log(total)}


def ring_merge(parts: list[dict]) -> np.ndarray:
    """z_i as the ring merges it: ``distributed.merge.merge_`` on each piece's (partial/Σ, lse), in
    the order the pieces arrive."""
    from ..distributed.merge import merge_

    d_v = len(parts[0]["partial"])
    out, lse = torch.zeros(1, d_v, dtype=torch.float64), torch.full((1,), -math.inf, dtype=torch.float64)
    for p in parts:
        o = p["partial"] / p["sum"] if p["sum"] > 0 else np.zeros(d_v)
        lse_p = torch.tensor([p["lse"]], dtype=torch.float64)
        merge_(out, lse, torch.from_numpy(np.asarray(o)).reshape(1, d_v), lse_p)
    return out[0].numpy()


def _num(x: float) -> float | None:
    return None if x == -math.inf else float(x)


def build_ring(trace: Trace, selection: Selection, *, ring: int) -> dict[str, object]:
    """The ``selection``'s word, layer and head: z_i computed in ``ring`` pieces (see the module).

    From the trace's q (H, T, d), k and v (Hkv, T, d) of the head, in float64. UsageError when
    ``ring`` is below 2 or above T (a process would hold no key), or when the word may see no key."""
    n, h, i = selection.layer, selection.head, selection.word
    lt, attn, tokens = trace.layers[n], trace.attention(n), trace.tokens.tokens
    T, unit = len(tokens), trace.model.unit
    if T < 2:
        raise UsageError(f"--ring splits the keys over processes: give at least two {unit}")
    if not 2 <= ring <= T:
        raise UsageError(f"--ring {ring}: the text has {T} {unit}, the keys to split; give N from 2 to {T} "
                         "(each process holds at least one key)")
    kv = attn.head_rows(h)["kv_head"]
    q, K, V = f64(lt.q[h, i]), f64(lt.k[kv]), f64(lt.v[kv])  # (d,), (T, d), (T, d_v)
    scale = default_scale(q.shape[0])
    s = K @ q * scale  # (T,): s_ij, the scaled scores of row i
    allowed = np.ones((T, T), bool) if lt.allowed is None else lt.allowed.numpy()
    if not allowed[i].any():  # attention() gives such a row 0; there is nothing to split
        raise UsageError(f"{one(unit)} {i + 1} may see no key under this layer's mask: give another --word")
    held = pieces_of(T, ring)
    home = next(r for r, pos in enumerate(held) if i in pos)  # the process that holds word i
    chunk = next((a, b) for a, b in _chunks(T, ring) if a <= i < b)  # word i's query chunk
    parts, shown = [], []
    for step in range(ring):
        owner = (home - step) % ring
        pos = np.array(held[owner])
        got = piece(s[pos], V[pos], allowed[i, pos])
        parts.append(got)
        computed = bool(allowed[chunk[0]:chunk[1]][:, pos].any())  # the ring's block (i's chunk × piece)
        keys = [{"j": int(j) + 1, "word": tokens[j], "s": float(s[j]) if allowed[i, j] else None,
                 "allowed": bool(allowed[i, j]), "weight": float(e), "v": V[j].tolist()}
                for j, e in zip(pos, got["e"], strict=True)]
        shown.append({"step": step, "process": owner, "keys": keys, "m": _num(got["m"]), "sum": got["sum"],
                      "partial": got["partial"].tolist(), "lse": _num(got["lse"]),
                      "skipped": got["m"] == -math.inf, "block_computed": computed})
    merged = merge(parts)
    ok = allowed[i]
    a = np.exp(s[ok] - s[ok].max())
    z_one, lse_one = (a / a.sum()) @ V[ok], float(s[ok].max() + math.log(a.sum()))  # one process
    by_ring = ring_merge(parts)
    own = f64(lt.z["auto"][h, i])  # the layer's own z_i in the model's forward pass
    unscaled = sum(p["partial"] for p in parts) / sum(p["sum"] for p in parts)  # a wrong merge, shown
    diffs = {"one_process": float(np.abs(merged["z"] - z_one).max()),
             "ring_merge": float(np.abs(by_ring - z_one).max()), "layer": float(np.abs(own - z_one).max())}
    tolerance = tolerance_for(lt.x.dtype)
    mask = mask_report(trace, n)
    return {
        "model": trace.model.name, "title": trace.title, "text": trace.text, "tokens": tokens, "unit": unit,
        "layer": n + 1, "head": h + 1, "num_heads": attn.num_heads, "kv_head": kv + 1, "T": T,
        "d_k": int(q.shape[0]), "d_v": int(V.shape[1]), "scale": scale, "N": ring, "layout": LAYOUT,
        "held": [[p + 1 for p in pos] for pos in held], "chunk": [chunk[0] + 1, chunk[1]],
        "word": {"index": i + 1, "word": tokens[i], "process": home}, "q": q.tolist(),
        "mask": None if mask is None else mask["kind"], "pieces": shown,
        "merge": {"m": merged["m"], "factors": merged["factors"], "sum": merged["sum"],
                  "numerator": merged["numerator"].tolist(), "z": merged["z"].tolist(), "lse": merged["lse"]},
        "one_process": {"z": z_one.tolist(), "lse": lse_one}, "ring_merge": by_ring.tolist(),
        "layer_z": own.tolist(), "without_rescaling": unscaled.tolist(),
        "verification": {"max_abs_diff": diffs, "tolerance": {"float64": TOLERANCE, "layer": tolerance},
                         "ok": diffs["one_process"] < TOLERANCE and diffs["ring_merge"] < TOLERANCE
                         and diffs["layer"] < tolerance},
    }


def _chunks(T: int, N: int) -> list[tuple[int, int]]:
    """Every chunk of the layout, (start, stop), 0-based, empty ones left out."""
    from ..distributed.layout import runs

    return [c for r in range(N) for c in runs(T, r, N, LAYOUT) if c[1] > c[0]]


def render_ring(r: dict, *, width: int = 100, wide: bool = False, color: bool = False,
                vmax: float | None = None, verbose: bool = False) -> str:
    """The pieces and their merge as terminal text, lines of at most ``width`` (``wide``: no limit);
    ``color``, ``vmax`` (the walk-through's heatmap) and ``verbose`` do not apply here."""
    from ..viz.terminal import format_table, paragraph, truncate

    def para(text: str, indent: str = "", hang: str = "    ") -> list[str]:
        return paragraph(text, width, wide=wide, indent=indent, hang=hang)

    N, T, i, u = r["N"], r["T"], r["word"]["index"], r["unit"]
    w, home = printable(r["word"]["word"]), r["word"]["process"]
    label = lambda j: f"{j}:{truncate(printable(r['tokens'][j - 1]), 10)}"  # noqa: E731
    title = f"the {r['title']}" if r["title"].startswith("toy model") else r["title"]
    out = para(f'z_{i} ("{w}") in {N} pieces: ring attention over {N} processes, simulated in this one — '
               f"layer {r['layer']}, head {r['head']} of {title}")
    out += para(f"s_{i}j = q_{i}·k_j / √d_k, the scaled score (d_k = {r['d_k']}); z_{i} = Σ_j α_{i}j v_j "
                "computed piece by piece, as each process would", "  ")
    out += [""] + para(f"The pieces: the library's default layout, zigzag — the {T} {u} cut into {2 * N} "
                       f"chunks, process r holding chunks r and {2 * N - 1} − r, so that under a causal "
                       "mask every process has the same work:")
    for p, pos in enumerate(r["held"]):
        out += para(f"process {p}: " + " ".join(label(j) for j in pos), "  ")
    out += para(f'"{w}" ({i}) lives on process {home}: its query q_{i} stays there, and the keys and values '
                f"come to it around the ring, one piece per step: at step s, the piece of process "
                f"({home} − s) mod {N}")
    rows_max = 10**6 if wide else KEYS_SHOWN
    mask = "the causal rule" if r["mask"] == "causal" else "the mask"
    for pc in r["pieces"]:
        out += ["", f"step {pc['step']}: the piece of process {pc['process']}"]
        rows = [[str(k["j"]), truncate(printable(k["word"]), 10),
                 "−∞" if k["s"] is None else f"{k['s']:.3f}", f"{k['weight']:.4f}", vec(k["v"], Z_SHOWN)]
                for k in pc["keys"][:rows_max]]
        out.append(format_table(["j", one(u), f"s_{i}j", f"e^(s_{i}j − m)", "v_j"], rows, left=2,
                                indent="  "))
        if len(pc["keys"]) > rows_max:
            out.append(f"  … {len(pc['keys']) - rows_max} more {u}")
        if pc["skipped"]:
            how = (f", and for every query of its chunk, so process {home} never computes this block"
                   if not pc["block_computed"] else
                   f" (process {home} still computes the block for other queries of its chunk)")
            out += para(f"skipped: {mask} forbids all its keys for {one(u)} {i}{how}; its partial is "
                        "empty: m = −∞, Σ = 0, it adds nothing", "  ")
        else:
            out += para(f"m = max s_{i}j = {pc['m']:.4f}   Σ = Σ_j e^(s_{i}j − m) = {pc['sum']:.4f}   "
                        f"lse = m + log Σ = {pc['lse']:.4f}", "  ")
            out += para(f"partial = Σ_j e^(s_{i}j − m) v_j = {vec(pc['partial'])}", "  ")
    g = r["merge"]
    out += [""] + para("The merge (log-sum-exp, as distributed/merge.py does it): take the largest max, "
                       "rescale each piece by e^(m_p − m), add, divide")
    ms = ", ".join("−∞" if pc["m"] is None else f"{pc['m']:.4f}" for pc in r["pieces"])
    out += para(f"m = max({ms}) = {g['m']:.4f}", "  ")
    rows = [[f"process {pc['process']}", "−∞" if pc["m"] is None else f"{pc['m']:.4f}", f"{c:.4f}",
             f"{c * pc['sum']:.4f}", vec([c * x for x in pc["partial"]], Z_SHOWN)]
            for pc, c in zip(r["pieces"], g["factors"], strict=True)]
    out.append(format_table(["piece", "m_p", "e^(m_p − m)", "× Σ_p", "× partial_p"], rows, left=1,
                            indent="  "))
    out += para(f"add: Σ = {g['sum']:.4f}, numerator = {vec(g['numerator'], Z_SHOWN)}; lse = m + log Σ = "
                f"{g['lse']:.4f}", "  ")
    out += para(f"divide: z_{i} = numerator / Σ = {vec(g['z'])}", "  ")
    v, d = r["verification"], r["verification"]["max_abs_diff"]
    z_one = vec(r["one_process"]["z"])
    out += [""] + para(f"one process, every key at once: z_{i} = Σ_j α_{i}j v_j = {z_one}  lse = "
                       f"{r['one_process']['lse']:.4f}")
    out += para(f"max |Δ| of the {N} pieces' z_{i} against it = {d['one_process']:.1e}; the ring's own "
                f"merge (merge_, each piece as it arrives) {d['ring_merge']:.1e}; the layer's own z_{i} "
                f"(its forward pass) {d['layer']:.1e} — "
                + ("all within rounding ✓" if v["ok"] else "NOT within rounding ✗"), "  ")
    bad = float(np.abs(np.array(r["without_rescaling"]) - np.array(r["one_process"]["z"])).max())
    out += para(f"(without the rescaling e^(m_p − m), adding the pieces as they are would give "
                f"{vec(r['without_rescaling'], Z_SHOWN)}, off by {bad:.3g}: each piece's e^(s − m_p) is "
                "counted from its own max)", "  ")
    d_k, d_v = r["d_k"], r["d_v"]
    out += [""] + para(f"This ran in one process, a simulation of {N}. In a real ring each process holds its "
                       f"piece of the keys and values (and the queries of its own {u}); {N - 1} "
                       f"time{'s' if N > 2 else ''} it sends the piece in hand to the next process and "
                       f"receives one from the previous: {d_k} + {d_v} numbers (k_j and v_j) per {one(u)} "
                       f"of the piece. q_{i} and the running m, Σ and partial never leave process {home}.")
    return "\n".join(out)
