"""Tier 4: fused attention in Triton, forward and backward (FlashAttention-2's algorithm).

Origin: the tiled online softmax of FlashAttention (Dao, Fu, Ermon, Rudra, Ré, 2022) with the
work split of FlashAttention-2 (Dao, 2023): each program owns a block of queries and walks the
keys, keeping a running max ``m``, sum ``l`` and accumulator in registers, so the T × T matrix
never reaches memory. The backward recomputes each tile from the saved log-sum-exp: one kernel
walks the queries for a block of keys (dK, dV), another walks the keys for a block of queries
(dQ). No atomics: results are bitwise deterministic. ``blockwise.py`` is the same algorithm in
plain PyTorch, easier to read.

Supported: q (B, H, Tq, d), k and v (B, Hkv, Tk, d) with H a multiple of Hkv (grouped-query
attention); fp16 and bf16 (dots in the input dtype, accumulation in fp32) and fp32 (dots in
full fp32, "ieee": exact but slow on tensor cores); head dims 1..256, not only powers of two
(loads are masked up to the next power of two); any Tq, Tk, including Tq ≠ Tk; any positive
scale; causal masking with either alignment; key lengths per batch row (keys at or beyond
``lengths[b]`` are skipped, not just masked); a boolean mask tensor broadcastable to
(B, H, Tq, Tk) (read tile by tile: slower). A query row that may attend to nothing gives 0 and
zero gradients. The log-sum-exp of each row (natural log, -inf for an empty row) is returned.

Not supported: additive float masks, dropout, d > 256, double backward. On the CPU it runs only
through Triton's interpreter (TRITON_INTERPRET=1 set before Triton is imported); there bf16
dots are miscomputed by Triton 3.9, so the CPU tests use fp32 and fp16.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in base 2: exp(x) = exp2(x · log2 e)


@triton.jit
def _visible(offs_m, offs_n, kv_len, offset, b, h, Mask, smb, smh, smm, smn, Tq,
             CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: may query offs_m attend to key offs_n?"""
    ok = (offs_n[None, :] < kv_len) & (offs_m[:, None] < Tq)
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + offset)
    if HAS_MASK:
        ptr = Mask + b * smb + h * smh + offs_m[:, None] * smm + offs_n[None, :] * smn
        ok = ok & (tl.load(ptr, mask=ok, other=0) != 0)
    return ok


@triton.jit
def _fwd_kernel(
    Q, K, V, Out, Lse, Mask, Lens,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sob, soh, som, sod, smb, smh, smm, smn,
    H, G, Tq, Tk, D, offset, qk_scale,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LENS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
    USE_DESC: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G  # the key/value head this query head reads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < Tq) & d_ok[None, :], other=0.0)  # (BLOCK_M, D_PAD)
    kv_len = Tk
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(Lens + b).to(tl.int32), Tk)
    hi = kv_len
    if CAUSAL:  # no key after the last query row's diagonal is visible to this block
        hi = tl.maximum(tl.minimum(hi, (pid_m + 1) * BLOCK_M + offset), 0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    K_bh = K + b * skb + hk * skh
    V_bh = V + b * svb + hk * svh
    if USE_DESC:  # tensor descriptors (TMA on Hopper): no per-element pointer tiles to hold
        k_desc = tl.make_tensor_descriptor(K_bh, shape=[Tk, D], strides=[skn, 1],
                                           block_shape=[BLOCK_N, D_PAD])
        v_desc = tl.make_tensor_descriptor(V_bh, shape=[Tk, D], strides=[svn, 1],
                                           block_shape=[BLOCK_N, D_PAD])
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < kv_len
        if USE_DESC:
            kt = tl.trans(k_desc.load([start_n, 0]))  # (D_PAD, BLOCK_N), zeros past Tk and D
        else:
            kt = tl.load(K_bh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                         mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (D_PAD, BLOCK_N)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        ok = _visible(offs_m, offs_n, kv_len, offset, b, h, Mask, smb, smh, smm, smn, Tq,
                      CAUSAL, HAS_MASK)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)  # rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        if USE_DESC:
            v = v_desc.load([start_n, 0])  # (BLOCK_N, D_PAD)
        else:
            v = tl.load(V_bh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, D_PAD)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)
    m_ok = offs_m < Tq
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(Lse + pid_bh * Tq + offs_m, lse, mask=m_ok)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, Mask, Lens,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sdob, sdoh, sdom, sdod, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
    smb, smh, smm, smn,
    H, Hkv, G, Tq, Tk, D, offset, qk_scale, scale,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LENS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    """One block of keys of one key/value head; walks every query of the G heads that read it."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    kv_len = Tk
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(Lens + b).to(tl.int32), Tk)
    n_ok = offs_n < kv_len
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, D_PAD)
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    dk = tl.zeros((BLOCK_N, D_PAD), tl.float32)
    dv = tl.zeros((BLOCK_N, D_PAD), tl.float32)
    lo = 0
    if CAUSAL:  # queries above this block's diagonal see none of its keys
        lo = tl.maximum(pid_n * BLOCK_N - offset, 0) // BLOCK_M * BLOCK_M
    # keys past the length: nothing attends to them, dk = dv = 0 (a where, not a runtime if:
    # both branches of a compiled if must give hi one type)
    hi = tl.where(pid_n * BLOCK_N >= kv_len, 0, Tq)
    for g in range(0, G):
        h = hk * G + g
        Q_bh = Q + b * sqb + h * sqh
        DO_bh = DO + b * sdob + h * sdoh
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + offs_m0
            m_ok = offs_m < Tq
            q = tl.load(Q_bh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                        mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, D_PAD)
            do = tl.load(DO_bh + offs_m[:, None] * sdom + offs_d[None, :] * sdod,
                         mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            lse = tl.load(Lse + (b * H + h) * Tq + offs_m, mask=m_ok, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # empty rows: p = 0
            delta = tl.load(Delta + (b * H + h) * Tq + offs_m, mask=m_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            ok = _visible(offs_m, offs_n, kv_len, offset, b, h, Mask, smb, smh, smm, smn, Tq,
                          CAUSAL, HAS_MASK)
            p = tl.where(ok, tl.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    st = n_ok[:, None] & d_ok[None, :]
    st_all = (offs_n[:, None] < Tk) & d_ok[None, :]  # keys past the length get explicit zeros
    tl.store(DK + b * sdkb + hk * sdkh + offs_n[:, None] * sdkn + offs_d[None, :] * sdkd,
             tl.where(st, dk * scale, 0.0).to(DK.dtype.element_ty), mask=st_all)
    tl.store(DV + b * sdvb + hk * sdvh + offs_n[:, None] * sdvn + offs_d[None, :] * sdvd,
             tl.where(st, dv, 0.0).to(DV.dtype.element_ty), mask=st_all)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, Mask, Lens,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sdob, sdoh, sdom, sdod, sdqb, sdqh, sdqm, sdqd, smb, smh, smm, smn,
    H, G, Tq, Tk, D, offset, qk_scale, scale,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LENS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    """One block of queries of one head; walks the keys it can see."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    m_ok = offs_m < Tq
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_d[None, :] * sdod,
                 mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(Lse + pid_bh * Tq + offs_m, mask=m_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(Delta + pid_bh * Tq + offs_m, mask=m_ok, other=0.0)
    kv_len = Tk
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(Lens + b).to(tl.int32), Tk)
    hi = kv_len
    if CAUSAL:
        hi = tl.maximum(tl.minimum(hi, (pid_m + 1) * BLOCK_M + offset), 0)
    dq = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    K_bh = K + b * skb + hk * skh
    V_bh = V + b * svb + hk * svh
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < kv_len
        k = tl.load(K_bh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, D_PAD)
        v = tl.load(V_bh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        ok = _visible(offs_m, offs_n, kv_len, offset, b, h, Mask, smb, smh, smm, smn, Tq,
                      CAUSAL, HAS_MASK)
        p = tl.where(ok, tl.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqm + offs_d[None, :] * sdqd,
             (dq * scale).to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
