"""Tier 4, backward: dK/dV and dQ kernels (FlashAttention-2's backward, deterministic).

From the saved log-sum-exp each tile of weights is recomputed, P = exp(S − lse), and
dV += Pᵀ dO;  dP = dO Vᵀ;  dS = P ∘ (dP − delta);  dK += dSᵀ Q · scale;  dQ += dS K · scale,
with delta = rowsum(dO ∘ O). Two kernels, no atomics, so results are bitwise deterministic:

- ``_bwd_dkdv_kernel``: one program per block of keys of one K/V head; it walks the queries of
  the G query heads that read that K/V head. It works on the transposed tile, Sᵀ = K Qᵀ
  (BLOCK_N × BLOCK_M), so Pᵀ and dSᵀ are born in the layout the dV and dK products take as their
  left operand: no register tile is transposed (which costs a trip through shared memory and,
  at d = 128, was what made version 1's kernel spill).
- ``_bwd_dq_kernel``: one program per block of queries of one head; walks the keys it can see.

Masking, lengths, block maps and the unmasked fast path for fully visible tiles work as in the
forward (``flash.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .flash import _LOG2E, _load_rows, _map_row, _tile_mask, _visible, no_length_specialisation


@triton.jit
def _visible_t(
    offs_n, offs_m, kv_len, offset, mask_bh, smm, smn, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr
):
    """(len(offs_n), len(offs_m)) bool: may query offs_m attend to key offs_n? (transposed)"""
    ok = offs_n[:, None] < kv_len
    if CAUSAL:
        ok = ok & (offs_n[:, None] <= offs_m[None, :] + offset)
    if HAS_MASK:
        ok = ok & (tl.load(mask_bh + offs_m[None, :] * smm + offs_n[:, None] * smn, mask=ok, other=0) != 0)
    return ok


@triton.jit
def _row_stats(Lse_bh, Delta_bh, offs_m, Tq):
    """lse (+inf for rows past Tq and rows that saw nothing, so their weights are 0) and delta."""
    lse = tl.load(Lse_bh + offs_m, mask=offs_m < Tq, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * _LOG2E  # base 2, as the scores
    return lse, tl.load(Delta_bh + offs_m, mask=offs_m < Tq, other=0.0)


@triton.jit
def _dkdv_step(
    dk, dv, k, v, q, do, lse, delta, qk_scale, ok_t, MASKED: tl.constexpr, PRECISION: tl.constexpr
):
    st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), base 2
    pt = tl.exp2(st - lse[None, :])
    if MASKED:
        pt = tl.where(ok_t, pt, 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)  # (BLOCK_N, D_PAD)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _dkdv_span(
    dk, dv, k, v, Q_bh, DO_bh, q_desc, do_desc, Lse_bh, Delta_bh, lo, hi, offs_n, offs_m0, offs_d, kv_len,
    Tq, offset, qk_scale, mask_bh, smm, smn, sqm, sdom, D, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q = _load_rows(Q_bh, q_desc, start_m, offs_m0, offs_d, Tq, sqm, D, USE_DESC)  # (BLOCK_M, D_PAD)
        do = _load_rows(DO_bh, do_desc, start_m, offs_m0, offs_d, Tq, sdom, D, USE_DESC)
        lse, delta = _row_stats(Lse_bh, Delta_bh, offs_m, Tq)
        ok_t = offs_n[:, None] < kv_len
        if MASKED:
            ok_t = _visible_t(offs_n, offs_m, kv_len, offset, mask_bh, smm, smn, CAUSAL, HAS_MASK)
        dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse, delta, qk_scale, ok_t, MASKED, PRECISION)
    return dk, dv


@triton.jit
def _dkdv_mapped(
    dk, dv, k, v, Q_bh, DO_bh, q_desc, do_desc, Lse_bh, Delta_bh, count, index, tiles_of, Tiles, tiles_desc,
    c0, offs_n, offs_n0, offs_m0, offs_d, kv_len, Tq, qk_scale, sqm, sdom, D, HAS_LENS: tl.constexpr,
    MAP_M: tl.constexpr, MAP_N: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
    USE_DESC: tl.constexpr,
):
    """The query blocks a block map lists for this key block (its column), one flat loop over
    (listed block, sub-tile) as in the forward."""
    SUBS: tl.constexpr = MAP_M // BLOCK_M
    for it in range(0, count * SUBS):
        blk = tl.load(index + it // SUBS)
        tile = tl.load(tiles_of + it // SUBS)  # -1: FULL
        r0 = it % SUBS * BLOCK_M
        start_m = blk * MAP_M + r0
        offs_m = start_m + offs_m0
        q = _load_rows(Q_bh, q_desc, start_m, offs_m0, offs_d, Tq, sqm, D, USE_DESC)
        do = _load_rows(DO_bh, do_desc, start_m, offs_m0, offs_d, Tq, sdom, D, USE_DESC)
        lse, delta = _row_stats(Lse_bh, Delta_bh, offs_m, Tq)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        pt = tl.exp2(st - lse[None, :])
        if tile >= 0:
            keep = _tile_mask(Tiles, tiles_desc, tile, r0, c0, offs_m0, offs_n0, MAP_M, MAP_N, USE_DESC)
            pt = tl.where(tl.trans(keep), pt, 0.0)
        if HAS_LENS:
            pt = tl.where(offs_n[:, None] < kv_len, pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@no_length_specialisation
def _bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, Mask, Lens, MapCount, MapIndex, MapTile, Tiles, sqb, sqh, sqm, skb, skh,
    skn, svb, svh, svn, sdob, sdoh, sdom, sdkb, sdkh, sdkn, sdvb, sdvh, sdvn, smb, smh, smm, smn, mcb, mch,
    mib, mih, mir, n_tiles, H, Hkv, G, Tq, Tk, D, offset, qk_scale, scale, TQ_BUCKET, TK_BUCKET,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LENS: tl.constexpr, HAS_MAP: tl.constexpr,
    MAP_M: tl.constexpr, MAP_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    D_PAD: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
):
    """One block of keys of one key/value head; walks every query of the G heads that read it."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    n0 = pid_n * BLOCK_N
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_n = n0 + offs_n0
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    K_bh = K + b.to(tl.int64) * skb + hk * skh
    V_bh = V + b.to(tl.int64) * svb + hk * svh
    if USE_DESC:
        k_desc = tl.make_tensor_descriptor(
            K_bh, shape=[Tk, D], strides=[skn, 1], block_shape=[BLOCK_N, D_PAD]
        )
        v_desc = tl.make_tensor_descriptor(
            V_bh, shape=[Tk, D], strides=[svn, 1], block_shape=[BLOCK_N, D_PAD]
        )
    else:
        k_desc, v_desc = K_bh, V_bh
    k = _load_rows(K_bh, k_desc, n0, offs_n0, offs_d, Tk, skn, D, USE_DESC)  # (BLOCK_N, D_PAD)
    v = _load_rows(V_bh, v_desc, n0, offs_n0, offs_d, Tk, svn, D, USE_DESC)
    kv_len = Tk
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(Lens + b).to(tl.int32), Tk)
    dk = tl.zeros((BLOCK_N, D_PAD), tl.float32)
    dv = tl.zeros((BLOCK_N, D_PAD), tl.float32)
    # Queries [lo, hi) may see these keys; from full on, every query sees every key of the block.
    lo = n0 * 0
    hi = tl.where(n0 >= kv_len, 0, Tq)  # keys past the length: nothing attends to them
    full = lo
    if CAUSAL:  # queries above the block's diagonal see none of it; below its last key, all
        lo = tl.maximum(n0 - offset, 0) // BLOCK_M * BLOCK_M
        full = tl.maximum(n0 + BLOCK_N - 1 - offset + BLOCK_M - 1, 0) // BLOCK_M * BLOCK_M
    full = tl.minimum(tl.maximum(full, lo), hi)
    if HAS_MASK:
        full = hi  # every tile reads the mask
    full = tl.where(n0 + BLOCK_N > kv_len, hi, full)  # the block holds keys past the length
    tiles_desc = Tiles
    if HAS_MAP and USE_DESC:  # the stored tiles as one (n_tiles · MAP_M, MAP_N) byte matrix
        tiles_desc = tl.make_tensor_descriptor(
            Tiles, shape=[n_tiles * MAP_M, MAP_N], strides=[MAP_N, 1], block_shape=[BLOCK_M, BLOCK_N]
        )
    for g in range(0, G):
        h = hk * G + g
        Q_bh = Q + b.to(tl.int64) * sqb + h * sqh
        DO_bh = DO + b.to(tl.int64) * sdob + h * sdoh
        if USE_DESC:
            q_desc = tl.make_tensor_descriptor(
                Q_bh, shape=[Tq, D], strides=[sqm, 1], block_shape=[BLOCK_M, D_PAD]
            )
            do_desc = tl.make_tensor_descriptor(
                DO_bh, shape=[Tq, D], strides=[sdom, 1], block_shape=[BLOCK_M, D_PAD]
            )
        else:
            q_desc, do_desc = Q_bh, DO_bh
        Lse_bh = Lse + (b * H + h).to(tl.int64) * Tq
        Delta_bh = Delta + (b * H + h).to(tl.int64) * Tq
        mask_bh = Mask + b.to(tl.int64) * smb + h * smh
        if HAS_MAP:  # BLOCK_N divides MAP_N: this block lies in one column of the map
            col = n0 // MAP_N
            count, index, tiles_of = _map_row(MapCount, MapIndex, MapTile, b, h, col, mcb, mch, mib, mih, mir)
            count = tl.where(n0 >= kv_len, 0, count)
            dk, dv = _dkdv_mapped(
                dk, dv, k, v, Q_bh, DO_bh, q_desc, do_desc, Lse_bh, Delta_bh, count, index, tiles_of, Tiles,
                tiles_desc, n0 - col * MAP_N, offs_n, offs_n0, offs_m0, offs_d, kv_len, Tq, qk_scale, sqm,
                sdom, D, HAS_LENS, MAP_M, MAP_N, BLOCK_M, PRECISION, USE_DESC,
            )
        else:
            dk, dv = _dkdv_span(
                dk, dv, k, v, Q_bh, DO_bh, q_desc, do_desc, Lse_bh, Delta_bh, lo, full, offs_n, offs_m0,
                offs_d, kv_len, Tq, offset, qk_scale, mask_bh, smm, smn, sqm, sdom, D, True, CAUSAL,
                HAS_MASK, BLOCK_M, PRECISION, USE_DESC,
            )
            dk, dv = _dkdv_span(
                dk, dv, k, v, Q_bh, DO_bh, q_desc, do_desc, Lse_bh, Delta_bh, full, hi, offs_n, offs_m0,
                offs_d, kv_len, Tq, offset, qk_scale, mask_bh, smm, smn, sqm, sdom, D, False, CAUSAL,
                HAS_MASK, BLOCK_M, PRECISION, USE_DESC,
            )
    st = (offs_n[:, None] < Tk) & (offs_d[None, :] < D)
    tl.store(
        DK + b.to(tl.int64) * sdkb + hk * sdkh + offs_n[:, None] * sdkn + offs_d[None, :],
        (dk * scale).to(DK.dtype.element_ty),
        mask=st,
    )
    tl.store(
        DV + b.to(tl.int64) * sdvb + hk * sdvh + offs_n[:, None] * sdvn + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=st,
    )


@triton.jit
def _dq_step(dq, q, do, k, v, lse, delta, qk_scale, ok, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
    p = tl.exp2(s - lse[:, None])
    if MASKED:
        p = tl.where(ok, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.jit
def _dq_span(
    dq, q, do, lse, delta, K_bh, V_bh, k_desc, v_desc, lo, hi, offs_m, offs_n0, offs_d, kv_len, Tk, offset,
    qk_scale, mask_bh, smm, smn, skn, svn, D, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        k = _load_rows(K_bh, k_desc, start_n, offs_n0, offs_d, Tk, skn, D, USE_DESC)  # (BLOCK_N, D_PAD)
        v = _load_rows(V_bh, v_desc, start_n, offs_n0, offs_d, Tk, svn, D, USE_DESC)
        ok = offs_m[:, None] >= 0  # (unused when not MASKED)
        if MASKED:
            ok = _visible(offs_m, start_n + offs_n0, kv_len, offset, mask_bh, smm, smn, CAUSAL, HAS_MASK)
        dq = _dq_step(dq, q, do, k, v, lse, delta, qk_scale, ok, MASKED, PRECISION)
    return dq


@no_length_specialisation
def _bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, Mask, Lens, MapCount, MapIndex, MapTile, Tiles, sqb, sqh, sqm, skb, skh,
    skn, svb, svh, svn, sdob, sdoh, sdom, sdqb, sdqh, sdqm, smb, smh, smm, smn, mcb, mch, mib, mih, mir,
    n_tiles, H, G, Tq, Tk, D, offset, qk_scale, scale, TQ_BUCKET, TK_BUCKET, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_LENS: tl.constexpr, HAS_MAP: tl.constexpr, MAP_M: tl.constexpr,
    MAP_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr,
    PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
):
    """One block of queries of one head; walks the keys it can see."""
    pid_m = tl.program_id(0)
    if CAUSAL:  # longest rows first
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G
    m0 = pid_m * BLOCK_M
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_m = m0 + offs_m0
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    Q_bh = Q + b.to(tl.int64) * sqb + h * sqh
    DO_bh = DO + b.to(tl.int64) * sdob + h * sdoh
    K_bh = K + b.to(tl.int64) * skb + hk * skh
    V_bh = V + b.to(tl.int64) * svb + hk * svh
    if USE_DESC:
        q_desc = tl.make_tensor_descriptor(
            Q_bh, shape=[Tq, D], strides=[sqm, 1], block_shape=[BLOCK_M, D_PAD]
        )
        do_desc = tl.make_tensor_descriptor(
            DO_bh, shape=[Tq, D], strides=[sdom, 1], block_shape=[BLOCK_M, D_PAD]
        )
        k_desc = tl.make_tensor_descriptor(
            K_bh, shape=[Tk, D], strides=[skn, 1], block_shape=[BLOCK_N, D_PAD]
        )
        v_desc = tl.make_tensor_descriptor(
            V_bh, shape=[Tk, D], strides=[svn, 1], block_shape=[BLOCK_N, D_PAD]
        )
    else:
        q_desc, do_desc, k_desc, v_desc = Q_bh, DO_bh, K_bh, V_bh
    q = _load_rows(Q_bh, q_desc, m0, offs_m0, offs_d, Tq, sqm, D, USE_DESC)  # (BLOCK_M, D_PAD)
    do = _load_rows(DO_bh, do_desc, m0, offs_m0, offs_d, Tq, sdom, D, USE_DESC)
    lse, delta = _row_stats(Lse + pid_bh.to(tl.int64) * Tq, Delta + pid_bh.to(tl.int64) * Tq, offs_m, Tq)
    kv_len = Tk
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(Lens + b).to(tl.int32), Tk)
    dq = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    mask_bh = Mask + b.to(tl.int64) * smb + h * smh
    if HAS_MAP:  # as the forward: one flat loop over (listed key block, sub-tile)
        row = m0 // MAP_M
        count, index, tiles_of = _map_row(MapCount, MapIndex, MapTile, b, h, row, mcb, mch, mib, mih, mir)
        tiles_desc = Tiles
        if USE_DESC:
            tiles_desc = tl.make_tensor_descriptor(
                Tiles, shape=[n_tiles * MAP_M, MAP_N], strides=[MAP_N, 1], block_shape=[BLOCK_M, BLOCK_N]
            )
        SUBS: tl.constexpr = MAP_N // BLOCK_N
        for it in range(0, count * SUBS):
            blk = tl.load(index + it // SUBS)
            tile = tl.load(tiles_of + it // SUBS)  # -1: FULL
            c0 = it % SUBS * BLOCK_N
            start_n = blk * MAP_N + c0
            k = _load_rows(K_bh, k_desc, start_n, offs_n0, offs_d, Tk, skn, D, USE_DESC)
            v = _load_rows(V_bh, v_desc, start_n, offs_n0, offs_d, Tk, svn, D, USE_DESC)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.exp2(s - lse[:, None])
            if tile >= 0:
                keep = _tile_mask(
                    Tiles, tiles_desc, tile, m0 - row * MAP_M, c0, offs_m0, offs_n0, MAP_M, MAP_N, USE_DESC
                )
                p = tl.where(keep, p, 0.0)
            if HAS_LENS:
                p = tl.where((start_n + offs_n0)[None, :] < kv_len, p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    else:
        hi = kv_len
        full = kv_len // BLOCK_N * BLOCK_N
        if CAUSAL:
            hi = tl.maximum(tl.minimum(hi, m0 + BLOCK_M + offset), 0)
            full = tl.minimum(full, tl.maximum(m0 + offset + 1, 0) // BLOCK_N * BLOCK_N)
        if HAS_MASK:
            full = 0
        dq = _dq_span(
            dq, q, do, lse, delta, K_bh, V_bh, k_desc, v_desc, 0, full, offs_m, offs_n0, offs_d, kv_len, Tk,
            offset, qk_scale, mask_bh, smm, smn, skn, svn, D, False, CAUSAL, HAS_MASK, BLOCK_N, PRECISION,
            USE_DESC,
        )
        dq = _dq_span(
            dq, q, do, lse, delta, K_bh, V_bh, k_desc, v_desc, full, hi, offs_m, offs_n0, offs_d, kv_len, Tk,
            offset, qk_scale, mask_bh, smm, smn, skn, svn, D, True, CAUSAL, HAS_MASK, BLOCK_N, PRECISION,
            USE_DESC,
        )
    tl.store(
        DQ + b.to(tl.int64) * sdqb + h * sdqh + offs_m[:, None] * sdqm + offs_d[None, :],
        (dq * scale).to(DQ.dtype.element_ty),
        mask=(offs_m[:, None] < Tq) & (offs_d[None, :] < D),
    )
