"""Tiny random models of every supported family, built from the real config classes."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def family_configs() -> dict:
    return {
        "qwen2": lambda: Qwen2Config(**COMMON),
        "qwen3": lambda: Qwen3Config(**COMMON),
        "qwen3_moe": lambda: Qwen3MoeConfig(
            **{**COMMON, "intermediate_size": 64},
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
        ),
        "llama": lambda: LlamaConfig(**COMMON),
        # native windows on: SWAA must override them
        "mistral": lambda: MistralConfig(**COMMON, sliding_window=6),
        "gemma2": lambda: Gemma2Config(**COMMON, sliding_window=6, query_pre_attn_scalar=20),
        "gemma3_text": lambda: Gemma3TextConfig(**COMMON, sliding_window=6, query_pre_attn_scalar=20),
    }


FAMILIES = list(family_configs())
CPU_BACKENDS = ("eager", "sdpa", "flex_attention")
# transformers itself refuses sdpa for Gemma2 (its logits are softcapped)
UNSUPPORTED = {("gemma2", "sdpa")}
FAMILY_BACKENDS = [(f, b) for f in FAMILIES for b in CPU_BACKENDS if (f, b) not in UNSUPPORTED]


def tiny_model(family: str, attn: str = "sdpa", seed: int = 0, **overrides) -> torch.nn.Module:
    config = family_configs()[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    # Random init of tiny models gives near-uniform logits; sharpen so greedy decoding is not a coin toss.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.mul_(2.0 if "embed" not in name else 1.0)
    return model.eval()
