"""``selfattention explain``: one sentence through one self-attention layer, the lecture's way.

Computing and showing are separate: ``build_report`` returns a plain, JSON-serializable dict of
every number (from the word-by-word reference loops), ``render_text`` turns it into the terminal
walk-through (``explain_text``). Its input is a ``models.Trace`` — one run of a model on the
text, recorded — of the toy model or of a real one (a pretrained encoder, a trained Transformer).
A real model's head gets its biases in the lecture's steps, an overview of every head of its
layer, and the layer's own output beside the lecture's z's; every report is verified against what
the layer computed, with every tier. A masked layer (a decoder's causal mask, or ``--causal``)
is explained with its mask: the forbidden scores are −∞ before the softmax, their α's are 0.

The next steps of the lecture have their own modules: ``explain_heads`` (multi-head attention),
``explain_order`` (word order and positions), ``quiz`` (exercises).
"""

from __future__ import annotations

import numpy as np
import torch

from . import reference
from .errors import UsageError
from .functional import available_backends
from .models import DEFAULT_LAYER, ToyModel
from .models.heads import default_head, overview
from .models.positions import input_parts
from .models.tracing import Trace

MAX_TOKENS = 512  # the reference loops are O(T²) Python (≈1 s at 512); BERT's positions end there
TABLE_WORDS = 12  # tables wider than this are cut; the heatmap and --json show everything
DERIVATION_ROWS = 24
SHOW = 4  # vector components shown in text (--json has them all)
TOLERANCE = 1e-10  # a float64 model: the tiers agree to rounding; anything larger is a bug
HEADS_A_MAX_T = 64  # --json holds every head's (T, T) weights up to this T (12 · 512² would be 3M numbers)
LAYER_TOLERANCE = 1e-4  # float64 loops vs a real layer run in float32 (expect ~1e-6)


def verify_backends() -> list[str]:
    """The tiers a trace for ``explain`` recomputes each head with. "triton" is left out: the
    models run on the CPU, where it only runs in Triton's slow interpreter, and not in float64."""
    return [b for b in available_backends() if b != "triton"]


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


def is_toy(trace: Trace) -> bool:
    """Whether the trace is of the toy model."""
    return isinstance(trace.model, ToyModel)


def mask_report(trace: Trace, layer: int) -> dict[str, object] | None:
    """What the mask of ``layer`` (0-based) let each word see: None when every word sees every word.

    {"kind": "causal" (word i sees words 1 … i) or "mask", "allowed": (T, T) bools, "masked": how
    many scores were forbidden, "illustration": True when the causal mask was added to a model that
    was not trained with it (``--causal``), "alignment": the causal alignment for Tq ≠ Tk}."""
    allowed = trace.layers[layer].allowed
    if allowed is None:
        return None
    a = allowed.numpy()
    causal = a.shape[0] == a.shape[1] and bool((a == np.tri(*a.shape, dtype=bool)).all())
    return {"kind": "causal" if causal else "mask", "allowed": a.tolist(), "masked": int((~a).sum()),
            "illustration": trace.added_causal, "alignment": "top_left"}


def default_word(trace: Trace) -> int:
    """The first real word: for [CLS] i am …, "i" (index 1); a text of markers only: 0. Under a
    causal mask the middle real word instead, which sees some words and not others (the first sees
    only itself)."""
    real = [i for i, s in enumerate(trace.tokens.special) if not s]
    causal = any(mask_report(trace, n) and mask_report(trace, n)["kind"] == "causal" for n in trace.layers)
    return (real[(len(real) - 1) // 2] if causal else real[0]) if real else 0


def _np(t) -> np.ndarray | None:
    return None if t is None else t.detach().double().numpy()


def verify(steps: reference.SelfAttentionSteps, trace: Trace, layer: int, head: int,
           tolerance: float) -> dict[str, object]:
    """Max |difference| between the loops' Z and A (float64) and what the layer computed for this
    head: in the model's own pass ("auto") and recomputed with every tier, on the same q, k, v."""
    lt = trace.layers[layer]
    diffs: dict[str, float] = {
        "matrix_form": float(np.abs(reference.matrix_form(steps, None if lt.allowed is None else
                                                          lt.allowed.numpy()) - steps.Z).max(initial=0.0))
    }
    for backend, z in lt.z.items():
        diffs[backend] = float(np.abs(_np(z[head]).T - steps.Z).max(initial=0.0))
    diffs["weights"] = float(np.abs(_np(lt.weights[head]) - steps.A).max(initial=0.0))
    return {"max_abs_diff": diffs, "auto_backend": lt.auto_backend, "tolerance": tolerance,
            "ok": all(d < tolerance for d in diffs.values())}


def build_report(trace: Trace, *, layer: int | None = None, head: int | None = None,
                 word: str | None = None) -> dict[str, object]:
    """Every number of one head of one traced layer (1-based ``layer``, ``head``; None: the
    defaults), the lecture's way, as a JSON-serializable dict.

    Lecture convention (words are columns): H (D, T), Q and K (d_k, T), V and Z (d_v, T);
    E, scaled, A (T, T) with row i the query word i. The loops (``reference.self_attention``) run
    in float64 on the layer's own input and W's, and are verified against what the layer computed.
    A real model's head adds "biases", "heads" (every head of the layer) and "layer_Z". Raises
    UsageError for a ``word`` that is not in the sentence.
    """
    n = (layer or DEFAULT_LAYER) - 1
    lt, attn, tokens = trace.layers[n], trace.attention(n), trace.tokens.tokens
    h, why = (head - 1, "--head") if head is not None else default_head(trace, n)
    unit = trace.model.unit
    i = resolve_word(word, tokens, default=default_word(trace), unit=unit)
    W = {k: _np(x) for k, x in attn.head_projections(h).items()}  # W's (d, D), b's (d,) or None
    H = _np(lt.x).T  # (D, T): the lecture's columns
    allowed = None if lt.allowed is None else lt.allowed.numpy()  # (T, T) bool
    s = reference.self_attention(H, W["W_Q"], W["W_K"], W["W_V"], b_Q=W["b_Q"], b_K=W["b_K"], b_V=W["b_V"],
                                 mask=allowed)
    toy = is_toy(trace)
    report = _steps_report(trace, s, H, W, i, allowed)
    report["mask"] = mask_report(trace, n)
    report["input"] = input_parts(trace.model, trace.tokens, i) if n == 0 else None
    tolerance = TOLERANCE if lt.x.dtype == torch.float64 else LAYER_TOLERANCE
    report["verification"] = verify(s, trace, n, h, tolerance)
    if toy:
        return report
    layer_Z = _np(lt.z["auto"][h]).T  # (d_v, T), the layer's own output for this head
    report["model"] = _describe(trace, n, h, why)
    report["biases"] = {k: W[k].tolist() if W[k] is not None else None for k in ("b_Q", "b_K", "b_V")}
    report["layer"], report["head"] = n + 1, h + 1
    report["num_layers"], report["num_heads"] = trace.num_layers, attn.num_heads
    report["dropped"] = trace.tokens.dropped
    report["layer_Z"] = layer_Z.tolist()
    report["derivation"]["layer_z"] = layer_Z[:, i].tolist()  # type: ignore[index]
    weights = _np(lt.weights)  # (H, T, T)
    full = len(tokens) <= HEADS_A_MAX_T  # every head's (T, T) weights, unless that is a lot of numbers
    report["heads"] = [{**o, "A": weights[k].tolist() if full else None}
                       for k, o in enumerate(overview(weights, tokens, trace.tokens.special))]
    report["verification"]["compared"] = (
        f"the per-word loops (float64) vs layer {n + 1}'s own output and weights for head {h + 1} "
        "(its forward pass, float32), per backend")
    return report


def _steps_report(trace: Trace, s: reference.SelfAttentionSteps, H: np.ndarray, W: dict, i: int,
                  allowed: np.ndarray | None) -> dict:
    """The lecture's steps as numbers: H, W's, Q, K, V, E, scaled, A, Z and the derivation of z_i."""
    tokens = trace.tokens.tokens
    (D, T), d_k, d_v = H.shape, W["W_Q"].shape[0], W["W_V"].shape[0]
    allowed = np.ones((T, T), bool) if allowed is None else allowed
    scaled = s.E * s.scale  # (T, T); where the mask forbids, the softmax read −∞ instead (JSON: null)
    shown = [[float(x) if ok else None for x, ok in zip(row, okrow, strict=True)]
             for row, okrow in zip(scaled, allowed, strict=True)]
    terms = [
        {"j": j + 1, "word": tokens[j], "k": s.K[:, j].tolist(), "v": s.V[:, j].tolist(),
         "e": float(s.E[i, j]), "scaled": shown[i][j], "alpha": float(s.A[i, j]),
         "masked": not bool(allowed[i, j])}
        for j in range(T)
    ]
    describe = getattr(trace.model, "describe", dict)
    return {
        "model": describe(),
        "text": trace.text,
        "tokens": tokens,
        "unit": trace.model.unit,
        "T": T, "D": D, "d_k": d_k, "d_v": d_v,
        "shapes": {
            "H": [D, T], "W_Q": [d_k, D], "W_K": [d_k, D], "W_V": [d_v, D],
            "Q": [d_k, T], "K": [d_k, T], "V": [d_v, T], "E": [T, T], "A": [T, T], "Z": [d_v, T],
        },
        "H": H.tolist(),
        "W_Q": W["W_Q"].tolist(), "W_K": W["W_K"].tolist(), "W_V": W["W_V"].tolist(),
        "Q": s.Q.tolist(), "K": s.K.tolist(), "V": s.V.tolist(),
        "scale": s.scale,
        "E": s.E.tolist(),
        "scaled": shown,
        "A": s.A.tolist(),
        "row_sums": s.A.sum(axis=1).tolist(),
        "Z": s.Z.tolist(),
        "derivation": {
            "index": i + 1, "word": tokens[i], "q": s.Q[:, i].tolist(), "terms": terms,
            "alpha_sum": float(s.A[i].sum()), "z": s.Z[:, i].tolist(),
        },
    }


def _describe(trace: Trace, n: int, h: int, why: str) -> dict[str, object]:
    """Where H and the W's of head h of layer n (0-based) come from, and the model's sizes."""
    model, attn = trace.model, trace.attention(n)
    rows = attn.head_rows(h)
    info = model.describe() if hasattr(model, "describe") else {}
    q0, q1 = rows["Q"]
    if attn.num_kv_heads == attn.num_heads:
        where = f"rows {q0}…{q1 - 1} (counted from 0) of the Q, K, V blocks"
    else:
        k0, k1 = rows["K"]
        where = (f"rows {q0}…{q1 - 1} (counted from 0) of the Q block and {k0}…{k1 - 1} of the K and V "
                 f"blocks (key/value head {rows['kv_head'] + 1}, shared by query heads "
                 f"{rows['shared_by'][0] + 1}…{rows['shared_by'][1]})")
    b = " (and b's)" if attn.head_projections(h)["b_Q"] is not None else ""
    entering = getattr(model, "input_description", lambda layer: "")(n + 1)
    return {
        "name": model.name, **info, "head_dim": attn.head_dim,
        "layer": n + 1, "head": h + 1, "head_choice": why,
        "embedding": f"H = the hidden states entering layer {n + 1}" + (f" ({entering})" if entering else ""),
        "weights": f"W_Q, W_K, W_V{b} = {where} of layer {n + 1}'s in_proj (learned)",
    }


def render_text(report: dict, *, color: bool = False, width: int = 100, wide: bool = False,
                vmax: float | None = None) -> str:
    """The walk-through as terminal text, lines of at most ``width`` (``wide``: no limit; ``vmax``: a
    fixed top of the heatmap's scale); see ``explain_text``."""
    from .explain_text import render

    return render(report, color=color, width=width, wide=wide, vmax=vmax)
