"""``with swaa_enabled(model, config):`` — SWAA for the duration of a block, then exactly as before.

kvpress applies a press as ``with press(model): ...``; this is the same habit for SWAA. On exit
(normal or by exception) the model gets back the config it had and the forward hooks it had,
so the cache a later ``generate`` builds is the one it built before: scopes nest like a stack.
``config=None`` means full attention inside the block (a teacher's answers, a reference
forward) on a model that otherwise runs SWAA.

transformers stays patched after the block (``hack_hf_swaa`` is global and idempotent, and a
patched transformers computes exactly what stock does for models without an active config).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import nn

from .config import SWAAConfig
from .patch import apply_swaa, hack_hf_swaa, remove_swaa

_UNSET = object()


def _restore(model: nn.Module, saved_config: Any, was_hooked: bool) -> None:
    """Put back the hooks the model had and its config value (or its absence), as it was."""
    if was_hooked:
        apply_swaa(model, None)  # every hook back; the config is set below
    else:
        remove_swaa(model)
    if saved_config is _UNSET:
        model.config.__dict__.pop("swaa_config", None)
    else:
        model.config.__dict__["swaa_config"] = saved_config  # the very object, validated or raw JSON


@contextmanager
def swaa_enabled(model: nn.Module, config: SWAAConfig | Mapping[str, Any] | None) -> Iterator[nn.Module]:
    """Run ``model`` with ``config`` inside the block (``None``: full attention), then restore.

    The config is validated against the model on entry (a bad layer index raises before the block
    runs, and the model is left untouched). Yields the model.
    """
    hack_hf_swaa()
    saved_config = model.config.__dict__.get("swaa_config", _UNSET)
    # Hooks come all at once (post_init after hack_hf_swaa, or apply_swaa), so one flag says it.
    was_hooked = any(getattr(m, "_swaa_hook", None) is not None for m in model.modules())
    apply_swaa(model, config)  # validates first; on error nothing has changed yet
    try:
        yield model
    finally:
        _restore(model, saved_config, was_hooked)
