"""What the whole-model GPU benchmarks share (scripts in this folder import it by name)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import CompileConfig

from swaa_patch import SWAAConfig
from swaa_patch.static_cache import static_generate_kwargs

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


def compiled_generate_kwargs(device: torch.device, stock: bool) -> dict:
    """``generate`` arguments for a compiled decode row. SWAA's: its own ``decode_compile_config``.
    Stock's: what a user of transformers' static cache passes, ``CompileConfig(fullgraph=True,
    mode="reduce-overhead")`` (on a CPU, the same dynamo-only config as SWAA's), without SWAA's bound on
    inductor's fusion attempts, which would shorten stock's compile too."""
    kwargs = static_generate_kwargs(device)
    if stock and device.type == "cuda":
        kwargs["compile_config"] = CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead")
    return kwargs


def compile_cache_env(folder: Path) -> dict[str, str]:
    """Environment variables that put a process's inductor and Triton compile caches in ``folder``
    (``inductor/``, ``triton/``): an empty folder gives a fresh machine's first compile, one a run
    used before gives every later run's."""
    return {"TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"), "TRITON_CACHE_DIR": str(folder / "triton")}


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[str, ...]:
    """The options the command line names (their dests), whatever their values: ``--window 2048``
    is an explicit choice even where 2048 is the default."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # the same options, every default suppressed
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_const"
                kwargs["const"] = action.const
            probe.add_argument(*action.option_strings, **kwargs)
    known, _ = probe.parse_known_args(argv)
    return tuple(sorted(vars(known)))


def with_tiny_defaults(args: Any, tiny_defaults: dict) -> Any:
    """``--tiny`` sizes in place of the full-size defaults. A field keeps its value when the command
    line named it (``args.given``) or when it differs from the full-size default (set in code)."""
    full = type(args)()
    given = set(getattr(args, "given", ()))
    return replace(args, **{k: v for k, v in tiny_defaults.items() if k not in given and getattr(args, k) == getattr(full, k)})


def device_and_shape(args: Any, tiny_defaults: dict, tiny_shape: dict, script: str) -> tuple[Any, torch.device, torch.dtype, dict]:
    """``--tiny``: the tiny defaults (fields set on the command line are kept), ``tiny_shape`` in
    float32 on the CPU; otherwise the Qwen3-4B shape in bf16 on CUDA, or exit saying what is missing."""
    if args.tiny:
        return with_tiny_defaults(args, tiny_defaults), torch.device("cpu"), torch.float32, tiny_shape
    if not torch.cuda.is_available():
        raise SystemExit(f"{script} needs a CUDA device (or --tiny)")
    return args, torch.device("cuda"), torch.bfloat16, QWEN3_4B


def kernel_table(prof, steps: int) -> tuple[float, int, list[tuple[str, float, float]]]:
    """(GPU kernel µs per step, kernels per step, [(name, µs per step, launches per step)])."""
    time_us, count = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if event.name.startswith("ProfilerStep"):  # the step marker, not a kernel
            continue
        if event.device_type == torch.autograd.DeviceType.CUDA and event.device_time_total > 0:
            time_us[event.name] += event.device_time_total
            count[event.name] += 1
    names = sorted(time_us, key=time_us.get, reverse=True)
    total = sum(time_us.values()) / steps
    return total, round(sum(count.values()) / steps), [(n, time_us[n] / steps, count[n] / steps) for n in names]
