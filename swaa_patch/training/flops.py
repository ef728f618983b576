"""Training FLOPs that know about sliding windows, and the throughput / MFU they give.

The usual ``6 * params * tokens`` ignores attention, and counting attention as full causal
(``n^2 / 2`` query-key pairs) overstates a sliding-window model's work by up to n / W. Here the
pairs a query really visits are counted per token from SWAA's own plan (positions per packed
document, answer tokens): a sliding layer visits ``min(p + 1, W)`` keys plus the sinks outside
the window (``min(k, p + 1 - W)``); a full layer, and an answer token on a ``force_fa_decode``
layer, visits ``p + 1``.

FLOPs of one training step (forward + backward, activation recomputation not counted, as MFU
conventions ask):
* attention: ``4 * head_dim * heads * pairs`` forward (QK^T and PV), twice that backward;
* matmuls: ``2 * N`` per token forward, ``2 * N`` backward for input gradients, plus
  ``2 * N_trainable`` for weight gradients (LoRA freezes the base: 4N + 2N_lora, not 6N).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import SWAAConfig
from ..plan import build_plan

# Dense bf16 peak TFLOP/s per device, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0, "L4": 121.0}


def head_dim(config) -> int:
    """The attention head size of a transformers config (a multimodal one's text part): ``head_dim``
    where set (Qwen3's and Gemma's differ from hidden / heads), else hidden / heads."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs from a model."""

    n_layers: int
    n_heads: int
    head_dim: int
    matmul_params: int  # weights of every matmul (embedding lookups excluded, LM head included)
    trainable_params: int

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ModelShape:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = config.num_attention_heads
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        matmul = sum(p.numel() for p in model.parameters() if id(p) not in embeddings and p.ndim >= 2)
        if getattr(config, "tie_word_embeddings", False):
            matmul += config.vocab_size * config.hidden_size  # the LM head reuses the embedding matrix
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return cls(config.num_hidden_layers, heads, head_dim(config), matmul, trainable)


def visible_keys(pos: Tensor, window: int | None, keep_first: int) -> Tensor:
    """Keys a query at per-document position ``pos`` sees on a sliding layer (causal, window, sinks)."""
    causal = pos + 1
    if window is None:
        return causal
    in_window = causal.clamp(max=window)
    sinks = (causal - window).clamp(min=0).clamp(max=keep_first)
    return in_window + sinks


def attention_pairs(
    swaa: SWAAConfig | None,
    n_layers: int,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    labels: Tensor | None = None,
) -> int:
    """Query-key pairs visited by all layers in one forward of a training batch (no cache)."""
    config = swaa if swaa is not None else SWAAConfig()
    plan = build_plan(config, batch_size=input_ids.shape[0], q_len=input_ids.shape[1], device=input_ids.device,
                      attention_mask=attention_mask, position_ids=position_ids, labels=labels)
    valid = plan.q_valid
    full = (plan.q_pos + 1)[valid].sum()
    if not config.enabled:
        return int(full) * n_layers
    sliding = visible_keys(plan.q_pos, config.sliding_window_size, config.keep_first)
    answer = plan.q_answer if plan.q_answer is not None else torch.zeros_like(valid)
    with_answers = torch.where(answer, plan.q_pos + 1, sliding)[valid].sum()
    sliding = sliding[valid].sum()
    total = 0
    for layer in range(n_layers):
        if not config.is_sliding_layer(layer):
            total += int(full)
        elif config.full_on_decode(layer):
            total += int(with_answers)
        else:
            total += int(sliding)
    return total


def training_flops(shape: ModelShape, tokens: int, pairs: int) -> float:
    """Forward + backward FLOPs of one micro-batch (see the module docstring)."""
    matmul = tokens * (4 * shape.matmul_params + 2 * min(shape.trainable_params, shape.matmul_params))
    attention = 3 * 4 * shape.head_dim * shape.n_heads * pairs
    return float(matmul + attention)


def batch_flops(shape: ModelShape, swaa: SWAAConfig | None, inputs: dict[str, Any]) -> tuple[float, int]:
    """(training FLOPs, real tokens) of one collated batch as the trainer feeds it to the model."""
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else input_ids.numel()
    pairs = attention_pairs(swaa, shape.n_layers, input_ids, mask, inputs.get("position_ids"), inputs.get("labels"))
    return training_flops(shape, tokens, pairs), tokens


def detect_peak_tflops() -> float | None:
    """Dense bf16 peak of this process's GPU from :data:`PEAK_TFLOPS`, or None (CPU, unknown GPU)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


class ThroughputMeter:
    """Accumulates FLOPs and tokens between two log lines and turns them into rates."""

    def __init__(self) -> None:
        self.flops = 0.0
        self.tokens = 0
        self.since = time.perf_counter()

    def add(self, flops: float, tokens: int) -> None:
        self.flops += flops
        self.tokens += tokens

    def report(self, world_flops: float, world_tokens: int, world_size: int, peak_tflops: float | None) -> dict:
        """Rates since the last report over all processes; resets the meter."""
        now = time.perf_counter()
        seconds = max(now - self.since, 1e-9)
        tflops_per_device = world_flops / seconds / world_size / 1e12
        out = {"tokens_per_s": world_tokens / seconds, "tflops_per_device": tflops_per_device}
        if peak_tflops:
            out["mfu"] = tflops_per_device / peak_tflops
        self.flops, self.tokens, self.since = 0.0, 0, now
        return out
