"""The training run's LoRA update through addmm (swaa_patch/training/fused_lora.py) against peft's own
forward: loss and every LoRA gradient of a tiny SWA-patched model, float32 and bf16 autocast; the
fallback for mixed dtypes; which adapters take it; the hook gone after the block."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402
from tiny import tiny_model  # noqa: E402

from swaa_patch import SWAAConfig, apply_swaa  # noqa: E402
from swaa_patch.training import fused_lora  # noqa: E402
from swaa_patch.training.fused_lora import addmm_update, eligible_adapters, fused_lora_updates  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_model(dropout: float = 0.0, seed: int = 0, **lora):
    model = tiny_model("qwen3", seed=seed)
    apply_swaa(model, SWAAConfig(sliding_window_size=8, keep_first=2))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGETS, **lora)
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():  # lora_B starts at zero: give it values, so its gradient paths matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    return model


def loss_and_grads(model, ids, autocast: bool = False, seed: int = 1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks in both paths
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("autocast, dropout, tol", [(False, 0.0, 1e-5), (False, 0.2, 1e-5), (True, 0.0, 2e-2)])
def test_loss_and_lora_gradients_match_peft(autocast, dropout, tol, monkeypatch):
    model = lora_model(dropout)
    model.train()
    ids = torch.randint(3, 96, (2, 40), generator=torch.Generator().manual_seed(5))
    want_loss, want = loss_and_grads(model, ids, autocast)
    calls = []
    original = fused_lora.addmm_update

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused_lora, "addmm_update", counted)
    with fused_lora_updates(model) as adapters:
        got_loss, got = loss_and_grads(model, ids, autocast)
    assert adapters == 4 * len(TARGETS)
    assert len(calls) == adapters  # every adapted projection took the addmm path
    assert rel(got_loss, want_loss) < tol
    assert want.keys() == got.keys() and len(want) == 2 * adapters
    errors = {name: rel(got[name], want[name]) for name in want}
    assert max(errors.values()) < tol * 10, max(errors.items(), key=lambda kv: kv[1])


def test_the_update_is_base_plus_scaled_low_rank_product_in_float64():
    """Independent of peft's forward: ``result + s * (x A^T) B^T`` with the layer's own tensors."""
    model = lora_model().double()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 7, layer.in_features, dtype=torch.float64)
    result = layer.base_layer(x)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    want = result + layer.scaling["default"] * (x @ a.T) @ b.T
    got = addmm_update(layer, "default", x, result)
    assert got.shape == want.shape and rel(got, want) < 1e-12


def test_mixed_dtypes_without_autocast_take_peft_expression():
    """float32 adapters on a bfloat16 base, no autocast: addmm cannot mix them; peft's promotion is kept."""
    model = lora_model()
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    layer.base_layer.to(torch.bfloat16)
    x = torch.randn(2, 5, layer.in_features)
    result = layer.base_layer(x.to(torch.bfloat16))
    got = addmm_update(layer, "default", x, result)
    want = result + layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want)


def test_only_vanilla_adapters_take_it_and_the_hook_is_removed():
    model = lora_model(use_dora=True)
    assert eligible_adapters(model) == []  # DoRA is a variant of its own
    model = lora_model(lora_bias=True)
    assert eligible_adapters(model) == []  # lora_B with a bias
    model = lora_model()
    layers = [m for m, _ in eligible_adapters(model)]
    with fused_lora_updates(model) as adapters:
        assert adapters == len(layers) and all("default" in m.lora_variant for m in layers)
    assert all(m.lora_variant == {} for m in layers)
    with fused_lora_updates(model, active=False) as adapters:
        assert adapters == 0 and all(m.lora_variant == {} for m in layers)


def test_merging_inside_the_block_is_vanilla_lora():
    model = lora_model().double()
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    before = layer.base_layer.weight.detach().clone()
    delta = layer.get_delta_weight("default")
    with fused_lora_updates(model):
        layer.merge(safe_merge=True)
        assert torch.allclose(layer.base_layer.weight, before + delta)
        layer.unmerge()
        assert torch.allclose(layer.base_layer.weight, before)
