"""Shared helpers: an independent float64 reference for row-convention inputs, input makers,
hypothesis strategies, and the FlashAttention low-precision rule.

``ref_attention`` is the ground truth for ``attention(q, k, v, ...)``: it broadcasts the inputs
with NumPy, loops over every batch element and every query row, and calls the reference tier's
per-row ``softmax`` (``selfattention.reference.softmax``) and a weighted sum of value rows. It
shares no code with the torch tiers; causal masks are built here from their definition.
"""

from __future__ import annotations

import math
import os
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from selfattention import reference

# The Triton kernel's tests need Triton's interpreter (TRITON_INTERPRET=1 set before Triton is
# imported) or a GPU; scripts/dev test runs them in a second pytest process with the variable set.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available() else ["kernels"]

# Tolerance-sensitive tests (peers, the README's figures, low precision) carry the mark
# ``numerics``; CI runs them again on one thread (scripts/dev test), since rounding depends on the
# thread count. SELFATTENTION_TEST_THREADS sets torch's intra-op threads for the whole session.
if os.environ.get("SELFATTENTION_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["SELFATTENTION_TEST_THREADS"]))


def pytest_configure(config):
    config.addinivalue_line("markers", "numerics: float results whose rounding depends on the machine "
                                       "and thread count (run under 1 thread and the default in CI)")


def pytest_report_header(config):
    import platform

    cpu = platform.processor() or platform.machine()
    return f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, cpu {cpu}"


settings.register_profile(
    "selfattention",
    max_examples=30,
    deadline=None,
    # function_scoped_fixture: the autouse seeding below, which hypothesis's own seeding overrides
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
    print_blob=True,
    # Under CI the examples are fixed (derived from each test), so a red build can be re-run as
    # is; elsewhere each run draws new ones and keeps exploring.
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile("selfattention")


@pytest.fixture(autouse=True)
def _seeded(request):
    """torch's, NumPy's and random's global generators seeded from the test's own name: a test that
    draws from them gets the same numbers whichever tests ran before it, and on any machine."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

F64 = torch.float64
# Float64 results are compared at 1e-10: the rounding of these computations (T, d ≤ 97, values
# ≤ ~10) is below T·d·ε₆₄·max|x|² ≈ 1e-11, while any real mistake shows at 1e-3 or more.
# Float32 and lower precisions are never compared at a fixed number: see ``flash_rule``.
ATOL64 = 1e-10


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype != torch.bool:
            x = x.to(F64)
        return x.numpy()
    return np.asarray(x)


def causal_np(Tq: int, Tk: int, alignment: str = "top_left") -> np.ndarray:
    """(Tq, Tk) bool, True = may attend; query i sees keys j <= i (+ Tk - Tq for bottom_right)."""
    offset = Tk - Tq if alignment == "bottom_right" else 0
    return np.array([[j <= i + offset for j in range(Tk)] for i in range(Tq)], dtype=bool).reshape(
        Tq, Tk
    )


def ref_attention(q, k, v, mask=None, causal=None, scale=None):
    """Float64 NumPy reference: (out (*batch, Tq, d_v), weights (*batch, Tq, Tk)).

    ``causal`` is None or an alignment name. ``mask`` is bool (True = may attend) or an additive
    float bias, broadcastable like in ``attention``.
    """
    q, k, v, mask = _np(q), _np(k), _np(v), _np(mask)
    Tq, d = q.shape[-2:]
    Tk, dv = v.shape[-2:]
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d else 1.0
    lead = [q.shape[:-2], k.shape[:-2], v.shape[:-2]]
    if mask is not None:
        lead.append(mask.shape[:-2])
    batch = np.broadcast_shapes(*lead)
    n = math.prod(batch)  # (not -1: a size-0 array cannot infer it)
    qb = np.broadcast_to(q, (*batch, Tq, d)).reshape(n, Tq, d)
    kb = np.broadcast_to(k, (*batch, Tk, d)).reshape(n, Tk, d)
    vb = np.broadcast_to(v, (*batch, Tk, dv)).reshape(n, Tk, dv)
    mb = None if mask is None else np.broadcast_to(mask, (*batch, Tq, Tk)).reshape(n, Tq, Tk)
    allowed = None if causal is None else causal_np(Tq, Tk, causal)
    out, weights = np.zeros((n, Tq, dv)), np.zeros((n, Tq, Tk))
    for b in range(n):
        for i in range(Tq):
            e = np.array([np.dot(qb[b, i], kb[b, j]) for j in range(Tk)]) * scale
            if mb is not None:
                e = np.where(mb[b, i], e, -np.inf) if mb.dtype == np.bool_ else e + mb[b, i]
            if allowed is not None:
                e = np.where(allowed[i], e, -np.inf)
            alpha = reference.softmax(e) if Tk else e
            weights[b, i] = alpha
            for j in range(Tk):
                out[b, i] += alpha[j] * vb[b, j]
    return out.reshape(*batch, Tq, dv), weights.reshape(*batch, Tq, Tk)


def naive_torch(q, k, v, mask=None, causal=None, scale=None):
    """Differentiable plain-torch attention (for gradients), dead rows → zeros. Written here,
    independently of the package: matmul → mask → softmax → matmul."""
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        s = torch.where(mask, s, -math.inf) if mask.dtype == torch.bool else s + mask
    if causal is not None:
        s = torch.where(torch.from_numpy(causal_np(q.shape[-2], k.shape[-2], causal)), s, -math.inf)
    dead = torch.isneginf(s).all(-1, keepdim=True)
    w = torch.softmax(torch.where(dead, 0.0, s), -1) * (~dead)
    return w @ v


def randn(*shape, gen: torch.Generator, dtype=F64, requires_grad=False) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen, dtype=F64).to(dtype)
    return x.requires_grad_(requires_grad)


def assert_close(actual: torch.Tensor, expected, atol: float = ATOL64, rtol: float = 0.0):
    """Shape first, then values (expected may be NumPy)."""
    expected = torch.as_tensor(np.asarray(expected) if not isinstance(expected, torch.Tensor) else expected)
    assert tuple(actual.shape) == tuple(expected.shape), (tuple(actual.shape), tuple(expected.shape))
    torch.testing.assert_close(
        actual.detach().to(F64), expected.to(F64), atol=atol, rtol=rtol, equal_nan=False
    )


def flash_rule(out: torch.Tensor, out_pt: torch.Tensor, out_ref, eps: float | None = None, k: float = 2.0,
               what: str = "output") -> None:
    """FlashAttention's rule: max|out − ref| ≤ k · max|out_pt − ref| + floor.

    ``ref`` is a float64 reference, ``out_pt`` a peer computed in ``out``'s own precision (its error
    is what that precision costs on this machine, whatever the CPU, kernel or thread count).
    ``floor`` (default: one rounding of the result, ε(dtype) · max|ref|) covers a peer that happens
    to be exact.
    """
    ref = out_ref if isinstance(out_ref, torch.Tensor) else torch.as_tensor(np.asarray(out_ref))
    ref = ref.to(F64)
    err = (out.detach().to(F64) - ref).abs().max().item()
    err_pt = (out_pt.detach().to(F64) - ref).abs().max().item()
    if eps is None:
        eps = torch.finfo(out.dtype).eps * max(ref.abs().max().item(), 1e-30)
    assert math.isfinite(err), f"non-finite {what}"
    assert err <= k * err_pt + eps, (
        f"{what}: error {err:.3g} > {k:g} × same-precision peer error {err_pt:.3g} + {eps:.2g}")


EPS32 = float(np.finfo(np.float32).eps)
# |‖x‖ − 1| of a float32 vector normalized in float32: a sum of D = 384 squares, each rounded,
# then a square root and a division: a few ε₃₂ · √D at most. Two float32 runs of the encoder that
# differ only in batching (padding, summation order) give unit vectors within the same bound.
NORM_TOL = 4 * EPS32 * np.sqrt(384)


def softmax_rows(S: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in S's own precision; −inf entries get weight 0."""
    m = np.max(np.where(np.isinf(S), np.finfo(S.dtype).min, S), axis=-1, keepdims=True)
    e = np.where(np.isinf(S), 0, np.exp(S - m)).astype(S.dtype)
    return e / e.sum(axis=-1, keepdims=True)


def layer_norm_rows(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis in x's own precision (w, b: (D,))."""
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w + b


def formula_rule(out, formula, *inputs, k: float = 4.0, what: str = "output") -> None:
    """FlashAttention's rule for a float32 result checked against the test's own formula, where no
    library computes the same thing: ``formula`` on ``inputs`` in float64 is the reference, the same
    formula in float32 (NumPy) is the peer, and ``out`` may err by at most ``k`` × the peer's error
    plus one float32 rounding of the reference. k = 4 as the transformers peer: ours and the peer
    are different float32 programs (torch kernels against NumPy), not the same one.
    """
    ref = np.asarray(formula(*(np.asarray(x, np.float64) for x in inputs)), np.float64)
    peer = np.asarray(formula(*(np.asarray(x, np.float32) for x in inputs)))
    assert peer.dtype == np.float32, f"{what}: the formula left float32 ({peer.dtype})"
    flash_rule(torch.as_tensor(np.asarray(out, np.float32)), torch.as_tensor(peer), torch.as_tensor(ref),
               k=k, what=what)


# --- hypothesis strategies -------------------------------------------------------------------

seeds = st.integers(0, 2**31 - 1)
lengths = st.sampled_from([1, 2, 3, 5, 8, 13, 97])
dims = st.sampled_from([1, 2, 4, 7, 16, 59])


@st.composite
def problems(draw, *, float_masks=True, max_T=97):
    """A random attention problem: dict of q, k, v, mask, causal alignment, scale (float64)."""
    gen = torch.Generator().manual_seed(draw(seeds))
    Tq = draw(lengths.filter(lambda t: t <= max_T))
    Tk = draw(lengths.filter(lambda t: t <= max_T))
    d, dv = draw(dims), draw(dims)
    big = Tq * Tk > 1000  # keep the python-loop reference fast
    B = 1 if big else draw(st.integers(1, 2))
    H = 1 if big else draw(st.integers(1, 3))
    # broadcast leading dims: k and v may share one head across all query heads
    kv_heads = draw(st.sampled_from([H, 1]))
    q = randn(B, H, Tq, d, gen=gen)
    k = randn(B, kv_heads, Tk, d, gen=gen)
    v = randn(B, kv_heads, Tk, dv, gen=gen)
    kind = draw(st.sampled_from(["none", "bool", "float"] if float_masks else ["none", "bool"]))
    mask = None
    if kind != "none":
        mshape = draw(st.sampled_from([(Tq, Tk), (B, 1, 1, Tk), (B, H, Tq, Tk), (1, Tk)]))
        allowed = torch.rand(*mshape, generator=gen) < draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
        if kind == "bool":
            mask = allowed
        else:
            bias = randn(*mshape, gen=gen)
            mask = bias.masked_fill(~allowed, -math.inf)
    causal = draw(st.sampled_from([None, "top_left", "bottom_right"]))
    scale = draw(st.sampled_from([None, 0.1, 1.0, 2.5]))
    return dict(q=q, k=k, v=v, mask=mask, causal=causal, scale=scale)


def call_kwargs(p: dict) -> dict:
    """Keyword arguments of ``attention`` for a problem from ``problems``."""
    return dict(
        mask=p["mask"],
        causal=p["causal"] is not None,
        causal_alignment=p["causal"] or "top_left",
        scale=p["scale"],
    )


# --- model directories for error tests ---------------------------------------------------------

def model_dir_copy(tmp_path: Path, *, without: tuple[str, ...] = (), replace: dict | None = None) -> Path:
    """tmp_path/model: the default model's files symlinked, less ``without``, with ``replace``d ones."""
    from selfattention.models.pretrained import default_model_path

    src, dst = default_model_path(), tmp_path / "model"
    dst.mkdir()
    replace = replace or {}
    for entry in src.iterdir():
        if entry.name not in without and entry.name not in replace:
            os.symlink(entry, dst / entry.name)
    for name, content in replace.items():
        (dst / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return dst


# --- the command line, in-process ----------------------------------------------------------------

def run_cli(*argv: str, stdin: str | None = None, tty: bool = False) -> tuple[int, str, str]:
    """``selfattention.cli.main(argv)`` in this process → (exit status, stdout, stderr)."""
    import contextlib
    import io
    import sys

    from selfattention.cli import main

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, err = io.StringIO(), Tty() if tty else io.StringIO()
    old_stdin = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()
