"""``selfattention explain``: one sentence through one self-attention layer, the lecture's way.

Computing and showing are separate: ``build_report`` returns a plain, JSON-serializable dict of
every number (from the word-by-word reference loops), ``render_text`` turns it into the terminal
walk-through. The model is anything with the ``AttentionModel`` protocol (tokens, H, W's): the
toy model, or one head of a pretrained encoder. A model that is a ``RealLayer`` (biases, and what
the real layer computed) gets its biases in the lecture's steps, an overview of every head of its
layer, and a verification of the lecture's z's against the layer's own output.
"""

from __future__ import annotations

import numpy as np
import torch

from . import reference
from ._text import printable
from .errors import UsageError
from .functional import attention, available_backends, resolve_backend
from .models import AttentionModel, LayerCapture, RealLayer
from .viz.terminal import format_matrix, format_table, heatmap, truncate

MAX_TOKENS = 512  # the reference loops are O(T²) Python (≈1 s at 512); BERT's positions end there
TABLE_WORDS = 12  # tables wider than this are cut; the heatmap and --json show everything
DERIVATION_ROWS = 24
SHOW = 4  # vector components shown in text (--json has them all)
TOLERANCE = 1e-10  # float64 tiers agree to rounding; anything larger is a bug
HEADS_A_MAX_T = 64  # --json holds every head's (T, T) weights up to this T (12 · 512² would be 3M numbers)
LAYER_TOLERANCE = 1e-4  # float64 loops vs a real layer run in float32 (expect ~1e-6)


def resolve_word(word: str | None, tokens: list[str], *, default: int = 0, unit: str = "words") -> int:
    """0-based index of ``word``: None → ``default``; digits → a 1-based position; otherwise the
    first token equal to it (exactly, then ignoring case, then ignoring a word piece's '##')."""
    if word is None:
        return default
    w = word.strip()
    if w.isascii() and w.isdigit():  # "²".isdigit() is True, but int("²") fails
        n = int(w)
        if not 1 <= n <= len(tokens):
            raise UsageError(f"--word {n} is out of range: the sentence has {len(tokens)} {unit} "
                             f"(valid: 1 to {len(tokens)})")
        return n - 1
    rules = (str.__eq__, lambda a, b: a.casefold() == b.casefold(),
             lambda a, b: a.removeprefix("##").casefold() == b.removeprefix("##").casefold())
    for same in rules:
        for i, tok in enumerate(tokens):
            if same(tok, w):
                return i
    listed = ", ".join(tokens[:40]) + (", …" if len(tokens) > 40 else "")
    raise UsageError(f"--word {word!r} is not in the sentence; its {unit} are: {listed}")


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


def verify_layer(steps: reference.SelfAttentionSteps, cap: LayerCapture) -> dict[str, object]:
    """Max |difference| between the loops' Z and A (float64) and what the real layer computed.

    ``cap.outputs[backend]`` is the head's Z from the layer's own forward pass (float32), one per
    backend it was run with; "weights" compares A with the layer's α's for this head.
    """
    diffs: dict[str, float] = {
        "matrix_form": float(np.abs(reference.matrix_form(steps) - steps.Z).max(initial=0.0))
    }
    for backend, Z in cap.outputs.items():
        diffs[backend] = float(np.abs(Z - steps.Z).max(initial=0.0))
    diffs["weights"] = float(np.abs(cap.weights[cap.head - 1] - steps.A).max(initial=0.0))
    return {
        "max_abs_diff": diffs,
        "auto_backend": cap.auto_backend,
        "tolerance": LAYER_TOLERANCE,
        "ok": all(d < LAYER_TOLERANCE for d in diffs.values()),
        "compared": f"the per-word loops (float64) vs layer {cap.layer}'s own output and weights "
                    f"for head {cap.head} (its forward pass, float32), per backend",
    }


def tokens_of(model: AttentionModel, text: str) -> list[str]:
    """The model's tokens of ``text`` (it may warn that it truncated); UsageError for empty text,
    text with no tokens, or more tokens than explain handles."""
    if not text.strip():
        raise UsageError('the text is empty; give a sentence, e.g. "I am enjoying this lecture"')
    try:
        tokens = model.tokenize(text)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not tokens:
        raise UsageError(f"no words found in {text!r}")
    if len(tokens) > MAX_TOKENS:
        unit = getattr(model, "unit", "words")
        raise UsageError(f"the text has {len(tokens)} {unit}; explain handles at most {MAX_TOKENS}")
    return tokens


def build_report(model: AttentionModel, text: str, word: str | None = None) -> dict[str, object]:
    """Every number of one self-attention layer over ``text``, as a JSON-serializable dict.

    Lecture convention (words are columns): H (D, T), Q and K (d_k, T), V and Z (d_v, T);
    E, scaled, A (T, T) with row i the query word i. Raises UsageError for empty text, text the
    model cannot take, too many words, or a ``word`` that is not in the sentence. A ``RealLayer``
    adds "biases", "heads" (every head of the layer) and "layer_Z" (the layer's own Z, auto backend).
    """
    tokens = tokens_of(model, text)
    unit = getattr(model, "unit", "words")
    default = getattr(model, "default_word", lambda toks: 0)(tokens)
    i = resolve_word(word, tokens, default=default, unit=unit)
    H = model.embed(tokens)  # (D, T)
    W_Q, W_K, W_V = model.weights()  # (d_k, D), (d_k, D), (d_v, D)
    real = isinstance(model, RealLayer)
    b_Q, b_K, b_V = model.biases() if real else (None, None, None)  # (d_k,), (d_k,), (d_v,)
    s = reference.self_attention(H, W_Q, W_K, W_V, b_Q=b_Q, b_K=b_K, b_V=b_V)
    (D, T), d_k, d_v = H.shape, W_Q.shape[0], W_V.shape[0]
    scaled = s.E * s.scale  # (T, T)
    terms = [
        {"j": j + 1, "word": tokens[j], "k": s.K[:, j].tolist(), "v": s.V[:, j].tolist(),
         "e": float(s.E[i, j]), "scaled": float(scaled[i, j]), "alpha": float(s.A[i, j])}
        for j in range(T)
    ]
    report: dict[str, object] = {
        "model": model.describe(),
        "text": text,
        "tokens": tokens,
        "unit": unit,
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
    }
    if not real:
        report["verification"] = verify(H, W_Q, W_K, W_V, s)
        return report
    from .models.heads import overview

    cap = model.capture()
    layer_Z = cap.outputs["auto"] if "auto" in cap.outputs else next(iter(cap.outputs.values()))
    report["biases"] = {"b_Q": b_Q.tolist(), "b_K": b_K.tolist(), "b_V": b_V.tolist()}
    report["layer"], report["head"] = cap.layer, cap.head
    report["num_layers"], report["num_heads"] = cap.num_layers, cap.num_heads
    report["dropped"] = cap.dropped
    report["layer_Z"] = layer_Z.tolist()  # (d_v, T), the layer's own output for this head
    report["derivation"]["layer_z"] = layer_Z[:, i].tolist()  # type: ignore[index]
    # Every head's (T, T) weights, unless that is a lot of numbers; "A" always has this head's.
    full = T <= HEADS_A_MAX_T
    report["heads"] = [{**o, "A": cap.weights[n].tolist() if full else None}
                       for n, o in enumerate(overview(cap.weights, tokens))]
    report["verification"] = verify_layer(s, cap)
    return report


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


def render_text(report: dict, *, color: bool = False, width: int = 80) -> str:
    """The walk-through as terminal text (ANSI colour in the heatmap only when ``color``)."""
    r = report
    tokens = [printable(t) for t in r["tokens"]]  # a word may hold ESC, BEL, …: shown, never obeyed
    T, D, d_k, d_v = r["T"], r["D"], r["d_k"], r["d_v"]
    m, sh, unit = r["model"], r["shapes"], r.get("unit", "words")
    real = "biases" in r
    E, A, Z = np.array(r["E"]), np.array(r["A"]), np.array(r["Z"])  # (T,T), (T,T), (d_v,T)
    dv = r["derivation"]
    i, w = dv["index"], printable(dv["word"])
    labels = [truncate(t, 10) for t in tokens]
    if real:
        out = [f"Layer {r['layer']}, head {r['head']} of {m['name']}, word by word "
               "(the lecture's notation: words are columns)",
               f"model: {m['name']}, {r['num_layers']} layers × {r['num_heads']} heads, D = {D}, "
               f"d = {d_k} per head",
               f"  {m['embedding']}", f"  {m['weights']}",
               f"  head {r['head']}: " + ("chosen with --head" if m["head_choice"] == "--head" else
                                         f"{m['head_choice']}; --head 1…{r['num_heads']} picks any")]
    else:
        out = ["One self-attention layer, word by word (the lecture's notation: words are columns)",
               f"model: {m.get('name')}, D = {D}" + (f", seed {m['seed']}" if "seed" in m else "")]
        out += [f"  {m[key]}" for key in ("embedding", "weights") if key in m]
    sentence = printable(" ".join(r["text"].split()))
    out += [f'sentence: "{truncate(sentence, max(width - 40, 40))}"  (T = {T} {unit})',
            *_wrap([f"{n}:{t}" for n, t in enumerate(tokens, 1)], max(width, 60), max_lines=4), ""]
    if r.get("dropped"):
        out[-1:] = [f"  (truncated: the last {r['dropped']} {unit} did not fit the model)", ""]

    def dims(name: str) -> str:
        return " × ".join(str(n) for n in sh[name])

    b = (" + b_Q", " + b_K", " + b_V") if real else ("", "", "")
    one = "word piece" if real else "word"
    out += ["Shapes", format_table(["", "", ""], [
        ["H", dims("H"), f"h_1 … h_T, one column per {one}"],
        ["W_Q, W_K, W_V", f"{dims('W_Q')}",
         f"learned: head {r['head']}'s rows of the layer's in_proj" if real else "the learnable matrices"],
        [f"Q = W_Q H{b[0]}", dims("Q"), f"q_i = W_Q h_i{b[0]}: what {one} i is looking for"],
        [f"K = W_K H{b[1]}", dims("K"), f"k_j = W_K h_j{b[1]}: what {one} j offers"],
        [f"V = W_V H{b[2]}", dims("V"), f"v_j = W_V h_j{b[2]}: what {one} j passes on"],
        ["E = Qᵀ K", dims("E"), "e_ij = q_i · k_j"],
        ["A = softmax(E / √d_k)", dims("A"), "α_ij, softmax over each row j = 1 … T"],
        ["Z = V Aᵀ", dims("Z"), "z_i = Σ_j α_ij v_j  (Zᵀ = softmax(QᵀK / √d_k) Vᵀ)"],
    ], left=3, indent="  ").split("\n", 1)[1], ""]
    if T > TABLE_WORDS:
        out += [f"(T = {T}: tables show the first {TABLE_WORDS} {unit}; the heatmap shows every "
                f"{one}; --json has every number)", ""]
    cut = {"max_rows": TABLE_WORDS, "max_cols": TABLE_WORDS, "indent": "  "}
    out += [f"Scores e_ij = q_i · k_j  (row i: the {one} asking; column j: the {one} answering)",
            format_matrix(E, labels, labels, fmt="{:.2f}", **cut), ""]
    out += [f"Weights α_ij = softmax_j(e_ij / √d_k), √{d_k} = {1 / r['scale']:.4g}  "
            "(each row sums to 1)",
            format_matrix(A, labels, labels, fmt="{:.3f}", extra={"row sum": r["row_sums"]},
                          **cut), ""]
    comps = [f"[{c}]" for c in range(1, d_v + 1)]
    out += [f"Z: z_i for each {one} (first {min(d_v, 6)} of {d_v} components)",
            format_matrix(Z.T, labels, comps, fmt="{:.3f}", max_rows=TABLE_WORDS, max_cols=6,
                          indent="  "), ""]
    rows = [[str(t["j"]), truncate(printable(t["word"]), 10), f"{t['e']:.3f}", f"{t['scaled']:.3f}",
             f"{t['alpha']:.4f}", _vec(t["v"])] for t in dv["terms"][:DERIVATION_ROWS]]
    out += [f'How z_{i} ("{w}") is made', f"  q_{i} = W_Q h_{i}{b[0]} = {_vec(dv['q'])}",
            format_table(["j", one, f"e_{i}j = q_{i}·k_j", "/ √d_k", f"α_{i}j",
                          f"v_j (first {min(SHOW, d_v)} of {d_v})"], rows, left=2, indent="  ")]
    if T > DERIVATION_ROWS:
        out.append(f"  … {T - DERIVATION_ROWS} more {unit}")
    out += [f"  Σ_j α_{i}j = {dv['alpha_sum']:.6f}",
            f"  z_{i} = Σ_j α_{i}j v_j = {_vec(dv['z'])}"]
    if real:
        gap = float(np.abs(np.array(dv["layer_z"]) - np.array(dv["z"])).max())
        out.append(f"  the layer's own z_{i} (head {r['head']} in its forward pass, float32) = "
                   f"{_vec(dv['layer_z'])}  max |Δ| = {gap:.1e}")
    out += ["", "Heatmap of the weights A (row i attends to column j)",
            heatmap(A, labels, labels, color=color, vmin=0.0, width=width), ""]
    if real:
        out += _render_heads(r, width) + [""]
    out.append(_render_verification(r["verification"], real))
    return "\n".join(out)


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
