"""An offline, interactive HTML explorer of attention: one self-contained file, no network at all.

``render_html(data)`` fills the page template ``explorer.html`` (next to this module) with the
numbers of an ``AttentionData``; ``write_html(data, path)`` writes it atomically. The page shows a
layer/head selector, a model view of every layer × head, the selected head's weight matrix, the
selected word's row as lines, and — when q, k, v are given — the lecture's steps for that word
(q·k, scaled, softmax, z = Σ α v) computed in the page in float64, checked against the model's
weights; for one pair (i, j) q_i and k_j with their element-wise products, which sum to e_ij (as
bertviz's neuron view), and, given the layers' inputs and W_Q, q_i[1] = W_Q[1,:]·h_i (+ b_Q[1])
worked out and checked against the model's q_i.

How the data is embedded: one JSON object in a ``<script type="application/json">`` element.
Float arrays travel as base64 of little-endian float32 (decoded to ``Float32Array`` in the page):
weights (L, H, T, T) and, when present, q, k (L, H, T, d_k) and v (L, H, T, d_v); a mask as base64
of uint8 (L, T, T), 1 = may attend; for the multi-head view, the first ``PROJ_ROWS`` rows of each
layer's W_O (L, R, H·d), of b_O (L, R) and of the layer's own output (L, T, R) — the components the
page shows and checks (``explain --multihead`` checks all of them); for the step q_i = W_Q h_i, the
layers' inputs h (L, T, D) and the first row of each head's W_Q (L, H, D) and b_Q (L, H), which
the page multiplies out for q_i[1] (left out, and said so, past ``QROW_FLOATS`` numbers).
``initial`` is the layer, head and word the page opens on (those of the terminal and PNG of the same
run). Everything the user typed (tokens, title) reaches the page only through this JSON and
``textContent`` (or, for ``<title>``, ``html.escape``); ``embed_json`` escapes ``<``, ``>``, ``&``,
U+2028 and U+2029 so the JSON can never close its script element. A Content-Security-Policy in the
page forbids every fetch, so the file cannot reach the network even if it tried.

``selfattention serve`` sends the same page with ``live`` (``render_html(…, live=…)``): a text box whose
sentences the page sends to the server that served it, the one address its policy then allows
(``connect-src 'self'``); each answer is ``payload`` of that sentence, drawn by the same code.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np

from .._io import write_atomic
from .data import AttentionData
from .terminal import MASKED, PALETTE

TEMPLATE = "explorer.html"  # package data of selfattention.viz
PROJ_ROWS = 8  # components of a layer's output the multi-head view shows (and recomputes)
QROW_FLOATS = 1_500_000  # h (L·T·D numbers) travels up to this (6 MB; MiniLM at 512 word pieces: 1.2 M)
_MARKER = re.compile(r"\{\{(TITLE|DATA|CONNECT)\}\}")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(obj: object) -> str:
    """``obj`` as JSON that is safe inside a ``<script>`` element: ``<``, ``>``, ``&``, U+2028 and
    U+2029 become ``\\uXXXX`` escapes (these characters occur only inside JSON strings, where the
    escape means the same character), so ``</script>`` or ``<!--`` in the data cannot end the
    element, and ``JSON.parse`` gives back exactly ``obj``."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], text)


def _b64_float32(layers: list[np.ndarray]) -> str:
    """Base64 of the layers stacked into one little-endian float32 array, C order."""
    stacked = np.ascontiguousarray(np.stack(layers), dtype="<f4")
    return base64.b64encode(stacked.tobytes()).decode("ascii")


def _width(name: str, layers: list[np.ndarray], H: int, T: int) -> int:
    """The common last dimension of per-layer (H, T, d) arrays; ValueError when they differ."""
    shapes = {tuple(a.shape) for a in layers}
    if len(shapes) != 1 or next(iter(shapes))[:2] != (H, T):
        raise ValueError(f"{name} has per-layer shapes {sorted(shapes)}, expected one shape ({H}, {T}, d)")
    return next(iter(shapes))[2]


def _selection(data: AttentionData, layer: int, head: int, word: int) -> dict[str, int]:
    """The 0-based layer, head and word the page opens on, from 1-based ones; ValueError if out of range."""
    for what, n, hi in (("layer", layer, data.num_layers), ("head", head, data.num_heads),
                        ("word", word, len(data.tokens))):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= hi:
            raise ValueError(f"{what} {n!r} is out of range: expected 1 to {hi}")
    return {"layer": int(layer) - 1, "head": int(head) - 1, "word": int(word) - 1}


def _mask(data: AttentionData, T: int) -> str | None:
    """Base64 of every layer's mask, uint8 (L, T, T), 1 = may attend; None when nothing is masked."""
    if data.allowed is None or all(a is None for a in data.allowed):
        return None
    if len(data.allowed) != data.num_layers:
        raise ValueError(f"allowed needs one (T, T) mask (or None) per layer ({data.num_layers} layers)")
    masks = [np.ones((T, T), np.uint8) if a is None else np.asarray(a, dtype=bool).astype(np.uint8)
             for a in data.allowed]
    if any(m.shape != (T, T) for m in masks):
        raise ValueError(f"each mask must be ({T}, {T}), got {[m.shape for m in masks]}")
    return base64.b64encode(np.ascontiguousarray(np.stack(masks)).tobytes()).decode("ascii")


def _projection(data: AttentionData, T: int) -> dict[str, object] | None:
    """The first PROJ_ROWS rows of W_O, b_O and the layers' outputs, for the multi-head view."""
    if data.w_o is None or data.q is None:
        return None
    L, H = data.num_layers, data.num_heads
    D = data.w_o[0].shape[0]
    R = min(PROJ_ROWS, D)
    width = H * (data.v[0].shape[-1] if data.v is not None else 0)
    if len(data.w_o) != L or any(np.shape(w) != (D, width) for w in data.w_o):
        raise ValueError(f"w_o needs one ({D}, {width}) matrix per layer: H·d_v columns, the heads side by "
                         "side")
    out: dict[str, object] = {"D": D, "rows": R, "wo": _b64_float32([np.asarray(w)[:R] for w in data.w_o]),
                              "bo": None, "out": None}
    if data.b_o is not None and all(b is not None for b in data.b_o):
        out["bo"] = _b64_float32([np.asarray(b)[:R] for b in data.b_o])
    if data.outputs is not None:
        if len(data.outputs) != L or any(np.shape(o) != (T, D) for o in data.outputs):
            raise ValueError(f"outputs needs one ({T}, {D}) array per layer")
        out["out"] = _b64_float32([np.asarray(o)[:, :R] for o in data.outputs])
    return out


def _q_row(data: AttentionData, T: int, dk: int) -> dict[str, object] | None:
    """h (L, T, D) and the first row of every head's W_Q (L, H, D) and b_Q (L, H): what q_i[1] =
    W_Q[1,:]·h_i + b_Q[1] needs; None without them; {"D", "omitted": why} when h is too big to carry."""
    if data.inputs is None or data.w_q is None:
        return None
    L, H = data.num_layers, data.num_heads
    D = np.shape(data.inputs[0])[-1]
    if len(data.inputs) != L or any(np.shape(x) != (T, D) for x in data.inputs):
        raise ValueError(f"inputs needs one ({T}, D) array per layer ({L} layers), the same D in each")
    if len(data.w_q) != L or any(np.shape(w) != (H, dk, D) for w in data.w_q):
        raise ValueError(f"w_q needs one ({H}, {dk}, {D}) array per layer: each head's W_Q")
    if data.b_q is not None and (len(data.b_q) != L or any(b is not None and np.shape(b) != (H, dk)
                                                           for b in data.b_q)):
        raise ValueError(f"b_q needs one ({H}, {dk}) array (or None) per layer")
    if L * T * D > QROW_FLOATS:
        return {"D": D, "omitted": f"the layers' inputs are {L} × {T} × {D} = {L * T * D:,} numbers, more "
                                   f"than this page carries ({QROW_FLOATS:,})"}
    biased = data.b_q is not None and all(b is not None for b in data.b_q)
    return {"D": D, "h": _b64_float32([np.asarray(x) for x in data.inputs]),
            "w": _b64_float32([np.asarray(w)[:, 0, :] for w in data.w_q]),
            "b": _b64_float32([np.asarray(b)[:, 0] for b in data.b_q]) if biased else None}


def payload(data: AttentionData, *, layer: int = 1, head: int = 1, word: int = 1,
            vmax: float | None = None) -> dict[str, object]:
    """What the page receives: sizes, tokens, title, scale, palette, the base64 arrays, and the layer,
    head and word (1-based) it opens on; ``vmax``: a fixed top of the colour scale (None: each head's
    largest weight)."""
    T, L, H = len(data.tokens), data.num_layers, data.num_heads
    if T == 0:
        raise ValueError("no tokens: the explorer needs at least one word")
    _width("weights", data.weights, H, T)
    if vmax is not None and not (isinstance(vmax, (int, float)) and np.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax must be a number > 0, got {vmax!r}")
    out: dict[str, object] = {
        "version": 1, "title": data.title, "tokens": list(data.tokens), "T": T, "layers": L, "heads": H,
        "unit": data.unit, "one": data.one, "palette": PALETTE, "masked": MASKED,
        "weights": _b64_float32(data.weights),
        "q": None, "k": None, "v": None, "dk": None, "dv": None, "scale": None,
        "initial": _selection(data, layer, head, word), "vmax": None if vmax is None else float(vmax),
        "allowed": _mask(data, T), "proj": None, "qrow": None,
    }
    dropped = data.meta.get("dropped")
    out["dropped"] = int(dropped) if isinstance(dropped, (int, np.integer)) else 0
    if data.q is not None and data.k is not None and data.v is not None:
        dk, dk2, dv = (_width(n, x, H, T) for n, x in (("q", data.q), ("k", data.k), ("v", data.v)))
        if dk != dk2:
            raise ValueError(f"q has d = {dk} but k has d = {dk2}; q·k needs the same width")
        if not (len(data.q) == len(data.k) == len(data.v) == L):
            raise ValueError(f"q, k, v need one array per layer ({L} layers)")
        scale = data.scale if data.scale is not None else 1.0 / np.sqrt(dk)
        out.update(q=_b64_float32(data.q), k=_b64_float32(data.k), v=_b64_float32(data.v),
                   dk=dk, dv=dv, scale=float(scale), proj=_projection(data, T), qrow=_q_row(data, T, dk))
    return out


def _template() -> str:
    return resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")


def render_html(data: AttentionData, *, layer: int = 1, head: int = 1, word: int = 1,
                vmax: float | None = None, live: dict[str, object] | None = None) -> str:
    """The explorer page for ``data`` as one self-contained HTML document (str), opening on
    ``layer``, ``head`` and ``word`` (1-based); ``vmax`` fixes the top of the colour scale.

    ``live`` (``selfattention serve``): the page shows a text box and asks its own server for each
    sentence typed: ``{"endpoint": path, "text": the sentence shown, "max_chars": n, "causal": bool,
    "warning": str | None}``. Without it the page may fetch nothing at all.

    Raises ValueError when the arrays' shapes do not fit together (see ``payload``).
    """
    title = "Attention explorer" + (f" — {data.title}" if data.title else "")
    data_json = payload(data, layer=layer, head=head, word=word, vmax=vmax)
    if live is not None:
        data_json["live"] = live
    fills = {"TITLE": html.escape(title), "DATA": embed_json(data_json),
             "CONNECT": "'self'" if live is not None else "'none'"}
    # one pass over the template, so nothing inserted is ever scanned for markers again
    return _MARKER.sub(lambda m: fills[m.group(1)], _template())


def write_html(data: AttentionData, path: str | os.PathLike[str], *, layer: int = 1, head: int = 1,
               word: int = 1, vmax: float | None = None) -> Path:
    """Write ``render_html(data, …)`` to ``path`` atomically (``_io.write_atomic``), so a reader
    never sees a partial page. Returns the path."""
    text = render_html(data, layer=layer, head=head, word=word, vmax=vmax).encode("utf-8")  # before the disk
    return write_atomic(path, lambda f: f.write(text))
