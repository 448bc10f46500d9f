"""Tier 4: fused attention in Triton — the forward kernel and the helpers the backward shares.

Origin: the tiled online softmax of FlashAttention (Dao, Fu, Ermon, Rudra, Ré, 2022) with the
work split of FlashAttention-2 (Dao, 2023): each program owns a block of queries and walks the
keys, keeping a running max ``m``, sum ``l`` and accumulator in registers, so the T × T matrix
never reaches memory. The backward (``flash_bwd.py``) recomputes each tile from the saved
log-sum-exp; no atomics anywhere, so results are bitwise deterministic. ``blockwise.py`` is the
same algorithm in plain PyTorch, easier to read.

Supported: q (B, H, Tq, d), k and v (B, Hkv, Tk, d) with H a multiple of Hkv (grouped-query
attention) and a unit stride in d; fp16 and bf16 (dots in the input dtype, accumulation in fp32)
and fp32 (dots in full fp32, "ieee"); head dims 1..256, not only powers of two (loads are masked
up to the next power of two); any Tq, Tk; any positive scale; causal masking with either
alignment; key lengths per batch row (keys at or past ``lengths[b]`` are skipped); and one of
(a) a boolean mask tensor broadcastable to (B, H, Tq, Tk), read tile by tile, or (b) a block map
(``selfattention.block_mask.BlockMask``): blocks it marks SKIP are never visited, FULL blocks run
with no mask at all, PARTIAL blocks read their own stored tile. A query row that may attend to
nothing gives 0 and zero gradients. The log-sum-exp of each row (natural log, -inf for an empty
row) is returned.

Without a mask, a causal or length-limited row is walked in two parts: the tiles every query of
the block may fully see (no compare, no select), then the few boundary tiles (masked).

Not supported: additive float masks, dropout, d > 256, double backward. On the CPU it runs only
through Triton's interpreter (TRITON_INTERPRET=1 set before Triton is imported); there bf16
dots are miscomputed by Triton 3.9, so the CPU tests use fp32 and fp16.

Lengths never specialise a kernel: Tq, Tk, the causal offset and every stride or size that grows
with them are ``do_not_specialize`` (see ``tuning.py``), so a new length reuses the compiled kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in base 2: exp(x) = exp2(x · log2 e)
_LOG2E = tl.constexpr(LOG2E)  # the same number, readable inside kernels (globals must be constexpr)

# Arguments whose values follow the sequence lengths: never specialised on (a new length must not
# compile a new kernel). The d-strides and head counts stay specialised (alignment matters there).
LENGTH_ARGS = (
    "Tq", "Tk", "offset", "n_tiles", "TQ_BUCKET", "TK_BUCKET", "sqb", "sqh", "skb", "skh", "svb", "svh",
    "sob", "soh", "sdob", "sdoh", "sdqb", "sdqh", "sdkb", "sdkh", "sdvb", "sdvh", "smb", "smh", "smm", "mcb",
    "mch", "mib", "mih", "mir",
)


def no_length_specialisation(fn):
    """``triton.jit`` with every length-dependent argument of ``fn`` left unspecialised."""
    import inspect

    names = [n for n in inspect.signature(fn).parameters if n in LENGTH_ARGS]
    return triton.jit(fn, do_not_specialize=names)


@triton.jit
def _visible(offs_m, offs_n, kv_len, offset, mask_bh, smm, smn, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """(len(offs_m), len(offs_n)) bool: may query offs_m attend to key offs_n? (No row bound:
    rows past Tq are computed and never stored.)"""
    ok = offs_n[None, :] < kv_len
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + offset)
    if HAS_MASK:
        ok = ok & (tl.load(mask_bh + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=ok, other=0) != 0)
    return ok


@triton.jit
def _map_row(Count, Index, Tile, b, h, row, mcb, mch, mib, mih, mir):
    """(count, index pointer, tile pointer) of row ``row`` of a block map's lists for (b, h)."""
    count = tl.load(Count + b * mcb + h * mch + row)
    base = b * mib + h * mih + row * mir
    return count, Index + base, Tile + base


@triton.jit
def _tile_mask(
    Tiles, tiles_desc, tile, r0, c0, offs_r, offs_c, MAP_M: tl.constexpr, MAP_N: tl.constexpr,
    USE_DESC: tl.constexpr,
):
    """(len(offs_r), len(offs_c)) bool: rows r0.. and columns c0.. of PARTIAL block ``tile``'s mask.
    Through a descriptor where possible: a pointer tile costs two registers per element."""
    if USE_DESC:
        return tiles_desc.load([tile * MAP_M + r0, c0]) != 0
    ptr = (
        Tiles + tile.to(tl.int64) * (MAP_M * MAP_N) + (r0 + offs_r)[:, None] * MAP_N + (c0 + offs_c)[None, :]
    )
    return tl.load(ptr) != 0


@triton.jit
def _load_rows(base, desc, start, offs0, offs_d, n, stride, D, USE_DESC: tl.constexpr):
    """Rows start.. of a (n, D) matrix as a (BLOCK, D_PAD) tile, zero past n and D."""
    if USE_DESC:
        return desc.load([start, 0])
    offs = start + offs0
    return tl.load(
        base + offs[:, None] * stride + offs_d[None, :],
        mask=(offs[:, None] < n) & (offs_d[None, :] < D),
        other=0.0,
    )


@triton.jit
def _softmax_step(acc, l_i, m_i, s, v, PRECISION: tl.constexpr):
    """Fold one tile of base-2 scores s (BLOCK_M, BLOCK_N) and its values into the running state."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)  # rescales what was accumulated under the old max
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _fwd_span(
    acc, l_i, m_i, q, K_bh, V_bh, k_desc, v_desc, lo, hi, offs_m, offs_n0, offs_d, kv_len, Tk, offset,
    qk_scale, mask_bh, smm, smn, skn, svn, D, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
    WARP_SPEC: tl.constexpr,
):
    """Key tiles lo, lo + BLOCK_N, .. < hi; MASKED applies lengths, causal and the mask tensor."""
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
        k = _load_rows(K_bh, k_desc, start_n, offs_n0, offs_d, Tk, skn, D, USE_DESC)  # (BLOCK_N, D_PAD)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        if MASKED:
            ok = _visible(offs_m, start_n + offs_n0, kv_len, offset, mask_bh, smm, smn, CAUSAL, HAS_MASK)
            s = tl.where(ok, s, float("-inf"))
        v = _load_rows(V_bh, v_desc, start_n, offs_n0, offs_d, Tk, svn, D, USE_DESC)
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, v, PRECISION)
    return acc, l_i, m_i


@triton.jit
def _fwd_mapped(
    acc, l_i, m_i, q, K_bh, V_bh, k_desc, v_desc, count, index, tiles_of, Tiles, tiles_desc, r0, offs_m0,
    offs_n0, offs_d, kv_len, Tk, qk_scale, skn, svn, D, HAS_LENS: tl.constexpr, MAP_M: tl.constexpr,
    MAP_N: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
):
    """The key blocks a block map lists for this query block; only PARTIAL ones are masked.
    One flat loop over (listed block, sub-tile): unrolling the sub-tiles doubled the registers."""
    SUBS: tl.constexpr = MAP_N // BLOCK_N
    for it in range(0, count * SUBS):
        blk = tl.load(index + it // SUBS)
        tile = tl.load(tiles_of + it // SUBS)  # -1: FULL
        c0 = it % SUBS * BLOCK_N
        start_n = blk * MAP_N + c0
        k = _load_rows(K_bh, k_desc, start_n, offs_n0, offs_d, Tk, skn, D, USE_DESC)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if tile >= 0:
            keep = _tile_mask(Tiles, tiles_desc, tile, r0, c0, offs_m0, offs_n0, MAP_M, MAP_N, USE_DESC)
            s = tl.where(keep, s, float("-inf"))
        if HAS_LENS:
            s = tl.where((start_n + offs_n0)[None, :] < kv_len, s, float("-inf"))
        v = _load_rows(V_bh, v_desc, start_n, offs_n0, offs_d, Tk, svn, D, USE_DESC)
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, v, PRECISION)
    return acc, l_i, m_i


@no_length_specialisation
def _fwd_kernel(
    Q, K, V, Out, Lse, Mask, Lens, MapCount, MapIndex, MapTile, Tiles, sqb, sqh, sqm, skb, skh, skn, svb,
    svh, svn, sob, soh, som, smb, smh, smm, smn, mcb, mch, mib, mih, mir, n_tiles, H, G, Tq, Tk, D, offset,
    qk_scale, TQ_BUCKET, TK_BUCKET, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LENS: tl.constexpr,
    HAS_MAP: tl.constexpr, MAP_M: tl.constexpr, MAP_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
    WARP_SPEC: tl.constexpr,
):
    """One block of BLOCK_M queries of one head. (TQ_BUCKET, TK_BUCKET: the tuning key only.)"""
    pid_m = tl.program_id(0)
    if CAUSAL:  # longest rows first: the last wave of programs is then the short ones
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G  # the key/value head this query head reads
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_m = pid_m * BLOCK_M + offs_m0
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    Q_bh = Q + b.to(tl.int64) * sqb + h * sqh
    K_bh = K + b.to(tl.int64) * skb + hk * skh
    V_bh = V + b.to(tl.int64) * svb + hk * svh
    if USE_DESC:  # tensor descriptors (TMA on Hopper): no per-element pointer tiles to hold
        q_desc = tl.make_tensor_descriptor(
            Q_bh, shape=[Tq, D], strides=[sqm, 1], block_shape=[BLOCK_M, D_PAD]
        )
        k_desc = tl.make_tensor_descriptor(
            K_bh, shape=[Tk, D], strides=[skn, 1], block_shape=[BLOCK_N, D_PAD]
        )
        v_desc = tl.make_tensor_descriptor(
            V_bh, shape=[Tk, D], strides=[svn, 1], block_shape=[BLOCK_N, D_PAD]
        )
    else:
        q_desc, k_desc, v_desc = Q_bh, K_bh, V_bh  # unused stand-ins
    q = _load_rows(Q_bh, q_desc, pid_m * BLOCK_M, offs_m0, offs_d, Tq, sqm, D, USE_DESC)  # (BLOCK_M, D_PAD)
    kv_len = Tk
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(Lens + b).to(tl.int32), Tk)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    mask_bh = Mask + b.to(tl.int64) * smb + h * smh
    if HAS_MAP:  # BLOCK_M divides MAP_M: this block lies in one row of the map
        row = pid_m * BLOCK_M // MAP_M
        count, index, tiles_of = _map_row(MapCount, MapIndex, MapTile, b, h, row, mcb, mch, mib, mih, mir)
        tiles_desc = Tiles
        if USE_DESC:  # the stored tiles as one (n_tiles · MAP_M, MAP_N) byte matrix
            tiles_desc = tl.make_tensor_descriptor(
                Tiles, shape=[n_tiles * MAP_M, MAP_N], strides=[MAP_N, 1], block_shape=[BLOCK_M, BLOCK_N]
            )
        acc, l_i, m_i = _fwd_mapped(
            acc, l_i, m_i, q, K_bh, V_bh, k_desc, v_desc, count, index, tiles_of, Tiles, tiles_desc,
            pid_m * BLOCK_M - row * MAP_M, offs_m0, offs_n0, offs_d, kv_len, Tk, qk_scale, skn, svn, D,
            HAS_LENS, MAP_M, MAP_N, BLOCK_N, PRECISION, USE_DESC,
        )
    else:
        hi = kv_len
        full = kv_len // BLOCK_N * BLOCK_N  # tiles before it hold only keys < kv_len
        if CAUSAL:  # no key after the last row's diagonal; full tiles end at the first row's
            hi = tl.maximum(tl.minimum(hi, (pid_m + 1) * BLOCK_M + offset), 0)
            full = tl.minimum(full, tl.maximum(pid_m * BLOCK_M + offset + 1, 0) // BLOCK_N * BLOCK_N)
        if HAS_MASK:
            full = 0  # every tile reads the mask
        acc, l_i, m_i = _fwd_span(
            acc, l_i, m_i, q, K_bh, V_bh, k_desc, v_desc, 0, full, offs_m, offs_n0, offs_d, kv_len, Tk,
            offset, qk_scale, mask_bh, smm, smn, skn, svn, D, False, CAUSAL, HAS_MASK, BLOCK_N, PRECISION,
            USE_DESC, WARP_SPEC,
        )
        acc, l_i, m_i = _fwd_span(
            acc, l_i, m_i, q, K_bh, V_bh, k_desc, v_desc, full, hi, offs_m, offs_n0, offs_d, kv_len, Tk,
            offset, qk_scale, mask_bh, smm, smn, skn, svn, D, True, CAUSAL, HAS_MASK, BLOCK_N, PRECISION,
            USE_DESC, False,
        )
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) / _LOG2E)
    m_ok = offs_m < Tq
    tl.store(
        Out + b.to(tl.int64) * sob + h * soh + offs_m[:, None] * som + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=m_ok[:, None] & (offs_d[None, :] < D),
    )
    tl.store(Lse + pid_bh.to(tl.int64) * Tq + offs_m, lse, mask=m_ok)
