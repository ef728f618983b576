"""The transformers facts SWAA depends on that move between releases, checked in one place.

SWAA hooks transformers' internals (the forward's cache argument, its outputs, the attention and
mask registries), so it declares the releases it is tested on and reads every moving name from
the installed release instead of hard-coding one. transformers 5.24 renamed the forward's
``past_key_values`` argument (and the outputs' field) to ``cache``; reading the old name there
silently dropped SWAA's cache. Everything that passes or reads a cache goes through this module.
"""

from __future__ import annotations

import inspect
import logging
from functools import cache, lru_cache
from typing import Any

import transformers
from packaging.version import Version

logger = logging.getLogger(__name__)

# The range CI tests (oldest and newest, .ci/run). Older releases are refused; newer ones warn once.
MIN_TRANSFORMERS = "5.17.0"
NEWEST_TESTED_TRANSFORMERS = "5.24.0"
# The forward's cache argument, newest name first: "cache" from 5.24, "past_key_values" before.
CACHE_ARG_NAMES = ("cache", "past_key_values")


class TransformersMismatch(RuntimeError):
    """transformers does something SWAA did not plan for: never computed around, always raised."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} (installed transformers {transformers_version()}; SWAA is tested on "
            f"{MIN_TRANSFORMERS} to {NEWEST_TESTED_TRANSFORMERS})"
        )


def transformers_version() -> str:
    return transformers.__version__


def installed_version() -> Version:
    return Version(transformers_version())


_warned_newer = False


def check_transformers_version() -> None:
    """Refuse releases older than the tested minimum; warn once on releases newer than tested."""
    global _warned_newer
    version = installed_version()
    if version < Version(MIN_TRANSFORMERS):
        raise ImportError(
            f"swaa needs transformers >= {MIN_TRANSFORMERS} (tested up to {NEWEST_TESTED_TRANSFORMERS}); "
            f"installed: {version}. pip install 'transformers>={MIN_TRANSFORMERS}'"
        )
    newest = Version(NEWEST_TESTED_TRANSFORMERS)
    if (version.major, version.minor) > (newest.major, newest.minor) and not _warned_newer:
        _warned_newer = True
        logger.warning(
            "swaa is tested with transformers %s to %s, installed: %s. SWAA checks every attention call "
            "against its plan and raises on a mismatch, but run the test suite before relying on it.",
            MIN_TRANSFORMERS, NEWEST_TESTED_TRANSFORMERS, version,
        )


def forward_params_of(function: Any) -> tuple[str, ...]:
    """Parameter names of a method (without ``self``), through transformers' decorators."""
    return tuple(inspect.signature(function).parameters)[1:]


@cache
def forward_params(cls: type) -> tuple[str, ...]:
    return forward_params_of(cls.forward)


def cache_arg_name_of(params: tuple[str, ...], owner: str) -> str:
    for name in CACHE_ARG_NAMES:
        if name in params:
            return name
    raise TransformersMismatch(f"{owner} takes none of {list(CACHE_ARG_NAMES)} as its cache argument")


def cache_arg_name(cls: type) -> str:
    """The name under which ``cls.forward`` takes its KV cache in the installed transformers."""
    return cache_arg_name_of(forward_params(cls), f"{cls.__name__}.forward")


@lru_cache(maxsize=1)
def release_cache_name() -> str:
    """The cache argument's name in the installed release, as generation passes it to models."""
    from transformers import GenerationMixin

    return cache_arg_name_of(forward_params_of(GenerationMixin.prepare_inputs_for_generation), "generation")


def take_cache(kwargs: dict[str, Any], canonical: str) -> Any:
    """Move a cache passed under any known name to ``canonical`` in ``kwargs``; returns it.

    A user on 5.24 may still write ``past_key_values=`` (deprecated there) and one on 5.17 may write
    ``cache=`` (which 5.17 would silently ignore): both reach the model under the name it reads."""
    given = {name: kwargs.pop(name) for name in CACHE_ARG_NAMES if kwargs.get(name) is not None}
    for name in CACHE_ARG_NAMES:
        kwargs.pop(name, None)
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)}: pass the cache once, as `{canonical}`")
    cache = next(iter(given.values()), None)
    if cache is not None:
        kwargs[canonical] = cache
    return cache


def output_cache(outputs: Any) -> Any:
    """The cache a model returned, under whichever field name the installed release uses."""
    fields = getattr(type(outputs), "__dataclass_fields__", {})
    for name in CACHE_ARG_NAMES:
        if name in fields:
            return getattr(outputs, name)
    raise TransformersMismatch(f"{type(outputs).__name__} has no field among {list(CACHE_ARG_NAMES)}")


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` to pass a cache to ``model``'s forward under the name it reads (a wrapper
    such as a peft model that forwards ``**kwargs`` gets the installed release's name)."""
    params = forward_params(type(model))
    name = next((n for n in CACHE_ARG_NAMES if n in params), None) or release_cache_name()
    return {name: cache}


def static_cache_capacity(model: Any, cache: Any) -> int | None:
    """How many tokens an empty transformers ``StaticCache`` was sized for (prompt + new tokens).
    Its natively sliding layers (Mistral, Gemma) report only their window; generate() records the
    length it asked for on the model (``_previous_max_cache_length``, private in 5.17-5.24), which
    wins when larger. None when neither says more than a sliding layer's window."""
    full = [layer.get_max_length() for layer in cache.layers if not getattr(layer, "is_sliding", False)]
    recorded = getattr(model, "_previous_max_cache_length", None)
    candidates = full + ([recorded] if isinstance(recorded, int) else [])
    return max(candidates) if candidates else None
