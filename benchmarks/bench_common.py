"""What the whole-model GPU benchmarks share (scripts in this folder import it by name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from swaa_patch import SWAAConfig


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
