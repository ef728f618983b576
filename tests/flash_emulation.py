"""A float64 torch emulation of flash-attn's ``flash_attn_varlen_func`` contract, for CPU tests.

It follows flash-attn's documented semantics, not ours: per varlen segment, causal masks are
aligned to the bottom-right corner (query i sees key j iff j <= i + Lk - Lq), and
``window_size=(left, right)`` keeps keys in [i + Lk - Lq - left, i + Lk - Lq + right]; it returns
(out, softmax_lse of shape (heads, total_q), None) like ``return_attn_probs=True``.
"""

from __future__ import annotations

import torch


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    return_attn_probs=False,
):
    assert dropout_p == 0.0
    heads, groups = q.shape[1], q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    lse = torch.full((heads, q.shape[0]), float("-inf"), dtype=torch.float32)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    for s in range(cu_seqlens_q.numel() - 1):
        q0, q1 = int(cu_seqlens_q[s]), int(cu_seqlens_q[s + 1])
        k0, k1 = int(cu_seqlens_k[s]), int(cu_seqlens_k[s + 1])
        if q1 == q0:
            continue
        qs = q[q0:q1].double()
        ks = k[k0:k1].double().repeat_interleave(groups, dim=1)
        vs = v[k0:k1].double().repeat_interleave(groups, dim=1)
        scores = torch.einsum("ihd,jhd->hij", qs, ks) * scale
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        i = torch.arange(q1 - q0)[:, None] + (k1 - k0) - (q1 - q0)
        j = torch.arange(k1 - k0)[None, :]
        allowed = torch.ones_like(i == j)
        if causal:
            allowed &= j <= i
        left, right = window_size
        if left >= 0:
            allowed &= j >= i - left
        if right >= 0:
            allowed &= j <= i + right
        scores = scores.masked_fill(~allowed, float("-inf"))
        seg_lse = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - seg_lse[..., None]).nan_to_num(0.0)
        out[q0:q1] = torch.einsum("hij,jhd->ihd", probs, vs).to(q.dtype)
        lse[:, q0:q1] = seg_lse.float()
    return out, lse, None
