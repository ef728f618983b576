"""lm-eval ``--model_args`` values -> a validated :class:`SWAAConfig`.

lm-eval splits ``--model_args`` on commas and casts each value (``true`` -> True, ``64`` -> 64),
so a layer list cannot be written ``[1,3]`` there: layers are separated by ``;`` or spaces
(``non_sliding_layers=1;3``). A JSON ``--model_args`` object, or the Python API, may pass lists.
This module imports neither lm-eval nor torch, so it is tested without them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..config import FIELD_NAMES, SWAAConfig

ARG_PREFIX = "model_args"
_LAYER_SEPARATORS = re.compile(r"[;\s]+")


def layer_list(value: Any, name: str) -> Any:
    """``"1;3"`` / ``"1 3"`` / ``3`` / ``[1, 3]`` -> a list of ints; booleans pass through
    (``force_fa_decode=true``). Anything else is left for SWAAConfig to reject by name."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        parts = [p for p in _LAYER_SEPARATORS.split(value.strip()) if p]
        if not all(p.isdigit() for p in parts):
            raise ValueError(
                f"{ARG_PREFIX}.{name}: layer indices separated by ';' (e.g. 1;3), got {value!r}"
            )
        return [int(p) for p in parts]
    return value


def swaa_config_from_args(args: Mapping[str, Any]) -> SWAAConfig | None:
    """The SWAAConfig the SWAA fields among ``args`` (only those the user passed) describe, or
    None when none is given (the
    checkpoint's own ``swaa_config``, if its config.json has one, then stays in force).

    ``sliding_window_size`` is required as soon as any SWAA field is given: a window of
    ``none`` is explicit full attention."""
    given = dict(args)
    if not given:
        return None
    unknown = sorted(set(given) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"{ARG_PREFIX}: unknown SWAA field(s) {unknown}; allowed: {list(FIELD_NAMES)}")
    if "sliding_window_size" not in given:
        raise ValueError(
            f"{ARG_PREFIX}.sliding_window_size: required when {sorted(given)} are given "
            "(an integer >= 1, or none for full attention)"
        )
    fields = dict(given)
    for name in ("non_sliding_layers", "force_fa_decode"):
        if name in fields:
            fields[name] = layer_list(fields[name], name)
    return SWAAConfig.from_dict(fields, path=ARG_PREFIX)
