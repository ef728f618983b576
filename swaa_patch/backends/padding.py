"""Padding query rows, computed as stock transformers computes them.

A padding query (left padding) sees no key under the rule, yet stock transformers produces an
output there, and it matters: in left-padded training with HF-style labels the first real token
is scored from the last pad position, so those rows reach the loss and its gradient. Stock does:

- ``sdpa``, ``flex_attention``, ``flash_attention_2``: zeros with no gradient (torch's SDPA
  returns 0 for a fully masked row since 2.5, flex returns 0, flash-attn drops padding and pads
  back with zeros);
- ``eager``: the additive mask row is all ``finfo.min``, so the softmax is uniform over every key
  the layer holds: the mean of the values, with the softmax's gradient to the query and the keys.

Backends compute padding rows however is convenient (a query that sees only itself keeps every
kernel finite) and then overwrite them here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..plan import AttentionPlan, KeyLayout, Memo
from .chunked import repeat_kv


def zero_padding_rows(out: Tensor, plan: AttentionPlan) -> Tensor:
    """``out`` (B, H, Lq, D) with padding query rows set to 0, as stock sdpa / flex / flash."""
    if not plan.q_padding:
        return out
    return out.masked_fill(~plan.q_valid[:, None, :, None], 0.0)


def _last_padding_query(plan: AttentionPlan) -> int:
    padding = ~plan.q_valid
    index = torch.arange(padding.shape[1], device=padding.device)
    return int(torch.where(padding, index, -1).max())


def uniform_padding_rows(
    out: Tensor, plan: AttentionPlan, keys: KeyLayout, query: Tensor, key: Tensor, value: Tensor, kernel, chunk: int
) -> Tensor:
    """``out`` (B, H, Lq, D) with padding query rows replaced by stock eager's uniform softmax over
    the layer's keys. Without gradients that is the mean of the values; with gradients the rows go
    through ``kernel`` with an all-masked additive mask, exactly as stock (O(pad queries x keys))."""
    if not plan.q_padding:
        return out
    start = plan.stock_key_start(keys)
    key, value = key[:, :, start:], value[:, :, start:]
    padding = ~plan.q_valid[:, None, :, None]
    needs_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if not needs_grad:
        mean = repeat_kv(value, query.shape[1] // value.shape[1]).mean(dim=2, keepdim=True)
        return torch.where(padding, mean.to(out.dtype), out)
    end = plan.memo(Memo.LAST_PADDING_QUERY, lambda: _last_padding_query(plan)) + 1
    none_visible = torch.zeros(query.shape[0], 1, 1, key.shape[2], dtype=torch.bool, device=query.device)
    pieces = []
    for q_start in range(0, end, chunk):
        q_end = min(end, q_start + chunk)
        mask = none_visible.expand(-1, -1, q_end - q_start, -1)
        pieces.append(kernel(query[:, :, q_start:q_end], key, value, mask, False)[0])
    head = torch.where(padding[:, :, :end], torch.cat(pieces, dim=2), out[:, :, :end])
    return torch.cat([head, out[:, :, end:]], dim=2)
