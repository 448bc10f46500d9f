"""On a GPU only: the integrations with the Triton kernel under them.

- ``torch.ops.selfattention.attention`` (a ``triton_op``) runs our kernels: forward equal to
  ``flash_attention``, the backward through the dK/dV and dQ kernels (launches counted), forward
  and gradients by FlashAttention's 2× rule against a float64 reference with SDPA in the same
  precision as the peer; opcheck on CUDA (contiguous and strided inputs); a model calling it
  compiled by Inductor with ``fullgraph=True``, whose forward and backward run our three kernels
  (the profiler's CUDA kernel names).
- A tiny Llama with ``register(backend="triton")`` and ``"auto"``: float16 logits by the 2× rule
  of ``_hf.py`` against ``eager`` float16, and greedy ``generate()`` equal to ``eager``'s.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", reason="needs a CUDA GPU"
)
pytest.importorskip("triton", reason="Triton is not installed")

from selfattention.kernels import flash_attention, launch  # noqa: E402

DEV = "cuda"
KERNEL_NAMES = ("_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel")


def _problem(dtype, B=2, H=4, Hkv=2, Tq=97, Tk=131, d=64, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    q = torch.randn(B, H, Tq, d, device=DEV, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(B, Hkv, Tk, d, device=DEV, dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(B, Hkv, Tk, d, device=DEV, dtype=dtype, generator=g).requires_grad_()
    mask = torch.rand(B, 1, Tq, Tk, device=DEV, generator=g) > 0.2
    mask[..., 0] = True  # every row sees a key under either alignment: SDPA gives NaN for one that does not
    return q, k, v, mask


def _keep(mask, Tq, Tk, alignment):
    off = Tk - Tq if alignment == "bottom_right" else 0
    return mask & (torch.arange(Tk, device=DEV)[None, :] <= torch.arange(Tq, device=DEV)[:, None] + off)


def _naive(q, k, v, mask, alignment):
    """Plain PyTorch attention (here the float64 reference): grouped heads expanded by copies,
    causality from its definition, masked scores -inf."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    keep = _keep(mask, q.shape[2], k.shape[2], alignment)
    s = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).masked_fill(~keep, float("-inf"))
    dead = ~keep.any(-1, keepdim=True)
    return torch.softmax(s.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0) @ v


def _sdpa(q, k, v, mask, alignment):
    """The peer: torch's SDPA in the inputs' precision, grouped heads expanded by copies."""
    G = q.shape[1] // k.shape[1]
    keep = _keep(mask, q.shape[2], k.shape[2], alignment)
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)  # (B, H, Tk, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


def _within_rule(x, peer, ref, what):
    """FlashAttention's rule: error vs float64 ≤ 2 × the same-precision peer's + one rounding of x."""
    err = (x.double() - ref).abs().max().item()
    err_peer = (peer.double() - ref).abs().max().item()
    floor = torch.finfo(x.dtype).eps * ref.abs().max().item()
    assert err <= 2 * err_peer + floor, f"{what}: {err:.3g} > 2 × peer's {err_peer:.3g} + {floor:.2g}"


@pytest.fixture
def launches(monkeypatch):
    """Counts of the launchers' calls by kernel ("fwd", "dkdv", "dq")."""
    counts = {"fwd": 0, "dkdv": 0, "dq": 0}
    for kind in counts:
        real = getattr(launch, f"_launch_{kind}")

        def counted(*args, _real=real, _kind=kind, **kwargs):
            counts[_kind] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(launch, f"_launch_{kind}", counted)
    return counts


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_operator_runs_the_kernel(dtype, alignment, launches):
    from selfattention.integrations.torch_library import _use_kernel, attention_op

    q, k, v, mask = _problem(dtype)
    assert _use_kernel(q, k, v)
    kw = dict(mask=mask, causal=True, causal_alignment=alignment)
    out = attention_op(q, k, v, **kw)
    assert torch.equal(out, flash_attention(q, k, v, **kw))
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _naive(*x64, mask, alignment)
    peer = _sdpa(q, k, v, mask, alignment)
    _within_rule(out, peer, ref, "out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device, out.dtype)
    before = dict(launches)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    assert (launches["dkdv"] - before["dkdv"], launches["dq"] - before["dq"]) == (1, 1)  # our backward
    grads_peer = torch.autograd.grad(peer, (q, k, v), dout)
    grads_ref = torch.autograd.grad(ref, x64, dout.double())
    for name, a, b, r in zip("qkv", grads, grads_peer, grads_ref, strict=True):
        _within_rule(a, b, r, f"d{name}")


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_operator_opcheck_on_the_gpu(layout):
    q, k, v, mask = _problem(torch.float16, Tq=33, Tk=47)
    if layout == "strided":  # (B, T, H, d) storage seen as (B, H, T, d), as attention layers make it
        q, k, v = (x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
                   for x in (q, k, v))
    op = torch.ops.selfattention.attention.default
    torch.library.opcheck(op, (q, k, v, mask, 0.125, True, "bottom_right"))


def test_compiled_model_with_the_kernel():
    """Inductor, fullgraph=True, around the kernels: outputs and input gradients by the 2× rule (the
    peer: the same model uncompiled; the reference: the model in float64, the operator's blockwise
    path), and the profiler sees our three kernels run in the compiled forward and backward."""
    import copy

    from test_custom_op import _TinyAttention

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TinyAttention(D=128, H=4, Hkv=2).to(DEV)
    model64 = copy.deepcopy(model).double()
    x = torch.randn(2, 67, 128, device=DEV, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    mask = torch.rand(2, 1, 1, 67, device=DEV) > 0.2
    compiled_model = torch.compile(model, fullgraph=True)
    compiled_model(x, mask)  # compile outside the profile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        compiled = compiled_model(x, mask)
        dout = torch.randn_like(compiled)  # seeded above (torch.manual_seed(0))
        dx = torch.autograd.grad(compiled, x, dout)[0]
        torch.cuda.synchronize()
    ran = {e.name for e in prof.events()}
    for name in KERNEL_NAMES:
        assert any(name in r for r in ran), f"{name} did not run; CUDA kernels: {sorted(ran)}"
    eager, ref = model(x, mask), model64(x64, mask)
    _within_rule(compiled, eager, ref, "out")
    dx_eager = torch.autograd.grad(eager, x, dout)[0]
    _within_rule(dx, dx_eager, torch.autograd.grad(ref, x64, dout.double())[0], "dx")
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
