"""Triton JIT code of the sliding-window + sink forward kernel (see ``triton_swa.py`` for the design).

Imported only by ``triton_swa.load_kernels`` so that ``import swaa_patch`` never imports triton, and
so that ``TRITON_INTERPRET=1`` (read by ``triton.jit`` at decoration time) can be set by the caller
first. Written for triton >= 3.6: plain pointer loads, ``tl.dot`` with ``input_precision``, no
tensor descriptors.

The index arithmetic here is the rule of ``swaa_patch.rule`` for one unpadded sequence per row
(position == key index, like ``flex.simple_mask_mod``): key j is visible to query i iff
``j <= i`` and (``i - j < window`` or ``j < keep_first``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # exp2-based tanh: one code path on GPU and in the interpreter (libdevice is GPU-only).
    t = tl.exp2(-2.0 * 1.4426950408889634 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _attend(
    acc,
    l_i,
    m_i,
    q,
    q_pos,
    k_base,
    v_base,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    start,
    end,
    seq_k,
    window,
    keep_first,
    score_scale,
    post_scale,
    offs_n,
    offs_d,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online-softmax update over the KV blocks starting at ``start, start + BLOCK_N, ... < end``.

    Scores are kept in log2 units (prescaled by log2(e)), so the exponentials are ``exp2``.
    ``MASKED`` blocks apply the element rule and bounds-check their loads; unmasked blocks are
    fully visible to every query of the program by construction of the caller's ranges."""
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        k_ptrs = k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd  # (BLOCK_N, D)
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if MASKED:
            k = tl.load(k_ptrs, mask=cols[:, None] < seq_k, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < seq_k, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if SOFTCAP:
            s = _tanh(s * score_scale) * post_scale
        else:
            s = s * score_scale
        if MASKED:
            dist = q_pos[:, None] - cols[None, :]
            visible = (dist >= 0) & ((dist < window) | (cols[None, :] < keep_first)) & (cols[None, :] < seq_k)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # a row that has seen no visible key yet keeps m = -inf; subtract 0 instead (no NaN)
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = m_new
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def swa_sink_fwd(
    Q,
    K,
    V,
    Out,
    Lse,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    n_kv_heads,
    groups,
    seq_q,
    seq_k,
    offset,
    window,
    keep_first,
    score_scale,
    post_scale,
    HEAD_DIM: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program = BLOCK_M queries of one q head. Grid: (q blocks * groups, batch * kv heads).

    The q heads sharing a kv head are adjacent programs (they read the same K/V tiles from L2), and
    q blocks run last-first (the longest rows first when the window covers everything)."""
    pid = tl.program_id(0)
    bh_kv = tl.program_id(1)
    n_q_blocks = (seq_q + BLOCK_M - 1) // BLOCK_M
    g = pid % groups
    block = n_q_blocks - 1 - pid // groups
    b = bh_kv // n_kv_heads
    h_kv = bh_kv % n_kv_heads
    h_q = h_kv * groups + g

    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_q
    # rows past the end replay the last query (never stored): no row is left without keys
    q_pos = offset + tl.minimum(offs_m, seq_q - 1)

    q_base = Q + b.to(tl.int64) * stride_qb + h_q.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    q = tl.load(
        q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0
    )

    # KV ranges of this q block (key positions == key indices), all block-aligned to BLOCK_N:
    #   sinks   [0, sink_end)          keys < keep_first that lie before the window's first block
    #   window  [win_start, q_last]    lower edge masked | interior unmasked | diagonal masked
    # The sink range ends where the window range begins, so no key is counted twice.
    q_lo = offset + block * BLOCK_M
    q_last = offset + tl.minimum(block * BLOCK_M + BLOCK_M, seq_q) - 1
    win_start = (tl.maximum(q_lo - window + 1, 0) // BLOCK_N) * BLOCK_N
    # first block whose keys are all inside the window of the block's last query
    lo_end = ((tl.maximum(q_last - window + 1, 0) + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    # first block holding a key after the block's first query (needs the causal mask)
    hi_start = ((q_lo + 1) // BLOCK_N) * BLOCK_N
    mid_start = tl.minimum(tl.maximum(lo_end, win_start), hi_start)
    sink_full_end = tl.minimum((keep_first // BLOCK_N) * BLOCK_N, win_start)
    sink_end = tl.minimum(((keep_first + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, win_start)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)
    # fmt: off
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_base, v_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, 0, sink_full_end,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, False, SOFTCAP, DOT_PRECISION)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_base, v_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, sink_full_end, sink_end,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, True, SOFTCAP, DOT_PRECISION)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_base, v_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, win_start, mid_start,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, True, SOFTCAP, DOT_PRECISION)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_base, v_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, mid_start, hi_start,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, False, SOFTCAP, DOT_PRECISION)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_base, v_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, hi_start, q_last + 1,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, True, SOFTCAP, DOT_PRECISION)
    # fmt: on

    out = acc / l_i[:, None]
    o_base = Out + b.to(tl.int64) * stride_ob + h_q.to(tl.int64) * stride_oh
    tl.store(
        o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        out.to(Out.dtype.element_ty),
        mask=row_ok[:, None],
    )
    lse_base = Lse + (b.to(tl.int64) * n_kv_heads * groups + h_q) * seq_q
    tl.store(lse_base + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)
