"""Save, load and merge LoRA adapters together with the SWAAConfig they were trained under.

An adapter trained on a SWA-patched model only makes sense with the same SWA behaviour, so
``swaa_config.json`` is written next to peft's ``adapter_config.json`` (``null`` when the run
used full attention) and :func:`load_swaa_adapter` applies it. A merged model carries the
config in its own ``config.json`` (``swaa_config``), which ``from_pretrained`` restores after
``hack_hf_swaa()``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..config import SWAAConfig
from ..jobs.io import atomic_write_json
from ..jobs.loading import adapter_base_path
from ..patch import apply_swaa, remove_swaa

logger = logging.getLogger(__name__)

SWAA_CONFIG_FILE = "swaa_config.json"


def save_swaa_config(folder: str | os.PathLike, swaa: SWAAConfig | None) -> Path:
    path = Path(folder) / SWAA_CONFIG_FILE
    atomic_write_json(path, None if swaa is None else swaa.to_dict())
    return path


def read_swaa_config(folder: str | os.PathLike) -> SWAAConfig | None:
    """The SWAAConfig stored with an adapter; a missing file is an error (not silently full attention)."""
    path = Path(folder) / SWAA_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} was not saved by save_swaa_adapter")
    data = json.loads(path.read_text(encoding="utf-8"))
    return None if data is None else SWAAConfig.from_dict(data, str(path))


def save_swaa_adapter(model: Any, folder: str | os.PathLike, swaa: SWAAConfig | None, tokenizer: Any = None) -> Path:
    """Write a peft model's adapter, its SWAAConfig and (optionally) the tokenizer into ``folder``."""
    folder = Path(folder)
    model.save_pretrained(folder)
    save_swaa_config(folder, swaa)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_swaa_adapter(
    base: str | os.PathLike | Any,
    adapter_dir: str | os.PathLike,
    *,
    dtype: Any = None,
    attn_implementation: str = "sdpa",
    is_trainable: bool = False,
):
    """A peft model of ``base`` (a path or a loaded model) with the adapter and its SWA behaviour.

    ``base=None`` uses the base path recorded in the adapter. The adapter's SWAAConfig is applied
    to the base before the adapter is attached, exactly as during training.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    swaa = read_swaa_config(adapter_dir)
    if base is None:
        base = adapter_base_path(adapter_dir)
    if isinstance(base, (str, os.PathLike)):
        base = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation=attn_implementation)
    apply_swaa(base, swaa)
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=is_trainable)


def merge_swaa_adapter(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    base: str | os.PathLike | None = None,
    dtype: Any = None,
    keep_swaa_config: bool = True,
) -> Path:
    """Merge the adapter into its base and save a standalone model (+ tokenizer) in ``output_dir``.

    With ``keep_swaa_config`` the merged ``config.json`` carries the SWAAConfig, so the model
    loads as the SWA model it was trained to be; otherwise it is saved as a plain model.
    """
    from transformers import AutoTokenizer

    output_dir = Path(output_dir)
    model = load_swaa_adapter(base, adapter_dir, dtype=dtype)
    swaa = read_swaa_config(adapter_dir)
    merged = model.merge_and_unload()
    remove_swaa(merged)  # detach the hooks; the config is re-attached as plain data below
    merged.config.swaa_config = swaa if keep_swaa_config else None
    merged.save_pretrained(output_dir)
    tokenizer_dir = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").is_file() else (
        base or adapter_base_path(adapter_dir))
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(output_dir)
    logger.info("merged %s into %s (swaa_config: %s)", adapter_dir, output_dir,
                swaa.run_name() if swaa and keep_swaa_config else "none")
    return output_dir
