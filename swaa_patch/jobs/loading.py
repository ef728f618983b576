"""Model folders: validated in settings, resolved (built-in names), and loaded for generation.

A model is a local folder with ``config.json``, a local LoRA adapter folder with
``adapter_config.json`` (merged into its local base on load), or a built-in name
(``builtin:tiny-random-qwen3``) built into ``OUTPUT/_builtin/`` on first use. Hub ids are never
downloaded.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..backends import BACKENDS
from .builtin_models import builtin_key, is_builtin, resolve_builtin_model
from .validate import Reader, as_bool, as_int, as_str, fail, parse_device, resolve_path

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTN_IMPLEMENTATIONS = tuple(BACKENDS)  # the kernels the SWAA patch supports
ADAPTER_CONFIG_FILE = "adapter_config.json"
BUILTIN_DIR = "_builtin"  # OUTPUT/_builtin/NAME: built-in models built on first use

COMMON_RUNTIME: dict[str, Reader] = {
    "attn_implementation": lambda v, p: as_str(v, p, ATTN_IMPLEMENTATIONS),
    "dtype": lambda v, p: as_str(v, p, DTYPES),
}


def parse_model(value: Any, path: str, base: Path) -> str:
    """A built-in name, a local model folder, or a local LoRA adapter folder (never a hub id)."""
    name = as_str(value, path)
    if is_builtin(name):
        try:
            builtin_key(name)
        except ValueError as err:
            raise fail(path, str(err)) from None
        return name
    folder = resolve_path(name, base)
    if not folder.is_dir():
        raise fail(path, f"model path does not exist or is not a folder: {folder}")
    if not (folder / "config.json").is_file() and not (folder / ADAPTER_CONFIG_FILE).is_file():
        raise fail(path, f"no config.json or {ADAPTER_CONFIG_FILE} in model folder {folder}")
    return str(folder)


def model_job_readers(base: Path) -> dict[str, Reader]:
    """Readers of the keys shared by the jobs that run one model over prompts (``swaa distill``,
    ``swaa calibrate``): the model, the output folder, prompt options, batching and runtime."""
    return {
        "model": lambda v, p: parse_model(v, p, base),
        "output_dir": lambda v, p: resolve_path(as_str(v, p), base),
        "max_prompt_tokens": lambda v, p: as_int(v, p, minimum=16, allow_none=True),
        "batch_size": lambda v, p: as_int(v, p, minimum=1),
        "limit": lambda v, p: as_int(v, p, minimum=1, allow_none=True),
        "seed": lambda v, p: as_int(v, p, minimum=0),
        "device": parse_device,
        "chat_template": as_bool,
        **COMMON_RUNTIME,
    }


def local_model_path(model: str, output_dir: str | os.PathLike) -> str:
    """The folder to load ``model`` from; a built-in one is built into ``output_dir/_builtin`` once
    (by the main process first, so the processes of a launch never build it concurrently)."""
    if not is_builtin(model):
        return model
    from accelerate import PartialState

    with PartialState().main_process_first():
        return str(resolve_builtin_model(model, Path(output_dir) / BUILTIN_DIR))


def model_display_name(model: str) -> str:
    """``Qwen3-4B`` for ``/m/Qwen3-4B``; ``run-checkpoint-100`` for ``/m/run/checkpoint-100``."""
    if is_builtin(model):
        return model.split(":", 1)[1]
    parts = Path(model).parts
    last = parts[-1]
    if len(parts) > 1 and ("checkpoint" in last or "merged" in last or last == "final"):
        return f"{parts[-2]}-{last}"
    return last


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    """A LoRA adapter folder (``adapter_config.json``, no ``config.json`` of its own)."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG_FILE).is_file() and not (folder / "config.json").is_file()


def adapter_base_path(adapter_dir: str | os.PathLike) -> str:
    """The base model folder an adapter names (``base_model_name_or_path``).

    A relative path is read relative to the adapter folder first (so an adapter shipped next to
    its base, e.g. ``"../model"``, loads from any working directory), then to the working
    directory; a name that is neither is returned as is (a hub id, for users with a hub).
    """
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir}: {ADAPTER_CONFIG_FILE} names no base model; pass the base explicitly")
    beside = Path(adapter_dir) / base
    if not Path(base).is_absolute() and beside.is_dir():
        return str(beside.resolve())
    return base


def local_adapter_base(folder: str | os.PathLike) -> str:
    """An adapter's base model folder; FileNotFoundError if it is not a local folder."""
    base = adapter_base_path(folder)
    if not Path(base).is_dir():
        raise FileNotFoundError(f"{folder}: LoRA base model {base!r} is not a local folder")
    return base


def load_tokenizer(model_path: str):
    """The model's tokenizer, set up for batched generation (left padding, a pad token)."""
    from transformers import AutoTokenizer

    folder = Path(model_path)
    if not (folder / "tokenizer_config.json").is_file() and (folder / ADAPTER_CONFIG_FILE).is_file():
        folder = Path(local_adapter_base(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        # CPU kernels for half precision are slow or missing; keep float32 there.
        return torch.float32 if device.startswith("cpu") else "auto"
    return getattr(torch, name)


def load_model(model_path: str, dtype: str, attn_implementation: str, device: str):
    """A model in eval mode on ``device``; LoRA adapter folders are merged into their base."""
    from transformers import AutoModelForCausalLM

    folder = Path(model_path)
    kwargs = {"dtype": resolve_dtype(dtype, device), "attn_implementation": attn_implementation}
    if is_adapter_folder(folder):
        try:
            from peft import PeftModel
        except ImportError as err:
            raise ImportError(f"{folder} is a LoRA adapter: loading it needs peft "
                              "(pip install 'swaa[eval]' or pip install peft)") from err
        base = AutoModelForCausalLM.from_pretrained(local_adapter_base(folder), **kwargs)
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    return model.to(device).eval()


def text_config(model_path: str) -> Any:
    """The model's (text) config read from config.json, an adapter's from its base's; no weights load."""
    from transformers import AutoConfig

    folder = local_adapter_base(model_path) if is_adapter_folder(model_path) else model_path
    return AutoConfig.from_pretrained(folder).get_text_config()


def max_positions(model_path: str) -> int | None:
    """The model's ``max_position_embeddings`` (None when its config sets none), read from config.json."""
    value = getattr(text_config(model_path), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None
