"""Triton JIT code of the sliding-window + sink forward kernel (see ``triton_swa.py`` for the design).

Imported only by ``triton_swa.load_kernels`` so that ``import swaa_patch`` never imports triton, and
so that ``TRITON_INTERPRET=1`` (read by ``triton.jit`` at decoration time) can be set by the caller
first. Written for triton >= 3.6.

The index arithmetic here is the rule of ``swaa_patch.rule`` for one unpadded sequence per row
(position == key index, like ``flex.simple_mask_mod``): key j is visible to query i iff
``j <= i`` and (``i - j < window`` or ``j < keep_first``).

Two ways to read Q/K/V, chosen by the ``USE_TMA`` flag: plain pointer loads (any strides,
bounds-checked), or Hopper TMA through 2-D tensor descriptors over a row view of each tensor
(``triton_swa.row_view``): the keys of one (batch, head) are consecutive rows starting at
``b * row_b + h * row_h``, at column ``h * col_h`` (column ``b * col_b`` is folded into the same
offset). Rows past a sequence's end read a neighbour's rows (real data of the same tensor) or zeros
past the tensor's end; the rule's ``j < seq_k`` term keeps them out of every softmax.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Finite "minus infinity" of masked scores (log2 units): exp2(NEG - m) == 0 for any real max m, and a
# row whose first visited block is fully masked gets a max of ~NEG whose garbage the first visible
# key wipes out (alpha = exp2(NEG - m_real) == 0). No inf - inf, so no NaN and no extra selects.
NEG = tl.constexpr(-1.0e30)


@triton.jit
def _tanh(x):
    # exp2-based tanh: one code path on GPU and in the interpreter (libdevice is GPU-only).
    t = tl.exp2(-2.0 * 1.4426950408889634 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _load_kv(src, row0, col, start_n, cols, seq_k, stride_n, stride_d, offs_d,
             MASKED: tl.constexpr, USE_TMA: tl.constexpr):  # fmt: skip
    """The (BLOCK_N, HEAD_DIM) tile of K or V of key indices ``cols = start_n + arange(BLOCK_N)``:
    a descriptor load at row ``row0 + start_n`` (TMA) or a pointer load from ``src``."""
    if USE_TMA:
        tile = src.load([row0 + start_n, col])
    else:
        ptrs = src + cols[:, None] * stride_n + offs_d[None, :] * stride_d
        if MASKED:
            tile = tl.load(ptrs, mask=cols[:, None] < seq_k, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _update(acc, l_i, m_i, s, v, q_pos, cols, seq_k, window, keep_first, score_scale, post_scale,
            MASKED: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """Online-softmax step: fold the raw scores ``s = q k^T`` of one KV block and its V tile into
    ``acc, l_i, m_i``.

    Scores are kept in log2 units (prescaled by log2(e)), so the exponentials are ``exp2``; the
    unmasked path folds the scale into the max and one multiply-add (FlashAttention-2's trick).
    ``MASKED`` blocks apply the element rule; unmasked blocks are fully visible to every query of
    the program by construction of the caller's ranges."""
    if SOFTCAP:
        s = _tanh(s * score_scale) * post_scale
        scale = 1.0
    else:
        scale = score_scale
    if MASKED:
        dist = q_pos[:, None] - cols[None, :]
        visible = (dist >= 0) & ((dist < window) | (cols[None, :] < keep_first)) & (cols[None, :] < seq_k)
        s = tl.where(visible, s * scale, NEG)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * scale)
        p = tl.exp2(s * scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _attend(
    acc,
    l_i,
    m_i,
    q,
    q_pos,
    k_src,
    v_src,
    k_row0,
    k_col,
    v_row0,
    v_col,
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
    USE_TMA: tl.constexpr,
    WARP_SPEC: tl.constexpr,
):
    """Online softmax over the KV blocks starting at ``start, start + BLOCK_N, ... < end``.

    (A hand-pipelined variant of this loop, FlashAttention-3's intra-warpgroup overlap, and
    FlashAttention-4's lazy rescale were measured slower on the H100 with Triton 3.6 and removed:
    benchmarks/results/triton_tuning.md, third table.)"""
    for start_n in tl.range(start, end, BLOCK_N, warp_specialize=WARP_SPEC):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _load_kv(
            k_src, k_row0, k_col, start_n, cols, seq_k, stride_kn, stride_kd, offs_d, MASKED, USE_TMA
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        v = _load_kv(
            v_src, v_row0, v_col, start_n, cols, seq_k, stride_vn, stride_vd, offs_d, MASKED, USE_TMA
        )
        acc, l_i, m_i = _update(
            acc, l_i, m_i, s, v, q_pos, cols, seq_k, window, keep_first, score_scale, post_scale,
            MASKED, SOFTCAP, DOT_PRECISION,
        )  # fmt: skip
    return acc, l_i, m_i


@triton.jit
def _key_ranges(q_lo, q_last, window, keep_first, BLOCK_N: tl.constexpr):
    """The KV ranges of the queries at key positions ``q_lo .. q_last`` (position == key index), all
    block-aligned to BLOCK_N, as ``(sink_full_end, sink_end, win_start, mid_start, hi_start)``:

        sinks   [0, sink_full_end) unmasked | [sink_full_end, sink_end) masked (keys < keep_first
                before the window's first block)
        window  [win_start, mid_start) lower edge masked | [mid_start, hi_start) interior unmasked |
                [hi_start, q_last] diagonal masked

    The sink range ends where the window range begins, so no key is counted twice. Used by the
    forward and by the backward's dQ kernel (``_triton_swa_bwd_kernel``)."""
    win_start = (tl.maximum(q_lo - window + 1, 0) // BLOCK_N) * BLOCK_N
    # first block whose keys are all inside the window of the block's last query
    lo_end = ((tl.maximum(q_last - window + 1, 0) + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    # first block holding a key after the block's first query (needs the causal mask)
    hi_start = ((q_lo + 1) // BLOCK_N) * BLOCK_N
    mid_start = tl.minimum(tl.maximum(lo_end, win_start), hi_start)
    sink_full_end = tl.minimum((keep_first // BLOCK_N) * BLOCK_N, win_start)
    sink_end = tl.minimum(((keep_first + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, win_start)
    return sink_full_end, sink_end, win_start, mid_start, hi_start


@triton.jit
def _program_heads(groups, n_kv_heads):
    """``(batch, kv head, q head, rank)`` of this program in a grid of ``(q blocks * groups, batch *
    kv heads)``: the ``groups`` q heads of one kv head are adjacent programs (they read the same
    K/V tiles from L2); ``rank`` counts the program's q block in launch order."""
    pid = tl.program_id(0)
    bh_kv = tl.program_id(1)
    h_kv = bh_kv % n_kv_heads
    return bh_kv // n_kv_heads, h_kv, h_kv * groups + pid % groups, pid // groups


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
    q_row_b,
    q_row_h,
    q_col_b,
    q_col_h,
    k_row_b,
    k_row_h,
    k_col_b,
    k_col_h,
    v_row_b,
    v_row_h,
    v_col_b,
    v_col_h,
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
    USE_TMA: tl.constexpr,
    WARP_SPEC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program = BLOCK_M queries of one q head. Grid: (q blocks * groups, batch * kv heads).

    The q heads sharing a kv head are adjacent programs (they read the same K/V tiles from L2), and
    q blocks run last-first (the longest rows first when the window covers everything).
    With ``USE_TMA``, Q/K/V are 2-D tensor descriptors and ``*_row_b, *_row_h, *_col_b, *_col_h``
    their row views (see the module docstring); without it those are unused."""
    b, h_kv, h_q, rank = _program_heads(groups, n_kv_heads)
    block = (seq_q + BLOCK_M - 1) // BLOCK_M - 1 - rank

    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_q
    # rows past the end replay the last query (never stored): no row is left without keys
    q_pos = offset + tl.minimum(offs_m, seq_q - 1)

    if USE_TMA:
        q = Q.load([b * q_row_b + h_q * q_row_h + block * BLOCK_M, b * q_col_b + h_q * q_col_h])
        k_row0 = b * k_row_b + h_kv * k_row_h
        k_col = b * k_col_b + h_kv * k_col_h
        v_row0 = b * v_row_b + h_kv * v_row_h
        v_col = b * v_col_b + h_kv * v_col_h
        k_src = K
        v_src = V
    else:
        q_base = Q + b.to(tl.int64) * stride_qb + h_q.to(tl.int64) * stride_qh
        q = tl.load(
            q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
            mask=row_ok[:, None],
            other=0.0,
        )
        k_src = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
        v_src = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
        k_row0 = 0
        k_col = 0
        v_row0 = 0
        v_col = 0

    q_lo = offset + block * BLOCK_M
    q_last = offset + tl.minimum(block * BLOCK_M + BLOCK_M, seq_q) - 1
    sink_full_end, sink_end, win_start, mid_start, hi_start = _key_ranges(q_lo, q_last, window, keep_first, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)
    # fmt: off
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_src, v_src, k_row0, k_col, v_row0, v_col,
                            stride_kn, stride_kd, stride_vn, stride_vd, 0, sink_full_end,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, False, SOFTCAP, DOT_PRECISION, USE_TMA, False)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_src, v_src, k_row0, k_col, v_row0, v_col,
                            stride_kn, stride_kd, stride_vn, stride_vd, sink_full_end, sink_end,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, True, SOFTCAP, DOT_PRECISION, USE_TMA, False)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_src, v_src, k_row0, k_col, v_row0, v_col,
                            stride_kn, stride_kd, stride_vn, stride_vd, win_start, mid_start,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, True, SOFTCAP, DOT_PRECISION, USE_TMA, False)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_src, v_src, k_row0, k_col, v_row0, v_col,
                            stride_kn, stride_kd, stride_vn, stride_vd, mid_start, hi_start,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, False, SOFTCAP, DOT_PRECISION, USE_TMA, WARP_SPEC)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_src, v_src, k_row0, k_col, v_row0, v_col,
                            stride_kn, stride_kd, stride_vn, stride_vd, hi_start, q_last + 1,
                            seq_k, window, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, True, SOFTCAP, DOT_PRECISION, USE_TMA, False)
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


@triton.jit
def sink_merge_fwd(
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
    stride_lb,
    stride_lh,
    stride_lm,
    n_kv_heads,
    groups,
    seq_q,
    seq_k,
    offset,
    first_block,
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
    """Fold the sink keys that lie *outside* each query's window into a window-only result, in place.

    ``Out``/``Lse`` hold attention over the window alone (keys j with ``0 <= i - j < window``, e.g.
    from cuDNN's sliding-window kernel); the rule adds keys ``j < keep_first`` with ``i - j >=
    window``. The window result is the online softmax's state (running max = its log-sum-exp,
    normaliser 1, accumulator = its output), so the sink blocks continue it exactly as the main
    kernel would. Shifting the query positions by ``-window`` and calling the masked step with
    window 0 makes ``_update``'s rule ``dist >= 0 and j < keep_first`` select exactly those keys.
    One program = BLOCK_M queries of one q head, q blocks from ``first_block`` on (earlier queries
    see every sink inside their window). Grid: (blocks * groups, batch * kv heads)."""
    b, h_kv, h_q, rank = _program_heads(groups, n_kv_heads)
    block = first_block + rank

    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_q
    rows = tl.minimum(offs_m, seq_q - 1)
    q_pos = offset + rows - window

    q_base = Q + b.to(tl.int64) * stride_qb + h_q.to(tl.int64) * stride_qh
    q = tl.load(q_base + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd)
    o_ptrs = Out + b.to(tl.int64) * stride_ob + h_q.to(tl.int64) * stride_oh
    o_ptrs += rows[:, None] * stride_om + offs_d[None, :] * stride_od
    l_ptrs = Lse + b.to(tl.int64) * stride_lb + h_q.to(tl.int64) * stride_lh + rows * stride_lm
    acc = tl.load(o_ptrs).to(tl.float32)
    m_i = tl.load(l_ptrs) * 1.4426950408889634  # natural log -> log2 units
    l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)

    k_src = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_src = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    sink_end = ((keep_first + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    # fmt: off
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_src, v_src, 0, 0, 0, 0,
                            stride_kn, stride_kd, stride_vn, stride_vd, 0, sink_end,
                            seq_k, 0, keep_first, score_scale, post_scale, offs_n, offs_d,
                            BLOCK_N, True, SOFTCAP, DOT_PRECISION, False, False)
    # fmt: on
    tl.store(o_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(l_ptrs, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)
