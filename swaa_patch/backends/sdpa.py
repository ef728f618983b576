"""SDPA backend: torch's scaled_dot_product_attention per query chunk with a boolean mask from
the rule; plain causal layers go mask-free so torch can pick its fused kernels."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.integrations.sdpa_attention import use_gqa_in_sdpa

from .call import AttentionCall
from .chunked import chunked_attention, repeat_kv
from .padding import zero_padding_rows


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


def sdpa_swaa_attention(call: AttentionCall) -> tuple[Tensor, None]:
    """The caller guarantees no softcap (SDPA cannot; ``backends/__init__.py`` refuses it)."""
    kernel = sdpa_kernel(call.scaling, call.active_dropout)
    out, _ = chunked_attention(call.plan, call.layer_idx, call.query, call.key, call.value, kernel)
    return zero_padding_rows(out, call.plan).transpose(1, 2).contiguous(), None
