"""``selfattention explain``: one sentence through one self-attention layer, the lecture's way.

Computing and showing are separate: ``build_report`` returns a plain, JSON-serializable dict of
every number (from the word-by-word reference loops), ``render_text`` turns it into the terminal
walk-through. The model is anything with the ``AttentionModel`` protocol (tokens, H, W's), so a
pretrained encoder can replace the toy one without touching this file.
"""

from __future__ import annotations

import numpy as np
import torch

from . import reference
from .functional import attention, available_backends, resolve_backend
from .models import AttentionModel
from .viz.terminal import format_matrix, format_table, heatmap, truncate

MAX_TOKENS = 256  # the reference loops are O(T²) Python; beyond this explain gets slow
TABLE_WORDS = 12  # tables wider than this are cut; the heatmap and --json show everything
DERIVATION_ROWS = 24
SHOW = 4  # vector components shown in text (--json has them all)
TOLERANCE = 1e-10  # float64 tiers agree to rounding; anything larger is a bug


class UsageError(ValueError):
    """A mistake in what the user asked for; the CLI prints it as one line and exits 2."""


def resolve_word(word: str | None, tokens: list[str]) -> int:
    """0-based index of ``word``: None → the first word; digits → a 1-based position;
    otherwise the first token equal to it (exactly, then ignoring case)."""
    if word is None:
        return 0
    w = word.strip()
    if w.isdigit():
        n = int(w)
        if not 1 <= n <= len(tokens):
            raise UsageError(f"--word {n} is out of range: the sentence has {len(tokens)} words")
        return n - 1
    for same in (str.__eq__, lambda a, b: a.casefold() == b.casefold()):
        for i, tok in enumerate(tokens):
            if same(tok, w):
                return i
    listed = ", ".join(tokens[:20]) + (", …" if len(tokens) > 20 else "")
    raise UsageError(f"--word {word!r} is not in the sentence; its words are: {listed}")


def verify(
    H: np.ndarray, W_Q: np.ndarray, W_K: np.ndarray, W_V: np.ndarray,
    steps: reference.SelfAttentionSteps,
) -> dict[str, object]:
    """Max |difference| of Z between the loops and the matrix form, and every backend.

    The backends take rows as words: x = Hᵀ (T, D) and q = x W_Qᵀ (T, d_k) — the documented
    adapter — run in float64, and their output (T, d_v) is compared with the loops' Zᵀ.
    """
    diffs: dict[str, float] = {
        "matrix_form": float(np.abs(reference.matrix_form(steps) - steps.Z).max(initial=0.0))
    }
    x = torch.from_numpy(np.ascontiguousarray(H.T))  # (T, D), float64
    q, k, v = (x @ torch.from_numpy(W).T for W in (W_Q, W_K, W_V))  # (T, d_k), (T, d_k), (T, d_v)
    # What "auto" runs for these inputs (the dispatcher's own rule, asked, not re-implemented).
    chosen = resolve_backend(q, k, v, scale=steps.scale)
    for backend in ["auto", *available_backends()]:
        out = attention(q, k, v, scale=steps.scale, backend=backend)  # (T, d_v)
        diffs[backend] = float(np.abs(out.numpy().T - steps.Z).max(initial=0.0))
    return {
        "max_abs_diff": diffs,
        "auto_backend": chosen,
        "tolerance": TOLERANCE,
        "ok": all(d < TOLERANCE for d in diffs.values()),
    }


def build_report(model: AttentionModel, text: str, word: str | None = None) -> dict[str, object]:
    """Every number of one self-attention layer over ``text``, as a JSON-serializable dict.

    Lecture convention (words are columns): H (D, T), Q and K (d_k, T), V and Z (d_v, T);
    E, scaled, A (T, T) with row i the query word i. Raises UsageError for empty text, too many
    words, or a ``word`` that is not in the sentence.
    """
    if not text.strip():
        raise UsageError('the text is empty; give a sentence, e.g. "I am enjoying this lecture"')
    tokens = model.tokenize(text)
    if not tokens:
        raise UsageError(f"no words found in {text!r}")
    if len(tokens) > MAX_TOKENS:
        raise UsageError(f"the text has {len(tokens)} words; explain handles at most {MAX_TOKENS}")
    i = resolve_word(word, tokens)
    H = model.embed(tokens)  # (D, T)
    W_Q, W_K, W_V = model.weights()  # (d_k, D), (d_k, D), (d_v, D)
    s = reference.self_attention(H, W_Q, W_K, W_V)
    (D, T), d_k, d_v = H.shape, W_Q.shape[0], W_V.shape[0]
    scaled = s.E * s.scale  # (T, T)
    terms = [
        {"j": j + 1, "word": tokens[j], "k": s.K[:, j].tolist(), "v": s.V[:, j].tolist(),
         "e": float(s.E[i, j]), "scaled": float(scaled[i, j]), "alpha": float(s.A[i, j])}
        for j in range(T)
    ]
    return {
        "model": model.describe(),
        "text": text,
        "tokens": tokens,
        "T": T, "D": D, "d_k": d_k, "d_v": d_v,
        "shapes": {
            "H": [D, T], "W_Q": list(W_Q.shape), "W_K": list(W_K.shape), "W_V": list(W_V.shape),
            "Q": [d_k, T], "K": [d_k, T], "V": [d_v, T], "E": [T, T], "A": [T, T], "Z": [d_v, T],
        },
        "H": H.tolist(),
        "W_Q": W_Q.tolist(), "W_K": W_K.tolist(), "W_V": W_V.tolist(),
        "Q": s.Q.tolist(), "K": s.K.tolist(), "V": s.V.tolist(),
        "scale": s.scale,
        "E": s.E.tolist(),
        "scaled": scaled.tolist(),
        "A": s.A.tolist(),
        "row_sums": s.A.sum(axis=1).tolist(),
        "Z": s.Z.tolist(),
        "derivation": {
            "index": i + 1, "word": tokens[i], "q": s.Q[:, i].tolist(), "terms": terms,
            "alpha_sum": float(s.A[i].sum()), "z": s.Z[:, i].tolist(),
        },
        "verification": verify(H, W_Q, W_K, W_V, s),
    }


def _vec(x: list[float], n: int = SHOW) -> str:
    shown = ", ".join(f"{v: .3f}" for v in x[:n])
    return f"[{shown}{', …' if len(x) > n else ''}]"


def render_text(report: dict, *, color: bool = False, width: int = 80) -> str:
    """The walk-through as terminal text (ANSI colour in the heatmap only when ``color``)."""
    r = report
    tokens, T, D, d_k, d_v = r["tokens"], r["T"], r["D"], r["d_k"], r["d_v"]
    m, sh = r["model"], r["shapes"]
    E, A, Z = np.array(r["E"]), np.array(r["A"]), np.array(r["Z"])  # (T,T), (T,T), (d_v,T)
    dv = r["derivation"]
    i, w = dv["index"], dv["word"]
    labels = [truncate(t, 10) for t in tokens]
    out = [
        "One self-attention layer, word by word (the lecture's notation: words are columns)",
        f"model: {m.get('name')}, D = {D}" + (f", seed {m['seed']}" if "seed" in m else ""),
    ]
    out += [f"  {m[key]}" for key in ("embedding", "weights") if key in m]
    out += [f'sentence: "{r["text"]}"  (T = {T} words)',
            "  " + "  ".join(f"{n}:{t}" for n, t in enumerate(tokens[:40], 1))
            + ("  …" if T > 40 else ""), ""]

    def dims(name: str) -> str:
        return " × ".join(str(n) for n in sh[name])

    out += ["Shapes", format_table(["", "", ""], [
        ["H", dims("H"), "h_1 … h_T, one column per word"],
        ["W_Q, W_K, W_V", f"{dims('W_Q')}", "the learnable matrices"],
        ["Q = W_Q H", dims("Q"), "q_i = W_Q h_i: what word i is looking for"],
        ["K = W_K H", dims("K"), "k_j = W_K h_j: what word j offers"],
        ["V = W_V H", dims("V"), "v_j = W_V h_j: what word j passes on"],
        ["E = Qᵀ K", dims("E"), "e_ij = q_i · k_j"],
        ["A = softmax(E / √d_k)", dims("A"), "α_ij, softmax over each row j = 1 … T"],
        ["Z = V Aᵀ", dims("Z"), "z_i = Σ_j α_ij v_j  (Zᵀ = softmax(QᵀK / √d_k) Vᵀ)"],
    ], left=3, indent="  ").split("\n", 1)[1], ""]
    if T > TABLE_WORDS:
        out += [f"(T = {T}: tables show the first {TABLE_WORDS} words; the heatmap shows every "
                "word; --json has every number)", ""]
    cut = {"max_rows": TABLE_WORDS, "max_cols": TABLE_WORDS, "indent": "  "}
    out += ["Scores e_ij = q_i · k_j  (row i: the word asking; column j: the word answering)",
            format_matrix(E, labels, labels, fmt="{:.2f}", **cut), ""]
    out += [f"Weights α_ij = softmax_j(e_ij / √d_k), √{d_k} = {1 / r['scale']:.4g}  "
            "(each row sums to 1)",
            format_matrix(A, labels, labels, fmt="{:.3f}", extra={"row sum": r["row_sums"]},
                          **cut), ""]
    comps = [f"[{c}]" for c in range(1, d_v + 1)]
    out += [f"Z: z_i for each word (first {min(d_v, 6)} of {d_v} components)",
            format_matrix(Z.T, labels, comps, fmt="{:.3f}", max_rows=TABLE_WORDS, max_cols=6,
                          indent="  "), ""]
    rows = [[str(t["j"]), truncate(t["word"], 10), f"{t['e']:.3f}", f"{t['scaled']:.3f}",
             f"{t['alpha']:.4f}", _vec(t["v"])] for t in dv["terms"][:DERIVATION_ROWS]]
    out += [f'How z_{i} ("{w}") is made', f"  q_{i} = W_Q h_{i} = {_vec(dv['q'])}",
            format_table(["j", "word", f"e_{i}j = q_{i}·k_j", "/ √d_k", f"α_{i}j",
                          f"v_j (first {min(SHOW, d_v)} of {d_v})"], rows, left=2, indent="  ")]
    if T > DERIVATION_ROWS:
        out.append(f"  … {T - DERIVATION_ROWS} more words")
    out += [f"  Σ_j α_{i}j = {dv['alpha_sum']:.6f}",
            f"  z_{i} = Σ_j α_{i}j v_j = {_vec(dv['z'])}", ""]
    out += ["Heatmap of the weights A (row i attends to column j)",
            heatmap(A, labels, labels, color=color, vmin=0.0, width=width), ""]
    v = r["verification"]
    d = v["max_abs_diff"]
    rest = "; ".join(f"{b} {d[b]:.1e}" for b in d if b not in ("matrix_form", "auto"))
    mark = f"all < {v['tolerance']:.0e} ✓" if v["ok"] else f"NOT all < {v['tolerance']:.0e} ✗"
    out.append(f"verify (max |Δ| vs the per-word loop): matrix form {d['matrix_form']:.1e}; "
               f"attention(backend=\"auto\" → {v['auto_backend']}) {d['auto']:.1e}; "
               f"{rest} — {mark}")
    return "\n".join(out)
