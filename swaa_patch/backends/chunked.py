"""Query-chunked masked attention for backends that take an explicit mask (eager, sdpa).

A dense mask over all keys is O(n^2) memory per layer. Instead, queries are processed in chunks
of C; a chunk only needs the keys its window can reach (a contiguous slice of about C + W keys)
plus the sink keys before that slice, gathered. The mask for that small key set comes from
``rule.visible``, so the semantics stay in one place and the cost is O(n * (C + W + k)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .. import rule
from ..plan import AttentionPlan, KeyLayout, Memo

# kernel(q, k, v, mask, is_causal) -> (out (B,H,C,D), weights or None)
ChunkKernel = Callable[[Tensor, Tensor, Tensor, Tensor | None, bool], tuple[Tensor, Tensor | None]]

DEFAULT_MIN_CHUNK = 1024


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(B, Hkv, L, D) -> (B, Hkv * groups, L, D), as transformers' GQA helper does."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def query_chunk_size(plan: AttentionPlan) -> int:
    """Explicit ``query_chunk_size`` if set, else max(1024, W): big enough to keep kernels busy,
    small enough that a chunk's mask is O(W^2), not O(n^2)."""
    cfg = plan.config
    if cfg.query_chunk_size is not None:
        return cfg.query_chunk_size
    return max(DEFAULT_MIN_CHUNK, cfg.sliding_window_size or 0)


@dataclass
class KeySelection:
    """The keys one query chunk may see: sink keys before the slice (gathered), then a slice."""

    start: int
    end: int
    sink_index: Tensor | None  # (B, S) key indices < start, or None
    sink_ok: Tensor | None  # (B, S) bool


def sink_candidates(plan: AttentionPlan, keys: KeyLayout) -> tuple[Tensor, Tensor]:
    """Indices of all sink keys per row, left-aligned and padded (built once per forward)."""

    def build() -> tuple[Tensor, Tensor]:
        is_sink = keys.valid & rule.is_sink(keys.pos, plan.config.keep_first)
        count = is_sink.sum(-1)
        width = max(int(count.max()), 1)
        order = torch.sort((~is_sink).to(torch.uint8), dim=-1, stable=True).indices[:, :width]
        ok = torch.arange(width, device=order.device)[None, :] < count[:, None]
        return order, ok

    return plan.memo(Memo.SINK_CANDIDATES, build, keys.name)


def select_keys(
    plan: AttentionPlan, keys: KeyLayout, window: int | None, q_start: int, q_end: int, all_keys: bool = False
) -> KeySelection:
    """Keys a chunk may see; ``all_keys`` when some query of the chunk attends fully. Relies on
    keys within reach of a window being contiguous by index (left padding, window buffers)."""
    off = keys.offset
    end = off + q_end
    if window is None or all_keys:
        return KeySelection(0, end, None, None)
    start = max(0, off + q_start - window + 1)
    if start == 0 or plan.config.keep_first == 0:
        return KeySelection(start, end, None, None)
    index, ok = sink_candidates(plan, keys)
    ok = ok & (index < start)
    if not bool(ok.any()):
        return KeySelection(start, end, None, None)
    return KeySelection(start, end, index, ok)


def _gather_keys(x: Tensor, sel: KeySelection) -> Tensor:
    part = x[:, :, sel.start : sel.end]
    if sel.sink_index is None:
        return part
    b, h, _, d = x.shape
    idx = sel.sink_index[:, None, :, None].expand(b, h, sel.sink_index.shape[1], d)
    return torch.cat([x.gather(2, idx), part], dim=2)


def _gather_meta(meta: Tensor, sel: KeySelection) -> Tensor:
    part = meta[:, sel.start : sel.end]
    if sel.sink_index is None:
        return part
    return torch.cat([meta.gather(1, sel.sink_index), part], dim=1)


def chunk_mask(
    plan: AttentionPlan,
    keys: KeyLayout,
    sel: KeySelection,
    q_start: int,
    q_end: int,
    window: int | None,
    q_answer: Tensor | None,
) -> Tensor:
    """(B, 1, C, K) boolean mask for one chunk, straight from the rule. Padding queries see only
    themselves so that no softmax row is empty (their outputs are never used)."""
    q = slice(q_start, q_end)
    k_valid = _gather_meta(keys.valid, sel)
    if sel.sink_ok is not None:
        k_valid = k_valid.clone()
        k_valid[:, : sel.sink_ok.shape[1]] &= sel.sink_ok
    visible = rule.visible(
        plan.q_pos[:, q, None],
        _gather_meta(keys.pos, sel)[:, None, :],
        plan.q_doc[:, q, None],
        _gather_meta(keys.doc, sel)[:, None, :],
        k_valid[:, None, :],
        window,
        plan.config.keep_first,
        None if q_answer is None else q_answer[:, q, None],
    )
    if not keys.simple:
        n_sink = 0 if sel.sink_index is None else sel.sink_index.shape[1]
        key_index = torch.arange(sel.start, sel.end, device=visible.device)
        own = keys.offset + torch.arange(q_start, q_end, device=visible.device)
        diagonal = torch.zeros_like(visible)
        diagonal[:, :, n_sink:] = own[:, None] == key_index[None, :]
        q_valid = plan.q_valid[:, q, None]
        visible = (visible & q_valid) | (diagonal & ~q_valid)
    return visible[:, None]


def _select_and_mask(
    plan: AttentionPlan, keys: KeyLayout, window: int | None, q_answer: Tensor | None, q_start: int, q_end: int
) -> tuple[KeySelection, Tensor]:
    """Keys and mask of one query chunk; memoised on the plan, so built once per forward and
    shared by every layer with the same key layout and window."""
    all_keys = q_answer is not None and bool(q_answer[:, q_start:q_end].any())
    sel = select_keys(plan, keys, window, q_start, q_end, all_keys)
    return sel, chunk_mask(plan, keys, sel, q_start, q_end, window, q_answer)


def chunked_attention(
    plan: AttentionPlan,
    layer_idx: int,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel: ChunkKernel,
) -> tuple[Tensor, Tensor | None]:
    """Attention for one layer, (B, H, Lq, D) in and out, following the plan's rule."""
    window = plan.layer_window(layer_idx)
    q_answer = plan.layer_answer_mask(layer_idx) if window is not None else None
    keys = plan.keys(layer_idx)
    q_len = query.shape[2]
    if window is None and keys.simple:
        # Plain causal attention: no mask at all (lets sdpa pick its fused causal kernels).
        if keys.offset == 0:
            return kernel(query, key, value, None, True)
        if q_len == 1:
            return kernel(query, key, value, None, False)
    chunk = query_chunk_size(plan)
    outputs, weights = [], None
    for q_start in range(0, q_len, chunk):
        q_end = min(q_len, q_start + chunk)
        sel, mask = plan.memo(
            Memo.CHUNK,
            partial(_select_and_mask, plan, keys, window, q_answer, q_start, q_end),
            keys.name, window, q_answer is not None, q_start,
        )
        out, w = kernel(
            query[:, :, q_start:q_end], _gather_keys(key, sel), _gather_keys(value, sel), mask, False
        )
        outputs.append(out)
        if q_end == q_len and q_start == 0 and sel.start == 0 and sel.sink_index is None:
            weights = w  # one chunk over all keys in order: the weights are the full matrix
    return torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0], weights
