"""Liger Kernel's fused RMSNorm, SwiGLU / GeGLU and RoPE Triton kernels on a training model.

``swaa sft`` (``training.liger``) and ``swaa train-demo`` (``--liger``) take a mode: ``auto`` (on when
training on CUDA with liger-kernel installed and the family supported, else off, saying why once),
``on`` (raise, naming the field, when it cannot be honoured) or ``off``.

Only the layer kernels are applied, through ``liger_kernel.transformers.apply_liger_kernel_to_*``
on the model instance, before peft wraps it:
* the LM head stays trl's fused head, which projects only the labelled positions (the answer);
  Liger's fused linear cross-entropy projects every position through the vocabulary (a 128K-token
  prompt costs it ~100 TFLOP more per step for a 152K vocabulary) and replaces the CausalLM
  forward with one that passes the cache as ``past_key_values``, which transformers >= 5.24
  refuses next to the ``cache`` SWAA passes. The model's forward, SWAA's pre-hook (labels,
  positions, cache) and its attention functions are untouched: attention still goes through
  transformers' ``AttentionInterface``;
* Liger also rewrites globals of the family's modeling module (the rotary function, the norm and
  MLP classes). RoPE has no per-instance hook, so that part is process-wide while the patch is
  active; :meth:`LigerPatch.restore` puts the module back as it was (the patched instance keeps its
  kernels, which compute the same function).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import SettingsError

logger = logging.getLogger(__name__)
_ABSENT = object()

LIGER_MODES = ("auto", "on", "off")
INSTALL_HINT = "pip install 'swaa[liger]'"


@dataclass(frozen=True)
class LigerFamily:
    """How Liger patches one family: its function, the modeling module it rewrites, its MLP kernel."""

    apply: str  # in liger_kernel.transformers
    modeling: str  # transformers module whose globals the function rewrites
    mlp: str  # the function's keyword for the fused MLP: "swiglu" or "geglu"


# model_type -> Liger's patch; the families SWAA supports (models.FAMILIES) that Liger covers too
LIGER_FAMILIES: dict[str, LigerFamily] = {
    "qwen2": LigerFamily("apply_liger_kernel_to_qwen2", "transformers.models.qwen2.modeling_qwen2", "swiglu"),
    "qwen3": LigerFamily("apply_liger_kernel_to_qwen3", "transformers.models.qwen3.modeling_qwen3", "swiglu"),
    "qwen3_moe": LigerFamily("apply_liger_kernel_to_qwen3_moe", "transformers.models.qwen3_moe.modeling_qwen3_moe",
                             "swiglu"),
    "llama": LigerFamily("apply_liger_kernel_to_llama", "transformers.models.llama.modeling_llama", "swiglu"),
    "mistral": LigerFamily("apply_liger_kernel_to_mistral", "transformers.models.mistral.modeling_mistral", "swiglu"),
    "gemma2": LigerFamily("apply_liger_kernel_to_gemma2", "transformers.models.gemma2.modeling_gemma2", "geglu"),
    "gemma3_text": LigerFamily("apply_liger_kernel_to_gemma3_text", "transformers.models.gemma3.modeling_gemma3",
                               "geglu"),
}


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _triton_interpreter() -> bool:
    # Triton's CPU interpreter (the tests' way to run Triton kernels without a GPU) is switched on by
    # this variable before triton is imported; nothing else runs a Triton kernel on a CPU.
    return os.environ.get("TRITON_INTERPRET") == "1"


def liger_blocker(model_type: str | None, on_cuda: bool) -> str | None:
    """Why Liger cannot run for this model here, or None."""
    if model_type not in LIGER_FAMILIES:
        families = ", ".join(LIGER_FAMILIES)
        return f"Liger kernels are applied to model_type {families}; this model is {model_type!r}"
    if not liger_installed():
        return f"liger-kernel is not installed ({INSTALL_HINT})"
    if not on_cuda and not _triton_interpreter():
        return "Liger's Triton kernels need a CUDA device (on a CPU only Triton's interpreter runs them: TRITON_INTERPRET=1)"
    return None


def check_mode(mode: str, where: str) -> None:
    if mode not in LIGER_MODES:
        raise SettingsError(f"{where}: must be one of {list(LIGER_MODES)}, got {mode!r}")


def use_liger(mode: str, model_type: str | None, on_cuda: bool, where: str) -> bool:
    """Whether to apply Liger. ``where`` names the setting in messages (``training.liger``).

    ``on`` raises :class:`SettingsError` (one line from the command line) when it cannot run;
    ``auto`` turns off with a log line saying why, except on a CPU, where off is what auto means."""
    check_mode(mode, where)
    if mode == "off":
        return False
    reason = liger_blocker(model_type, on_cuda)
    if mode == "on" and reason is not None:
        raise SettingsError(f"{where}: 'on' cannot be honoured: {reason}. Allowed values: {list(LIGER_MODES)} "
                               "('auto': on for CUDA training when possible)")
    if mode == "auto":
        if not on_cuda:
            return False
        if reason is not None:
            logger.warning("%s auto: Liger kernels off: %s; set it to 'off' to silence this", where, reason)
            return False
    return True


@dataclass
class LigerPatch:
    """What applying Liger changed in a modeling module, so :meth:`restore` can put it back."""

    module: Any
    saved: dict[str, Any] = field(default_factory=dict)  # name -> original value (_ABSENT: added by Liger)
    applied: dict[str, Any] = field(default_factory=dict)  # name -> Liger's value

    def restore(self) -> None:
        """Put the modeling module's globals back (idempotent); a value changed since by someone else is kept."""
        for name, original in self.saved.items():
            if self.module.__dict__.get(name, _ABSENT) is not self.applied[name]:
                continue
            if original is _ABSENT:
                delattr(self.module, name)
            else:
                setattr(self.module, name, original)
        self.saved.clear()
        self.applied.clear()


def apply_liger(model: Any) -> LigerPatch:
    """Liger's RMSNorm, SwiGLU / GeGLU and RoPE kernels on ``model`` (a transformers causal LM of a
    family in :data:`LIGER_FAMILIES`, before peft wraps it); its forward and attention stay as they are."""
    family = LIGER_FAMILIES[model.config.model_type]
    module = importlib.import_module(family.modeling)
    liger = importlib.import_module("liger_kernel.transformers")
    before = dict(vars(module))
    forward = model.__dict__.get("forward")
    getattr(liger, family.apply)(model=model, rope=True, rms_norm=True, cross_entropy=False,
                                 fused_linear_cross_entropy=False, **{family.mlp: True})
    if model.__dict__.get("forward") is not forward:  # never expected: FLCE is off
        raise RuntimeError(f"{family.apply} replaced the model's forward; SWAA's LM head and hooks need it")
    after = vars(module)
    changed = [name for name, value in after.items() if before.get(name, _ABSENT) is not value]
    patch = LigerPatch(module, {n: before.get(n, _ABSENT) for n in changed}, {n: after[n] for n in changed})
    logger.info("Liger kernels on %s: RMSNorm, %s, RoPE (LM head: trl's fused head)",
                type(model).__name__, "SwiGLU" if family.mlp == "swiglu" else "GeGLU")
    return patch
