"""One rank of tests/test_fsdp2_cpu.py (run under ``torch.distributed.run``, gloo, on CPUs).

What sft/accelerate_fsdp.yaml asks accelerate to do on GPUs, done here with torch's own FSDP2 calls
(accelerate 1.15 applies FSDP only on accelerators): the SWAA-patched tiny Qwen3 with LoRA as ``swaa
sft`` builds it (``lora_config``, LoRA's update inside lora_B's GEMM: ``fused_lora_updates``), each
decoder layer wrapped for activation checkpointing (``fsdp_activation_checkpointing``) and sharded with
``fully_shard`` (``TRANSFORMER_BASED_WRAP``), then the root. Each rank trains on its own example; the
loss averaged over ranks and every LoRA gradient (FSDP2 reduce-scatters the mean) must equal one
unsharded model's over both examples. A control run does the same with every rank on example 0 (not the
global batch: the comparison must catch it). Rank 0 writes both comparisons as JSON to argv[1].
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import VOCAB, tiny_model  # noqa: E402

from swaa_patch import SWAAConfig, apply_swaa  # noqa: E402
from swaa_patch.training.fused_lora import fused_lora_updates  # noqa: E402
from swaa_patch.training.settings import LoraSettings  # noqa: E402
from swaa_patch.training.sft import lora_config  # noqa: E402

SWAA = SWAAConfig(sliding_window_size=8, keep_first=2, force_fa_decode=True)
LENGTH, ANSWER = 40, 6  # a window of 8 and 2 sinks: most queries see sinks from beyond the window


def build_model(swaa: bool = True) -> torch.nn.Module:
    """The same random model, SWAA config and LoRA on every rank and for the reference (LoRA's B random
    too, so that every adapter weight gets a gradient); ``swaa=False``: the stock model with that LoRA."""
    from peft import get_peft_model

    model = tiny_model("qwen3", "sdpa")
    if swaa:
        model = apply_swaa(model, SWAA)
    model.config.use_cache = False
    model = get_peft_model(model, lora_config(LoraSettings(r=4, alpha=8, dropout=0.0, use_rslora=False)))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.train()


def example(index: int) -> dict[str, torch.Tensor]:
    """One prompt + answer row: loss on the last ANSWER tokens (force_fa_decode's full-attention rows)."""
    generator = torch.Generator().manual_seed(100 + index)
    ids = torch.randint(3, VOCAB, (1, LENGTH), generator=generator)
    labels = ids.clone()
    labels[:, : LENGTH - ANSWER] = -100
    return {"input_ids": ids, "labels": labels}


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every LoRA weight's gradient by parameter name (the checkpoint wrapper's prefix dropped; a
    sharded gradient gathered whole)."""
    grads = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
            grads[name.replace("_checkpoint_wrapped_module.", "")] = grad.detach().clone()
    return grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@torch.no_grad()
def stock_loss(world: int) -> torch.Tensor:
    """The global batch's loss without SWAA: the sharded SWAA run must not equal it (SWAA's rule was live)."""
    model = build_model(swaa=False)
    return sum(model(**example(i)).loss for i in range(world)) / world


def sharded_run(world: int, expected: dict[str, torch.Tensor], losses: dict[str, float],
                examples_of_rank: int) -> dict:  # fmt: skip
    """FSDP2 as the config asks, each rank on example ``examples_of_rank`` (its rank, or 0 for the
    control); the rank-mean loss and every gathered LoRA gradient against the reference's (``losses``:
    the reference's and the stock model's, reported beside)."""
    model = build_model()
    decoder_layer = type(model.base_model.model.model.layers[0])
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   check_fn=lambda module: isinstance(module, decoder_layer))  # fmt: skip
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    sharded = sum(isinstance(p, DTensor) for p in model.parameters())
    with fused_lora_updates(model) as fused:
        loss = model(**example(examples_of_rank)).loss
        loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    got = lora_grads(model)
    return {
        "world": world,
        "sharded_parameters": sharded,
        "parameters": sum(1 for _ in model.parameters()),
        "fused_adapters": fused,
        "loss": float(mean_loss),
        **losses,
        "names_match": sorted(got) == sorted(expected),
        "worst_grad_rel": max(rel(got[name], expected[name]) for name in expected if name in got),
        "lora_weights": len(expected),
    }


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    reference = build_model()
    with fused_lora_updates(reference):
        reference_loss = sum(reference(**example(i)).loss for i in range(world)) / world
        reference_loss.backward()
    expected = lora_grads(reference)

    losses = {"reference_loss": float(reference_loss.detach()), "stock_loss": float(stock_loss(world))}
    results = {
        "fsdp2": sharded_run(world, expected, losses, rank),
        "control": sharded_run(world, expected, losses, 0),
    }
    if rank == 0:
        Path(sys.argv[1]).write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
