"""The paged cache of a SWAA model: sinks + a ring for bounded layers, full pages for the others.

transformers' paged cache sizes itself from the model config: layers of type ``sliding_attention``
share one allocator whose requests each hold a ring of ``ceil(sliding_window / page)`` pages (the
token at position p lives in slot ``p % sliding_window``); the others get growing block tables.
Stock, the ring has no sinks and its window is the model's native one (Gemma, Mistral).

Under SWAA the engine sizes its cache from :class:`EngineConfigView`, the model config with
``layer_types`` saying which layers SWAA bounds (sliding layers without ``force_fa_decode``) and
``sliding_window = keep_first + W``: so each request's bounded layers hold ``keep_first + W``
slots, their key count per request is ``new + min(past, keep_first + W - 1)`` and the scheduler's
read limit is right, all computed by the engine itself. Every other layer, natively sliding or
not, keeps every key. The stock sliding allocator then gets SWAA's slot map (:class:`SinkRingIndices`):

    position p < keep_first  ->  slot p                          (fixed sink slots)
    position p >= keep_first ->  slot keep_first + (p - keep_first) % W   (the ring)

It reads, per request, the sinks then the newest ``W - 1`` ring positions, in position order, and
the engine's own read-then-write update (new tokens may overwrite the ring slots just read) is
unchanged. Memory per request on those layers is flat in the context length.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ..compat import TransformersMismatch
from .plan import PagedLayout

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"  # the engine's name for its ring allocator's layers


class EngineConfigView:
    """The model config as continuous batching must see it under SWAA: every attribute is the
    model's except the two the engine sizes its cache from. The model itself keeps its config."""

    def __init__(self, config: Any, layout: PagedLayout) -> None:
        layers = config.num_hidden_layers
        self.__dict__["_config"] = config
        self.__dict__["layer_types"] = [
            SLIDING_ATTENTION if i in layout.bounded_layers else FULL_ATTENTION for i in range(layers)
        ]
        self.__dict__["sliding_window"] = layout.slots if layout.bounded_layers else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_config"], name)


def read_slots(past: int, keep_first: int, window: int) -> list[int]:
    """Slots of the cached keys a bounded layer reads back, in position order: the sinks, then the
    newest ``W - 1`` positions at or after ``keep_first``."""
    sinks = range(min(keep_first, past))
    ring = range(max(keep_first, past - window + 1), past)
    return [*sinks, *(keep_first + (p - keep_first) % window for p in ring)]


def write_slots(past: int, new: int, keep_first: int, window: int) -> list[int | None]:
    """The slot each new token is written to, or None (the engine's trash) for ring tokens that a
    later token of the same pass overwrites: one write per slot and pass."""
    last = past + new
    slots: list[int | None] = []
    for p in range(past, last):
        if p < keep_first:
            slots.append(p)
        elif p >= last - window:
            slots.append(keep_first + (p - keep_first) % window)
        else:
            slots.append(None)
    return slots


def sink_ring_read_indices(self, request_id: str, past_length: int, query_length: int) -> list[int]:
    """The sliding allocator's ``get_read_indices`` under SWAA: sinks, ring, then one sentinel per
    new token (where the engine's update puts the new keys)."""
    slots = read_slots(past_length, self.keep_first, self.ring)
    return _physical(self, request_id, slots) + [self.sentinel_index] * query_length


def sink_ring_write_indices(self, request_id: str, past_length: int, query_length: int) -> list[int]:
    """The sliding allocator's ``get_write_indices`` under SWAA."""
    slots = write_slots(past_length, query_length, self.keep_first, self.ring)
    kept = iter(_physical(self, request_id, [s for s in slots if s is not None]))
    return [self.write_trash_index if s is None else next(kept) for s in slots]


def _physical(allocator: Any, request_id: str, slots: list[int]) -> list[int]:
    table = allocator.block_table.get(request_id)
    if table is None:
        raise ValueError(f"No block table found for request {request_id}")
    page, stride = _page_geometry(allocator)
    return [table[s // page] * stride + s % page for s in slots]


def _page_geometry(allocator: Any) -> tuple[int, int]:
    """(tokens per page, physical stride of a block) of a sliding allocator of the installed release."""
    if hasattr(allocator, "tokens_per_page"):  # 5.18+: one flat tensor, blocks of interleaved pages
        return allocator.tokens_per_page, allocator.block_physical_stride
    if hasattr(allocator, "block_size"):  # 5.17: one tensor per layer, blocks of block_size tokens
        return allocator.block_size, allocator.block_size
    raise TransformersMismatch(f"{type(allocator).__name__}: no page geometry SWAA knows (tokens_per_page, block_size)")


@cache
def _sink_ring_class(stock: type) -> type:
    """The installed release's sliding allocator with SWAA's slot map: a direct subclass adding no
    storage, so an allocator the engine built can take it in place."""
    methods = {"get_read_indices": sink_ring_read_indices, "get_write_indices": sink_ring_write_indices}
    return type(f"SinkRing{stock.__name__}", (stock,), {"__slots__": (), **methods})


def give_sink_ring(allocator: Any, layout: PagedLayout) -> None:
    """Turn the engine's stock sliding allocator (sized for ``keep_first + W`` slots) into SWAA's
    sink + ring allocator: same sizing and update, SWAA's slot map."""
    for name in ("sliding_window", "block_table", "sentinel_index", "write_trash_index"):
        if not hasattr(allocator, name):
            raise TransformersMismatch(f"{type(allocator).__name__} has no `{name}`: not the sliding allocator SWAA knows")
    if allocator.sliding_window != layout.slots:
        raise TransformersMismatch(
            f"{type(allocator).__name__} holds {allocator.sliding_window} slots per request, SWAA sized it for "
            f"keep_first + W = {layout.slots}"
        )
    _page_geometry(allocator)
    allocator.__class__ = _sink_ring_class(type(allocator))
    allocator.keep_first = layout.keep_first
    allocator.ring = layout.window


def sliding_allocators(cache: Any) -> list[Any]:
    """The engine's sliding allocators of a paged cache (5.18+: a dict by layer type; 5.17: groups)."""
    by_type = getattr(cache, "cache_allocators", None)
    if isinstance(by_type, dict):
        return [a for name, a in by_type.items() if name == SLIDING_ATTENTION]
    groups = getattr(cache, "group_cache_managers", None)
    if isinstance(groups, list):
        return [g for g in groups if hasattr(g, "sliding_window")]
    raise TransformersMismatch(f"{type(cache).__name__}: no allocators SWAA knows (cache_allocators, group_cache_managers)")


def request_cache_bytes(cache: Any, request_id: str) -> int:
    """KV-cache bytes the paged cache holds for one request, over all layers."""
    by_type = getattr(cache, "cache_allocators", None)
    if isinstance(by_type, dict):
        return sum(len(a.block_table.get(request_id, ())) * a.bytes_per_block for a in by_type.values())
    groups = getattr(cache, "group_cache_managers", None)
    if isinstance(groups, list):
        layer = cache.key_cache[0]  # (pages, kv heads, head dim), one tensor per layer of a group
        per_block = 2 * len(cache.key_cache) * cache.block_size * layer[0].numel() * layer.element_size()
        return sum(len(g.block_table.get(request_id, ())) for g in groups) * per_block
    raise TransformersMismatch(f"{type(cache).__name__}: no allocators SWAA knows (cache_allocators, group_cache_managers)")


def cached_request_ids(cache: Any) -> set[str]:
    """Requests that hold pages of the paged cache now."""
    by_type = getattr(cache, "cache_allocators", None)
    allocators = by_type.values() if isinstance(by_type, dict) else getattr(cache, "group_cache_managers", None)
    if allocators is None:
        raise TransformersMismatch(f"{type(cache).__name__}: no allocators SWAA knows (cache_allocators, group_cache_managers)")
    return {rid for allocator in allocators for rid, blocks in allocator.block_table.items() if blocks}
