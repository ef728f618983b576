"""Triton JIT code of the static-cache decode kernel (see ``triton_decode.py`` for the design).

Imported only by ``triton_decode.load_kernels`` so that ``import swaa_patch`` never imports triton and
``TRITON_INTERPRET=1`` (read by ``triton.jit`` at decoration time) can be set by the caller first.

One query row per (batch row, query head); the keys are a StaticSWAACache layer's fixed slots and a
slot is visible iff the cache's validity mask says so (the rule is applied when the mask is built:
sinks, window, empty slots). Scores are kept in log2 units (prescaled by log2(e)).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_swa_kernel import _tanh

# Finite "minus infinity" (inductor writes a user kernel's constexprs into its own source, where -inf is
# not a name): masked slots get probability 0 by a select, not by exp2(-inf), so a split or a row that
# sees no visible slot keeps l = 0 and acc = 0 exactly, and its max NEG weighs nothing in the merge.
NEG = tl.constexpr(-1.0e30)


@triton.jit
def decode_split_fwd(
    Q, K, V, VALID, ACC, STATS,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_valid_b, stride_valid_n,
    kv_heads, slots, split_slots, score_scale, post_scale,
    GROUPS: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One (batch row, kv head, split) program: the ``GROUPS`` query heads of the kv head against
    the slots ``[split * split_slots, (split + 1) * split_slots)``; writes the unnormalised output,
    the running max and the sum of exponentials (float32) for ``decode_merge``. Query rows are padded
    to ``BLOCK_G`` (>= 16, tl.dot's smallest tile) and head_dim to ``BLOCK_D`` with zeros."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    b = pid // kv_heads
    kvh = pid % kv_heads
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_in = offs_g < GROUPS
    d_in = offs_d < HEAD_DIM
    q_ptrs = Q + b * stride_qb + (kvh * GROUPS + offs_g)[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=g_in[:, None] & d_in[None, :], other=0.0)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    m_i = tl.full([BLOCK_G], NEG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    start = split * split_slots
    end = tl.minimum(start + split_slots, slots)
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        in_split = cols < end
        valid = tl.load(VALID + b * stride_valid_b + cols * stride_valid_n, mask=in_split, other=0) != 0
        kv_mask = in_split[:, None] & d_in[None, :]
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if SOFTCAP:
            s = _tanh(s * score_scale) * post_scale
        else:
            s = s * score_scale
        s = s.to(tl.float32)  # inductor passes Python floats as float64 scalars: keep the loop's state float32
        s = tl.where(valid[None, :], s, NEG)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.where(valid[None, :], tl.exp2(s - m_new[:, None]), 0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    row = (pid * splits + split) * GROUPS + offs_g
    tl.store(ACC + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=g_in[:, None] & d_in[None, :])
    tl.store(STATS + row * 2, m_i, mask=g_in)
    tl.store(STATS + row * 2 + 1, l_i, mask=g_in)


@triton.jit
def decode_merge(
    ACC, STATS, OUT, stride_ob, stride_oh, kv_heads, splits,
    GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """One (batch row, query head) program: the splits' partial results rescaled to their common max
    and normalised. A split that saw no valid slot has l = 0 and acc = 0 (and max NEG: weight 0 beside
    any split that saw one); a row with no valid slot at all (never the case in decode: the new token
    is always visible) gets zeros."""
    pid = tl.program_id(0)
    heads = kv_heads * GROUPS
    b = pid // heads
    head = pid % heads
    kvh = head // GROUPS
    g = head % GROUPS
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_in = offs_s < splits
    row = ((b * kv_heads + kvh) * splits + offs_s) * GROUPS + g
    m = tl.load(STATS + row * 2, mask=s_in, other=NEG)
    sums = tl.load(STATS + row * 2 + 1, mask=s_in, other=0.0)
    w = tl.exp2(m - tl.max(m, 0))
    total = tl.sum(sums * w, 0)
    acc = tl.load(ACC + row[:, None] * HEAD_DIM + offs_d[None, :], mask=s_in[:, None] & (offs_d < HEAD_DIM)[None, :],
                  other=0.0)  # fmt: skip
    out = tl.sum(acc * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(OUT + b * stride_ob + head * stride_oh + offs_d, out.to(OUT.dtype.element_ty), mask=offs_d < HEAD_DIM)
