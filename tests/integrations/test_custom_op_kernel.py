"""The Triton path of ``torch.ops.selfattention.attention``, checked on a machine without a GPU.

Two halves of it can run here; the GPU run (tests/integrations/test_gpu.py) joins them.

- Values: under ``TRITON_INTERPRET=1`` (a subprocess: the variable must be set before Triton is
  imported) the operator's kernel-path functions, ``_kernel_forward`` and ``_kernel_backward``, run
  our kernels on CPU tensors, through ``torch.library.wrap_triton`` as the operator calls them.
- Tracing: the interpreter cannot be traced (``wrap_triton`` hands an interpreted kernel back
  unwrapped), so the compiler's view is checked on fake CUDA tensors instead: AOTAutograd, with
  symbolic shapes, decomposes the two ``triton_op``s into graphs holding our three kernels as
  ``triton_kernel_wrapper_functional`` nodes, and torch's analysis of the kernels' Triton IR (for
  an sm_90 target; no GPU is needed to produce it) finds that each writes only its outputs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from selfattention import kernels
from selfattention.integrations import torch_library as tl

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed")

_INTERPRETED = """
import torch
from conftest import flash_rule, naive_torch
from selfattention.integrations import torch_library as tl

g = torch.Generator().manual_seed(0)
B, H, Hkv, Tq, Tk, d = 1, 4, 2, 19, 23, 16
q = torch.randn(B, Tq, H, d, generator=g).transpose(1, 2)  # (B, H, Tq, d) seen in (B, Tq, H, d) storage
k, v = (torch.randn(B, Hkv, Tk, d, generator=g) for _ in range(2))
mask = torch.rand(B, 1, Tq, Tk, generator=g) > 0.3
mask[0, 0, 3] = False  # a row that may attend to nothing
dout = torch.randn(B, H, Tq, d, generator=g)
args = (mask, 0.3, True, "bottom_right")
for dtype in (torch.float32, torch.float16):  # bfloat16: the interpreter miscomputes its dots
    x = [t.to(dtype) for t in (q, k, v)]
    out, lse = tl._kernel_forward(*x, *args, wrap=torch.library.wrap_triton)
    peer, peer_lse = tl._blockwise_forward(*x, *args)  # the blockwise tier, same precision
    # The reference: the same rounded inputs in float64, grouped heads as copies.
    x64 = [t.double().requires_grad_() for t in x]
    ref = naive_torch(x64[0], *(t.repeat_interleave(H // Hkv, 1) for t in x64[1:]), mask=mask,
                      causal="bottom_right", scale=0.3)
    assert out.shape == ref.shape and out.dtype == dtype and lse.dtype == torch.float32
    flash_rule(out, peer, ref, what=f"{dtype} out")
    dead = lse.isneginf()
    assert torch.equal(dead, peer_lse.isneginf()) and dead[0, :, 3].all() and (out[dead] == 0).all()
    # lse against its float64 value (logsumexp of the allowed scaled scores), the peer's the same
    i, j = torch.arange(Tq)[:, None], torch.arange(Tk)
    allowed = mask & (j <= i + Tk - Tq)  # bottom-right causal
    s = x64[0].detach() @ x64[1].detach().repeat_interleave(H // Hkv, 1).transpose(-2, -1) * 0.3
    ref_lse = torch.logsumexp(s.masked_fill(~allowed, float("-inf")), -1)
    assert torch.equal(dead, ref_lse.isneginf())
    flash_rule(lse[~dead], peer_lse[~dead], ref_lse[~dead], what=f"{dtype} lse")
    do = dout.to(dtype)
    grads = tl._kernel_backward(do, *x, out, lse, *args, wrap=torch.library.wrap_triton)
    peers = tl._blockwise_backward(do, *x, peer, peer_lse, *args)
    refs = torch.autograd.grad(ref, x64, do.double())
    for name, a, b, r in zip("qkv", grads, peers, refs, strict=True):
        assert a.shape == r.shape and a.dtype == dtype, name
        flash_rule(a, b, r, what=f"{dtype} d{name}")
# Under the interpreter the operator itself still runs its CPU implementation, the blockwise tier.
x = [t.requires_grad_() for t in (q, k, v)]
out = torch.ops.selfattention.attention(*x, *args)[0]
assert torch.equal(out, tl._blockwise_forward(q, k, v, *args)[0])
print("ok")
"""


@pytest.mark.subprocess
@needs_triton
def test_kernel_path_under_the_interpreter():
    """The operator's Triton forward and backward against the blockwise tier on the same inputs,
    by FlashAttention's rule (error vs float64 ≤ 2 × the tier's own error + one rounding),
    float32 and float16, grouped heads, a mask with an empty row, bottom-right causal, q strided."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tests + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_INTERPRETED)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.fixture
def fake_gpu(monkeypatch):
    """Enough of a GPU to trace for one, never to run: the operator takes CUDA tensors for the
    kernel's, and Triton compiles to its IR for an sm_90 (H100/H200) target."""
    if kernels.interpreting():
        pytest.skip("traced kernels are real Triton kernels; the interpreter's cannot be traced")
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    class Sm90:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    monkeypatch.setattr(triton.runtime.driver, "_active", Sm90())
    monkeypatch.setattr(kernels, "available", lambda device=None: True)


class _Traced(Exception):
    pass


def _trace_forward_and_backward(shapes, dtype):
    """The graph AOTAutograd makes (symbolic shapes) of the operator and its backward operator."""
    from torch._functorch.aot_autograd import aot_function

    graphs = []

    def keep(gm, _inputs):
        graphs.append(gm)
        raise _Traced  # a fake CUDA graph cannot run here

    def f(q, k, v, mask, dout):
        # Fake CUDA tensors shaped as the inputs (this CPU build of torch cannot copy to "cuda").
        q, k, v, mask, dout = (torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cuda")
                               for x in (q, k, v, mask, dout))
        out, lse = torch.ops.selfattention.attention(q, k, v, mask, 0.125, True, "bottom_right")
        grads = torch.ops.selfattention.attention_backward(dout, q, k, v, out, lse, mask, 0.125, True,
                                                           "bottom_right")
        return out, lse, *grads

    (B, H, Hkv, Tq, Tk, d) = shapes
    inputs = (torch.zeros(B, H, Tq, d, dtype=dtype), torch.zeros(B, Hkv, Tk, d, dtype=dtype),
              torch.zeros(B, Hkv, Tk, d, dtype=dtype), torch.ones(B, 1, Tq, Tk, dtype=torch.bool),
              torch.zeros(B, H, Tq, d, dtype=dtype))
    with pytest.raises(_Traced):
        aot_function(f, fw_compiler=keep, dynamic=True)(*inputs)
    return graphs[0]


@pytest.mark.slow
@needs_triton
@pytest.mark.skipif(not tl.TRITON_OP, reason="this torch has no torch.library.triton_op")
def test_traced_operators_hold_our_kernels_and_write_only_their_outputs(fake_gpu):
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from selfattention.kernels import tuning

    gm = _trace_forward_and_backward((2, 4, 2, 33, 47, 64), torch.float16)
    hops = [n for n in gm.graph.nodes if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]

    def base(kernel):  # an autotuner (ours, or the one the tracer builds around a config) → its kernel
        return base(kernel.fn) if type(kernel).__name__ in ("Autotuner", "Heuristics") else kernel

    launched = [base(kernel_side_table.get_kernel(n.kwargs["kernel_idx"])) for n in hops]
    assert launched == [tuning.KERNELS["fwd"], tuning.KERNELS["dkdv"], tuning.KERNELS["dq"]]
    # Each kernel writes its outputs and nothing else (no input is copied to protect it).
    assert [sorted(n.kwargs["tensors_to_clone"]) for n in hops] == [["Lse", "Out"], ["DK", "DV"], ["DQ"]]
    # The kernels took the whole problem: nothing of the blockwise tier in the graph.
    assert not [n for n in gm.graph.nodes if "blockwise" in str(n.target) or "bmm" in str(n.target)]
    # Outputs as the fake implementations promise: out, lse, dq, dk, dv; dtypes; contiguous.
    outs = [x.meta["val"] for x in next(n for n in gm.graph.nodes if n.op == "output").args[0]]
    assert [x.dtype for x in outs] == [torch.float16, torch.float32] + [torch.float16] * 3
    assert all(x.is_contiguous() and x.device.type == "cuda" for x in outs)
    # Symbolic batch and heads reach the launch grids (computed in the graph): one graph for every batch.
    assert any(isinstance(dim, torch.fx.Node) for n in hops for grid in n.kwargs["grid"] for dim in grid)


def test_off_the_kernel_the_operators_trace_to_the_blockwise_operators():
    """A CPU problem (or a CUDA one the kernel does not take) stays one opaque blockwise call per
    direction under the compiler, with symbolic shapes (no Python loop unrolled in the graph)."""
    from torch._functorch.aot_autograd import aot_function

    graphs = []

    def keep(gm, _inputs):
        graphs.append(gm)
        return gm

    def f(q, k, v, dout):
        out, lse = torch.ops.selfattention.attention(q, k, v, None, 0.5, False, "top_left")
        return out, *torch.ops.selfattention.attention_backward(dout, q, k, v, out, lse, None, 0.5, False,
                                                                 "top_left")

    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, 2, 700, 8, generator=gen, dtype=torch.float64) for _ in range(4))
    got = aot_function(f, fw_compiler=keep, dynamic=True)(q, k, v, dout)
    calls = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert [c for c in calls if "selfattention" in c] == [
        "selfattention._blockwise_attention.default", "selfattention._blockwise_attention_backward.default"]
    assert not [c for c in calls if "mm" in c or "exp" in c]  # 700 keys: two blocks, not unrolled here
    out, lse = torch.ops.selfattention.attention(q, k, v, None, 0.5, False, "top_left")
    expected = (out, *torch.ops.selfattention.attention_backward(dout, q, k, v, out, lse, None, 0.5, False,
                                                                 "top_left"))
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
