"""LoRA's update added inside one GEMM (``addmm``) while training, instead of peft's three passes.

peft's vanilla LoRA forward is ``result + lora_B(lora_A(dropout(x))) * scaling``: lora_B writes a
full (tokens x out_features) tensor, the scaling multiplies it in a second pass over that size and
the add reads both in a third; the backward multiplies the full-size gradient by the scaling once
more. ``torch.addmm(result, h, B^T, alpha=scaling)`` folds the scaling and the sum into lora_B's
GEMM (one pass; its backward scales only the rank-sized gradients). In a 128K LoRA step of the
4B shape on an H200, bf16 adds took 679 ms and scaling multiplies 396 ms of 8,615 ms of kernel
time, most of them peft's update (benchmarks/results/sft_profile.md); with this, the step went
from 14,600 to 15,690 tok/s together with one other change (results/sft_speed.md, run 8). The
sum is the same up to rounding: it is rounded once, from the GEMM's float32 accumulator, where
peft rounds three times.

It goes in through peft's own per-adapter hook (``LoraLayer.lora_variant``, the one DoRA uses), for
the training run only (:func:`fused_lora_updates`), on plain ``peft.tuners.lora.Linear`` layers
whose adapter is vanilla LoRA (no variant, no lora bias). A call whose tensors do not share a dtype
outside autocast takes peft's own expression. tests/test_fused_lora.py checks loss and every LoRA
gradient against peft's path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _variant_base() -> type:
    from peft.tuners.lora.layer import LoraVariant

    return LoraVariant


def _lora_linear() -> type:
    from peft.tuners.lora.layer import Linear

    return Linear


def addmm_update(module: Any, active_adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """``result + scaling * lora_B(lora_A(dropout(x)))`` with lora_B's GEMM adding into ``result``."""
    lora_b = module.lora_B[active_adapter]
    scaling = module.scaling[active_adapter]
    h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
    weight = lora_b.weight
    autocast = torch.is_autocast_enabled(result.device.type)
    if not autocast and not (result.dtype == h.dtype == weight.dtype):
        return result + lora_b(h) * scaling  # peft's own expression (its type promotion)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), weight.t(), alpha=scaling)
    return out.view(*result.shape[:-1], out.shape[-1])


def make_variant() -> Any:
    """peft's LoraVariant whose forward is :func:`addmm_update` (merging as vanilla LoRA does)."""

    class AddmmLora(_variant_base()):
        @staticmethod
        def init(module, adapter_name, **kwargs):
            return None

        @staticmethod
        def merge_safe(module, active_adapter, orig_weight):
            return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

        @staticmethod
        def merge_unsafe(module, active_adapter, orig_weight):
            orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

        @staticmethod
        def unmerge(module, active_adapter, orig_weight):
            return orig_weight - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

        @staticmethod
        def forward(module, active_adapter, x, result, **kwargs):
            return addmm_update(module, active_adapter, x, result)

    return AddmmLora()


def eligible_adapters(model: torch.nn.Module) -> list[tuple[Any, str]]:
    """``(layer, adapter)`` pairs of plain peft LoRA Linear layers with a vanilla adapter."""
    linear = _lora_linear()
    pairs = []
    for module in model.modules():
        if type(module) is not linear or not isinstance(getattr(module, "lora_variant", None), dict):
            continue
        for name in module.lora_A.keys():
            if name not in module.lora_variant and module.lora_B[name].bias is None:
                pairs.append((module, name))
    return pairs


@contextmanager
def fused_lora_updates(model: torch.nn.Module, active: bool = True) -> Iterator[int]:
    """Inside the block, vanilla LoRA adapters of ``model`` add their update with :func:`addmm_update`;
    yields how many adapters take it. The hook is removed on exit (saving, merging and generating
    afterwards see peft's own layers)."""
    installed = eligible_adapters(model) if active else []
    if installed:
        variant = make_variant()
        for module, name in installed:
            module.lora_variant[name] = variant
        logger.info("LoRA: %d adapters add their update inside lora_B's GEMM (addmm)", len(installed))
    try:
        yield len(installed)
    finally:
        for module, name in installed:
            module.lora_variant.pop(name, None)
