"""``torch.compile(fullgraph=True)`` on ``attention(...)`` (every CPU backend) and on ``MultiHeadAttention``.

``fullgraph=True`` turns any graph break into an error, so a call that returns proves the input
checks and the dispatch trace into one graph. Values are checked in float64 against the float64
references of tests/_rules.py (NumPy loops for outputs, a plain-torch implementation for
gradients), so the tolerance is float64's (``ATOL64``), not a guess at Inductor's rounding.
Inductor's C++ code generation takes tens of seconds per graph on a 2-core CPU, so the cases are
few, each graph covers several, and the tests that are about tracing (graph breaks, backward
graphs, dynamic shapes) use the ``aot_eager`` backend: the same dynamo capture and AOT autograd
as Inductor, without the code generation. Inductor itself compiles the forward of every backend
and ``MultiHeadAttention``'s forward and backward.
"""

from __future__ import annotations

import pytest
import torch
from _rules import F64, assert_close, naive_torch, randn, ref_attention

from selfattention import MultiHeadAttention, attention
from selfattention.layers import KVCache

CPU_BACKENDS = ("auto", "matrix", "blockwise", "torch")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _problem(seed=0):
    """Grouped-query layout (q (B, Hkv, G, Tq, d), k and v (B, Hkv, 1, Tk, d)), a key-padding mask
    with one row that sees nothing, bottom-right causal: the awkward paths in one problem."""
    gen = torch.Generator().manual_seed(seed)
    q = randn(2, 2, 2, 5, 7, gen=gen, requires_grad=True)
    k = randn(2, 2, 1, 9, 7, gen=gen, requires_grad=True)
    v = randn(2, 2, 1, 9, 7, gen=gen, requires_grad=True)
    mask = torch.rand(2, 1, 1, 5, 9, generator=gen) > 0.3
    mask[1, ..., 2, :] = False  # a query row that may attend to nothing: output 0, gradient 0
    return q, k, v, mask


def _all_backends(mask):
    kw = dict(mask=mask, causal=True, causal_alignment="bottom_right", scale=0.4)
    return lambda q, k, v: torch.stack([attention(q, k, v, backend=b, **kw) for b in CPU_BACKENDS])


def test_attention_every_cpu_backend_inductor_forward():
    q, k, v, mask = _problem()
    with torch.no_grad():
        outs = torch.compile(_all_backends(mask), fullgraph=True)(q, k, v)
    expected, _ = ref_attention(q, k, v, mask=mask, causal="bottom_right", scale=0.4)
    for out in outs:
        assert_close(out, expected)


def test_attention_every_cpu_backend_forward_and_backward():
    q, k, v, mask = _problem()
    outs = torch.compile(_all_backends(mask), fullgraph=True, backend="aot_eager")(q, k, v)
    expected, _ = ref_attention(q, k, v, mask=mask, causal="bottom_right", scale=0.4)
    dout = randn(*outs.shape[1:], gen=torch.Generator().manual_seed(1))
    naive = naive_torch(q, k, v, mask=mask, causal="bottom_right", scale=0.4)
    expected_grads = torch.autograd.grad(naive, (q, k, v), dout)
    for i, backend in enumerate(CPU_BACKENDS):
        assert_close(outs[i], expected)
        grads = torch.autograd.grad(outs[i], (q, k, v), dout, retain_graph=True)
        for name, g, e in zip("qkv", grads, expected_grads, strict=True):
            assert torch.isfinite(g).all(), (backend, name)
            assert_close(g, e)
    assert (outs[:, 1, ..., 2, :] == 0).all()  # the row that sees nothing, in every backend


def test_attention_dynamic_shapes():
    f = torch.compile(lambda q, k, v, m: attention(q, k, v, mask=m, causal=True),
                      fullgraph=True, dynamic=True, backend="aot_eager")
    for T in (6, 11):  # right for both lengths (whether it compiles once: the test below)
        gen = torch.Generator().manual_seed(T)
        q, k, v = (randn(2, 3, T, 8, gen=gen) for _ in range(3))
        mask = torch.rand(2, 1, 1, T, generator=gen) > 0.2
        assert_close(f(q, k, v, mask), ref_attention(q, k, v, mask=mask, causal="top_left")[0])


def test_attention_dynamic_shapes_compile_once():
    from torch._dynamo.backends.debugging import aot_eager

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    f = torch.compile(lambda q, m: attention(q, q, q, mask=m, causal=True), fullgraph=True, dynamic=True,
                      backend=keep)
    counts = []
    for T in (6, 11):
        gen = torch.Generator().manual_seed(T)
        f(randn(2, 3, T, 8, gen=gen), torch.rand(2, 1, 1, T, generator=gen) > 0.2)
        counts.append(len(graphs))
    assert counts[1] == counts[0], f"graphs after each length: {counts}"


def test_attention_errors_stay_ours_under_compile():
    """Without fullgraph, a bad argument is our ValueError with its message. (With fullgraph=True
    dynamo wraps it in torch._dynamo.exc.Unsupported, whose cause is our error.)"""
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        torch.compile(lambda q: attention(q, q, q, backend="fast"))(q)


def _mha(seed=0):
    torch.manual_seed(seed)
    return MultiHeadAttention(32, 4, num_kv_heads=2).to(F64)


def test_multi_head_attention_fullgraph_forward_and_backward():
    mha = _mha()
    gen = torch.Generator().manual_seed(2)
    x = randn(2, 7, 32, gen=gen, requires_grad=True)
    mask = torch.rand(2, 1, 1, 7, generator=gen) > 0.2  # key padding, (B, 1, 1, T)

    def f(m, x):
        out = m(x, mask=mask, causal=True)
        out_w, w = m(x, need_weights=True)  # the matrix tier's weights, in the same graph
        return out, out_w, w

    compiled = torch.compile(f, fullgraph=True)(mha, x)
    eager = f(mha, x)
    for c, e in zip(compiled, eager, strict=True):
        assert_close(c, e)
    dout = [randn(*t.shape, gen=gen) for t in compiled]
    params = [x, *mha.parameters()]
    for gc, ge in zip(torch.autograd.grad(compiled, params, dout), torch.autograd.grad(eager, params, dout),
                      strict=True):
        assert_close(gc, ge)


def test_multi_head_attention_kv_cache_decoding():
    mha = _mha(1)
    x = randn(2, 4, 32, gen=torch.Generator().manual_seed(3))
    step = torch.compile(lambda m, x, c: m(x, causal=True, cache=c), fullgraph=True, dynamic=True,
                         backend="aot_eager")
    cache, eager_cache = KVCache(), KVCache()
    with torch.no_grad():
        outs = []
        for t in range(4):  # one new token at a time against a growing cache
            outs.append(step(mha, x[:, t:t + 1], cache))
            assert_close(outs[-1], mha(x[:, t:t + 1], causal=True, cache=eager_cache))
        whole = mha(x, causal=True)
    assert len(cache) == 4
    assert_close(torch.cat(outs, 1), whole)  # token by token = all at once, causally
