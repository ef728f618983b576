"""Eager backend: explicit softmax(QK^T) per query chunk. Supports logit softcapping (Gemma2)
and returns attention weights when the whole matrix fits in one chunk."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..plan import AttentionPlan, Memo
from .call import AttentionCall
from .chunked import chunked_attention, query_chunk_size, repeat_kv
from .padding import uniform_padding_rows


def eager_kernel(scaling: float, softcap: float | None, dropout: float, training: bool, plan: AttentionPlan):
    def causal_bias(n_q: int, n_k: int, dtype, device) -> Tensor:
        # additive, built once per forward and shared by all layers, as transformers' eager path does
        def build() -> Tensor:
            allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(n_k - n_q)
            return torch.zeros(n_q, n_k, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

        return plan.memo(Memo.EAGER_CAUSAL_BIAS, build, n_q, n_k, dtype)

    def kernel(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool):
        groups = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if is_causal:
            scores = scores + causal_bias(q.shape[2], k.shape[2], scores.dtype, q.device)
        elif mask is not None:
            # additive, as stock: a fully masked row then softmaxes uniformly, gradient included
            bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
            scores = scores + bias.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        weights = nn.functional.dropout(weights, p=dropout, training=training)
        return torch.matmul(weights, v), weights

    return kernel


def eager_swaa_attention(call: AttentionCall) -> tuple[Tensor, Tensor | None]:
    plan, layer = call.plan, call.layer_idx
    kernel = eager_kernel(call.scaling, call.softcap, call.active_dropout, call.module.training, plan)
    out, weights = chunked_attention(plan, layer, call.query, call.key, call.value, kernel)
    out = uniform_padding_rows(
        out, plan, plan.keys(layer), call.query, call.key, call.value, kernel, query_chunk_size(plan)
    )
    return out.transpose(1, 2).contiguous(), weights
