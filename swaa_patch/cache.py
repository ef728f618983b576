"""KV caches for SWAA models, built on transformers' Cache / cache-layer API.

``SWAACache`` is a ``DynamicCache`` whose sliding layers are :class:`SinkWindowLayer`: they keep
the ``keep_first`` sink tokens of each sequence and the last ``W - 1`` tokens, nothing else, so
their memory stops growing with the context: ``keep_first + W - 1`` keys stored, at most
``keep_first + W - 1 + new tokens`` handed to attention. Layers that may need every key keep a
full ``DynamicLayer``: ``non_sliding_layers`` and, when ``force_fa_decode`` applies to a layer,
that layer too (decode steps attend to the whole cache there).

Keys keep the RoPE of their absolute positions; what the rule needs besides the tensors is
each stored key's position and whether the slot holds a real token. That metadata is the same
for every bounded layer, so the cache computes it once per forward (:meth:`begin_forward`) along
with the gather that every bounded layer applies after attention.

A stock ``DynamicCache(config=...)`` gives natively sliding layers (Gemma, Mistral, ...) a
``DynamicSlidingWindowLayer`` that forgets keys beyond the *native* window; under SWAA that is
wrong, so such caches are replaced before anything is stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedConfig
from transformers.cache_utils import (
    Cache,
    CacheLayerMixin,
    DynamicCache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    StaticCache,
)

from .compat import TransformersMismatch
from .config import SWAAConfig
from .static_cache import StaticSWAACache

logger = logging.getLogger(__name__)
_LOGGED_FULL_CACHE: set[tuple] = set()


@dataclass
class _Retention:
    """Which columns of [stored keys | this pass's keys] a bounded layer keeps after the pass."""

    sink_source: Tensor  # (B, keep_first) column per sink slot (a row's slot stays put if not yet seen)
    window_start: int  # the kept window buffer is columns [window_start, total)


class SinkWindowLayer(CacheLayerMixin):
    """A cache layer holding sink slots [0, keep_first) followed by a window buffer of at most
    W - 1 tokens. Each update returns [stored | new] keys for attention, then keeps the sinks and
    the newest W - 1 non-sink tokens, as decided by the owning SWAACache for this pass."""

    is_sliding = True
    is_compileable = False
    is_croppable = False

    def __init__(self, cache: SWAACache, layer_idx: int) -> None:
        super().__init__()
        self._cache = cache
        self.layer_idx = layer_idx
        self.cumulative_length = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        keep = self._cache.keep_first
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(batch, heads, keep, dim)
        self.values = value_states.new_zeros(batch, value_states.shape[1], keep, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self._cache.claim(self.layer_idx)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        retention = self._cache.retention
        self.keys = _retain(keys, retention)
        self.values = _retain(values, retention)
        self.cumulative_length += key_states.shape[-2]
        return keys, values

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.keys.shape[-2] if self.is_initialized else self._cache.keep_first
        return stored + query_length, 0

    def get_max_length(self) -> int:
        return self._cache.keep_first + self._cache.window - 1

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False
        self.cumulative_length = 0


def _retain(x: Tensor, retention: _Retention) -> Tensor:
    batch, heads, _, dim = x.shape
    index = retention.sink_source[:, None, :, None].expand(batch, heads, -1, dim)
    return torch.cat([x.gather(2, index), x[:, :, retention.window_start :]], dim=2)


class SWAACache(DynamicCache):
    """A DynamicCache with bounded sink+window layers where SWAA allows it."""

    def __init__(self, num_layers: int, config: SWAAConfig) -> None:
        self.keep_first = config.keep_first
        self.window = config.sliding_window_size
        self.bounded_layers = frozenset(
            i for i in range(num_layers) if config.is_sliding_layer(i) and not config.full_on_decode(i)
        )
        layers = [
            SinkWindowLayer(self, i) if i in self.bounded_layers else DynamicLayer() for i in range(num_layers)
        ]
        Cache.__init__(self, layers=layers)
        self.stored_pos: Tensor | None = None  # (B, S) positions of stored keys in bounded layers
        self.stored_valid: Tensor | None = None  # (B, S)
        self.retention: _Retention | None = None
        self._unclaimed: set[int] = set()  # bounded layers planned for this pass and not yet updated

    def claim(self, layer_idx: int) -> None:
        """A bounded layer's update: only once per forward the hook planned. A forward that reaches
        this cache without the hook (transformers passed it some way SWAA did not see) raises."""
        if layer_idx not in self._unclaimed:
            raise TransformersMismatch(
                f"SWAACache layer {layer_idx} was updated by a forward that SWAA's hook did not plan for it "
                "(the cache reached the model under an argument SWAA did not read)"
            )
        self._unclaimed.discard(layer_idx)

    def begin_forward(self, q_pos: Tensor, q_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Called once before a forward with this pass's token positions. Returns the positions and
        validity of the keys bounded layers have stored (what they will prepend to the new keys),
        and fixes what they keep afterwards."""
        batch, device, keep = q_pos.shape[0], q_pos.device, self.keep_first
        if self.stored_pos is None:
            self.stored_pos = torch.arange(keep, device=device).expand(batch, keep)
            self.stored_valid = torch.zeros(batch, keep, dtype=torch.bool, device=device)
        stored_pos, stored_valid = self.stored_pos, self.stored_valid
        all_pos = torch.cat([stored_pos, q_pos], dim=1)
        all_valid = torch.cat([stored_valid, q_valid], dim=1)
        # sinks: slot s takes the real token at position s, from the slot itself or from this pass
        slots = torch.arange(keep, device=device)
        incoming = (q_valid[:, :, None] & (q_pos[:, :, None] == slots[None, None, :])).int()
        found = incoming.any(dim=1)
        source = stored_pos.shape[1] + incoming.argmax(dim=1)
        sink_source = torch.where(found, source, slots.expand(batch, keep))
        # window buffer: the newest W - 1 columns after the sink slots, sinks excluded (no duplicates)
        total = all_pos.shape[1]
        window_start = max(keep, total - (self.window - 1))
        self.retention = _Retention(sink_source, window_start)
        self.stored_pos = torch.cat([slots.expand(batch, keep), all_pos[:, window_start:]], dim=1)
        self.stored_valid = torch.cat(
            [stored_valid[:, :keep] | found, all_valid[:, window_start:] & (all_pos[:, window_start:] >= keep)], dim=1
        )
        self._unclaimed = set(self.bounded_layers)
        return stored_pos, stored_valid


def kv_bytes(cache: Any) -> int:
    """Bytes of the key and value tensors a cache holds (any transformers Cache with ``layers``:
    DynamicCache, StaticCache, SWAACache, StaticSWAACache), as allocated: a static cache counts its
    whole buffers, a dynamic one what it stores now."""
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _log_full_cache_once(config: SWAAConfig) -> None:
    key = (config.force_fa_decode, config.non_sliding_layers)
    if key not in _LOGGED_FULL_CACHE:
        _LOGGED_FULL_CACHE.add(key)
        logger.info(
            "SWAA: force_fa_decode=%s makes decode steps attend to the whole cache, so those layers keep "
            "their full KV cache; only sliding layers without force_fa_decode are bounded to keep_first + W",
            config.force_fa_decode,
        )


def prepare_cache(
    past: Cache | None,
    model_config: PreTrainedConfig,
    config: SWAAConfig,
    use_cache: bool,
    owner: object | None = None,
    batch_size: int | None = None,
    capacity: int | None = None,
) -> Cache | None:
    """The cache this forward should use: a fresh SWAACache when generation starts (bounding
    every layer SWAA allows), the caller's SWAACache or plain DynamicCache when continuing; an
    empty transformers StaticCache (``cache_implementation="static"``) becomes a StaticSWAACache."""
    if isinstance(past, (SWAACache, StaticSWAACache)):
        return past
    if isinstance(past, StaticCache):
        return static_replacement(past, model_config, config, owner, batch_size, capacity)
    if past is not None and not isinstance(past, DynamicCache):
        raise ValueError(
            f"cache: SWAA works with DynamicCache, StaticCache or its own SWAACache / StaticSWAACache, got "
            f"{type(past).__name__}"
        )
    if past is None and not use_cache:
        return None
    if past is None or past.get_seq_length() == 0:
        if not config.bounded_cache:
            return DynamicCache()  # no config: every layer a full DynamicLayer, native windows ignored
        if config.force_fa_decode:
            _log_full_cache_once(config)
        return SWAACache(model_config.num_hidden_layers, config)
    if any(isinstance(layer, DynamicSlidingWindowLayer) for layer in past.layers):
        raise ValueError(
            "cache: this cache was filled by native sliding-window layers, which already dropped "
            "keys SWAA needs; start generation with an empty cache (or none) on the SWAA model"
        )
    return past


def static_replacement(
    past: StaticCache,
    model_config: PreTrainedConfig,
    config: SWAAConfig,
    owner: object | None,
    batch_size: int | None,
    capacity: int | None,
) -> StaticSWAACache:
    """The StaticSWAACache standing in for an empty transformers StaticCache of ``capacity``
    tokens. It is kept on ``owner`` (the model) and reset for the next generation of the same
    shape, so every generation runs on the same buffers and replays the same CUDA graphs."""
    if int(past.get_seq_length()) != 0:
        raise ValueError(
            "cache: this StaticCache was filled without SWAA; start generation with an empty cache on the SWAA model"
        )
    max_len = capacity or 0
    previous = getattr(owner, "_swaa_static_cache", None)
    if (
        isinstance(previous, StaticSWAACache)
        and previous.config == config
        and previous.full_slots == (max_len if len(previous.bounded_layers) < model_config.num_hidden_layers else 0)
        and previous.batch_size in (batch_size, None)
    ):
        previous.reset()
        return previous
    replacement = StaticSWAACache(config, model_config.num_hidden_layers, max_cache_len=max_len)
    if owner is not None:
        owner._swaa_static_cache = replacement
    return replacement
