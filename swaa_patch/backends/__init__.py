"""One file per kernel path. Each backend takes (module, q, k, v, plan, scaling, dropout,
softcap) with q/k/v as (batch, heads, length, head_dim) and returns transformers' layout
(batch, length, heads, head_dim) plus optional attention weights."""

from __future__ import annotations

from collections.abc import Callable

from .eager import eager_swaa_attention
from .flash import flash_swaa_attention
from .flex import flex_swaa_attention
from .sdpa import sdpa_swaa_attention

# attn_implementation name -> SWAA backend
BACKENDS: dict[str, Callable] = {
    "eager": eager_swaa_attention,
    "sdpa": sdpa_swaa_attention,
    "flex_attention": flex_swaa_attention,
    "flash_attention_2": flash_swaa_attention,
}
