"""swaa: Sliding Window Attention Adaptation for HuggingFace Transformers LLMs.

from swaa_patch import SWAAConfig, hack_hf_swaa
hack_hf_swaa()
model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
model.config.swaa_config = SWAAConfig(sliding_window_size=2048, keep_first=100,
                                      force_fa_decode=True, non_sliding_layers=[1, 3])
"""

from .cache import SWAACache
from .config import SWAAConfig
from .patch import apply_swaa, hack_hf_swaa, is_hacked, remove_swaa, unhack_hf_swaa
from .prefill import chunked_prefill, default_prefill_chunk
from .scope import swaa_enabled
from .static_cache import StaticSWAACache

__all__ = [
    "SWAACache",
    "SWAAConfig",
    "StaticSWAACache",
    "apply_swaa",
    "chunked_prefill",
    "default_prefill_chunk",
    "hack_hf_swaa",
    "is_hacked",
    "remove_swaa",
    "swaa_enabled",
    "unhack_hf_swaa",
]
__version__ = "0.1.0"
