"""KV caches for SWAA models, built on transformers' Cache / cache-layer API.

A stock ``DynamicCache(config=...)`` gives natively sliding layers (Gemma, Mistral, ...) a
``DynamicSlidingWindowLayer`` that forgets keys beyond the *native* window. Under SWAA that is
wrong: sinks, a larger SWAA window and force_fa_decode need keys the native layer dropped. So
native sliding layers are swapped for full layers before anything is cached.
"""

from __future__ import annotations

from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer


def has_native_sliding_layers(model_config: PreTrainedConfig) -> bool:
    probe = DynamicCache(config=model_config)
    return any(isinstance(layer, DynamicSlidingWindowLayer) for layer in probe.layers)


def prepare_cache(past: Cache | None, model_config: PreTrainedConfig, use_cache: bool) -> Cache | None:
    """Return the cache this forward should use so that no layer drops keys SWAA needs."""
    if past is None:
        if use_cache and has_native_sliding_layers(model_config):
            return DynamicCache()  # no config: every layer is a full DynamicLayer
        return None
    if not isinstance(past, DynamicCache):
        return past
    sliding = [i for i, layer in enumerate(past.layers) if isinstance(layer, DynamicSlidingWindowLayer)]
    if not sliding:
        return past
    if past.get_seq_length() > 0:
        raise ValueError(
            "past_key_values: this cache was filled by native sliding-window layers, which already dropped "
            "keys SWAA needs; start generation with an empty cache (or none) on the SWAA model"
        )
    for i in sliding:
        past.layers[i] = DynamicLayer()
    return past
