"""AttentionPlan: what one forward pass needs to apply the rule, computed once and shared by all layers.

The plan turns the inputs of a forward (2D padding mask, position ids, cache length, labels) into
per-token tensors the rule understands: positions counted from each sequence's (or packed
document's) first real token, document ids, which keys are real, which queries attend fully.
Backends read the plan; they never look at transformers' own masks. Per-forward derived objects
(flex BlockMasks, sink gather indices) are memoised on the plan, so they are built once per
forward, not once per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from .compat import TransformersMismatch
from .config import SWAAConfig

IGNORE_INDEX = -100


class Memo(Enum):
    """Everything a plan memoises: built once per forward on first use, shared by every layer.
    A memo's key is its kind plus the parameters that tell its instances apart (listed here)."""

    FULL_LAYOUT = "KeyLayout of layers with a full cache; no parameters"
    SINK_CANDIDATES = "sink key indices per row; (layout name,)"
    CHUNK = "KeySelection and mask of one query chunk; (layout name, window, answer rows?, chunk start)"
    EAGER_CAUSAL_BIAS = "additive causal bias; (queries, keys, dtype)"
    FLEX_BLOCK_MASK = "flex BlockMask; (layout name, window, answer rows?)"
    FLASH_LAYOUT = "varlen segments of all real queries; (layout name,)"
    FLASH_ANSWER_LAYOUT = "varlen segments of answer-token queries; (layout name,)"
    FUSED_LAYOUT = "fused prefill's index alignment (skip, reason); (layout name,)"
    ANSWER_SUFFIX = "first answer-token index per row if the answers are each row's suffix, else None; no parameters"
    LAST_PADDING_QUERY = "index of the last padding query; no parameters"


@dataclass(frozen=True)
class KeyLayout:
    """What the keys of one layer are in this pass: cached keys followed by this pass's tokens,
    so the query at index ``t`` of the pass is the key at index ``offset + t``."""

    name: str  # "full" (every cached key, aligned with the 2D mask) or "bounded" (sinks + window)
    pos: Tensor  # (B, K) long: per-sequence positions
    doc: Tensor  # (B, K) long: document ids
    valid: Tensor  # (B, K) bool: False for padding and empty slots
    offset: int
    simple: bool  # no padding, one document per row: position == key index

    @property
    def length(self) -> int:
        return self.pos.shape[1]


@dataclass
class AttentionPlan:
    """Per-forward metadata, shared by every layer of one forward pass."""

    config: SWAAConfig
    q_pos: Tensor  # (B, Lq) long
    q_doc: Tensor  # (B, Lq) long
    q_valid: Tensor  # (B, Lq) bool: False for padding queries
    q_answer: Tensor | None  # (B, Lq) bool: answer tokens (training with labels), else None
    full_builder: Callable[[], KeyLayout]  # keys of layers with an unbounded cache (or no cache)
    past_len: int  # tokens seen before this pass
    is_decode: bool
    max_pos: int  # largest query position, to detect windows that cover everything
    q_padding: bool = False  # some query of this pass is padding (backends reproduce stock's rows)
    bounded: KeyLayout | None = None  # keys of layers with a sink+window cache
    bounded_layers: frozenset[int] = frozenset()
    # execution detail, not semantics: "auto" / "triton" / "off" / "force" (backends/fused_prefill.py)
    triton_prefill: str = "off"
    cache_arg: str = "cache"  # the forward's cache argument in this transformers (for error messages)
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def q_len(self) -> int:
        return self.q_pos.shape[1]

    @property
    def full(self) -> KeyLayout:
        """Built on first use: a decode step on a fully bounded cache never pays its O(n) cost."""
        return self.memo(Memo.FULL_LAYOUT, self.full_builder)

    def keys(self, layer_idx: int) -> KeyLayout:
        if self.bounded is not None and layer_idx in self.bounded_layers:
            return self.bounded
        return self.full

    def key_count(self, layer_idx: int) -> int:
        """How many keys this layer's attention must receive in this pass: the cached keys the plan
        accounted for plus this pass's tokens. Anything else means transformers fed a cache the
        hook never saw (see :func:`check_keys`)."""
        if self.bounded is not None and layer_idx in self.bounded_layers:
            return self.bounded.length
        return self.past_len + self.q_len

    def describe_keys(self, layer_idx: int) -> str:
        return f"{self.past_len} cached + {self.q_len} new"

    def stock_key_start(self, keys: KeyLayout) -> int:
        """Index of the first key stock transformers would hold for this pass: 0 for a full layout;
        for a bounded layout the first new key on a first pass (its unfilled sink slots are not
        keys), else 0 (what stock held before the window buffer is gone)."""
        return max(0, keys.offset - self.past_len)

    def with_bounded_cache(self, stored_pos: Tensor, stored_valid: Tensor, layers: frozenset[int]) -> None:
        """Declare that ``layers`` read a compact cache holding keys at ``stored_pos``/``stored_valid``
        (sink slots and the window buffer), followed by this pass's tokens."""
        batch = self.q_pos.shape[0]
        stored_doc = torch.zeros(batch, stored_pos.shape[1], dtype=torch.long, device=stored_pos.device)
        self.bounded = KeyLayout(
            name="bounded",
            pos=torch.cat([stored_pos, self.q_pos], dim=1),
            doc=torch.cat([stored_doc, self.q_doc], dim=1),
            valid=torch.cat([stored_valid, self.q_valid], dim=1),
            offset=stored_pos.shape[1],
            simple=False,
        )
        self.bounded_layers = layers

    def layer_window(self, layer_idx: int) -> int | None:
        """The window to apply on this layer in this pass, or None for full causal attention."""
        cfg = self.config
        if not cfg.is_sliding_layer(layer_idx):
            return None
        if self.is_decode and cfg.full_on_decode(layer_idx):
            return None
        window = cfg.sliding_window_size
        if window > self.max_pos:  # every causal key is inside the window already
            return None
        return window

    def layer_answer_mask(self, layer_idx: int) -> Tensor | None:
        """Queries that attend fully on this (sliding) layer: answer tokens under force_fa_decode."""
        if self.q_answer is None or not self.config.full_on_decode(layer_idx):
            return None
        return self.q_answer

    def memo(self, kind: Memo, build: Callable[[], Any], *params: Any) -> Any:
        """``build()`` once per forward for each ``(kind, *params)``."""
        key = (kind, *params)
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]


def _segment_rank(flags: Tensor, starts: Tensor) -> Tensor:
    """Inclusive count of ``flags`` since the last segment start, per row (cumsum reset at starts)."""
    total = flags.long().cumsum(-1)
    base = torch.where(starts, total - flags.long(), torch.zeros_like(total))
    base = torch.cummax(base, dim=-1).values
    return total - base


def _document_starts(position_ids: Tensor) -> Tensor:
    """A packed document starts wherever the position does not continue the previous one."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def _check_padding_layout(valid: Tensor) -> None:
    """Windows are sliced by key index, which needs the real tokens of a row to be contiguous
    (left or right padding). A mask with holes would silently shift windows, so refuse it."""
    v = valid.long()
    changes = (v[:, 1:] != v[:, :-1]).sum(-1)
    bad = changes > 2
    bad |= (changes == 2) & (v[:, 0] == 1)
    if bool(bad.any()):
        raise ValueError(
            "attention_mask: SWAA supports left or right padding only (the real tokens of each row must be "
            "contiguous); got a mask with holes in the middle of a row"
        )


def answer_tokens(labels: Tensor, doc_starts: Tensor) -> Tensor:
    """Tokens at or after the first supervised label of their document (labels != -100 after the
    prompt). Works for any batch size and for packed documents; prompt lengths are per sample."""
    supervised = labels != IGNORE_INDEX
    return _segment_rank(supervised, doc_starts) > 0


def build_plan(
    config: SWAAConfig,
    *,
    batch_size: int,
    q_len: int,
    device: torch.device,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    past_len: int = 0,
    labels: Tensor | None = None,
    triton_prefill: str = "off",
    cache_arg: str = "cache",
) -> AttentionPlan:
    """Compute the plan for one forward pass from its inputs. ``triton_prefill`` says whether
    eligible prefill calls may run the Triton kernel (``backends/fused_prefill.py``)."""
    k_len = past_len + q_len
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or attention_mask.ndim != 2:
            raise ValueError(
                "attention_mask: SWAA builds its own masks and needs the 2D padding mask of shape "
                "(batch, cached + new tokens); custom 4D masks and pre-built mask dicts are not supported"
            )
        if tuple(attention_mask.shape) != (batch_size, k_len):
            problem = (
                f"attention_mask: expected shape ({batch_size}, {k_len}) = (batch, cached {past_len} + new "
                f"{q_len} tokens), got {tuple(attention_mask.shape)}"
            )
            if past_len == 0 and attention_mask.shape[-1] > k_len:
                # the caller holds a cache that the forward hook did not find under `cache_arg`
                raise TransformersMismatch(f"{problem}; the model got a KV cache SWAA did not see as `{cache_arg}`")
            raise ValueError(problem)
        valid = attention_mask.to(device=device, dtype=torch.bool)
        has_padding = not bool(valid.all())
        if has_padding:
            _check_padding_layout(valid)
        q_padding = has_padding and not bool(valid[:, past_len:].all())
    else:
        valid = torch.ones(batch_size, k_len, dtype=torch.bool, device=device)
        has_padding = q_padding = False

    starts, packed = _document_boundaries(valid, position_ids if past_len == 0 else None)

    def full_layout() -> KeyLayout:
        k_doc = starts.long().cumsum(-1) - 1
        k_pos = (_segment_rank(valid, starts | _first_real(valid)) - 1).clamp_min(0)
        return KeyLayout("full", k_pos, k_doc, valid, offset=past_len, simple=not (has_padding or packed))

    layout = None
    if past_len == 0:
        layout = full_layout()
        q_pos, q_doc = layout.pos, layout.doc
    else:
        # One token (or chunk) after a cache: its positions follow the count of real tokens so far;
        # a reduction instead of scans over the whole context, which bounded layers never need.
        seen = valid[:, :past_len].sum(-1, keepdim=True)
        q_pos = (seen + valid[:, past_len:].long().cumsum(-1) - 1).clamp_min(0)
        q_doc = torch.zeros_like(q_pos)

    q_answer = None
    if labels is not None and past_len == 0 and config.force_fa_decode:
        if tuple(labels.shape) != (batch_size, q_len):
            raise ValueError(f"labels: expected shape ({batch_size}, {q_len}), got {tuple(labels.shape)}")
        q_answer = answer_tokens(labels.to(device), starts)
        if not bool(q_answer.any()):
            q_answer = None

    plan = AttentionPlan(
        config=config,
        q_pos=q_pos,
        q_doc=q_doc,
        q_valid=valid[:, past_len:],
        q_answer=q_answer,
        full_builder=full_layout,
        past_len=past_len,
        is_decode=past_len > 0 and q_len == 1,
        max_pos=int(q_pos.max()) if q_pos.numel() else 0,
        q_padding=q_padding,
        triton_prefill=triton_prefill,
        cache_arg=cache_arg,
    )
    if layout is not None:
        plan.memo(Memo.FULL_LAYOUT, lambda: layout)  # already built for the queries
    return plan


def _document_boundaries(valid: Tensor, position_ids: Tensor | None) -> tuple[Tensor, bool]:
    """Where each row's documents start, and whether any row packs several documents."""
    batch, length = valid.shape
    starts = torch.zeros(batch, length, dtype=torch.bool, device=valid.device)
    starts[:, 0] = True
    if position_ids is None:
        return starts, False
    first_real = _first_real(valid)
    pids = position_ids.to(valid.device).long().expand(batch, -1)
    # Only resets among real tokens are document boundaries, not padding -> real transitions.
    doc_starts = _document_starts(pids) & valid & ~first_real
    if not bool(doc_starts.any()):
        return starts, False
    return starts | doc_starts | first_real, True


def _first_real(valid: Tensor) -> Tensor:
    """The first real token of each row restarts position counting (left padding)."""
    return valid & (valid.long().cumsum(-1) == 1)
