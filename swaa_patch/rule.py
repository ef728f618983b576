"""The visibility rule, as tiny pure functions: the one place the semantics live.

Every backend derives its mask from these (dense boolean masks for eager/sdpa, a BlockMask
mask_mod for flex, the sink/window split for flash) and the tests' float64 reference uses them
too. They take broadcastable tensors of *per-sequence positions* (0 at a sequence's first real
token, restarting per packed document), so the same code works on whole matrices, on gathered
key subsets and on the scalar indices flex passes to a mask_mod.

A query at position i sees a key at position j iff ``j <= i`` in the same document, the key is a
real token, and one of: the layer attends fully here, ``i - j < W``, or ``j < keep_first``.
"""

from __future__ import annotations

from torch import Tensor


def causal(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    return k_pos <= q_pos


def in_window(q_pos: Tensor, k_pos: Tensor, window: int) -> Tensor:
    """The window holds W positions including the query's own (HF / flash-attn convention)."""
    return q_pos - k_pos < window


def is_sink(k_pos: Tensor, keep_first: int) -> Tensor:
    return k_pos < keep_first


def same_document(q_doc: Tensor, k_doc: Tensor) -> Tensor:
    return q_doc == k_doc


def full_visible(q_pos: Tensor, k_pos: Tensor, q_doc: Tensor, k_doc: Tensor, k_valid: Tensor) -> Tensor:
    """Causal attention inside one document, over real (non-padding) keys."""
    return causal(q_pos, k_pos) & same_document(q_doc, k_doc) & k_valid


def local_visible(q_pos: Tensor, k_pos: Tensor, window: int, keep_first: int) -> Tensor:
    """The sliding part: inside the window, or a sink."""
    return in_window(q_pos, k_pos, window) | is_sink(k_pos, keep_first)


def visible(
    q_pos: Tensor,
    k_pos: Tensor,
    q_doc: Tensor,
    k_doc: Tensor,
    k_valid: Tensor,
    window: int | None,
    keep_first: int,
    q_full: Tensor | None = None,
) -> Tensor:
    """The whole rule. ``window=None`` means the layer attends fully for every query;
    ``q_full`` marks queries that attend fully on a sliding layer (answer tokens in training)."""
    base = full_visible(q_pos, k_pos, q_doc, k_doc, k_valid)
    if window is None:
        return base
    local = local_visible(q_pos, k_pos, window, keep_first)
    if q_full is not None:
        local = local | q_full
    return base & local
