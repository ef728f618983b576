"""Attention on a continuous-batching forward: every request packed into one row.

Queries are processed in chunks of C rows, as ``chunked.py`` does for padded batches. A chunk's
rows need, of the packed keys, only a contiguous run from the earliest first-visible key of its
rows (the start of a row's window, or of its request when the row attends fully) to its last
row's own key, plus the sink keys of its requests before that run, gathered. The mask over those
keys comes from ``rule.visible`` on the plan's positions and request ids (a request never sees
another), so the semantics stay in one place; the kernel is the implementation's own (SDPA, or
eager's softmax with logit softcapping).

flash-attn under continuous batching runs this path too (computed with SDPA, or eager's math
when logits are softcapped): exact, not flash-attn's speed; SWAA says so once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .. import rule
from ..compat import TransformersMismatch
from ..serving.plan import PackedKeys, PackedMemo, PackedPlan
from .call import AttentionCall, Candidate, Kernel
from .chunked import ChunkKernel, query_chunk_size
from .eager import eager_kernel
from .sdpa import sdpa_kernel

logger = logging.getLogger(__name__)
_warned_flash = False

# call -> the kernel that attends one chunk (q, k, v, mask, is_causal)
ChunkKernelFactory = Callable[[AttentionCall], ChunkKernel]


def sdpa_chunks(call: AttentionCall) -> ChunkKernel:
    return sdpa_kernel(call.scaling, call.active_dropout)


def eager_chunks(call: AttentionCall) -> ChunkKernel:
    return eager_kernel(call.scaling, call.softcap, call.active_dropout, call.module.training, call.plan)


def flash_chunks(call: AttentionCall) -> ChunkKernel:
    global _warned_flash
    if not _warned_flash:
        _warned_flash = True
        logger.warning(
            "SWAA: flash_attention_2 under continuous batching computes the SWAA rule with the packed SDPA "
            "kernel (exact, not flash-attn's speed); load the model with attn_implementation='sdpa' to say so"
        )
    return eager_chunks(call) if call.softcap is not None else sdpa_chunks(call)


def dispatch_packed(chunks: ChunkKernelFactory) -> Candidate:
    """The candidate for continuous-batching forwards of one implementation."""

    def dispatch(call: AttentionCall) -> Kernel | str:
        if not isinstance(call.plan, PackedPlan):
            return "not a continuous-batching forward"
        return partial(packed_attention, chunks=chunks)

    dispatch.__name__ = f"dispatch_packed_{chunks.__name__}"
    return dispatch


@dataclass(frozen=True)
class PackedSelection:
    """The keys one query chunk may see: gathered sink keys, then the run [start, end)."""

    start: int
    end: int
    sinks: Tensor | None  # (S,) key indices < start


def packed_attention(call: AttentionCall, chunks: ChunkKernelFactory) -> tuple[Tensor, None]:
    """One layer's attention on a packed forward; returns (1, Q, heads, head_dim)."""
    plan: PackedPlan = call.plan
    layer = call.layer_idx
    key, value = call.key, call.value
    if plan.update is not None:
        key, value = plan.update(layer, key, value)
    keys = plan.keys(layer)
    if key.shape[2] != keys.length:
        raise TransformersMismatch(
            f"layer {layer}: the paged cache returned {key.shape[2]} keys, SWAA planned {plan.describe_keys(layer)}"
        )
    window = plan.layer_window(layer)
    q_full = plan.layer_answer_mask(layer) if window is not None else None
    kernel = chunks(call)
    size = query_chunk_size(plan)
    outputs = []
    for start in range(0, plan.q_len, size):
        end = min(plan.q_len, start + size)
        selection, mask = plan.memo(
            PackedMemo.CHUNK,
            partial(_select_and_mask, plan, keys, window, q_full, start, end),
            keys.name, window, q_full is not None, start,
        )
        out, _ = kernel(
            call.query[:, :, start:end], _gather(key, selection), _gather(value, selection), mask, False
        )
        outputs.append(out)
    out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return out.transpose(1, 2).contiguous(), None


def _row_bounds(plan: PackedPlan, keys: PackedKeys, window: int | None, q_full: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each row's own key index and its first visible non-sink key index."""
    own = torch.searchsorted(keys.order, plan.q_doc * keys.stride + plan.q_pos)
    if not torch.equal(keys.pos[own], plan.q_pos):
        raise TransformersMismatch("continuous batching: a query's own key is not among the keys SWAA planned")
    request_start = keys.starts[plan.q_doc]
    if window is None:
        return own, request_start
    window_start = (plan.q_pos - window + 1).clamp_min(0)
    first = torch.searchsorted(keys.order, plan.q_doc * keys.stride + window_start)
    if q_full is not None:
        first = torch.where(q_full, request_start, first)
    return own, first


def _select_and_mask(
    plan: PackedPlan, keys: PackedKeys, window: int | None, q_full: Tensor | None, start: int, end: int
) -> tuple[PackedSelection, Tensor]:
    own, first = plan.memo(
        PackedMemo.ROW_BOUNDS, partial(_row_bounds, plan, keys, window, q_full), keys.name, window, q_full is not None
    )
    run_start, run_end = int(first[start:end].min()), int(own[start:end].max()) + 1
    sinks = None
    if window is not None and plan.config.keep_first > 0:
        before = slice(int(keys.starts[plan.q_doc[start]]), run_start)
        candidates = rule.is_sink(keys.pos[before], plan.config.keep_first).nonzero().flatten()
        if candidates.numel():
            sinks = candidates + before.start
    selection = PackedSelection(run_start, run_end, sinks)
    rows = slice(start, end)
    visible = rule.visible(
        plan.q_pos[rows, None],
        _gather_meta(keys.pos, selection)[None, :],
        plan.q_doc[rows, None],
        _gather_meta(keys.doc, selection)[None, :],
        torch.ones((), dtype=torch.bool, device=keys.pos.device),
        window,
        plan.config.keep_first,
        None if q_full is None else q_full[rows, None],
    )
    return selection, visible[None, None]


def _gather(x: Tensor, selection: PackedSelection) -> Tensor:
    run = x[:, :, selection.start : selection.end]
    if selection.sinks is None:
        return run
    return torch.cat([x.index_select(2, selection.sinks), run], dim=2)


def _gather_meta(meta: Tensor, selection: PackedSelection) -> Tensor:
    run = meta[selection.start : selection.end]
    if selection.sinks is None:
        return run
    return torch.cat([meta[selection.sinks], run])
