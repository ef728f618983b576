"""The flash_attention_2 backend (window by flash-attn, sinks merged by LSE), checked on CPU
against the float64 reference by running it on an emulation of flash-attn's varlen kernel.
The real kernel is checked on the GPU by benchmarks/run_gpu.sh when flash-attn is installed."""

from __future__ import annotations

import functools

import pytest
import torch
from flash_emulation import flash_attn_varlen_func
from reference import generate_with_reference, reference_logits, reference_model, rel_error
from test_equivalence import GRID, _left_padded, _positions, _swaa
from tiny import VOCAB, tiny_model
from transformers.modeling_utils import AttentionInterface

from swaa_patch import apply_swaa
from swaa_patch.backends import flash as flash_backend


@pytest.fixture
def emulated_flash(monkeypatch):
    """Route flash_attention_2 through our backend on top of the emulated kernel."""
    monkeypatch.setattr(flash_backend, "load_varlen_kernel", lambda: flash_attn_varlen_func)
    wrapper = AttentionInterface._global_mapping["flash_attention_2"]
    # Models are built with sdpa (transformers refuses flash_attention_2 without the package),
    # then dispatched to the flash entry.
    monkeypatch.setitem(AttentionInterface._global_mapping, "swaa_test_flash", wrapper)
    yield functools.partial(_use_flash)


def _use_flash(model):
    model.config._attn_implementation = "swaa_test_flash"
    return model


@pytest.mark.parametrize("family", ["qwen3", "llama", "gemma2", "mistral"])
@pytest.mark.parametrize("grid", GRID, ids=lambda g: f"W{g[0]}k{g[1]}")
def test_flash_prefill_matches_reference(emulated_flash, family, grid):
    config, rule = _swaa(*grid)
    model = tiny_model(family, "eager")
    ref = reference_model(model)
    model = emulated_flash(apply_swaa(model, config))
    ids, valid = _left_padded(3, 24, [0, 4, 9])
    pids = _positions(valid)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=valid.long(), position_ids=pids).logits
        expected = reference_logits(ref, rule, ids, valid, pids)
    assert rel_error(out, expected, valid) < 1e-5


def test_flash_packed_and_answer_tokens(emulated_flash):
    config, rule = _swaa(4, 2, True, (1,), None)
    model = tiny_model("qwen3", "eager")
    ref = reference_model(model)
    model = emulated_flash(apply_swaa(model, config))
    lengths = [[9, 7, 12], [20, 8]]
    pids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    ids = torch.randint(3, VOCAB, pids.shape)
    labels = torch.full_like(ids, -100)
    labels[0, 12:16] = ids[0, 12:16]  # answer of document 2 (tokens 9..15), after its prompt
    labels[1, 15:20] = ids[1, 15:20]
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=pids, labels=labels).logits
        expected = reference_logits(ref, rule, ids, None, pids, labels=labels)
    assert rel_error(out, expected) < 1e-5


def test_flash_generation_matches_reference(emulated_flash):
    config, rule = _swaa(4, 2, [0, 2], (1,), None)
    model = tiny_model("qwen2", "eager")
    ref = reference_model(model)
    model = emulated_flash(apply_swaa(model, config))
    ids, valid = _left_padded(2, 12, [0, 3], seed=4)
    got, expected, _ = generate_with_reference(model, ref, rule, ids, valid, 12)
    assert rel_error(got, expected) < 1e-5


def test_missing_flash_attn_names_the_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_flash(name, *args, **kwargs):
        if name.startswith("flash_attn"):
            raise ImportError("No module named 'flash_attn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_flash)
    with pytest.raises(ImportError, match=r"pip install 'swaa\[flash\]'"):
        flash_backend.load_varlen_kernel()
