"""Decode attention over a StaticSWAACache's fixed buffers: one masked kernel per layer.

A decode step has one query per row, so the ``groups`` query heads of a kv head become that kv
head's queries: keys and values are read once, never repeated per query head, and one SDPA call
covers the layer. The mask (which slots hold real, visible tokens) comes from the cache and is the
same for every head. Logit softcapping (Gemma2), which SDPA cannot apply, takes the same math
written out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..static_cache import StaticDecodePlan
from .call import AttentionCall, Kernel


def dispatch_static_decode(call: AttentionCall) -> Kernel | str:
    if not isinstance(call.plan, StaticDecodePlan):
        return "not a static-cache decode step"
    return static_decode_attention


def static_decode_attention(call: AttentionCall) -> tuple[Tensor, None]:
    query, key, value = call.query, call.key, call.value
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # (B, Hkv, groups, D)
    mask = call.plan.key_mask(call.layer_idx)  # (B, 1, 1, slots)
    if call.softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(
            grouped, key, value, attn_mask=mask, scale=call.scaling
        )
    else:
        scores = torch.matmul(grouped, key.transpose(2, 3)) * call.scaling
        scores = torch.tanh(scores / call.softcap) * call.softcap
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        out = torch.matmul(weights, value)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None
