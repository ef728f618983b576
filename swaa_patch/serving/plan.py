"""PackedPlan: what the rule needs for one continuous-batching forward, shared by all layers.

The engine packs the scheduled requests into one row: request r contributes ``new`` tokens at
positions ``past .. past + new - 1`` (a prompt chunk, or one generated token), and each layer's
keys are, request after request, the cached keys the paged cache reads back followed by the
request's new keys. Which cached keys a layer reads depends on its layout:

- ``full``: every cached position ``0 .. past - 1`` (layers that may attend to everything);
- ``bounded``: the sink slots (positions ``< keep_first``) and the ring, which holds the newest
  ``W - 1`` positions at or after ``keep_first`` (``paged_cache.py``).

Either way a request's keys are in increasing position order, so a query's window is a
contiguous run of key indices and its sinks sit at the start of its request's keys.

A row is a *generated* token when its position is at or after its request's prompt length: that
is what a decode step of ``generate`` computes (under ``force_fa_decode`` it attends to the whole
cache), whether the engine feeds it one token at a time or re-prefills it after evicting the
request. Prompt rows follow the sliding rule, chunked or not, exactly as ``generate``'s prefill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from ..compat import TransformersMismatch
from ..config import SWAAConfig

# (layer_idx, new keys, new values) -> (keys, values) after the paged cache's read and write
CacheUpdate = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]


class PackedMemo(Enum):
    """What a packed plan memoises once per forward and shares across layers."""

    KEYS = "PackedKeys of a layout; (layout name,)"
    ROW_BOUNDS = "own key and first visible key of every row; (layout name, window, answer rows?)"
    CHUNK = "key selection and mask of one query chunk; (layout name, window, answer rows?, chunk start)"


@dataclass(frozen=True)
class PackedRequest:
    """One scheduled request of a packed forward, as the engine prepared it."""

    prompt_len: int  # positions at or after it are generated tokens
    past: int  # tokens already in the cache
    new: int  # tokens in this forward
    request_id: str = ""


@dataclass(frozen=True)
class PagedLayout:
    """How SWAA laid out the paged cache of one model: which layers keep sinks + a ring."""

    bounded_layers: frozenset[int]
    keep_first: int
    window: int

    @property
    def slots(self) -> int:
        """Cache slots a bounded layer holds per request: the sinks, then a ring of W."""
        return self.keep_first + self.window

    def cached_reads(self, past: int, bounded: bool) -> tuple[int, int, int]:
        """What a layer reads back for a request with ``past`` cached tokens: ``(sinks, ring_start,
        count)`` - the first ``sinks`` keys are positions ``0 ..``, the rest start at position
        ``ring_start``; a full layer reads every position (no separate sinks)."""
        if not bounded:
            return 0, 0, past
        sinks = min(self.keep_first, past)
        ring_start = max(self.keep_first, past - self.window + 1)
        return sinks, ring_start, sinks + max(0, past - ring_start)


def paged_layout(config: SWAAConfig, num_layers: int) -> PagedLayout:
    """The layout SWAA gives the paged cache: sliding layers without ``force_fa_decode`` are
    bounded (as in ``SWAACache``), unless ``bounded_cache`` is off."""
    bounded = frozenset(
        i
        for i in range(num_layers)
        if config.bounded_cache and config.is_sliding_layer(i) and not config.full_on_decode(i)
    )
    return PagedLayout(bounded, config.keep_first, config.sliding_window_size)


@dataclass(frozen=True)
class PackedKeys:
    """Per-key metadata of one layout in this forward: request after request, in position order."""

    name: str
    pos: Tensor  # (K,) long
    doc: Tensor  # (K,) long: request index
    starts: Tensor  # (R,) long: index of each request's first key
    order: Tensor  # (K,) long: doc * stride + pos, increasing
    stride: int

    @property
    def length(self) -> int:
        return self.pos.shape[0]


@dataclass
class PackedPlan:
    """Per-forward metadata of a continuous-batching forward, shared by every layer."""

    config: SWAAConfig
    requests: tuple[PackedRequest, ...]
    layout: PagedLayout
    q_pos: Tensor  # (Q,) long
    q_doc: Tensor  # (Q,) long
    q_answer: Tensor | None  # (Q,) bool: generated-token rows, None when there are none
    max_pos: int
    update: CacheUpdate | None  # the attention function writes and reads the cache (older releases)
    cache_arg: str = "cache"
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def q_len(self) -> int:
        return self.q_pos.shape[0]

    def layout_name(self, layer_idx: int) -> str:
        return "bounded" if layer_idx in self.layout.bounded_layers else "full"

    def keys(self, layer_idx: int) -> PackedKeys:
        name = self.layout_name(layer_idx)
        return self.memo(PackedMemo.KEYS, lambda: _packed_keys(self, name), name)

    def key_count(self, layer_idx: int) -> int:
        """Keys the attention function receives: the new ones when it must still read the cache
        itself (``update``), else every key the paged cache returned."""
        return self.q_len if self.update is not None else self.keys(layer_idx).length

    def describe_keys(self, layer_idx: int) -> str:
        cached = self.keys(layer_idx).length - self.q_len
        return f"{len(self.requests)} packed requests, {self.layout_name(layer_idx)} cache: {cached} cached + {self.q_len} new"

    def layer_window(self, layer_idx: int) -> int | None:
        """The window on this layer for prompt rows, or None for full causal attention."""
        cfg = self.config
        if not cfg.is_sliding_layer(layer_idx) or cfg.sliding_window_size > self.max_pos:
            return None
        return cfg.sliding_window_size

    def layer_answer_mask(self, layer_idx: int) -> Tensor | None:
        """Rows that attend fully on this sliding layer: generated tokens under force_fa_decode."""
        if self.q_answer is None or not self.config.full_on_decode(layer_idx):
            return None
        return self.q_answer

    def memo(self, kind: PackedMemo, build: Callable[[], Any], *params: Any) -> Any:
        key = (kind, *params)
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]


def _tensor(values: Sequence[int], device: torch.device) -> Tensor:
    return torch.tensor(list(values), dtype=torch.long, device=device)


def _packed_keys(plan: PackedPlan, name: str) -> PackedKeys:
    """Key positions of every request under one layout, vectorised over the packed keys."""
    device = plan.q_pos.device
    reads = [plan.layout.cached_reads(r.past, name == "bounded") for r in plan.requests]
    sinks = _tensor([s for s, _, _ in reads], device)
    ring_start = _tensor([start for _, start, _ in reads], device)
    cached = _tensor([count for _, _, count in reads], device)
    past = _tensor([r.past for r in plan.requests], device)
    lengths = cached + _tensor([r.new for r in plan.requests], device)
    doc = torch.repeat_interleave(torch.arange(len(plan.requests), device=device), lengths)
    starts = lengths.cumsum(0) - lengths
    j = torch.arange(doc.shape[0], device=device) - starts[doc]  # index within the request's keys
    pos = torch.where(
        j < sinks[doc], j, torch.where(j < cached[doc], ring_start[doc] + j - sinks[doc], past[doc] + j - cached[doc])
    )
    stride = plan.max_pos + 2
    return PackedKeys(name, pos, doc, starts, doc * stride + pos, stride)


def build_packed_plan(
    config: SWAAConfig,
    requests: Sequence[PackedRequest],
    layout: PagedLayout,
    position_ids: Tensor,
    cu_seq_lens_q: Tensor,
    update: CacheUpdate | None = None,
    cache_arg: str = "cache",
) -> PackedPlan:
    """The plan of one packed forward from what the engine scheduled (``requests``, in batch order)
    and the packed arguments it passed. Raises TransformersMismatch when they disagree: the engine
    then packed the batch some way SWAA does not know, and no kernel may guess."""
    if not requests:
        raise TransformersMismatch("continuous batching ran a forward with no scheduled request")
    device = position_ids.device
    new = _tensor([r.new for r in requests], device)
    q_doc = torch.repeat_interleave(torch.arange(len(requests), device=device), new)
    q_start = new.cumsum(0) - new
    q_pos = _tensor([r.past for r in requests], device)[q_doc] + torch.arange(q_doc.shape[0], device=device) - q_start[q_doc]
    _check_packing(requests, q_pos, position_ids, cu_seq_lens_q, new)
    answer = q_pos >= _tensor([r.prompt_len for r in requests], device)[q_doc]
    return PackedPlan(
        config=config,
        requests=tuple(requests),
        layout=layout,
        q_pos=q_pos,
        q_doc=q_doc,
        q_answer=answer if bool(answer.any()) else None,
        max_pos=max(r.past + r.new for r in requests) - 1,
        update=update,
        cache_arg=cache_arg,
    )


def _check_packing(
    requests: Sequence[PackedRequest], q_pos: Tensor, position_ids: Tensor, cu_seq_lens_q: Tensor, new: Tensor
) -> None:
    expected_cu = torch.cat([new.new_zeros(1), new.cumsum(0)])
    given_cu = cu_seq_lens_q.to(device=expected_cu.device, dtype=torch.long)
    if given_cu.shape != expected_cu.shape or not torch.equal(given_cu, expected_cu):
        raise TransformersMismatch(
            f"continuous batching packed requests of lengths {cu_seq_lens_q.tolist()} (cu_seq_lens_q) but scheduled "
            f"{[r.new for r in requests]} new tokens"
        )
    given_pos = position_ids.reshape(-1).to(device=q_pos.device, dtype=torch.long)
    if tuple(position_ids.shape) != (1, q_pos.shape[0]) or not torch.equal(given_pos, q_pos):
        raise TransformersMismatch(
            "continuous batching passed position_ids that do not continue each scheduled request's cache "
            f"(shape {tuple(position_ids.shape)}, expected (1, {q_pos.shape[0]}))"
        )
