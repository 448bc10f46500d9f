"""Block maps (``selfattention.block_mask``): each block's kind checked block by block against the
dense mask, the kernel's lists against the kinds, the builders against masks written from their
definitions, and the blockwise tier with a block map against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import F64, assert_close, naive_torch, randn, ref_attention

from selfattention import block_mask, blockwise_attention, masks
from selfattention.block_mask import FULL, PARTIAL, SKIP, BlockMask

SHAPES = [(1, 1), (1, 130), (97, 97), (97, 130), (130, 33), (64, 64)]


def expected_kinds(dense: torch.Tensor, bm: int, bn: int) -> np.ndarray:
    """Each block's kind by the definition, one block at a time: SKIP if nothing in it is allowed,
    FULL if it lies inside (Tq, Tk) and everything in it is allowed, else PARTIAL."""
    B, H, Tq, Tk = dense.shape
    nQ, nK = -(-Tq // bm), -(-Tk // bn)
    out = np.zeros((B, H, nQ, nK), dtype=np.int8)
    for b in range(B):
        for h in range(H):
            for r in range(nQ):
                for c in range(nK):
                    blk = dense[b, h, r * bm : (r + 1) * bm, c * bn : (c + 1) * bn]
                    inside = (r + 1) * bm <= Tq and (c + 1) * bn <= Tk
                    out[b, h, r, c] = SKIP if not blk.any() else FULL if inside and blk.all() else PARTIAL
    return out


def check_map(bm: BlockMask, dense: torch.Tensor) -> None:
    """The map, its tiles and its lists all describe ``dense`` (B, H, Tq, Tk)."""
    assert bm.shape == tuple(dense.shape)
    assert torch.equal(bm.to_dense(), dense)
    kinds = expected_kinds(dense, bm.block_m, bm.block_n)
    np.testing.assert_array_equal(bm.kinds.numpy(), kinds)
    for by_rows, count, index, tile in (
        (True, bm.kv_count, bm.kv_index, bm.kv_tile),
        (False, bm.q_count, bm.q_index, bm.q_tile),
    ):
        k = kinds if by_rows else kinds.transpose(0, 1, 3, 2)
        tile_of = bm.tile_of if by_rows else bm.tile_of.transpose(-2, -1)
        for idx in np.ndindex(*k.shape[:3]):
            live = np.nonzero(k[idx] != SKIP)[0]
            n = int(count[idx])
            assert n == len(live)
            np.testing.assert_array_equal(index[idx][:n].numpy(), live)  # ascending, live blocks only
            for blk, t in zip(live, tile[idx][:n].tolist(), strict=True):
                assert t == (int(tile_of[idx][blk]) if k[idx][blk] == PARTIAL else -1)


@pytest.mark.parametrize("Tq, Tk", SHAPES)
@pytest.mark.parametrize("block", [16, (32, 16), 64])
def test_from_mask_random(Tq, Tk, block):
    g = torch.Generator().manual_seed(Tq * 1000 + Tk)
    dense = torch.rand(2, 3, Tq, Tk, generator=g) < 0.7
    dense[0, 1] = True  # a head with every block FULL or edge-PARTIAL
    dense[1, 2] = False  # a head with every block SKIP
    check_map(block_mask.from_mask(dense, block=block), dense)


def test_slabs_give_the_same_map(monkeypatch):
    dense = torch.rand(1, 2, 200, 90, generator=torch.Generator().manual_seed(1)) < 0.5
    whole = block_mask.from_mask(dense, block=16)
    monkeypatch.setattr(block_mask, "_CHUNK_ELEMENTS", 1)  # one query block per slab
    sliced = block_mask.from_mask(dense, block=16)
    for name in ("kinds", "kv_count", "kv_index", "q_count", "q_index"):  # tiles may be numbered otherwise
        assert torch.equal(getattr(whole, name), getattr(sliced, name)), name
    check_map(sliced, dense)


@pytest.mark.parametrize("Tq, Tk", SHAPES)
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_causal_and_window(Tq, Tk, alignment):
    off = Tk - Tq if alignment == "bottom_right" else 0
    check_map(block_mask.causal(Tq, Tk, alignment, block=16), masks.causal(Tq, Tk, alignment)[None, None])
    window = 20
    i, j = np.arange(Tq)[:, None], np.arange(Tk)[None, :]
    want = torch.from_numpy((j <= i + off) & (j > i + off - window))  # written from the definition
    check_map(block_mask.sliding_window(Tq, Tk, window, alignment, block=16), want[None, None])


def test_window_block_counts():
    """T = 1024 in blocks of 128: a window of 128 touches the diagonal blocks and the ones below,
    all partial; a window of 256 makes the first sub-diagonal FULL."""
    assert block_mask.sliding_window(1024, 1024, 128).counts() == {"skip": 49, "partial": 15, "full": 0}
    assert block_mask.sliding_window(1024, 1024, 256).counts() == {"skip": 43, "partial": 14, "full": 7}
    assert block_mask.sliding_window(1024, 1024, 256).density() == pytest.approx(21 / 64)


@pytest.mark.parametrize("causal", [False, True])
def test_documents(causal):
    doc = torch.tensor([[0] * 40 + [1] * 50 + [2] * 7, [0] * 97, [5] * 30 + [3] * 67])  # (B, T)
    want = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
    if causal:
        want &= torch.ones(97, 97, dtype=torch.bool).tril()
    check_map(block_mask.documents(doc, causal=causal, block=16), want[:, None])


def test_prefix_lm_and_key_padding():
    prefix, T = torch.tensor([0, 10, 97]), 97
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    want = (j <= i) | (j < prefix[:, None, None])  # (B, T, T)
    check_map(block_mask.prefix_lm(prefix, T, block=32), want[:, None])
    lengths = torch.tensor([0, 50, 130])
    want = masks.from_lengths(lengths, 130).expand(3, 1, 97, 130)
    check_map(block_mask.key_padding(lengths, 97, 130, block=32), want)
    check_map(block_mask.from_mask(masks.from_lengths(lengths, 130), Tq=97, block=32), want)


def test_a_map_with_no_partial_block():
    """Lengths on block boundaries: every block FULL or SKIP, no tile stored at all."""
    bm = block_mask.key_padding(torch.tensor([32, 0]), 16, 64, block=16)
    assert bm.counts()["partial"] == 0 and len(bm.tiles) == 0
    check_map(bm, masks.from_lengths(torch.tensor([32, 0]), 64).expand(2, 1, 16, 64))
    q, k = torch.randn(2, 1, 16, 4, dtype=F64), torch.randn(2, 1, 64, 4, dtype=F64)
    out = blockwise_attention(q, k, k, mask=bm)
    assert (out[1] == 0).all() and torch.isfinite(out).all()


def test_from_predicate_with_heads():
    bm = block_mask.from_predicate(lambda b, h, i, j: (j - i).abs() <= h, H=3, Tq=40, Tk=40, block=16)
    i, j = torch.arange(40)[:, None], torch.arange(40)[None, :]
    check_map(bm, torch.stack([(j - i).abs() <= h for h in range(3)])[None])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: block_mask.causal(4, 4, block=24), ValueError, "power of two"),
        (lambda: block_mask.causal(4, 4, block=8), ValueError, "power of two >= 16"),
        (lambda: block_mask.causal(4, 4, block=True), ValueError, "power of two"),
        (lambda: block_mask.causal(4, 4, block=1.5), ValueError, "power of two"),
        (lambda: block_mask.causal(4, 4, block=(16, 16, 16)), ValueError, "power of two"),
        (lambda: block_mask.causal(4, 4, "middle"), ValueError, "alignment must be one of"),
        (lambda: block_mask.causal(-1, 4), ValueError, "Tq must be an int >= 0"),
        (lambda: block_mask.sliding_window(4, 4, 0), ValueError, "window must be an int >= 1"),
        (lambda: block_mask.from_mask(torch.ones(4, 4)), TypeError, "bool tensor"),
        (lambda: block_mask.from_mask(torch.ones(4, dtype=torch.bool)), ValueError, "expected"),
        (lambda: block_mask.from_mask(torch.ones(1, 1, 3, 4, dtype=torch.bool), Tq=5), ValueError, "Tq=5"),
        (lambda: block_mask.from_predicate(lambda b, h, i, j: i - j, Tq=4, Tk=4), TypeError, "bool tensor"),
        (lambda: block_mask.documents(torch.zeros(2, 3)), ValueError, "doc_ids"),
        (lambda: block_mask.prefix_lm(torch.zeros(2, 2, dtype=torch.long), 3), ValueError, "prefix_lengths"),
        (lambda: block_mask.prefix_lm(torch.tensor([2, -1]), 3), ValueError, r"prefix_lengths must .* ≥ 0"),
        (lambda: block_mask.key_padding(torch.tensor([-1]), 4, 4), ValueError, r"lengths must be .* ≥ 0"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("seed", range(40))
def test_sub_is_the_rectangle_of_the_dense_mask(seed):
    """``sub(q0, q1, k0, k1)`` is the map of the dense mask's rectangle, block by block (its kinds,
    tiles and lists by the definition), for random, causal, window, all and nothing masks and for
    rectangles of any alignment to the blocks, empty ones included."""
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> int:
        return int(torch.randint(0, n + 1, (1,), generator=g))

    Tq, Tk = 1 + draw(69), 1 + draw(69)
    B, H = 1 + draw(1), 1 + 2 * draw(1)
    block = [16, 32, (16, 32)][seed % 3]
    bits = torch.rand(B, H, Tq, Tk, generator=g) < 0.5
    kind = ["random", "causal", "window", "all", "none"][seed % 5]
    dense = {"random": bits, "none": torch.zeros_like(bits), "all": torch.ones_like(bits),
             "causal": (torch.arange(Tk) <= torch.arange(Tq)[:, None] + 3).expand_as(bits),
             "window": ((torch.arange(Tk) <= torch.arange(Tq)[:, None])
                        & (torch.arange(Tk) > torch.arange(Tq)[:, None] - 20)).expand_as(bits)}[kind]
    bm = block_mask.from_mask(dense, block=block)
    q0, k0 = draw(Tq), draw(Tk)
    q1, k1 = q0 + draw(Tq - q0), k0 + draw(Tk - k0)
    sub = bm.sub(q0, q1, k0, k1)
    assert (sub.block_m, sub.block_n) == (bm.block_m, bm.block_n)
    check_map(sub, dense[:, :, q0:q1, k0:k1].contiguous())


def test_sub_of_a_map_serves_attention_on_the_rectangle():
    """The blockwise tier given the sub-map of a rectangle computes that rectangle's attention."""
    q, k, v = (randn(2, 50, 8, gen=torch.Generator().manual_seed(i)) for i in range(3))
    bm = block_mask.sliding_window(50, 50, 13, block=16)
    out = blockwise_attention(q[:, 7:41], k[:, 3:29], v[:, 3:29], mask=bm.sub(7, 41, 3, 29))
    dense = bm.to_dense()[0, 0, 7:41, 3:29]
    want, _ = ref_attention(q[:, 7:41], k[:, 3:29], v[:, 3:29], dense, None, None)
    assert_close(out, want)


@pytest.mark.parametrize("args", [(-1, 3, 0, 4), (0, 41, 0, 4), (5, 4, 0, 4), (0, 3, 2, 1), (0, 3.0, 0, 4),
                                  (0, 3, 0, True)])
def test_sub_refuses_a_rectangle_outside_the_map(args):
    bm = block_mask.causal(40, 30, block=16)
    with pytest.raises(ValueError, match=r"must be ints with 0 <= [qk]0 <= [qk]1 <= (40|30), got"):
        bm.sub(*args)


def test_to_moves_every_tensor():
    bm = block_mask.causal(40, 40, block=16)
    moved = bm.to("meta")
    assert moved.device == torch.device("meta") and moved.tiles.device == torch.device("meta")
    assert (moved.Tq, moved.Tk, moved.block_m) == (40, 40, 16) and bm.device == torch.device("cpu")


def test_check_batch():
    bm = block_mask.documents(torch.zeros(2, 9, dtype=torch.long), block=16)  # (2, 1, 9, 9)
    bm.check_batch((2, 4), 9, 9, torch.device("cpu"))
    with pytest.raises(
        ValueError, match=r"block mask has shape \(2, 1, 9, 9\), expected broadcastable to \(3, 4, 9, 9\)"
    ):
        bm.check_batch((3, 4), 9, 9, torch.device("cpu"))
    with pytest.raises(ValueError, match="expected broadcastable"):
        bm.check_batch((2, 4), 9, 8, torch.device("cpu"))
    with pytest.raises(ValueError, match="block mask is on cpu but q is on meta"):
        bm.check_batch((2, 4), 9, 9, torch.device("meta"))


# --- the blockwise tier with a block map ---------------------------------------------------------


def _maps(Tq, Tk, B, block):
    g = torch.Generator().manual_seed(Tq + Tk)
    doc = torch.randint(0, 3, (B, Tk), generator=g).sort(-1).values
    return {
        "causal_br": block_mask.causal(Tq, Tk, "bottom_right", block=block),
        "window": block_mask.sliding_window(Tq, Tk, 17, block=block),
        "random": block_mask.from_mask(torch.rand(B, 1, Tq, Tk, generator=g) < 0.5, block=block),
        "padding": block_mask.key_padding(torch.tensor([Tk, 5, 0][:B]), Tq, Tk, block=block),
        # a key block FULL for the first query block and PARTIAL below it: the tile must be masked
        "full_then_partial": block_mask.from_predicate(lambda b, h, i, j: (i < block) | (j % 2 == 0),
                                                       Tq=Tq, Tk=Tk, block=block),
        **(
            {
                "documents": block_mask.documents(doc, causal=True, block=block),
                "prefix": block_mask.prefix_lm(torch.tensor([3, 40][:B]), Tq, block=block),
            }
            if Tq == Tk
            else {}
        ),
    }


@pytest.mark.parametrize("Tq, Tk", [(1, 1), pytest.param(97, 97, marks=pytest.mark.slow), (40, 97), (97, 33)])
def test_blockwise_with_maps_matches_reference(Tq, Tk):
    g = torch.Generator().manual_seed(7)
    B, H, d = 2, 2, 5
    q, k, v = randn(B, H, Tq, d, gen=g), randn(B, H, Tk, d, gen=g), randn(B, H, Tk, 3, gen=g)
    for name, bm in _maps(Tq, Tk, B, 16).items():
        out, lse = blockwise_attention(q, k, v, mask=bm, return_lse=True)
        dense = bm.to_dense()
        assert_close(out, ref_attention(q, k, v, mask=dense)[0])
        s = (q @ k.transpose(-2, -1)) * d**-0.5
        want = torch.logsumexp(s.masked_fill(~dense, float("-inf")), -1)
        assert torch.equal(lse.isneginf(), want.isneginf()), name
        assert_close(lse[~want.isneginf()], want[~want.isneginf()])


def test_blockwise_map_gradients_and_broadcast():
    g = torch.Generator().manual_seed(8)
    q = randn(2, 3, 50, 4, gen=g, requires_grad=True)
    k = randn(1, 3, 50, 4, gen=g, requires_grad=True)  # broadcast over the batch
    v = randn(2, 1, 50, 6, gen=g, requires_grad=True)
    bm = block_mask.documents(torch.tensor([[0] * 20 + [1] * 30, [0] * 50]), causal=True, block=16)
    dout = randn(2, 3, 50, 6, gen=g)
    got = torch.autograd.grad(blockwise_attention(q, k, v, mask=bm), (q, k, v), dout)
    want = torch.autograd.grad(naive_torch(q, k, v, mask=bm.to_dense()), (q, k, v), dout)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)
    x = randn(50, 4, gen=g)  # no leading dims at all
    out = blockwise_attention(x, x, x, mask=block_mask.causal(50, 50, block=16))
    assert_close(out, ref_attention(x, x, x, causal="top_left")[0])


def test_blockwise_map_never_reads_skipped_blocks():
    """Values in key blocks no query may see are never read: NaN there stays out of the output
    (a dense mask multiplies them by a zero weight, which gives NaN)."""
    T = 64
    q, k, v = (torch.randn(1, 1, T, 8, dtype=F64) for _ in range(3))
    v[..., 48:, :] = float("nan")  # keys 48..63: only queries >= 48 may see them (causal)
    bm = block_mask.causal(T, T, block=16)
    out = blockwise_attention(q[..., :48, :], k, v, mask=block_mask.causal(48, T, block=16))
    assert torch.isfinite(out).all()
    assert torch.isnan(blockwise_attention(q, k, v, mask=bm)[..., 48:, :]).all()  # they are read there


def test_blockwise_map_refuses_causal_and_bad_shapes():
    x = torch.randn(2, 9, 4)
    bm = block_mask.causal(9, 9, block=16)
    with pytest.raises(ValueError, match="causal=False"):
        blockwise_attention(x, x, x, mask=bm, causal=True)
    with pytest.raises(ValueError, match="expected broadcastable"):
        blockwise_attention(x[:, :8], x, x, mask=bm)
