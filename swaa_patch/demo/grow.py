"""Grow a trained demo model deeper without changing what it computes (``swaa train-demo --grow-from``).

Why: deeper models are slow to form retrieval from scratch (the 8-layer demo model needed a lower
peak LR and ~3,000 steps before it retrieved at all, benchmarks/results/demo_deep_model_attempts.md).
Depth up-scaling starts the deeper model from a shallow one that already retrieves: source layer ``i``
goes to the first of its new slots, and the slots after it hold copies of it whose two residual-stream
writes (attention ``o_proj``, MLP ``down_proj``) are zero. A zero write makes a decoder layer the
identity, so at step 0 the grown model's logits are the source's exactly; training then gives the copies
work to do (their queries and keys start as the source layer's, not at random). From the 4-layer demo
model, 3,000 steps reached the from-scratch 8-layer model's accuracy (0.84 vs 0.85).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Config fields that must match between the source and the grown model (the weights are copied as is).
MATCHED_FIELDS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
}


def source_layer_map(source_layers: int, layers: int) -> list[tuple[int, bool]]:
    """For each new layer: (the source layer it copies, whether it is that layer's first slot)."""
    if not 1 <= source_layers <= layers:
        raise ValueError(f"num_layers: must be at least the grow_from model's {source_layers} layers, got {layers}")
    mapping, seen = [], set()
    for j in range(layers):
        src = j * source_layers // layers
        mapping.append((src, src not in seen))
        seen.add(src)
    return mapping


def check_source(source: Path, args: Any) -> None:
    """Refuses, naming the mismatching field, a source that cannot be grown into ``args``."""
    path = source / "config.json"
    if not path.is_file():
        raise ValueError(f"grow_from: {source} holds no config.json (expected a finished train-demo folder)")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_type") != "qwen3":
        raise ValueError(f"grow_from: {source} is a {config.get('model_type')!r} model; train-demo grows qwen3 only")
    for key, arg in MATCHED_FIELDS.items():
        if config.get(key) != getattr(args, arg):
            raise ValueError(f"{arg}: must equal the grow_from model's {key} ({config.get(key)}), got {getattr(args, arg)}")
    theta = (config.get("rope_parameters") or {}).get("rope_theta")
    if theta != args.rope_theta:
        raise ValueError(f"rope_theta: must equal the grow_from model's ({theta}), got {args.rope_theta}")
    source_layer_map(config["num_hidden_layers"], args.num_layers)  # raises on too few layers


def grow_into(model: Any, source: Path) -> list[tuple[int, bool]]:
    """Copy ``source``'s weights into the deeper ``model`` (same widths) and zero the copies' residual
    writes; returns the layer map."""
    import torch
    from transformers import AutoModelForCausalLM

    small = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    mapping = source_layer_map(len(small.model.layers), len(model.model.layers))
    with torch.no_grad():
        model.model.embed_tokens.load_state_dict(small.model.embed_tokens.state_dict())
        model.model.norm.load_state_dict(small.model.norm.state_dict())
        if not model.config.tie_word_embeddings:
            model.lm_head.load_state_dict(small.lm_head.state_dict())
        for layer, (src, first) in zip(model.model.layers, mapping):
            layer.load_state_dict(small.model.layers[src].state_dict())
            if not first:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
    return mapping
