"""Greedy generation for one left-padded batch of prepared prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..cache import kv_bytes
from ..compat import output_cache
from ..jobs.prompts import Prepared
from ..static_cache import compiled_generation, filled_batch


def generate_batch(
    model: Any, tokenizer: Any, batch: Sequence[Prepared], max_new_tokens: int, compile_mode: str = "off",
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Greedy generation for one left-padded batch; returns response text, token counts and the KV
    bytes the generation's cache held per sequence at the end (its bytes / batch rows: what decoding
    this batch kept in memory, padding to the batch's longest prompt included).
    ``compile_mode`` (auto / on / off): compiled decode steps on a StaticSWAACache; a compiled batch
    shorter than ``batch_size`` is filled up to it (:func:`~swaa_patch.static_cache.filled_batch`)."""
    import torch

    prompts = filled_batch([p.input_ids for p in batch], compile_mode, model.device, batch_size or len(batch))
    padded = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
    input_ids = padded["input_ids"].to(model.device)
    attention_mask = padded["attention_mask"].to(model.device)
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            **compiled_generation(compile_mode, model.device),
        )
    per_sequence = kv_bytes(output_cache(output)) // len(prompts)
    new_tokens = output.sequences[: len(batch), input_ids.shape[1] :]
    results = []
    for row in new_tokens.tolist():
        kept = [t for t in row if t != tokenizer.pad_token_id]
        results.append(
            {
                "response": tokenizer.decode(kept, skip_special_tokens=True),
                "response_tokens": len(kept),
                "kv_bytes": per_sequence,
            }
        )
    return results
