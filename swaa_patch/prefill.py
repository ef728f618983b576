"""Chunked prefill: feed a prompt of any length in chunks so that attention and activation memory
is bounded by the chunk, not by the prompt; with the bounded SWAACache the whole prefill is flat
in n. Generation can do the same through transformers' own ``prefill_chunk_size``:
``model.generate(..., prefill_chunk_size=default_prefill_chunk(model.config.swaa_config))``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache

from .compat import cache_kwargs, output_cache
from .config import SWAAConfig
from .patch import active_config

CHUNKS_PER_WINDOW = 4


def default_prefill_chunk(config: SWAAConfig) -> int:
    """A multiple of W: big enough to keep kernels efficient, small enough to bound memory."""
    return CHUNKS_PER_WINDOW * (config.sliding_window_size or 1024)


@dataclass
class PrefillResult:
    logits: Tensor  # (B, 1, V) for the last token, or (B, n, V) with return_all_logits
    cache: Cache

    @property
    def past_key_values(self) -> Cache:
        """The cache under transformers' pre-5.24 name."""
        return self.cache


@torch.no_grad()
def chunked_prefill(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    chunk_size: int | None = None,
    return_all_logits: bool = False,
    cache: Cache | None = None,
) -> PrefillResult:
    """Prefill ``input_ids`` chunk by chunk; returns the logits and the filled cache, ready for
    ``model.generate(..., **cache_kwargs(model, result.cache))`` or manual decoding. ``cache``: an
    empty cache to fill (e.g. a ``StaticSWAACache`` for compiled decoding); default: SWAA's own."""
    config = active_config(model.config)
    if chunk_size is None:
        chunk_size = default_prefill_chunk(config) if config is not None else input_ids.shape[1]
    if chunk_size <= 0:
        raise ValueError(f"chunk_size: must be an integer >= 1, got {chunk_size}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    pieces = []
    for start in range(0, input_ids.shape[1], chunk_size):
        end = min(start + chunk_size, input_ids.shape[1])
        out = model(
            input_ids=input_ids[:, start:end],
            attention_mask=attention_mask[:, :end],
            position_ids=position_ids[:, start:end],
            use_cache=True,
            logits_to_keep=0 if return_all_logits else 1,
            **cache_kwargs(model, cache),
        )
        cache = output_cache(out)
        if return_all_logits:
            pieces.append(out.logits)
    logits = torch.cat(pieces, dim=1) if return_all_logits else out.logits
    return PrefillResult(logits, cache)
