"""Per-family facts, as data. Which architectures SWAA supports and what their native
sliding windows are; nothing here branches on model_type elsewhere in the code.

Every family-specific detail of attention itself (q/k norms, Gemma's query_pre_attn_scalar
scaling, Gemma2's logit softcapping, GQA) reaches our backends through the arguments
transformers passes to the attention interface, so the table only has to say *what* is
supported. With an active SWAAConfig, SWAA governs every layer: a family's native window
(Mistral's ``sliding_window``, Gemma's ``layer_types``, Qwen's ``use_sliding_window``) is
replaced by SWAA's window on sliding layers and by full attention on ``non_sliding_layers``,
and the KV cache keeps what SWAA's rule needs instead of the native window.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedConfig


@dataclass(frozen=True)
class Family:
    name: str  # for error messages


# model_type -> family. Native windows, which SWAA replaces: Qwen2/3 optional (use_sliding_window),
# Mistral sliding_window on every layer when set, Gemma2 every other layer, Gemma3 5 of every 6.
FAMILIES: dict[str, Family] = {
    "qwen2": Family("Qwen2"),
    "qwen3": Family("Qwen3"),
    "qwen3_moe": Family("Qwen3-MoE"),
    "llama": Family("Llama"),
    "mistral": Family("Mistral"),
    "gemma2": Family("Gemma2"),
    "gemma3_text": Family("Gemma3 (text)"),
}


def family_of(config: PreTrainedConfig) -> Family:
    """The family of a model config, or a ValueError naming the supported ones."""
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is None:
        supported = ", ".join(f"{f.name} ({key})" for key, f in FAMILIES.items())
        raise ValueError(
            f"swaa_config: model_type {getattr(config, 'model_type', None)!r} is not supported; "
            f"supported: {supported}"
        )
    return family
