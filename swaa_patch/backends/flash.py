"""flash-attn backend: the window part on flash-attn's native ``window_size``, sinks merged by LSE.

Stock flash-attn has no attention sinks (the reference needs a custom-compiled fork for them).
Here every real token is laid out in flash-attn's varlen format (one segment per sequence or
packed document, padding dropped), the banded part runs as
``flash_attn_varlen_func(causal=True, window_size=(W-1, 0))`` returning its log-sum-exp, and the
sink keys that lie *outside* each query's window (``j < keep_first`` and ``i - j >= W``) are
attended in a small torch computation, O(n * k), merged exactly by log-sum-exp. Answer tokens
in training (a suffix of each document) attend fully through a second varlen call.

flash-attn is optional and imported lazily; a missing install raises an ImportError with the
install hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import rule
from ..plan import AttentionPlan, KeyLayout, Memo
from .call import AttentionCall

INSTALL_HINT = (
    "attn_implementation='flash_attention_2' needs the flash-attn package: "
    "pip install 'swaa[flash]' (or: pip install flash-attn --no-build-isolation)"
)
SINK_QUERY_CHUNK = 1024


def load_varlen_kernel() -> Callable:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return flash_attn_varlen_func


@dataclass
class VarlenLayout:
    """Real tokens of a batch as flash-attn varlen segments, shared by all layers of a forward."""

    q_rows: Tensor  # (Tq,) batch row of each real query
    q_cols: Tensor  # (Tq,) column in this pass
    k_rows: Tensor  # (Tk,)
    k_cols: Tensor  # (Tk,)
    cu_q: Tensor  # (S+1,) int32
    cu_k: Tensor  # (S+1,) int32
    max_q: int
    max_k: int
    q_segment: Tensor  # (Tq,) segment of each query
    k_segment: Tensor  # (Tk,) segment of each key
    q_pos: Tensor  # (Tq,) position of each query within its segment


def _segments(valid: Tensor, doc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flat (row, col) of real tokens, in order, and the segment id of each (row, document)."""
    rows, cols = valid.nonzero(as_tuple=True)
    key = rows * (int(doc.max()) + 1) + doc[rows, cols]
    _, segment = torch.unique_consecutive(key, return_inverse=True)
    return rows, cols, segment


def _cu_seqlens(segment: Tensor, n_segments: int) -> tuple[Tensor, int]:
    counts = torch.bincount(segment, minlength=n_segments)
    cu = torch.zeros(n_segments + 1, dtype=torch.int32, device=segment.device)
    cu[1:] = counts.cumsum(0)
    return cu, int(counts.max()) if counts.numel() else 0


def build_layout(plan: AttentionPlan, keys: KeyLayout, q_select: Tensor | None = None) -> VarlenLayout:
    """Segments for all real queries (or only ``q_select`` ones, which must be document suffixes)."""
    q_valid = plan.q_valid if q_select is None else plan.q_valid & q_select
    k_rows, k_cols, k_seg = _segments(keys.valid, keys.doc)
    n_seg = int(k_seg.max()) + 1 if k_seg.numel() else 0
    # Map each query to the segment of its own key (key index = offset + column).
    seg_of_key = torch.full_like(keys.doc, -1)
    seg_of_key[k_rows, k_cols] = k_seg
    q_rows, q_cols = q_valid.nonzero(as_tuple=True)
    q_seg = seg_of_key[q_rows, keys.offset + q_cols]
    cu_q, max_q = _cu_seqlens(q_seg, n_seg)
    cu_k, max_k = _cu_seqlens(k_seg, n_seg)
    return VarlenLayout(
        q_rows, q_cols, k_rows, k_cols, cu_q, cu_k, max_q, max_k, q_seg, k_seg, plan.q_pos[q_rows, q_cols]
    )


def sink_part(
    q: Tensor,
    sink_k: Tensor,
    sink_v: Tensor,
    sink_count: Tensor,
    layout: VarlenLayout,
    window: int,
    scaling: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor]:
    """Attention of each query to its segment's sink keys outside its window: (out, lse).

    q: (Tq, H, D); sink_k/v: (S, k, Hkv, D); sink_count: (S,). Queries are processed in chunks so
    the gathered sink keys stay O(chunk * k)."""
    groups = q.shape[1] // sink_k.shape[2]
    keep = sink_k.shape[1]
    out = torch.zeros_like(q)
    lse = torch.full(q.shape[:2], -math.inf, dtype=torch.float32, device=q.device)
    needs = (layout.q_pos >= window).nonzero(as_tuple=True)[0]  # queries whose window misses a sink
    for start in range(0, needs.numel(), SINK_QUERY_CHUNK):
        idx = needs[start : start + SINK_QUERY_CHUNK]
        seg = layout.q_segment[idx]
        k = sink_k[seg].repeat_interleave(groups, dim=2)  # (C, k, H, D)
        v = sink_v[seg].repeat_interleave(groups, dim=2)
        scores = torch.einsum("chd,cjhd->chj", q[idx].float(), k.float()) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        j = torch.arange(keep, device=q.device)
        q_pos = layout.q_pos[idx]
        # slot j of a segment holds its position-j token, a sink since j < keep_first
        seen = (j[None, :] < sink_count[seg][:, None]) & ~rule.in_window(q_pos[:, None], j[None, :], window)
        scores = scores.masked_fill(~seen[:, None, :], -math.inf)
        chunk_lse = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - chunk_lse[..., None]).nan_to_num(0.0)
        out[idx] = torch.einsum("chj,cjhd->chd", probs, v.float()).to(q.dtype)
        lse[idx] = chunk_lse
    return out, lse


def merge_by_lse(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> Tensor:
    """Exact softmax over the union of two disjoint key sets from their partial results."""
    lse = torch.logaddexp(lse_a, lse_b)
    w_a = torch.exp(lse_a - lse).nan_to_num(0.0)[..., None]
    w_b = torch.exp(lse_b - lse).nan_to_num(0.0)[..., None]
    return (out_a.float() * w_a + out_b.float() * w_b).to(out_a.dtype)


def _sink_tensors(plan: AttentionPlan, keys: KeyLayout, key: Tensor, value: Tensor, layout: VarlenLayout):
    """(S, k, Hkv, D) sink keys/values of each segment and how many each segment has. A segment's
    keys are in position order, so its sinks (positions 0..k-1) are its first keys."""
    keep = plan.config.keep_first
    n_seg = layout.cu_k.numel() - 1
    starts = layout.cu_k[:-1].long()
    is_sink = rule.is_sink(keys.pos[layout.k_rows, layout.k_cols], keep)
    counts = torch.bincount(layout.k_segment[is_sink], minlength=n_seg)
    offs = torch.arange(keep, device=key.device)
    flat = (starts[:, None] + offs[None, :]).clamp_max(max(layout.k_rows.numel() - 1, 0))
    rows, cols = layout.k_rows[flat], layout.k_cols[flat]
    sink_k = key.permute(0, 2, 1, 3)[rows, cols]  # (S, k, Hkv, D)
    sink_v = value.permute(0, 2, 1, 3)[rows, cols]
    return sink_k, sink_v, counts


def _varlen(kernel, q, k, v, layout: VarlenLayout, scaling, window, softcap, dropout):
    out, lse, _ = kernel(
        q,
        k,
        v,
        layout.cu_q,
        layout.cu_k,
        layout.max_q,
        layout.max_k,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,
        window_size=(-1, -1) if window is None else (window - 1, 0),
        softcap=0.0 if softcap is None else softcap,
        return_attn_probs=True,
    )
    return out, lse.transpose(0, 1).float()  # lse (H, Tq) -> (Tq, H)


def flash_swaa_attention(call: AttentionCall) -> tuple[Tensor, None]:
    """Padding rows stay zero, as stock flash-attn leaves them (its varlen layout drops padding)."""
    kernel = load_varlen_kernel()
    plan, layer, scaling, softcap, dropout = call.plan, call.layer_idx, call.scaling, call.softcap, call.active_dropout
    window = plan.layer_window(layer)
    q_answer = plan.layer_answer_mask(layer) if window is not None else None
    keys = plan.keys(layer)
    layout = plan.memo(Memo.FLASH_LAYOUT, lambda: build_layout(plan, keys), keys.name)
    q_tokens = call.query.permute(0, 2, 1, 3)  # (B, Lq, H, D)
    k_tokens, v_tokens = call.key.permute(0, 2, 1, 3), call.value.permute(0, 2, 1, 3)
    q = q_tokens[layout.q_rows, layout.q_cols]
    k = k_tokens[layout.k_rows, layout.k_cols]
    v = v_tokens[layout.k_rows, layout.k_cols]
    out, lse = _varlen(kernel, q, k, v, layout, scaling, window, softcap, dropout)
    if window is not None and plan.config.keep_first > 0:
        sink_k, sink_v, count = _sink_tensors(plan, keys, call.key, call.value, layout)
        out_s, lse_s = sink_part(q, sink_k, sink_v, count, layout, window, scaling, softcap)
        out = merge_by_lse(out, lse, out_s, lse_s)
    result = torch.zeros_like(q_tokens)
    result[layout.q_rows, layout.q_cols] = out
    if q_answer is not None:
        answer = plan.memo(Memo.FLASH_ANSWER_LAYOUT, lambda: build_layout(plan, keys, q_answer), keys.name)
        q_ans = q_tokens[answer.q_rows, answer.q_cols]
        out_ans, _ = _varlen(kernel, q_ans, k, v, answer, scaling, None, softcap, dropout)
        result[answer.q_rows, answer.q_cols] = out_ans
    return result.contiguous(), None
