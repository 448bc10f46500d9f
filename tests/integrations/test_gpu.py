"""On a GPU only: the integrations with the Triton kernel under them.

- ``torch.ops.selfattention.attention`` runs the kernel: forward equal to ``flash_attention``,
  gradients (the operator's FlashAttention-2 backward in PyTorch) by FlashAttention's 2× rule
  against a float64 reference with a same-precision PyTorch implementation as the peer; opcheck;
  a model calling it compiles with ``fullgraph=True``.
- A tiny Llama with ``register(backend="triton")`` and ``"auto"``: float16 logits by the 2× rule
  of ``_hf.py`` against ``eager`` float16, and greedy ``generate()`` equal to ``eager``'s.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", reason="needs a CUDA GPU"
)
pytest.importorskip("triton", reason="Triton is not installed")

from selfattention.kernels import flash_attention  # noqa: E402

DEV = "cuda"


def _problem(dtype, B=2, H=4, Hkv=2, Tq=97, Tk=131, d=64, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    q = torch.randn(B, H, Tq, d, device=DEV, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(B, Hkv, Tk, d, device=DEV, dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(B, Hkv, Tk, d, device=DEV, dtype=dtype, generator=g).requires_grad_()
    mask = torch.rand(B, 1, Tq, Tk, device=DEV, generator=g) > 0.2
    return q, k, v, mask


def _naive(q, k, v, mask, alignment):
    """Plain PyTorch attention in q's dtype (the peer) or float64 (the reference): grouped heads
    expanded by copies, causality from its definition, masked scores -inf."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    Tq, Tk = q.shape[2], k.shape[2]
    off = Tk - Tq if alignment == "bottom_right" else 0
    keep = mask & (torch.arange(Tk, device=DEV)[None, :] <= torch.arange(Tq, device=DEV)[:, None] + off)
    s = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).masked_fill(~keep, float("-inf"))
    dead = ~keep.any(-1, keepdim=True)
    return torch.softmax(s.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0) @ v


def _within_rule(x, peer, ref, what):
    err = (x.double() - ref).abs().max().item()
    err_peer = (peer.double() - ref).abs().max().item()
    assert err <= 2 * err_peer + 1e-6, f"{what}: {err:.3g} > 2 × same-precision PyTorch {err_peer:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_operator_runs_the_kernel(dtype, alignment):
    from selfattention.integrations.torch_library import _use_kernel, attention_op

    q, k, v, mask = _problem(dtype)
    assert _use_kernel(q, k, v)
    kw = dict(mask=mask, causal=True, causal_alignment=alignment)
    out = attention_op(q, k, v, **kw)
    assert torch.equal(out, flash_attention(q, k, v, **kw))
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _naive(*x64, mask, alignment)
    peer = _naive(q, k, v, mask, alignment)
    _within_rule(out, peer, ref, "out")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    grads_peer = torch.autograd.grad(peer, (q, k, v), dout)
    grads_ref = torch.autograd.grad(ref, x64, dout.double())
    for name, a, b, r in zip("qkv", grads, grads_peer, grads_ref, strict=True):
        _within_rule(a, b, r, f"d{name}")


def test_operator_opcheck_on_the_gpu():
    q, k, v, mask = _problem(torch.float16, Tq=33, Tk=47)
    op = torch.ops.selfattention.attention.default
    torch.library.opcheck(op, (q, k, v, mask, 0.125, True, "bottom_right"))


def test_compiled_model_with_the_kernel():
    """fullgraph=True around the kernel; outputs and input gradients by the 2× rule, the peer being
    the same model uncompiled and the reference the model in float64 (the operator's blockwise path)."""
    import copy

    from test_custom_op import _TinyAttention

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TinyAttention(D=128, H=4, Hkv=2).to(DEV)
    model64 = copy.deepcopy(model).double()
    x = torch.randn(2, 67, 128, device=DEV, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    mask = torch.rand(2, 1, 1, 67, device=DEV) > 0.2
    compiled = torch.compile(model, fullgraph=True)(x, mask)
    eager, ref = model(x, mask), model64(x64, mask)
    _within_rule(compiled, eager, ref, "out")
    dout = torch.randn_like(compiled)
    _within_rule(torch.autograd.grad(compiled, x, dout)[0], torch.autograd.grad(eager, x, dout)[0],
                 torch.autograd.grad(ref, x64, dout.double())[0], "dx")
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_llama_on_the_gpu(backend):
    from _hf import error, llama, padded_batch, positions, within_rule

    import selfattention.integrations.transformers as hf

    name = hf.register(backend=backend, name=f"selfattention_gpu_{backend}")
    model = llama(seed=5).to(DEV)
    ids, am = padded_batch("left", seed=5)
    ids, am = ids.to(DEV), am.to(DEV)
    real = am.bool()

    def run(impl, dtype):
        model.set_attn_implementation(impl)
        model.to(dtype)
        with torch.no_grad():
            return model(ids, attention_mask=am, position_ids=positions(am)).logits.double()

    ref = torch.zeros(*ids.shape, model.config.vocab_size, dtype=torch.float64, device=DEV)
    for b in range(ids.shape[0]):
        r = real[b]
        model.set_attn_implementation("sdpa")
        model.to(torch.float64)
        with torch.no_grad():
            ref[b, r] = model(ids[b:b + 1, r], position_ids=positions(am[b:b + 1, r])).logits[0]
    eager = run("eager", torch.float16)
    ours = run(name, torch.float16)
    within_rule(error(ours, ref, real), error(eager, ref, real), f"float16 logits ({backend})")

    model.to(torch.float32)
    tokens = {}
    for impl in ("eager", name):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            tokens[impl] = model.generate(ids, attention_mask=am, max_new_tokens=8, do_sample=False)
    assert torch.equal(tokens[name], tokens["eager"])
