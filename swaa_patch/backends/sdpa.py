"""SDPA backend: torch's scaled_dot_product_attention per query chunk with a boolean mask from
the rule; plain causal layers go mask-free so torch can pick its fused kernels. Sliding layers of
a plain inference prefill take the Triton kernel instead (``triton_prefill.py``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import use_gqa_in_sdpa

from ..plan import AttentionPlan
from .chunked import chunked_attention, repeat_kv
from .padding import zero_padding_rows
from .triton_prefill import triton_prefill_attention


def sdpa_kernel(scaling: float, dropout: float):
    def kernel(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool):
        grouped = q.shape[1] != k.shape[1]
        if grouped and not use_gqa_in_sdpa(mask, k, v):
            # transformers' own dispatch rule: with a mask, native GQA would fall back to the math
            # kernel, so repeat the (chunk-sized) keys instead
            groups = q.shape[1] // k.shape[1]
            k, v, grouped = repeat_kv(k, groups), repeat_kv(v, groups), False
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scaling, enable_gqa=grouped
        )
        return out, None

    return kernel


def sdpa_swaa_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    plan: AttentionPlan,
    *,
    scaling: float,
    dropout: float = 0.0,
    softcap: float | None = None,
) -> tuple[Tensor, None]:
    if softcap is not None:
        # Same contract as transformers' own sdpa path: SDPA cannot softcap logits.
        raise ValueError(
            "`sdpa` attention does not support `softcap` (attn_logit_softcapping); load the model with "
            "attn_implementation='eager' or 'flex_attention'"
        )
    dropout = dropout if module.training else 0.0
    fast = triton_prefill_attention(module, query, key, value, plan, scaling=scaling, dropout=dropout)
    if fast is not None:
        return fast, None
    kernel = sdpa_kernel(scaling, dropout)
    out, _ = chunked_attention(plan, module.layer_idx, query, key, value, kernel)
    return zero_padding_rows(out, plan).transpose(1, 2).contiguous(), None
