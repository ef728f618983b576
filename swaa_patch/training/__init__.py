"""Self-distillation data and LoRA SFT of SWA-patched models (``swaa distill`` / ``sft`` / ``merge``).

Heavy dependencies (trl, peft, datasets) are imported by the modules that need them; install
them with ``pip install 'swaa[train]'``.
"""

from .adapter import load_swaa_adapter, merge_swaa_adapter, read_swaa_config, save_swaa_adapter

__all__ = ["load_swaa_adapter", "merge_swaa_adapter", "read_swaa_config", "save_swaa_adapter"]
