"""Triton JIT code of the sliding-window + sink *backward* (see ``triton_swa_train.py``).

FlashAttention-2's backward mapped onto the rule's block ranges (design: ``docs/kernels.md``). With
the forward's log-sum-exp ``lse`` and ``delta_i = sum_d dO_i O_i``, each visible score's gradient is
its own: ``dZ = P * (dO V^T - delta)`` with ``P = exp(Z - lse)``; the softcap chain multiplies by
``1 - tanh^2``. Index rule as in the forward (one unpadded sequence per row, position == index, no
cache: query i is key i): key j is visible to query i iff ``j <= i`` and (``i - j < window`` or
``j < keep_first``). Three kernels split that set so that no program serialises the grid:

- ``swa_sink_bwd_dq``: one program per (q block, q head), over the sink blocks and the window, as
  the forward does; with ``SINK_TAIL`` only over the sinks seen from beyond the window, added to a
  dQ that holds the band's part (cuDNN's sliding-window backward computes the band:
  ``triton_swa_train.py``), delta computed in the same pass;
- ``swa_sink_bwd_sink_tail``: the pairs ``i - j >= window, j < keep_first`` (a sink seen from
  beyond the window: O(n * keep_first)), one program per chunk of queries and kv head, writing a
  partial dK/dV of the sink rows per chunk (summed by the caller);
- ``swa_sink_bwd_dkdv``: one program per (kv block, kv head), over the queries of its band
  ``j <= i < j + window`` for every q head of the group (GQA summed in the program, no atomics),
  plus the summed sink-tail rows for the blocks holding sinks.

Imported only by ``triton_swa_train.load_backward_kernels`` (triton imported lazily, after the
caller may have set ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_swa_kernel import _key_ranges, _tanh

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _scores(q, k, scale, softcap, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``(z, dz/ds)`` of a (queries, keys) tile: the logits and the chain factor of the raw dot."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if SOFTCAP:
        t = _tanh(s * (scale / softcap))
        return softcap * t, scale * (1.0 - t * t)
    return s * scale, scale + tl.zeros_like(s)


@triton.jit
def _load_rows(base, rows, stride_row, stride_d, offs_d, n_rows):
    """A (len(rows), HEAD_DIM) tile, zeros past ``n_rows``."""
    return tl.load(base + rows[:, None] * stride_row + offs_d[None, :] * stride_d, mask=rows[:, None] < n_rows,
                   other=0.0)  # fmt: skip


@triton.jit
def _kv_rows(K, V, b, h_kv, rows, stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh, stride_vn,
             stride_vd, offs_d, n_rows):  # fmt: skip
    """``(k, v)``: key rows ``rows`` of kv head ``h_kv`` in batch row ``b`` (zeros from ``n_rows`` on)."""
    k = _load_rows(K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh, rows, stride_kn, stride_kd,
                   offs_d, n_rows)  # fmt: skip
    v = _load_rows(V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh, rows, stride_vn, stride_vd,
                   offs_d, n_rows)  # fmt: skip
    return k, v


@triton.jit
def _query_rows(Q, DO, Lse, Delta, b, h_q, rows, stride_qb, stride_qh, stride_qm, stride_qd, stride_dob, stride_doh,
                stride_dom, stride_dod, n_q_heads, seq, offs_d):  # fmt: skip
    """``(q, dO, lse, delta, row_ok)`` of query ``rows`` of q head ``h_q`` in batch row ``b`` (zeros
    past ``seq``)."""
    row_ok = rows < seq
    q = _load_rows(Q + b.to(tl.int64) * stride_qb + h_q.to(tl.int64) * stride_qh, rows, stride_qm, stride_qd,
                   offs_d, seq)  # fmt: skip
    do = _load_rows(DO + b.to(tl.int64) * stride_dob + h_q.to(tl.int64) * stride_doh, rows, stride_dom, stride_dod,
                    offs_d, seq)  # fmt: skip
    base = (b.to(tl.int64) * n_q_heads + h_q) * seq
    lse = tl.load(Lse + base + rows, mask=row_ok, other=0.0)
    delta = tl.load(Delta + base + rows, mask=row_ok, other=0.0)
    return q, do, lse, delta, row_ok


@triton.jit
def swa_sink_bwd_delta(
    Out, DO, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    n_heads, seq,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """``delta_i = sum_d dO_i O_i`` in float32 for BLOCK_M rows of one head (no float32 copies of O
    and dO in memory). Delta: float32 (batch * heads, seq). Grid: (row blocks, batch * heads)."""
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh, rows, stride_om, stride_od, offs_d,
                   seq)  # fmt: skip
    do = _load_rows(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh, rows, stride_dom, stride_dod,
                    offs_d, seq)  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(Delta + bh.to(tl.int64) * seq + rows, delta, mask=rows < seq)


@triton.jit
def _dq_blocks(dq, q, do, lse, delta, offs_m, row_ok, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
               offs_n, offs_d, start, end, seq, window, keep_first, scale, softcap, SOFTCAP: tl.constexpr,
               DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
               TAIL: tl.constexpr = False):  # fmt: skip
    """Fold the key blocks ``start, start + BLOCK_N, ... < end`` into ``dq``: under the element rule
    (``MASKED``), or unmasked where the caller's range makes every key visible to every query (rows
    past the end have dO = 0 and add nothing); ``TAIL``: only the sink tail's pairs (``i - j >=
    window, j < keep_first``)."""
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(k_base, cols, stride_kn, stride_kd, offs_d, seq)
        v = _load_rows(v_base, cols, stride_vn, stride_vd, offs_d, seq)
        z, dz = _scores(q, k, scale, softcap, SOFTCAP, DOT_PRECISION)
        p = tl.exp2((z - lse[:, None]) * LOG2E)
        if TAIL:
            visible = (offs_m[:, None] - cols[None, :] >= window) & (cols[None, :] < keep_first)
            p = tl.where(visible & row_ok[:, None], p, 0.0)
        elif MASKED:
            dist = offs_m[:, None] - cols[None, :]
            visible = (dist >= 0) & ((dist < window) | (cols[None, :] < keep_first)) & (cols[None, :] < seq)
            p = tl.where(visible & row_ok[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None]) * dz
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def swa_sink_bwd_dq(
    Q, K, V, DO, Out, Lse, Delta, DQ,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    n_kv_heads, groups, seq, window, keep_first, scale, softcap, first_block,
    HEAD_DIM: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINK_TAIL: tl.constexpr,
):  # fmt: skip
    """dQ of BLOCK_M queries of one q head. Grid: (q blocks from ``first_block`` on * groups,
    batch * kv heads).

    ``SINK_TAIL`` (the cuDNN path: DQ holds a window-only backward's dQ): only the pairs ``i - j >=
    window, j < keep_first`` (sinks seen from beyond the window), added to DQ in place; delta is
    computed here from Out and written to Delta for the sink-tail dK/dV kernel (no delta pass).
    Otherwise the rule's whole dQ from the delta in Delta; Out is not read."""
    pid = tl.program_id(0)
    bh_kv = tl.program_id(1)
    b = bh_kv // n_kv_heads
    h_kv = bh_kv % n_kv_heads
    h_q = h_kv * groups + pid % groups
    block = first_block + pid // groups

    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q, do, lse, delta, row_ok = _query_rows(Q, DO, Lse, Delta, b, h_q, offs_m, stride_qb, stride_qh, stride_qm,
                                            stride_qd, stride_dob, stride_doh, stride_dom, stride_dod,
                                            n_kv_heads * groups, seq, offs_d)  # fmt: skip
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    dq_ptrs = (DQ + b.to(tl.int64) * stride_dqb + h_q.to(tl.int64) * stride_dqh + offs_m[:, None] * stride_dqm
               + offs_d[None, :] * stride_dqd)  # fmt: skip
    if SINK_TAIL:
        o = _load_rows(Out + b.to(tl.int64) * stride_ob + h_q.to(tl.int64) * stride_oh, offs_m, stride_om, stride_od,
                       offs_d, seq)  # fmt: skip
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
        tl.store(Delta + (b.to(tl.int64) * n_kv_heads * groups + h_q) * seq + offs_m, delta, mask=row_ok)
        dq = tl.load(dq_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        dq = _dq_blocks(dq, q, do, lse, delta, offs_m, row_ok, k_base, v_base, stride_kn, stride_kd, stride_vn,
                        stride_vd, offs_n, offs_d, 0, keep_first, seq, window, keep_first, scale, softcap, SOFTCAP,
                        DOT_PRECISION, BLOCK_N, True, True)  # fmt: skip
    else:
        # the forward's five ranges: full sink blocks, the partial sink block, the window's lower edge, the
        # interior (every key visible to every query) and the diagonal
        q_lo = block * BLOCK_M
        q_last = tl.minimum(q_lo + BLOCK_M, seq) - 1
        sink_full_end, sink_end, win_start, mid_start, hi_start = _key_ranges(q_lo, q_last, window, keep_first, BLOCK_N)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        # fmt: off
        dq = _dq_blocks(dq, q, do, lse, delta, offs_m, row_ok, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                        offs_n, offs_d, 0, sink_full_end, seq, window, keep_first, scale, softcap, SOFTCAP,
                        DOT_PRECISION, BLOCK_N, False)
        dq = _dq_blocks(dq, q, do, lse, delta, offs_m, row_ok, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                        offs_n, offs_d, sink_full_end, sink_end, seq, window, keep_first, scale, softcap, SOFTCAP,
                        DOT_PRECISION, BLOCK_N, True)
        dq = _dq_blocks(dq, q, do, lse, delta, offs_m, row_ok, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                        offs_n, offs_d, win_start, mid_start, seq, window, keep_first, scale, softcap, SOFTCAP,
                        DOT_PRECISION, BLOCK_N, True)
        dq = _dq_blocks(dq, q, do, lse, delta, offs_m, row_ok, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                        offs_n, offs_d, mid_start, hi_start, seq, window, keep_first, scale, softcap, SOFTCAP,
                        DOT_PRECISION, BLOCK_N, False)
        dq = _dq_blocks(dq, q, do, lse, delta, offs_m, row_ok, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                        offs_n, offs_d, hi_start, q_last + 1, seq, window, keep_first, scale, softcap, SOFTCAP,
                        DOT_PRECISION, BLOCK_N, True)
        # fmt: on
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def swa_sink_bwd_sink_tail(
    Q, K, V, DO, Lse, Delta, PartDK, PartDV,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    n_kv_heads, groups, seq, window, keep_first, scale, softcap, chunk_blocks, sink_rows,
    HEAD_DIM: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, SINKS: tl.constexpr, PAIR_SINKS: tl.constexpr,
):  # fmt: skip
    """Partial dK/dV of SINKS sink rows from the queries of one chunk that see them from beyond the
    window (``i - j >= window``). Grid: (chunks, batch * kv heads, sink blocks), or with
    ``PAIR_SINKS`` (sink blocks, chunks, batch * kv heads): a chunk's sink-block programs then start
    side by side and walk the same q / dO tiles together, so all but the first read them from L2.
    PartDK/PartDV are float32 (chunks, batch * kv heads, sink_rows, HEAD_DIM), sink_rows = sink
    blocks * SINKS."""
    if PAIR_SINKS:
        sink_block, chunk, bh_kv, n_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2), tl.num_programs(2)
    else:
        chunk, bh_kv, sink_block, n_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2), tl.num_programs(1)
    b = bh_kv // n_kv_heads
    h_kv = bh_kv % n_kv_heads
    offs_s = sink_block * SINKS + tl.arange(0, SINKS)
    offs_d = tl.arange(0, HEAD_DIM)
    k, v = _kv_rows(K, V, b, h_kv, offs_s, stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh,
                    stride_vn, stride_vd, offs_d, keep_first)  # fmt: skip
    dk = tl.zeros([SINKS, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([SINKS, HEAD_DIM], dtype=tl.float32)
    first = window // BLOCK_M  # no query before `window` sees a sink from beyond the window
    for g in range(groups):
        h_q = h_kv * groups + g
        for i in range(chunk_blocks):
            offs_m = (first + chunk * chunk_blocks + i) * BLOCK_M + tl.arange(0, BLOCK_M)
            q, do, lse, delta, row_ok = _query_rows(Q, DO, Lse, Delta, b, h_q, offs_m, stride_qb, stride_qh,
                                                    stride_qm, stride_qd, stride_dob, stride_doh, stride_dom,
                                                    stride_dod, n_kv_heads * groups, seq, offs_d)  # fmt: skip
            z, dz = _scores(q, k, scale, softcap, SOFTCAP, DOT_PRECISION)
            visible = (offs_m[:, None] - offs_s[None, :] >= window) & (offs_s[None, :] < keep_first)
            visible &= row_ok[:, None]
            p = tl.where(visible, tl.exp2((z - lse[:, None]) * LOG2E), 0.0)
            dv = tl.dot(tl.trans(p).to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None]) * dz
            dk = tl.dot(tl.trans(ds).to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    part = (chunk.to(tl.int64) * n_bh + bh_kv) * sink_rows * HEAD_DIM
    tile = offs_s[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(PartDK + part + tile, dk)
    tl.store(PartDV + part + tile, dv)


@triton.jit
def _dkdv_blocks(dk, dv, k, v, Q, DO, Lse, Delta, b, h_q, offs_m, offs_n, offs_d, col_ok, stride_qb, stride_qh,
                 stride_qm, stride_qd, stride_dob, stride_doh, stride_dom, stride_dod, n_q_heads, seq, window, scale,
                 softcap, start, end, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                 MASKED: tl.constexpr):  # fmt: skip
    """Fold the q blocks ``start, start + BLOCK_M, ... < end`` of q head ``h_q`` into one key block's
    ``dk, dv`` (band rule ``0 <= i - j < window`` when ``MASKED``; unmasked where the caller's range
    makes every pair visible: rows past the end have dO = 0, keys past it are never stored)."""
    for start_m in range(start, end, BLOCK_M):
        rows = start_m + offs_m
        q, do, lse, delta, row_ok = _query_rows(Q, DO, Lse, Delta, b, h_q, rows, stride_qb, stride_qh, stride_qm,
                                                stride_qd, stride_dob, stride_doh, stride_dom, stride_dod, n_q_heads,
                                                seq, offs_d)  # fmt: skip
        # (keys, queries) orientation: the transposed scores of the forward
        z, dz = _scores(k, q, scale, softcap, SOFTCAP, DOT_PRECISION)
        p = tl.exp2((z - lse[None, :]) * LOG2E)
        if MASKED:
            dist = rows[None, :] - offs_n[:, None]
            p = tl.where((dist >= 0) & (dist < window) & row_ok[None, :] & col_ok[:, None], p, 0.0)
        dv = tl.dot(p.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[None, :]) * dz
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def swa_sink_bwd_dkdv(
    Q, K, V, DO, Lse, Delta, DK, DV, SinkDK, SinkDV,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    n_kv_heads, groups, seq, window, keep_first, scale, softcap, sink_rows,
    HEAD_DIM: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_SINK_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dK/dV of BLOCK_N keys of one kv head from the queries of their band ``j <= i < j + window``
    (every q head of the group); key rows below keep_first add the sink tail's summed rows
    (SinkDK/SinkDV: float32 (batch * kv heads, sink_rows, HEAD_DIM), sink_rows >= keep_first). Grid: (kv blocks, batch * kv heads)."""
    block = tl.program_id(0)
    bh_kv = tl.program_id(1)
    b = bh_kv // n_kv_heads
    h_kv = bh_kv % n_kv_heads
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < seq
    k, v = _kv_rows(K, V, b, h_kv, offs_n, stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh,
                    stride_vn, stride_vd, offs_d, seq)  # fmt: skip
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    k_lo = block * BLOCK_N
    q_start = (k_lo // BLOCK_M) * BLOCK_M
    q_end = tl.minimum(k_lo + BLOCK_N - 1 + window, seq)  # one past the band's last query
    # three q ranges: the diagonal (causal mask), the interior (q blocks starting at or after the block's
    # last key and ending inside the window of its first key: unmasked) and the window's far edge
    diag_end = tl.minimum(((k_lo + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, q_end)
    inner_end = tl.maximum(((k_lo + window - BLOCK_M) // BLOCK_M + 1) * BLOCK_M, 0)
    inner_end = tl.maximum(tl.minimum(inner_end, q_end), diag_end)
    for g in range(groups):
        h_q = h_kv * groups + g
        # fmt: off
        dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, Lse, Delta, b, h_q, offs_m, offs_n, offs_d, col_ok,
                              stride_qb, stride_qh, stride_qm, stride_qd, stride_dob, stride_doh, stride_dom,
                              stride_dod, n_kv_heads * groups, seq, window, scale, softcap, q_start, diag_end,
                              SOFTCAP, DOT_PRECISION, BLOCK_M, True)
        dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, Lse, Delta, b, h_q, offs_m, offs_n, offs_d, col_ok,
                              stride_qb, stride_qh, stride_qm, stride_qd, stride_dob, stride_doh, stride_dom,
                              stride_dod, n_kv_heads * groups, seq, window, scale, softcap, diag_end, inner_end,
                              SOFTCAP, DOT_PRECISION, BLOCK_M, False)
        dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, Lse, Delta, b, h_q, offs_m, offs_n, offs_d, col_ok,
                              stride_qb, stride_qh, stride_qm, stride_qd, stride_dob, stride_doh, stride_dom,
                              stride_dod, n_kv_heads * groups, seq, window, scale, softcap, inner_end, q_end,
                              SOFTCAP, DOT_PRECISION, BLOCK_M, True)
        # fmt: on
    if HAS_SINK_TAIL:
        if k_lo < keep_first:
            sink = offs_n[:, None] < keep_first
            tile = bh_kv.to(tl.int64) * sink_rows * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
            dk += tl.load(SinkDK + tile, mask=sink, other=0.0)
            dv += tl.load(SinkDV + tile, mask=sink, other=0.0)
    dk_base = DK + b.to(tl.int64) * stride_dkb + h_kv.to(tl.int64) * stride_dkh
    dv_base = DV + b.to(tl.int64) * stride_dvb + h_kv.to(tl.int64) * stride_dvh
    tl.store(dk_base + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty),
             mask=col_ok[:, None])  # fmt: skip
    tl.store(dv_base + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty),
             mask=col_ok[:, None])  # fmt: skip
