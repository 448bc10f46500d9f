"""``torch.ops.selfattention.attention``: values, log-sum-exp, gradients, opcheck, torch.compile, errors.

On the CPU the operator runs its CPU implementation: the blockwise tier forward and
FlashAttention-2's backward in PyTorch; both are checked here in float64 against
tests/_rules.py's references (NumPy loops for outputs and weights, plain torch for gradients,
``gradcheck`` for the formula). Its Triton path is checked without a GPU in
test_custom_op_kernel.py (values under TRITON_INTERPRET=1, tracing on fake CUDA tensors) and on a
GPU in test_gpu.py.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _rules import F64, assert_close, naive_torch, randn, ref_attention
from torch import nn

from selfattention.integrations.torch_library import attention_op

op = torch.ops.selfattention.attention.default


def _problem(B=2, H=4, Hkv=2, Tq=5, Tk=9, d=7, dv=7, seed=0, dtype=F64, mask="bool"):
    gen = torch.Generator().manual_seed(seed)
    q = randn(B, H, Tq, d, gen=gen, dtype=dtype, requires_grad=True)
    k = randn(B, Hkv, Tk, d, gen=gen, dtype=dtype, requires_grad=True)
    v = randn(B, Hkv, Tk, dv, gen=gen, dtype=dtype, requires_grad=True)
    m = None
    if mask == "bool":
        m = torch.rand(B, 1, Tq, Tk, generator=gen) > 0.3
        m[0, 0, 1] = False  # a row that may attend to nothing
    elif mask == "heads":
        m = torch.rand(B, H, 1, Tk, generator=gen) > 0.3
    return q, k, v, m


def _expanded(x, H):
    return x.repeat_interleave(H // x.shape[1], 1)  # GQA as copies: head h reads kv head h // G


CASES = [  # (problem kwargs, causal alignment or None)
    (dict(), "bottom_right"),
    (dict(), "top_left"),
    (dict(Hkv=4, mask=None), None),
    (dict(Hkv=1, mask="heads", Tq=9, Tk=5), "top_left"),
    (dict(Tq=1, Tk=13, dv=3, mask=None), "bottom_right"),
    (dict(Tq=97, Tk=97, d=16, dv=16, H=2, Hkv=1, B=1), "top_left"),
]


@pytest.mark.parametrize("kwargs, causal", CASES)
def test_values_lse_and_gradients_against_the_references(kwargs, causal):
    q, k, v, m = _problem(**kwargs)
    H = q.shape[1]
    scale = 0.6
    out, lse = attention_op(q, k, v, mask=m, causal=causal is not None,
                            causal_alignment=causal or "top_left", scale=scale, return_lse=True)
    kx, vx = _expanded(k, H), _expanded(v, H)
    expected, _ = ref_attention(q, kx, vx, mask=m, causal=causal, scale=scale)
    assert out.shape == expected.shape and out.dtype == q.dtype and lse.dtype == F64
    assert_close(out, expected)
    # lse = log Σ_j exp(scaled score), -inf where the row may attend to nothing
    s = (q @ kx.transpose(-2, -1) * scale).detach().numpy()
    allowed = np.ones(s.shape, dtype=bool)
    if m is not None:
        allowed &= np.broadcast_to(m.numpy(), s.shape)
    if causal is not None:
        Tq, Tk = s.shape[-2:]
        off = Tk - Tq if causal == "bottom_right" else 0
        allowed &= np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + off
    with np.errstate(divide="ignore"):
        expected_lse = np.log(np.where(allowed, np.exp(s), 0.0).sum(-1))
    assert_close(lse, expected_lse)
    dout = randn(*out.shape, gen=torch.Generator().manual_seed(9))
    naive = naive_torch(q, kx, vx, mask=m, causal=causal, scale=scale)
    for g, e in zip(torch.autograd.grad(out, (q, k, v), dout), torch.autograd.grad(naive, (q, k, v), dout),
                    strict=True):
        assert_close(g, e)


def test_gradcheck():
    q, k, v, m = _problem(Tq=4, Tk=6, d=3, dv=3)
    f = lambda q, k, v: attention_op(q, k, v, mask=m, causal=True, causal_alignment="bottom_right")  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_no_gradient_through_the_lse():
    q, k, v, _ = _problem(mask=None)
    _, lse = attention_op(q, k, v, return_lse=True)
    assert not lse.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_keeps_dtypes(dtype):
    q, k, v, m = _problem(dtype=dtype)
    out, lse = attention_op(q, k, v, mask=m, causal=True, return_lse=True)
    out.float().sum().backward()
    assert out.dtype == dtype and lse.dtype == torch.float32 and q.grad.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()


# Every case with contiguous inputs; the transposed layout (strides, not values) with the first.
@pytest.mark.parametrize("kwargs, causal, layout", [*((*c, "contiguous") for c in CASES[:4]),
                                                    (*CASES[0], "transposed")])
def test_opcheck(kwargs, causal, layout):
    q, k, v, m = _problem(**kwargs)
    if layout == "transposed":  # (B, T, H, d) storage seen as (B, H, T, d), as attention layers make it
        q, k, v = (x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
                   for x in (q, k, v))
    torch.library.opcheck(op, (q, k, v, m, 0.5, causal is not None, causal or "top_left"))


class _TinyAttention(nn.Module):
    """A grouped-query attention layer calling the operator, as a model would."""

    def __init__(self, D=32, H=4, Hkv=2):
        super().__init__()
        self.H, self.Hkv, self.d = H, Hkv, D // H
        self.q = nn.Linear(D, D)
        self.kv = nn.Linear(D, 2 * Hkv * self.d)
        self.o = nn.Linear(D, D)

    def forward(self, x, mask):
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.H, self.d).transpose(1, 2)  # (B, H, T, d)
        k, v = self.kv(x).view(B, T, 2, self.Hkv, self.d).permute(2, 0, 3, 1, 4)  # (B, Hkv, T, d) each
        z = attention_op(q, k, v, mask=mask, causal=True)  # (B, H, T, d)
        return self.o(z.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


def test_compiled_model_fullgraph_forward_and_backward():
    """Inductor, static shapes."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TinyAttention().to(F64)
    x = randn(2, 9, 32, gen=torch.Generator().manual_seed(1), requires_grad=True)
    mask = torch.rand(2, 1, 1, 9, generator=torch.Generator().manual_seed(2)) > 0.2
    compiled = torch.compile(model, fullgraph=True)(x, mask)  # a graph break would raise
    eager = model(x, mask)
    assert_close(compiled, eager)
    params = [x, *model.parameters()]
    dout = randn(*eager.shape, gen=torch.Generator().manual_seed(3))
    for gc, ge in zip(torch.autograd.grad(compiled, params, dout), torch.autograd.grad(eager, params, dout),
                      strict=True):
        assert_close(gc, ge)
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(q=torch.zeros(2, 5, 7)), "q has shape .* expected 4 dims"),
        (dict(k=torch.zeros(2, 3, 9, 7, dtype=F64)), "k .* Hkv dividing H"),
        (dict(v=torch.zeros(2, 2, 8, 7, dtype=F64)), "expected q .* k .* v"),
        (dict(k=torch.zeros(2, 2, 9, 7)), "k has dtype torch.float32 but q has torch.float64; expected one"),
        (dict(mask=torch.zeros(2, 1, 5, 9)), "mask must be a bool tensor"),
        (dict(mask=torch.ones(3, 1, 5, 9, dtype=torch.bool)), "mask has shape .* expected broadcastable"),
        (dict(causal=1), "causal must be a bool"),
        (dict(causal_alignment="middle"), "causal_alignment must be one of"),
        (dict(scale=-1.0), "scale must be a finite number > 0"),
        (dict(return_lse="yes"), "return_lse must be a bool"),
    ],
)
def test_errors(change, error):
    q, k, v, m = _problem()
    args = dict(q=q, k=k, v=v, mask=m, causal=False, causal_alignment="top_left", scale=None,
                return_lse=False)
    args.update(change)
    with pytest.raises((TypeError, ValueError), match=error):
        attention_op(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def test_lse_of_a_known_case():
    """One number worked by hand: two keys with scaled scores 0 and log 3 give lse = log 4."""
    q = torch.tensor([[[[1.0]]]], dtype=F64)
    k = torch.tensor([[[[0.0], [math.log(3)]]]], dtype=F64)
    v = torch.tensor([[[[1.0], [5.0]]]], dtype=F64)
    out, lse = attention_op(q, k, v, scale=1.0, return_lse=True)
    assert_close(lse, [[[math.log(4)]]])
    assert_close(out, [[[[0.25 * 1 + 0.75 * 5]]]])


def test_compiled_model_dynamic_shapes_one_graph():
    """aot_eager with dynamic shapes: two lengths, one compiled graph, values as eager (float64)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TinyAttention().to(F64)
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    from torch._dynamo.backends.debugging import aot_eager

    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=count)
    for T in (7, 12):
        x = randn(2, T, 32, gen=torch.Generator().manual_seed(T), requires_grad=True)
        mask = torch.ones(2, 1, 1, T, dtype=torch.bool)
        out = compiled(x, mask)
        assert_close(out, model(x, mask))
        assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(model(x, mask).sum(), x)[0])
    assert len(graphs) == 1
    assert "torch.ops.selfattention.attention" in graphs[0].code
    torch._dynamo.reset()


def test_registration():
    """triton_op where this torch has it (the compiler then sees the kernels on a GPU), a CPU kernel
    of its own, and our Triton kernels named to torch's compile caches."""
    from selfattention.integrations import torch_library as tl

    assert tl.TRITON_OP == hasattr(torch.library, "triton_op")
    for name in ("selfattention::attention", "selfattention::attention_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
    if tl.TRITON_OP and importlib.util.find_spec("triton") is not None:
        from selfattention.kernels import tuning

        listed = torch._library.triton.get_triton_kernels_for_op
        assert listed("selfattention::attention") == [tuning.KERNELS["fwd"]]
        assert listed("selfattention::attention_backward") == [tuning.KERNELS["dkdv"], tuning.KERNELS["dq"]]


_WITHOUT_TRITON_OP = """
import torch
del torch.library.triton_op  # as in a torch that lacks it (before 2.6)
from _rules import F64, assert_close, naive_torch
from selfattention.integrations import torch_library as tl
assert not tl.TRITON_OP
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, h, 6, 5, generator=g, dtype=F64, requires_grad=True) for h in (4, 2, 2))
m = torch.rand(2, 1, 6, 6, generator=g) > 0.3
torch.library.opcheck(torch.ops.selfattention.attention.default, (q, k, v, m, 0.5, True, "top_left"))
f = torch.compile(lambda q, k, v: tl.attention_op(q, k, v, mask=m, causal=True), fullgraph=True,
                  backend="aot_eager")
out = f(q, k, v)
expected = naive_torch(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), mask=m, causal="top_left")
assert_close(out, expected)
for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(expected.sum(), (q, k, v))):
    assert_close(a, b)
print("ok")
"""


@pytest.mark.subprocess
def test_custom_op_where_torch_has_no_triton_op():
    """The fallback registration (torch.library.custom_op) passes the same checks."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=tests + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_WITHOUT_TRITON_OP)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
