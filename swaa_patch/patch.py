"""Registration with transformers' extension points: idempotent and reversible.

``hack_hf_swaa()`` does four things, each undone by ``unhack_hf_swaa()``:
1. wraps the ``eager``/``sdpa``/``flex_attention``/``flash_attention_2`` entries of
   ``AttentionInterface`` (and continuous batching's ``paged|`` names the release registers): with
   a plan in the call, our backend runs; without one, the original function runs with the exact
   same arguments (bit-for-bit stock);
2. wraps the same entries of ``AttentionMaskInterface`` so transformers skips building masks we
   would ignore (an n x n mask at 128K is 16 GiB) for models whose swaa_config is active;
3. registers a forward pre-hook on every model built afterwards (and ``apply_swaa`` on any
   model): once per forward it turns the inputs into an :class:`AttentionPlan` (a
   :class:`~swaa_patch.serving.plan.PackedPlan` for a continuous-batching forward) that reaches the
   attention functions through transformers' own ``**kwargs`` plumbing;
4. hooks continuous batching's paged cache and batch preparation (``serving/engine.py``), which
   act only on caches of models with an active SWAAConfig.
No model class's forward is replaced, so new transformers releases of a modeling file keep
working as long as they call the attention interface.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import StaticCache
from transformers.masking_utils import AttentionMaskInterface
from transformers.masking_utils import create_masks_for_generate as hf_create_masks_for_generate
from transformers.modeling_utils import AttentionInterface

from .backends import BACKENDS, PAGED_BACKENDS, AttentionCall, run_attention
from .backends.fused_prefill import triton_prefill_setting
from .cache import SWAACache, prepare_cache
from .compat import (
    TransformersMismatch,
    cache_arg_name_of,
    check_transformers_version,
    forward_params,
    static_cache_capacity,
    take_cache,
)
from .config import SWAAConfig
from .models import family_of
from .plan import AttentionPlan, build_plan
from .serving import engine as serving_engine
from .serving.plan import PackedPlan
from .static_cache import StaticDecodePlan, StaticSWAACache, plan_static_decode

logger = logging.getLogger(__name__)

PLAN_KWARG = "swaa_plan"
_MISSING = object()


class _PatchState:
    """What hack_hf_swaa replaced, so unhack_hf_swaa can put it back exactly."""

    def __init__(self) -> None:
        self.active = False
        self.attention: dict[str, Any] = {}
        self.masks: dict[str, Any] = {}
        self.post_init: Callable | None = None
        self.config_default: Any = _MISSING
        self.hooked: weakref.WeakSet[nn.Module] = weakref.WeakSet()


_STATE = _PatchState()


# -- config resolution ------------------------------------------------------------------------
def validated_config(model_config: PreTrainedConfig, value: Any) -> SWAAConfig | None:
    """``value`` (SWAAConfig, dict from JSON or None) as a SWAAConfig checked against the model:
    a supported family and layer indices that exist. Raises ValueError naming the field."""
    config = SWAAConfig.coerce(value)
    if config is not None and config.enabled:
        family_of(model_config)
        layers = getattr(model_config, "num_hidden_layers", None)
        if layers is not None:
            config.check_layers(layers)
    return config


def active_config(model_config: PreTrainedConfig | None) -> SWAAConfig | None:
    """The enabled SWAAConfig attached to a model config, validated against the model, or None."""
    raw = getattr(model_config, "swaa_config", None)
    if raw is None:
        return None
    config = validated_config(model_config, raw)
    if config is not raw:
        model_config.__dict__["swaa_config"] = config  # a JSON dict from before the hack: validate once
    return config if config.enabled else None


class _SWAAConfigField:
    """``PreTrainedConfig.swaa_config`` while SWAA is hacked in. Assigning validates on the spot
    (``model.config.swaa_config = SWAAConfig(non_sliding_layers=[5])`` on a 4-layer model raises
    there, not 25 frames deep in ``generate``); the value lives in the instance ``__dict__``, so
    ``to_dict`` / ``save_pretrained`` store it in config.json as before."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return None
        return obj.__dict__.get("swaa_config")

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["swaa_config"] = validated_config(obj, value)

    def __delete__(self, obj: Any) -> None:
        obj.__dict__.pop("swaa_config", None)


# -- attention and mask wrappers --------------------------------------------------------------
def _stock_eager(module: nn.Module) -> Callable:
    """The modeling file's own eager function (families differ, e.g. Gemma's softcapping)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def _make_attention(name: str, original: Callable | None) -> Callable:
    def swaa_attention(module, query, key, value, attention_mask, *args, **kwargs):
        plan = kwargs.pop(PLAN_KWARG, None)
        if plan is None:
            if active_config(module.config) is not None:
                raise RuntimeError(
                    "swaa_config is set but this forward carries no SWAA plan: the model was built before "
                    "hack_hf_swaa(); call swaa_patch.apply_swaa(model, config) instead"
                )
            stock = original if original is not None else _stock_eager(module)
            return stock(module, query, key, value, attention_mask, *args, **kwargs)
        check_keys(plan, module.layer_idx, key.shape[2])
        scaling = kwargs.get("scaling")
        call = AttentionCall(
            module,
            query,
            key,
            value,
            plan,
            scaling=query.shape[-1] ** -0.5 if scaling is None else scaling,
            dropout=kwargs.get("dropout", 0.0),
            softcap=kwargs.get("softcap"),
        )
        return run_attention(name, call)

    swaa_attention.swaa_original = original
    return swaa_attention


def check_keys(plan: AttentionPlan | StaticDecodePlan | PackedPlan, layer_idx: int, received: int) -> None:
    """Raise unless attention got exactly the keys the plan accounted for. A cache the hook never
    saw (transformers renamed the argument, a caller passed it some new way) shows up here as extra
    or missing keys, so it can never be attended with the wrong positions silently."""
    expected = plan.key_count(layer_idx)
    if received != expected:
        raise TransformersMismatch(
            f"layer {layer_idx}: SWAA planned this forward for {expected} keys ({plan.describe_keys(layer_idx)}) "
            f"but attention received {received}; the model used a KV cache that SWAA's forward hook did not "
            f"see (it looks for it as `{plan.cache_arg}`)"
        )


def _make_mask(original: Callable) -> Callable:
    def swaa_mask(*args, **kwargs):
        if active_config(kwargs.get("config")) is not None:
            return None  # our backends build their masks from the plan
        return original(*args, **kwargs)

    swaa_mask.swaa_original = original
    return swaa_mask


# -- the per-forward hook ---------------------------------------------------------------------
def _causal_lm_labels(model: nn.Module, bound: dict[str, Any]) -> Any:
    """Labels that mean answer tokens: those of a causal LM only. A classification head's labels
    (one class per sequence or per token) say nothing about prompts and answers, so SWAA ignores
    them and such models compute exactly what stock computes."""
    return bound.get("labels") if isinstance(model, GenerationMixin) else None


def _swaa_pre_forward(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if not _STATE.active or PLAN_KWARG in kwargs:
        return None
    config = active_config(getattr(model, "config", None))
    if config is None:
        serving_engine.check_stock_forward(kwargs)
        return None
    params = model._swaa_forward_params
    bound = {**dict(zip(params, args)), **kwargs}
    paged = serving_engine.find_paged_cache(bound)
    if paged is not None:  # continuous batching: requests packed into one row, a paged cache
        bound[PLAN_KWARG] = serving_engine.plan_packed_forward(config, bound, paged, _cache_arg(model))
        return (), bound
    tokens = bound.get("input_ids")
    if tokens is None:
        tokens = bound.get("inputs_embeds")
    if tokens is None:
        return None
    cache_arg = _cache_arg(model)
    given = take_cache(bound, cache_arg)
    use_cache = bound.get("use_cache")
    use_cache = model.config.use_cache if use_cache is None else use_cache
    capacity = static_cache_capacity(model, given) if isinstance(given, StaticCache) else None
    past = prepare_cache(
        given, model.config, config, bool(use_cache) and not model.training, model, tokens.shape[0], capacity
    )
    if past is not None:
        bound[cache_arg] = past
    if isinstance(past, StaticSWAACache) and past.prefilled and tokens.shape[1] == 1:
        # a compiled decode step: tensor ops only from here on (no host sync, no changing Python value)
        bound[PLAN_KWARG] = plan_static_decode(past, cache_arg)
        return (), bound
    if isinstance(past, StaticSWAACache):
        past_len = past.columns()
    else:
        past_len = past.get_seq_length() if past is not None else 0
    plan = build_plan(
        config,
        batch_size=tokens.shape[0],
        q_len=tokens.shape[1],
        device=tokens.device,
        attention_mask=bound.get("attention_mask"),
        position_ids=bound.get("position_ids"),
        past_len=past_len,
        labels=_causal_lm_labels(model, bound),
        triton_prefill=triton_prefill_setting(),
        cache_arg=cache_arg,
    )
    if isinstance(past, (SWAACache, StaticSWAACache)):
        stored_pos, stored_valid = past.begin_forward(plan.q_pos, plan.q_valid)
        plan.with_bounded_cache(stored_pos, stored_valid, past.bounded_layers)
    bound[PLAN_KWARG] = plan
    return (), bound


def _masks_for_generate(model: nn.Module) -> Callable:
    """generate() turns the 2D padding mask into a 4D mask before the forward when the cache is
    compileable. SWAA builds its masks itself, from the 2D mask in a multi-token pass and from the
    StaticSWAACache in a decode step (which then carries no mask, so the compiled step's inputs keep
    one shape). Installed as the model's ``create_masks_for_generate``, generate's extension point."""
    own = getattr(type(model), "create_masks_for_generate", None)

    def create_masks_for_generate(**kwargs: Any) -> Any:
        if active_config(kwargs.get("config")) is None:
            stock = own.__get__(model) if own is not None else hf_create_masks_for_generate
            return stock(**kwargs)
        return kwargs.get("attention_mask") if kwargs["inputs_embeds"].shape[1] > 1 else None

    return create_masks_for_generate


def _cache_arg(model: nn.Module) -> str:
    return cache_arg_name_of(model._swaa_forward_params, f"{type(model).__name__}.forward")


def _install_hook(model: nn.Module) -> None:
    if getattr(model, "_swaa_hook", None) is None:
        # read once here: inside a compiled decode step dynamo would trace inspect.signature through the
        # lru_cache of forward_params (and warn about it) at every compile
        model._swaa_forward_params = forward_params(type(model))
        model._swaa_hook = model.register_forward_pre_hook(_swaa_pre_forward, with_kwargs=True)
        model.create_masks_for_generate = _masks_for_generate(model)
        _STATE.hooked.add(model)


def _remove_hook(model: nn.Module) -> None:
    handle = getattr(model, "_swaa_hook", None)
    if handle is not None:
        handle.remove()
        model._swaa_hook = None
        model.__dict__.pop("create_masks_for_generate", None)
        _STATE.hooked.discard(model)


def _post_init_with_hook(original: Callable) -> Callable:
    def post_init(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        active_config(self.config)  # a bad swaa_config in config.json fails at load, not at first forward
        _install_hook(self)
        return result

    post_init.swaa_original = original
    return post_init


# -- public API -------------------------------------------------------------------------------
def hack_hf_swaa(training: bool = False) -> None:
    """Patch transformers so that any model whose ``config.swaa_config`` is set runs SWAA.

    Idempotent. ``training`` is accepted for compatibility with the reference implementation;
    it changes nothing here because the training rule (answer tokens attend fully under
    force_fa_decode) applies whenever labels are passed, for any batch size.
    """
    del training
    if _STATE.active:
        return
    check_transformers_version()
    installed_paged = [name for name in PAGED_BACKENDS if name in AttentionInterface._global_mapping]
    for name in (*BACKENDS, *installed_paged):
        _STATE.attention[name] = AttentionInterface._global_mapping.get(name, _MISSING)
        original = _STATE.attention[name]
        AttentionInterface.register(name, _make_attention(name, None if original is _MISSING else original))
        _STATE.masks[name] = AttentionMaskInterface._global_mapping.get(name, _MISSING)
        if _STATE.masks[name] is not _MISSING:
            AttentionMaskInterface.register(name, _make_mask(_STATE.masks[name]))
    _STATE.post_init = PreTrainedModel.post_init
    PreTrainedModel.post_init = _post_init_with_hook(_STATE.post_init)
    # A class-level field makes `from_pretrained(path, swaa_config=...)` a known, validated config field.
    _STATE.config_default = PreTrainedConfig.__dict__.get("swaa_config", _MISSING)
    PreTrainedConfig.swaa_config = _SWAAConfigField()
    serving_engine.install()
    _STATE.active = True


def unhack_hf_swaa() -> None:
    """Undo hack_hf_swaa exactly: registries, post_init, config default and all hooks."""
    if not _STATE.active:
        return
    for registry, saved in ((AttentionInterface, _STATE.attention), (AttentionMaskInterface, _STATE.masks)):
        for name, original in saved.items():
            if original is _MISSING:
                registry._global_mapping.pop(name, None)
            else:
                registry._global_mapping[name] = original
        saved.clear()
    PreTrainedModel.post_init = _STATE.post_init
    if _STATE.config_default is _MISSING:
        del PreTrainedConfig.swaa_config
    else:
        PreTrainedConfig.swaa_config = _STATE.config_default
    for model in list(_STATE.hooked):
        _remove_hook(model)
    serving_engine.uninstall()
    _STATE.active = False


def is_hacked() -> bool:
    return _STATE.active


def apply_swaa(model: nn.Module, config: SWAAConfig | Mapping[str, Any] | None) -> nn.Module:
    """Make ``model`` run SWAA with ``config`` (patching transformers if needed); returns it.

    Works on models built before ``hack_hf_swaa()``. ``None`` or ``sliding_window_size=None``
    leaves the model exactly stock.
    """
    hack_hf_swaa()
    swaa_config = SWAAConfig.coerce(config)
    model.config.swaa_config = swaa_config
    active_config(model.config)  # validate family and layer indices now, not at first forward
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            _install_hook(module)
    return model


def remove_swaa(model: nn.Module) -> nn.Module:
    """Detach SWAA from one model: it becomes the stock model again (a StaticSWAACache kept for
    compiled generation is released)."""
    model.config.swaa_config = None
    model.__dict__.pop("_swaa_static_cache", None)
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            _remove_hook(module)
    return model
