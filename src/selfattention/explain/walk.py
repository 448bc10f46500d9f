"""``explain``'s walk-through, as numbers: one sentence through one head of one self-attention
layer, the lecture's way (``build_report`` → a plain, JSON-serializable dict of every number, from
the word-by-word reference loops); ``explain.text`` turns it into the terminal walk-through.

Its input is a ``models.Trace`` — one run of a model on the text, recorded — of the toy model or of
a real one (a pretrained encoder, a trained Transformer), and the ``Selection`` of layer, head and
word. A real model's head gets its biases in the lecture's steps, an overview of every head of its
layer, and the layer's own output beside the lecture's z's; every report is verified against what
the layer computed, with every tier. A masked layer (a decoder's causal mask, or ``--causal``) is
explained with its mask: the forbidden scores are −∞ before the softmax, their α's are 0.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import reference
from ..functional import available_backends
from ..models.heads import overview
from ..models.tracing import Trace
from .fmt import f64
from .selection import Selection, mask_report, select

MAX_TOKENS = 512  # the reference loops are O(T²) Python (≈1 s at 512); BERT's positions end there
TOLERANCE = 1e-10  # a float64 model: the tiers agree to rounding; anything larger is a bug
LAYER_TOLERANCE = 1e-4  # float64 loops vs a real layer run in float32 (expect ~1e-6)
HEADS_A_MAX_T = 64  # --json holds every head's (T, T) weights up to this T (12 · 512² would be 3M numbers)


def tolerance_for(dtype: torch.dtype) -> float:
    """What the loops (float64) may differ from a layer computed in ``dtype``: ``TOLERANCE`` for a
    float64 model (the toy), else ``LAYER_TOLERANCE``."""
    return TOLERANCE if dtype == torch.float64 else LAYER_TOLERANCE


def verify_backends() -> list[str]:
    """The tiers a trace for ``explain`` recomputes each head with. "triton" is left out: the
    models run on the CPU, where it only runs in Triton's slow interpreter, and not in float64."""
    return [b for b in available_backends() if b != "triton"]


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
        diffs[backend] = float(np.abs(f64(z[head]).T - steps.Z).max(initial=0.0))
    diffs["weights"] = float(np.abs(f64(lt.weights[head]) - steps.A).max(initial=0.0))
    return {"max_abs_diff": diffs, "auto_backend": lt.auto_backend, "tolerance": tolerance,
            "ok": all(d < tolerance for d in diffs.values())}


def build_report(trace: Trace, selection: Selection | None = None, *, layer: int | None = None,
                 head: int | None = None, word: str | None = None) -> dict[str, object]:
    """Every number of one head of one traced layer, the lecture's way, as a JSON-serializable dict:
    the ``selection``'s, or (without one) ``select``'s for ``layer``, ``head`` (1-based; None: the
    defaults) and ``word``.

    Lecture convention (words are columns): H (D, T), Q and K (d_k, T), V and Z (d_v, T);
    E, scaled, A (T, T) with row i the query word i. The loops (``reference.self_attention``) run
    in float64 on the layer's own input and W's, and are verified against what the layer computed.
    A real model's head adds "biases", "heads" (every head of the layer, with a task model's answer
    rows: ``models.heads.overview``) and "layer_Z". "derivation" holds "worked", one component of
    q_i as its D products (``worked``); "same_rows" the words whose rows are the same (``same_rows``);
    "answer" a task model's answer in the text (the selection's), else None. Raises UsageError for a
    ``word`` that is not in the sentence.
    """
    sel = selection or select(trace, layer=layer, head=head, word=word)
    n, h, i = sel.layer, sel.head, sel.word
    lt, attn, tokens = trace.layers[n], trace.attention(n), trace.tokens.tokens
    W = {k: f64(x) for k, x in attn.head_projections(h).items()}  # W's (d, D), b's (d,) or None
    H = f64(lt.x).T  # (D, T): the lecture's columns
    allowed = None if lt.allowed is None else lt.allowed.numpy()  # (T, T) bool
    s = reference.self_attention(H, W["W_Q"], W["W_K"], W["W_V"], b_Q=W["b_Q"], b_K=W["b_K"], b_V=W["b_V"],
                                 mask=allowed)
    report = _steps_report(trace, s, H, W, i, allowed)
    report["mask"] = mask_report(trace, n)
    report["answer"] = _answer(trace, sel.answer)
    report["same_rows"] = same_rows(H, allowed)
    report["input"] = trace.model.input_parts(trace.tokens, i) if n == 0 else None
    report["verification"] = verify(s, trace, n, h, tolerance_for(lt.x.dtype))
    if trace.model.toy:  # the lecture's own setting: no biases, one head, no output of its own to show
        return report
    layer_Z = f64(lt.z["auto"][h]).T  # (d_v, T), the layer's own output for this head
    report["model"] = _describe(trace, n, h, sel.head_why)
    report["biases"] = {k: W[k].tolist() if W[k] is not None else None for k in ("b_Q", "b_K", "b_V")}
    report["layer"], report["head"] = n + 1, h + 1
    report["num_layers"], report["num_heads"] = trace.num_layers, attn.num_heads
    report["dropped"] = trace.tokens.dropped
    report["layer_Z"] = layer_Z.tolist()
    report["derivation"]["layer_z"] = layer_Z[:, i].tolist()  # type: ignore[index]
    weights = f64(lt.weights)  # (H, T, T)
    full = len(tokens) <= HEADS_A_MAX_T  # every head's (T, T) weights, unless that is a lot of numbers
    asking = None if sel.answer is None else list(range(sel.answer, len(tokens)))  # a task: its answer rows
    report["heads"] = [{**o, "A": weights[k].tolist() if full else None}
                       for k, o in enumerate(overview(weights, tokens, trace.tokens.special, rows=asking,
                                                      answer=sel.answer))]
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
    return {
        "model": trace.model.describe(),
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
            "worked": worked(H[:, i], W["W_Q"], W["b_Q"], s.Q[:, i]),
        },
    }


def worked(h: np.ndarray, W_Q: np.ndarray, b_Q: np.ndarray | None, q: np.ndarray,
           component: int = 0) -> dict[str, object]:
    """One component of q_i = W_Q h_i (+ b_Q) written out: the D products W_Q[c, k] · h_i[k] of row c
    of W_Q with h_i (``h`` (D,), ``W_Q`` (d_k, D), ``b_Q`` (d_k,) or None), their sum, the bias and
    q_i[c] (``q`` (d_k,), as the loops computed it); ``component`` 0-based, shown 1-based."""
    products = W_Q[component] * h  # (D,)
    return {"component": component + 1, "row": W_Q[component].tolist(), "products": products.tolist(),
            "sum": float(products.sum()), "bias": None if b_Q is None else float(b_Q[component]),
            "q": float(q[component])}


def same_rows(H: np.ndarray, allowed: np.ndarray | None) -> list[list[int]]:
    """Groups (1-based) of words whose input h is the same vector and that may see the same words:
    their rows of E, A and Z are then the same too (the toy without positions: "the" twice). H (D, T),
    ``allowed`` (T, T) or None."""
    groups: dict[bytes, list[int]] = {}
    for i in range(H.shape[1]):
        key = H[:, i].tobytes() + (b"" if allowed is None else allowed[i].tobytes())
        groups.setdefault(key, []).append(i + 1)
    return [g for g in groups.values() if len(g) > 1]


def _answer(trace: Trace, row: int | None) -> dict[str, object] | None:
    """A task model's answer in the text: the row (1-based) that writes its first character, the
    prompt before it and the task; None without one."""
    if row is None:
        return None
    tokens = trace.tokens.tokens
    return {"task": str(trace.model.describe().get("task")), "row": row + 1,
            "prompt": "".join(tokens[:row + 1]), "answer": "".join(tokens[row + 1:])}


def _describe(trace: Trace, n: int, h: int, why: str) -> dict[str, object]:
    """Where H and the W's of head h of layer n (0-based) come from, and the model's sizes."""
    model, attn = trace.model, trace.attention(n)
    rows = attn.head_rows(h)
    info = model.describe()
    q0, q1 = rows["Q"]
    if attn.num_kv_heads == attn.num_heads:
        where = f"rows {q0}…{q1 - 1} (counted from 0) of the Q, K, V blocks"
    else:
        k0, k1 = rows["K"]
        where = (f"rows {q0}…{q1 - 1} (counted from 0) of the Q block and {k0}…{k1 - 1} of the K and V "
                 f"blocks (key/value head {rows['kv_head'] + 1}, shared by query heads "
                 f"{rows['shared_by'][0] + 1}…{rows['shared_by'][1]})")
    b = " (and b's)" if attn.head_projections(h)["b_Q"] is not None else ""
    entering = model.input_description(n + 1)
    return {
        "name": model.name, **info, "head_dim": attn.head_dim,
        "layer": n + 1, "head": h + 1, "head_choice": why,
        "embedding": f"H = the hidden states entering layer {n + 1}" + (f" ({entering})" if entering else ""),
        "weights": f"W_Q, W_K, W_V{b} = {where} of layer {n + 1}'s in_proj (learned)",
    }
