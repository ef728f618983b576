"""FlexAttention backend: a block-sparse BlockMask built from the rule, once per forward.

Fully masked blocks are skipped, so a sliding layer costs O(n * (W + k)) on GPU. The BlockMask is
memoised on the plan (one per window setting), so every layer of a forward shares it. On CUDA the
kernel is compiled, and so is the mask builder for large masks (an uncompiled
``create_block_mask`` at 128K would materialise a dense 128 GiB mask); both compile statically per
shape because torch 2.11's automatic-dynamic recompilation of ``create_block_mask`` crashes in
guard building. On CPU both run eagerly, which the tests use.

Which calls reach this kernel (decode steps and plain inference prefill go elsewhere) is decided
in ``backends/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from .. import rule
from ..plan import AttentionPlan, KeyLayout, Memo
from .call import AttentionCall
from .padding import zero_padding_rows

# Masks with more (query, key) pairs than this are built by a compiled create_block_mask.
COMPILE_MASK_ABOVE = 1 << 24

_COMPILED_FLEX: Callable | None = None


def _flex_kernel(device: torch.device) -> Callable:
    """The compiled kernel on accelerators (compiled once per process), eager elsewhere."""
    global _COMPILED_FLEX
    if device.type == "cpu":
        return flex_attention
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def simple_mask_mod(offset: int, window: int | None, keep_first: int) -> Callable:
    """Index arithmetic only: every row is one unpadded sequence, position == key index."""

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        visible = rule.causal(q_pos, kv_idx)
        if window is not None:
            visible = visible & rule.local_visible(q_pos, kv_idx, window, keep_first)
        return visible

    return mask_mod


def general_mask_mod(
    plan: AttentionPlan, keys: KeyLayout, window: int | None, q_answer: Tensor | None
) -> Callable:
    """Table look-ups into the plan: padding, packed documents, answer tokens, compact caches."""
    q_pos, q_doc, q_valid = plan.q_pos, plan.q_doc, plan.q_valid
    k_pos, k_doc, k_valid = keys.pos, keys.doc, keys.valid
    keep_first, offset = plan.config.keep_first, keys.offset

    def mask_mod(b, h, q_idx, kv_idx):
        visible = rule.visible(
            q_pos[b, q_idx],
            k_pos[b, kv_idx],
            q_doc[b, q_idx],
            k_doc[b, kv_idx],
            k_valid[b, kv_idx],
            window,
            keep_first,
            None if q_answer is None else q_answer[b, q_idx],
        )
        real_query = q_valid[b, q_idx]
        return (visible & real_query) | (~real_query & (kv_idx == q_idx + offset))

    return mask_mod


def build_block_mask(
    plan: AttentionPlan, keys: KeyLayout, window: int | None, q_answer: Tensor | None, device
) -> BlockMask:
    if keys.simple and q_answer is None:
        mask_mod = simple_mask_mod(keys.offset, window, plan.config.keep_first)
        batch = None
    else:
        mask_mod = general_mask_mod(plan, keys, window, q_answer)
        batch = plan.q_pos.shape[0]
    compile_mask = device.type != "cpu" and plan.q_len * keys.length > COMPILE_MASK_ABOVE
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        return create_block_mask(
            mask_mod, batch, None, plan.q_len, keys.length, device=device, _compile=compile_mask
        )


def softcap_score_mod(softcap: float) -> Callable:
    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / softcap) * softcap

    return score_mod


def flex_swaa_attention(call: AttentionCall) -> tuple[Tensor, None]:
    if call.active_dropout:
        raise ValueError("flex_attention: attention dropout is not supported; set attention_dropout=0.0")
    plan, layer, query = call.plan, call.layer_idx, call.query
    window = plan.layer_window(layer)
    q_answer = plan.layer_answer_mask(layer) if window is not None else None
    device = query.device
    keys = plan.keys(layer)
    block_mask = plan.memo(
        Memo.FLEX_BLOCK_MASK, lambda: build_block_mask(plan, keys, window, q_answer, device),
        keys.name, window, q_answer is not None,
    )
    out = _flex_kernel(device)(
        query,
        call.key,
        call.value,
        score_mod=None if call.softcap is None else softcap_score_mod(call.softcap),
        block_mask=block_mask,
        scale=call.scaling,
        enable_gqa=query.shape[1] != call.key.shape[1],
    )
    return zero_padding_rows(out, plan).transpose(1, 2).contiguous(), None
