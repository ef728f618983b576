"""What SWAA relies on in transformers' continuous-batching engine, checked in one place.

The engine's internals are private and move between releases, so everything SWAA reads or hooks
there is named here and checked against the installed release; what does not match raises
``TransformersMismatch`` (naming the release) instead of computing around it. SWAA hooks the
engine at two points, both installed by ``hack_hf_swaa()`` and removed by ``unhack_hf_swaa()``:

1. ``PagedAttentionCache.__init__``: for a model with an active SWAAConfig the engine sizes its
   cache from :class:`~.paged_cache.EngineConfigView` and its sliding allocator gets the sink +
   ring slot map (``paged_cache.py``). Serving settings that would be wrong under SWAA are turned
   off there, with a log line: CUDA graphs and compiled steps (they would replay the first
   forward's plan), the block-table decode path (its flash kernel reads pages itself, without
   the rule), and, under ``force_fa_decode``, prefix sharing of blocks (a generated token's keys
   differ from the same token's keys as a prompt token).
2. ``ContinuousBatchingIOs.prepare_batch_tensors``: records, per scheduled request in batch
   order, its prompt length, cached tokens and new tokens, which the packed arguments alone
   cannot tell (a one-token prompt chunk looks like a decode step). It also drops the engine's
   dense attention mask, which SWAA never reads.

The forward hook then finds the paged cache among the forward's arguments and builds a
:class:`~.plan.PackedPlan` from the record and the packed arguments, which must agree.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..compat import TransformersMismatch
from ..config import SWAAConfig
from .paged_cache import EngineConfigView, give_sink_ring, sliding_allocators
from .plan import PackedPlan, PackedRequest, PagedLayout, build_packed_plan, paged_layout

logger = logging.getLogger(__name__)

# The packed arguments SWAA reads (same names in every supported release).
POSITION_IDS, CU_SEQ_LENS_Q, BLOCK_TABLE = "position_ids", "cu_seq_lens_q", "block_table"
READ_INDEX, WRITE_INDEX = "read_index", "write_index"
# Serving settings SWAA turns off on its caches: value it needs and why (the log line says it).
SERVING_OVERRIDES = {
    "use_cuda_graph": (False, "CUDA graphs would replay the first forward's SWAA plan"),
    "varlen_compile_config": (None, "a compiled step would bake in the first forward's SWAA plan"),
    "decode_compile_config": (None, "a compiled step would bake in the first forward's SWAA plan"),
    "max_blocks_per_request": (0, "the block-table decode path reads pages inside flash-attn, without the rule"),
}
SHARING_OVERRIDE = (
    "allow_block_sharing",
    (False, "under force_fa_decode a generated token's keys differ from the same token's as a prompt token"),
)
_ORIGINALS: dict[str, Callable] = {}
# Why SWAA could not hook this release's engine (empty: hooked, or not tried yet). A release that moved
# the engine still runs SWAA everywhere else; a continuous-batching forward then raises this.
_UNSUPPORTED: list[str] = []

try:
    from transformers.generation.continuous_batching.cache import PagedAttentionCache
    from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs
except ImportError as err:  # pragma: no cover - only on releases outside the tested range
    PagedAttentionCache = ContinuousBatchingIOs = None
    _UNSUPPORTED.append(f"continuous batching is not where SWAA looks for it ({err})")


def swaa_config_of(model_config: Any) -> SWAAConfig | None:
    """The enabled SWAAConfig of a model config, or None (the engine then runs stock)."""
    config = SWAAConfig.coerce(getattr(model_config, "swaa_config", None))
    return config if config is not None and config.enabled else None


# -- the two hooks ----------------------------------------------------------------------------
def install() -> None:
    """Hook the engine (idempotent). A release whose engine SWAA does not know is not hooked: its
    continuous-batching forwards of SWAA models raise TransformersMismatch, nothing else changes."""
    if _ORIGINALS or _UNSUPPORTED:
        return
    try:
        _check_signature(PagedAttentionCache.__init__, ("config", "continuous_batching_config"))
        _check_signature(ContinuousBatchingIOs.prepare_batch_tensors, ("requests_in_batch",))
    except TransformersMismatch as err:
        _UNSUPPORTED.append(str(err))
        logger.warning("SWAA cannot serve through continuous batching here: %s", err)
        return
    _ORIGINALS["cache_init"] = PagedAttentionCache.__init__
    _ORIGINALS["prepare"] = ContinuousBatchingIOs.prepare_batch_tensors
    PagedAttentionCache.__init__ = _swaa_cache_init(_ORIGINALS["cache_init"])
    ContinuousBatchingIOs.prepare_batch_tensors = _record_scheduled(_ORIGINALS["prepare"])


def uninstall() -> None:
    if not _ORIGINALS:
        return
    PagedAttentionCache.__init__ = _ORIGINALS.pop("cache_init")
    ContinuousBatchingIOs.prepare_batch_tensors = _ORIGINALS.pop("prepare")


def _check_signature(function: Callable, leading: tuple[str, ...]) -> None:
    params = tuple(inspect.signature(function).parameters)[1 : 1 + len(leading)]
    if params != leading:
        raise TransformersMismatch(
            f"{function.__qualname__} takes {params} where SWAA expects {leading}: continuous batching changed"
        )


def _swaa_cache_init(original: Callable) -> Callable:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(original).bind(self, *args, **kwargs)
        model_config = bound.arguments["config"]
        swaa = swaa_config_of(model_config)
        if swaa is None:
            original(*bound.args, **bound.kwargs)
            return
        layout = paged_layout(swaa, model_config.num_hidden_layers)
        serve_settings_for_swaa(bound.arguments["continuous_batching_config"], swaa)
        bound.arguments["config"] = EngineConfigView(model_config, layout)
        original(*bound.args, **bound.kwargs)
        for allocator in sliding_allocators(self):
            give_sink_ring(allocator, layout)
        self._swaa_layout = layout
        self._swaa_batches = deque()  # one record per prepared batch, consumed by its forward
        logger.info(
            "SWAA paged cache: layers %s keep %d sink + %d ring slots per request, the others every key",
            sorted(layout.bounded_layers), layout.keep_first, layout.window,
        )

    __init__.swaa_original = original
    return __init__


def serve_settings_for_swaa(cb_config: Any, swaa: SWAAConfig) -> None:
    """Turn off, on the engine's config, what would compute something other than SWAA's rule."""
    overrides = dict(SERVING_OVERRIDES)
    if swaa.force_fa_decode:
        overrides[SHARING_OVERRIDE[0]] = SHARING_OVERRIDE[1]
    for name, (value, why) in overrides.items():
        if not hasattr(cb_config, name):
            raise TransformersMismatch(f"ContinuousBatchingConfig has no `{name}`, which SWAA must set")
        current = getattr(cb_config, name)
        if _is_on(current) != _is_on(value):
            log = logger.info if name == SHARING_OVERRIDE[0] else logger.warning  # sharing is on by default
            log("SWAA: continuous batching %s=%r -> %r: %s", name, current, value, why)
        setattr(cb_config, name, value)


def _is_on(value: Any) -> bool:
    return any(value) if isinstance(value, tuple) else bool(value)  # use_cuda_graph may be a pair


def _record_scheduled(original: Callable) -> Callable:
    def prepare_batch_tensors(self, requests_in_batch, *args: Any, **kwargs: Any) -> Any:
        batches = getattr(self.cache, "_swaa_batches", None)
        if batches is None:
            return original(self, requests_in_batch, *args, **kwargs)
        scheduled = tuple(scheduled_request(future) for future in requests_in_batch)
        self.attention_mask = None  # SWAA builds its masks from the plan; the dense one is O(Q x K)
        result = original(self, requests_in_batch, *args, **kwargs)
        batches.append(scheduled)
        return result

    prepare_batch_tensors.swaa_original = original
    return prepare_batch_tensors


def scheduled_request(future: Any) -> PackedRequest:
    """A scheduled request as the plan needs it, read before the engine advances its offset."""
    state = future.state
    for name in ("_true_initial_tokens", "initial_tokens", "position_offset", "request_id"):
        if not hasattr(state, name):
            raise TransformersMismatch(f"RequestState has no `{name}`: continuous batching changed")
    # A request evicted and re-prefilled carries its generated tokens in initial_tokens; the true
    # prompt length stays in _true_initial_tokens.
    prompt = state._true_initial_tokens or len(state.initial_tokens)
    return PackedRequest(prompt, state.position_offset, future.query_length, state.request_id)


# -- the forward ------------------------------------------------------------------------------
def find_paged_cache(arguments: Mapping[str, Any]) -> tuple[str, PagedAttentionCache] | None:
    """The (argument name, paged cache) of a continuous-batching forward, else None."""
    if PagedAttentionCache is None:
        return None
    for name, value in arguments.items():
        if isinstance(value, PagedAttentionCache):
            return name, value
    return None


def check_stock_forward(arguments: Mapping[str, Any]) -> None:
    """A forward of a model without an active SWAAConfig must not read a cache laid out for SWAA
    (its bounded layers hold sinks + a ring, which stock attention would read as a plain window)."""
    found = find_paged_cache(arguments)
    if found is not None and getattr(found[1], "_swaa_layout", None) is not None:
        raise ValueError(
            "swaa_config: this continuous-batching cache was laid out for SWAA but the model has no active "
            "SWAAConfig any more; stop the manager and start a new one"
        )


def plan_packed_forward(
    config: SWAAConfig, arguments: Mapping[str, Any], found: tuple[str, PagedAttentionCache], model_cache_arg: str
) -> PackedPlan:
    """The plan of a continuous-batching forward. ``model_cache_arg`` is the model's own cache
    argument: when the engine passes the paged cache under it, the model updates the cache before
    attention (5.18+); otherwise the attention function must (5.17), and the plan does it."""
    if _UNSUPPORTED:
        raise TransformersMismatch(_UNSUPPORTED[0])
    name, cache = found
    layout: PagedLayout | None = getattr(cache, "_swaa_layout", None)
    if layout is None:
        raise ValueError(
            "swaa_config: this continuous-batching cache was built before the model had its SWAAConfig; "
            "attach the config (apply_swaa) before init_continuous_batching / generate_batch"
        )
    if layout != paged_layout(config, len(cache_layers(cache))):
        raise ValueError(
            "swaa_config: the model's SWAAConfig changed since its continuous-batching cache was built; "
            "stop the manager and start a new one"
        )
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise TransformersMismatch("continuous batching is capturing a CUDA graph of a SWAA forward")
    if arguments.get(BLOCK_TABLE) is not None:
        raise TransformersMismatch("continuous batching used the block-table decode path SWAA turned off")
    for required in (POSITION_IDS, CU_SEQ_LENS_Q):
        if not isinstance(arguments.get(required), Tensor):
            raise TransformersMismatch(f"a continuous-batching forward without `{required}`")
    if not cache._swaa_batches:
        raise TransformersMismatch("a continuous-batching forward of a batch SWAA did not see prepared")
    requests = cache._swaa_batches.popleft()
    update = None if name == model_cache_arg else _attention_update(cache, arguments)
    return build_packed_plan(
        config, requests, layout, arguments[POSITION_IDS], arguments[CU_SEQ_LENS_Q], update, model_cache_arg
    )


def cache_layers(cache: PagedAttentionCache) -> list[int]:
    """Layer indices the paged cache serves (5.18+: layer_to_allocator; 5.17: group indices)."""
    for name in ("layer_to_allocator", "layer_index_to_group_indices"):
        mapping = getattr(cache, name, None)
        if isinstance(mapping, dict):
            return sorted(mapping)
    raise TransformersMismatch("PagedAttentionCache maps no layers SWAA can find")


def _attention_update(cache: PagedAttentionCache, arguments: Mapping[str, Any]) -> Callable:
    params = inspect.signature(cache.update).parameters
    if READ_INDEX not in params or WRITE_INDEX not in params:
        raise TransformersMismatch(
            "continuous batching passed its cache outside the model's cache argument, but "
            f"PagedAttentionCache.update takes no {READ_INDEX} / {WRITE_INDEX}"
        )
    return partial(_read_write, cache, arguments[READ_INDEX], arguments[WRITE_INDEX])


def _read_write(
    cache: PagedAttentionCache, read_index: list[Tensor], write_index: list[Tensor], layer: int, key: Tensor, value: Tensor
) -> tuple[Tensor, Tensor]:
    """What the release's own paged attention functions do first: write the new keys, read the
    request's keys back, as (1, kv heads, keys, head dim)."""
    key, value = cache.update(
        key_states=key, value_states=value, layer_idx=layer, read_index=read_index, write_index=write_index
    )
    return key.transpose(0, 1).unsqueeze(0), value.transpose(0, 1).unsqueeze(0)
