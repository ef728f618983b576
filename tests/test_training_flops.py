"""Training FLOPs: attention pairs counted from SWAA's plan equal the float64 reference masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import RefRule, reference_masks
from transformers import Gemma3Config, LlamaConfig, Qwen3Config

from swaa_patch import SWAAConfig
from swaa_patch.training.flops import (
    ModelShape,
    ThroughputMeter,
    attention_pairs,
    batch_flops,
    head_dim,
    training_flops,
    visible_keys,
)

N_LAYERS = 4


def _packed(lengths: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in lengths])[None]


def _labels(lengths: list[int], prompt_fraction: float) -> torch.Tensor:
    rows = []
    for n in lengths:
        prompt = max(1, int(n * prompt_fraction))
        rows.append(torch.cat([torch.full((prompt,), -100), torch.ones(n - prompt, dtype=torch.long)]))
    return torch.cat(rows)[None]


def _reference_pairs(rule: RefRule, valid, position_ids, labels) -> int:
    masks = reference_masks(rule, N_LAYERS, valid, position_ids, None, labels)
    return sum(int((m & valid[:, :, None]).sum()) for m in masks)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 24), min_size=1, max_size=3),
    window=st.integers(1, 12),
    keep_first=st.integers(0, 4),
    fad=st.sampled_from([False, True, [0, 2]]),
    full_layers=st.sampled_from([(), (1,), (1, 3)]),
    prompt_fraction=st.floats(0.0, 1.0),
)
def test_packed_pairs_match_reference(lengths, window, keep_first, fad, full_layers, prompt_fraction):
    swaa = SWAAConfig(sliding_window_size=window, keep_first=keep_first, force_fa_decode=fad,
                      non_sliding_layers=full_layers)
    rule = RefRule(window, keep_first, fad, full_layers)
    pids, labels = _packed(lengths), _labels(lengths, prompt_fraction)
    ids = torch.zeros_like(pids)
    valid = torch.ones_like(pids, dtype=torch.bool)
    expected = _reference_pairs(rule, valid, pids, labels)
    assert attention_pairs(swaa, N_LAYERS, ids, None, pids, labels) == expected


@pytest.mark.parametrize("swaa", [None, SWAAConfig(sliding_window_size=3, keep_first=2, force_fa_decode=True)])
def test_right_padded_batch_pairs_match_reference(swaa):
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    labels = torch.tensor([[-100] * 6 + [1] * 4, [-100] * 4 + [1] * 2 + [-100] * 4])
    rule = RefRule(None) if swaa is None else RefRule(3, 2, True)
    expected = _reference_pairs(rule, mask.bool(), None, labels)
    assert attention_pairs(swaa, N_LAYERS, torch.zeros_like(mask), mask, None, labels) == expected


def test_sliding_window_speedup_matches_background():
    """background.md: SWA+sink vs full causal at n=32K, W=2048, k=100 is ~7.6x fewer attention FLOPs
    (its n^2 / (2 n (W + k)) estimate; the exact count is a bit higher: early queries see < W keys)."""
    pos = torch.arange(32768)
    full = int((pos + 1).sum())
    swa = int(visible_keys(pos, 2048, 100).sum())
    assert full / swa == pytest.approx(7.6, rel=0.05)
    assert full / swa > 32768 / (2 * (2048 + 100))


def test_lora_flops_count_frozen_weights_once_and_attention_by_window():
    shape = ModelShape(n_layers=2, n_heads=4, head_dim=16, matmul_params=1000, trainable_params=10)
    assert training_flops(shape, tokens=5, pairs=0) == 5 * (4 * 1000 + 2 * 10)
    assert training_flops(shape, tokens=0, pairs=7) == 12 * 16 * 4 * 7
    full_ft = ModelShape(2, 4, 16, 1000, 1000)
    assert training_flops(full_ft, tokens=5, pairs=0) == 6 * 1000 * 5  # the usual 6N without LoRA


def test_batch_flops_uses_the_window_and_real_tokens():
    shape = ModelShape(n_layers=N_LAYERS, n_heads=2, head_dim=8, matmul_params=100, trainable_params=100)
    swaa = SWAAConfig(sliding_window_size=4)
    pids = _packed([30, 20])
    inputs = {"input_ids": torch.zeros_like(pids), "position_ids": pids}
    flops_swa, tokens = batch_flops(shape, swaa, inputs)
    flops_full, _ = batch_flops(shape, None, inputs)
    assert tokens == 50
    pairs_swa = N_LAYERS * (int(visible_keys(torch.arange(30), 4, 0).sum()) + int(visible_keys(torch.arange(20), 4, 0).sum()))
    assert flops_swa == training_flops(shape, 50, pairs_swa)
    assert flops_full > flops_swa


def test_model_shape_counts_tied_lm_head_and_trainable(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)
    shape = ModelShape.from_model(model)
    per_layer = 16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 32  # q, k+v, o, mlp
    assert shape.matmul_params == 2 * per_layer + 50 * 16
    assert shape.trainable_params == sum(p.numel() for p in model.parameters())


def test_throughput_meter_reports_mfu():
    meter = ThroughputMeter()
    meter.since -= 2.0
    meter.add(4e12, 1000)
    report = meter.report(8e12, 2000, world_size=2, peak_tflops=4.0)
    assert report["tflops_per_device"] == pytest.approx(2.0, rel=0.01)
    assert report["mfu"] == pytest.approx(0.5, rel=0.01)
    assert report["tokens_per_s"] == pytest.approx(1000, rel=0.01)
    assert meter.flops == 0 and meter.tokens == 0


@pytest.mark.parametrize(
    "config, size",
    [
        (Qwen3Config(hidden_size=256, num_attention_heads=4, head_dim=128), 128),  # not hidden / heads
        (LlamaConfig(hidden_size=256, num_attention_heads=4), 64),
        (Gemma3Config(text_config={"hidden_size": 256, "num_attention_heads": 4, "head_dim": 32}), 32),
    ],
)
def test_head_size_of_each_family(config, size):
    """The one head-size rule ModelShape and the GPU warm-up (training/gpu_warmup.py) both use."""
    assert head_dim(config) == size
