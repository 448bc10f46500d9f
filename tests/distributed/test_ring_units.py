"""The ring's parts in one process, without torch.distributed: the layouts, a block's share of a
block map, the log-sum-exp merge, the local block functions, the ring of one process, and the
arguments it refuses."""

from __future__ import annotations

import math
import random

import pytest
import torch
from _ring_cases import BY_NAME, CASES, F64, block_mask_of, inputs, local_row, owned, reference, tensor_bytes
from conftest import ATOL64, assert_close

from selfattention import block_mask
from selfattention.blockwise import block_backward, block_forward, block_forward_tiles
from selfattention.distributed import LAYOUTS, positions, ring_attention, shard_positions, shard_sequence
from selfattention.distributed.merge import merge_
from selfattention.distributed.regions import sub_block_mask


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_partition_the_sequence_as_defined(layout):
    for world in range(1, 6):
        for T in (0, 1, 2, 7, 13, 37, 40, 64):
            held = [positions(T, r, world, layout).tolist() for r in range(world)]
            assert held == [owned(T, world, layout, r) for r in range(world)]
            assert sorted(p for h in held for p in h) == list(range(T))  # each position once


def test_zigzag_balances_causal_work():
    """Rank r holds chunks r and 2N−1−r: the causal pairs (i ≥ j) its queries have are equal."""
    T, world = 64, 4
    work = [sum(p + 1 for p in positions(T, r, world, "zigzag").tolist()) for r in range(world)]
    assert len(set(work)) == 1


def test_one_process_holds_everything():
    x = torch.randn(2, 9, 3)
    assert torch.equal(shard_sequence(x), x) and shard_positions(9).tolist() == list(range(9))


def test_sub_block_mask_is_the_rectangle_of_the_dense_mask():
    rng = random.Random(0)
    seen = set()
    for trial in range(150):
        Tq, Tk = rng.randint(1, 70), rng.randint(1, 70)
        blk = rng.choice([16, 32, (16, 32)])
        B, H = rng.choice([1, 2]), rng.choice([1, 3])
        bits = torch.rand(B, H, Tq, Tk, generator=torch.Generator().manual_seed(trial)) < 0.5
        kind = rng.choice(["random", "causal", "window", "all", "none"])
        preds = {"random": lambda b, h, i, j, bits=bits: bits[b, h, i, j],
                 "causal": lambda b, h, i, j: (j <= i + 3) & (h >= 0),
                 "window": lambda b, h, i, j: (j <= i) & (j > i - 20) & (b >= 0),
                 "all": lambda b, h, i, j: j >= 0, "none": lambda b, h, i, j: j < 0}
        bm = block_mask.from_predicate(preds[kind], B=B, H=H, Tq=Tq, Tk=Tk, block=blk)
        qa, ka = rng.randrange(Tq), rng.randrange(Tk)
        qb, kb = rng.randint(qa + 1, Tq), rng.randint(ka + 1, Tk)
        want = bm.to_dense()[:, :, qa:qb, ka:kb]
        allows, sub = sub_block_mask(bm, qa, qb, ka, kb)
        seen.add(allows)
        if allows == "none":
            assert not want.any()
        elif allows == "all":
            assert want.all()
        else:
            assert torch.equal(sub.to_dense(), want) and want.any() and not want.all()
            n, m = qb - qa, kb - ka  # a FULL block never reaches past the rectangle
            for _, _, i, j in torch.nonzero(sub.kinds == block_mask.FULL).tolist():
                assert (i + 1) * sub.block_m <= n and (j + 1) * sub.block_n <= m
    assert seen == {"none", "all", "some"}


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_merge_equals_the_softmax_over_both_parts(dtype):
    """Two halves of the keys, each with its own softmax, merged: the softmax over all of them —
    also where the sums are far past e^88.7 (float32's largest), and for rows one or both halves
    cannot see (out 0, lse −inf)."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 12, generator=g, dtype=F64) * 3
    s[1] += 500.0  # e^500: float32 and float64 both overflow without the max taken out
    s[2] -= 800.0
    v = torch.randn(12, 4, generator=g, dtype=F64)
    seen = torch.ones(5, 12, dtype=torch.bool)
    seen[3, :7] = False  # row 3: the first part sees nothing
    seen[4, :] = False  # row 4: nothing at all
    s = s.masked_fill(~seen, float("-inf"))

    def part(cols):
        lse = torch.logsumexp(s[:, cols], -1)
        w = torch.exp(s[:, cols] - lse.masked_fill(lse.isneginf(), 0).unsqueeze(-1))
        return (w @ v[cols]).to(dtype), lse.to(dtype)

    out, lse = part(slice(0, 7))
    merge_(out, lse, *part(slice(7, 12)))
    want_lse = torch.logsumexp(s, -1)
    want = torch.nan_to_num(torch.softmax(s, -1)) @ v
    assert torch.isfinite(out).all() and torch.equal(lse.isneginf(), want_lse.isneginf())
    tol = ATOL64 if dtype == F64 else 8 * torch.finfo(torch.float32).eps * 500  # a few roundings of |lse|
    alive = ~want_lse.isneginf()
    assert_close(lse[alive], want_lse[alive], atol=tol)
    assert_close(out, want, atol=ATOL64 if dtype == F64 else 1e-5)
    assert torch.equal(out[4], torch.zeros(4, dtype=dtype))


def test_block_functions_equal_attention_with_gqa_offsets_maps_and_padding():
    g = torch.Generator().manual_seed(3)
    B, H, Hkv, n, m, d = 2, 6, 2, 21, 34, 8
    q, k, v, do = (torch.randn(*s, generator=g, dtype=F64) for s in
                   ((B, H, n, d), (B, Hkv, m, d), (B, Hkv, m, 5), (B, H, n, 5)))
    bm = block_mask.from_predicate(lambda b, h, i, j: (i + j + h) % 4 != 0, H=H, Tq=n, Tk=m, block=16)
    lengths = torch.tensor([30, 0])
    i, j = torch.arange(n).view(-1, 1), torch.arange(m)
    padded = bm.to_dense() & (j < lengths.view(B, 1, 1, 1))
    for kw, dense in ((dict(offset=-4), (j <= i - 4).expand(B, H, n, m)),
                      (dict(block_mask=bm, key_lengths=lengths), padded)):
        scale = 0.3
        out, lse = block_forward(q, k, v, scale=scale, **kw)
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        want = torch.nn.functional.scaled_dot_product_attention  # not ours: an independent peer
        ref = want(qg, kg.repeat_interleave(H // Hkv, 1), vg.repeat_interleave(H // Hkv, 1), attn_mask=dense,
                   scale=scale)
        dead = ~dense.any(-1, keepdim=True)
        ref = ref.masked_fill(dead, 0.0)
        assert_close(out, ref)
        grads = block_backward(q, k, v, out, do, lse, (do * out).sum(-1), scale=scale, **kw)
        for got, want_grad in zip(grads, torch.autograd.grad(ref, (qg, kg, vg), do), strict=True):
            assert_close(got, want_grad)


@pytest.mark.parametrize("name", [c.name for c in CASES if c.dtype == F64])
def test_a_ring_of_one_process_is_attention(name):
    """Without torch.distributed: one process holds everything, and the ring is one local block."""
    c = BY_NAME[name]
    q, k, v, do = inputs(c)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    with local_row(c):
        out = ring_attention(q, k, v, layout=c.layout, causal=c.causal, causal_alignment=c.alignment,
                             mask=block_mask_of(c), lengths=c.lengths, scale=c.scale)
        grads = torch.autograd.grad(out, (q, k, v), do)
    want = reference(c, q, k, v, do)
    assert_close(out, want[0])
    for got, w in zip(grads, want[2:], strict=True):
        assert_close(got, w)


def _qkv(B=1, H=2, Hkv=2, T=10, d=4):
    return torch.randn(B, H, T, d), torch.randn(B, Hkv, T, d), torch.randn(B, Hkv, T, d)


R = ring_attention


@pytest.mark.parametrize("call, error, words", [
    (lambda q, k, v: R(q[0], k, v), ValueError, "q has shape (2, 10, 4), expected 4 dims"),
    (lambda q, k, v: R(q, k.double(), v), TypeError, "k has dtype torch.float64 but q has"),
    (lambda q, k, v: R(q.int(), k, v), TypeError, "q has dtype torch.int32, expected a floating"),
    (lambda q, k, v: R(q, k[:, :, :5], v), ValueError, "do not fit"),
    (lambda q, k, v: R(q, k[:, :1].expand(1, 3, 10, 4), v[:, :1].expand(1, 3, 10, 4)),
     ValueError, "expected a divisor of 2"),
    (lambda q, k, v: R(q, k, v, layout="striped"), ValueError, "layout must be one of"),
    (lambda q, k, v: R(q, k, v, causal=1), TypeError, "causal must be a bool"),
    (lambda q, k, v: R(q, k, v, causal_alignment="left"), ValueError, "causal_alignment must be"),
    (lambda q, k, v: R(q, k, v, mask=torch.ones(10, 10, dtype=torch.bool)), TypeError,
     "a dense (Tq, Tk) mask is the size ring attention avoids"),
    (lambda q, k, v: R(q, k, v, mask=block_mask.causal(10, 10, block=16), causal=True), ValueError,
     "pass causal=False"),
    (lambda q, k, v: R(q, k, v, mask=block_mask.causal(12, 10, block=16)), ValueError,
     "block mask has shape (1, 1, 12, 10), expected broadcastable to (1, 2, 10, 10)"),
    (lambda q, k, v: R(q, k, v, lengths=[11]), ValueError, "lengths must lie in [0, Tk = 10]"),
    (lambda q, k, v: R(q, k, v, lengths=[3, 4]), ValueError, "one per batch row (B = 1)"),
    (lambda q, k, v: R(q, k, v, lengths=[2.5]), TypeError, "lengths must be a list or 1-D tensor"),
    (lambda q, k, v: R(q, k, v, scale=-1.0), ValueError, "scale must be a finite number > 0"),
    (lambda q, k, v: R(q, k, v, return_lse="yes"), TypeError, "return_lse must be True or False"),
    (lambda q, k, v: R(q, k, v, group="world"), ValueError, "torch.distributed is not initialized"),
    (lambda q, k, v: shard_sequence(q, dim=4), ValueError, "dim must be an int in [-4, 4)"),
])
def test_bad_arguments_are_refused_by_name(call, error, words):
    with pytest.raises(error) as err:
        call(*_qkv())
    assert words in str(err.value) and "\n" not in str(err.value)


def test_float32_large_scores_stay_finite_in_one_process():
    """Even one block is merged (into the empty start): sums past e^88.7 must not overflow there."""
    c = BY_NAME["float32 large scores"]
    q, k, v, _ = inputs(c)
    scores = (q.double() @ k.double().transpose(-2, -1)) * c.scale
    assert torch.logsumexp(scores, -1).max() > math.log(torch.finfo(torch.float32).max)
    out = ring_attention(q, k, v, scale=c.scale)
    want = reference(c, *(x.double() for x in inputs(c)))[0]
    assert torch.isfinite(out).all() and (out.double() - want).abs().max() < 1e-3


def test_the_local_block_functions_hold_two_tiles_at_most():
    """The blockwise loops free each tile before allocating the next: the forward holds one
    (T × 512) tile of scores at a time, the backward two (P and dP); the rest is O(T·d), here under
    half a tile (d = 16). A loop that kept the previous iteration's tiles would hold one more."""
    g = torch.Generator().manual_seed(0)
    T, d = 2048, 16
    q, k, v, do = (torch.randn(1, 1, T, d, generator=g) for _ in range(4))
    tile = T * 512 * 4
    out, lse = block_forward(q, k, v, scale=0.25)
    delta = (do * out).sum(-1)
    peak_fwd, _ = tensor_bytes(lambda: block_forward(q, k, v, scale=0.25))
    peak_bwd, _ = tensor_bytes(lambda: block_backward(q, k, v, out, do, lse, delta, scale=0.25))
    assert peak_fwd < 1.5 * tile, (peak_fwd, tile)
    assert peak_bwd < 2.5 * tile, (peak_bwd, tile)


def test_query_tiles_give_the_same_block():
    """block_forward with block_q (its tiles through block_forward_tiles) and block_backward with
    block_q and ``into`` give what the untiled ones give — causal offsets, block maps, padding and
    GQA alike — and ``into`` is added to, not overwritten; rows no key reaches are not yielded."""
    g = torch.Generator().manual_seed(5)
    B, H, Hkv, n, m, d = 2, 6, 2, 23, 30, 8
    q, k, v, do = (torch.randn(*s, generator=g, dtype=F64) for s in
                   ((B, H, n, d), (B, Hkv, m, d), (B, Hkv, m, 5), (B, H, n, 5)))
    bm = block_mask.from_predicate(lambda b, h, i, j: (i * j + h) % 5 != 1, H=H, Tq=n, Tk=m, block=16)
    for kw in (dict(offset=-9), dict(offset=4, key_lengths=torch.tensor([30, 11])), dict(block_mask=bm)):
        out, lse = block_forward(q, k, v, scale=0.4, block_size=8, **kw)
        tiled = block_forward(q, k, v, scale=0.4, block_size=8, block_q=5, **kw)
        assert_close(tiled[0], out)
        assert torch.equal(tiled[1].isneginf(), lse.isneginf())
        assert torch.equal(lse.isneginf(), out.eq(0).all(-1))
        tiles = block_forward_tiles(q, k, v, scale=0.4, block_size=8, block_q=5, **kw)
        seen = [(r0, r1) for r0, r1, *_ in tiles]
        assert all(not bool(lse[:, :, r0:r1].isneginf().all()) for r0, r1 in seen)
        if "offset" in kw and kw["offset"] < 0:
            assert seen[0][0] > 0  # the first rows see no key under offset −9: never computed
        delta = (do * out).sum(-1)
        want = block_backward(q, k, v, out, do, lse, delta, scale=0.4, block_size=8, **kw)
        start = [torch.randn(x.shape, generator=g, dtype=F64) for x in (q, k, v)]
        got = block_backward(q, k, v, out, do, lse, delta, scale=0.4, block_size=8, block_q=5,
                             into=tuple(x.clone() for x in start), **kw)
        for x, w, s0 in zip(got, want, start, strict=True):
            assert_close(x - s0, w)


def test_query_tiles_bound_the_tiles_whatever_the_queries():
    """With block_q, the forward holds one (block_q × block) tile of scores at a time and the
    backward two, plus block_q rows of q-sized running values — not T rows: a chunk of 2048 queries
    costs what 128 do. Without block_q the tile is (T × block), 16 times larger here."""
    g = torch.Generator().manual_seed(0)
    T, d, bq = 2048, 16, 128
    q, k, v, do = (torch.randn(1, 1, T, d, generator=g) for _ in range(4))
    out, lse = block_forward(q, k, v, scale=0.25)
    delta = (do * out).sum(-1)
    into = tuple(torch.zeros_like(x) for x in (q, k, v))
    tile = bq * 512 * 4
    rows = bq * d * 4  # one tile's rows of q, out or dq

    def forward():
        for _ in block_forward_tiles(q, k, v, scale=0.25, block_q=bq):
            pass

    peak_fwd, _ = tensor_bytes(forward)
    peak_bwd, _ = tensor_bytes(lambda: block_backward(q, k, v, out, do, lse, delta, scale=0.25, block_q=bq,
                                                      into=into))
    assert peak_fwd <= tile + 8 * rows, (peak_fwd, tile)
    assert peak_bwd <= 2 * tile + 8 * rows + 2 * 512 * d * 4, (peak_bwd, tile)


def test_a_peer_is_named_in_its_users_words():
    """peers.guard turns a failure of torch.distributed into one PeerError in its user's words: the
    ring's "another process of the ring", training's "another training process" (train.distributed
    re-exports the plumbing, so every existing import still finds it). Other errors pass through."""
    from selfattention.distributed import peers
    from selfattention.distributed.comm import Comm
    from selfattention.train import distributed as training

    def message(guard) -> str:
        with pytest.raises(peers.PeerError) as err, guard:
            raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection reset by peer. x")
        return str(err.value)

    said = " died or did not answer within 5 s while {} (Connection reset by peer)"
    assert message(Comm(None, 1, 2, "gloo", 5.0).guard("passing keys")) == (
        "rank 1 of 2: another process of the ring" + said.format("passing keys"))
    assert message(training.guard(peers.Dist(1, 2, 0, "gloo", 5.0), "training step 3")) == (
        "rank 1 of 2: another training process" + said.format("training step 3"))
    assert training.Dist is peers.Dist and training.PeerError is peers.PeerError
    assert training.teardown is peers.teardown
    with pytest.raises(ValueError, match="not a peer"), peers.guard(peers.Dist(0, 2), "x"):
        raise ValueError("not a peer")
