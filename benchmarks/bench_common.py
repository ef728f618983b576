"""What the whole-model GPU benchmarks share (scripts in this folder import it by name)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from swaa_patch import SWAAConfig

from shapes import QWEN3_4B  # benchmarks/shapes.py (a script's folder is on sys.path)


@dataclass
class ModelBench:
    """A benchmark's arguments (with ``window`` and ``keep_first``), device, dtype and model shape."""

    args: Any
    device: torch.device
    dtype: torch.dtype
    shape: dict

    @property
    def swaa_config(self) -> SWAAConfig:
        return SWAAConfig(sliding_window_size=self.args.window, keep_first=self.args.keep_first)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def device_and_shape(args: Any, tiny_defaults: dict, tiny_shape: dict, script: str) -> tuple[Any, torch.device, torch.dtype, dict]:
    """``--tiny``: the tiny defaults (fields set on the command line are kept), ``tiny_shape`` in
    float32 on the CPU; otherwise the Qwen3-4B shape in bf16 on CUDA, or exit saying what is missing."""
    if args.tiny:
        full = type(args)()
        args = replace(args, **{k: v for k, v in tiny_defaults.items() if getattr(args, k) == getattr(full, k)})
        return args, torch.device("cpu"), torch.float32, tiny_shape
    if not torch.cuda.is_available():
        raise SystemExit(f"{script} needs a CUDA device (or --tiny)")
    return args, torch.device("cuda"), torch.bfloat16, QWEN3_4B
