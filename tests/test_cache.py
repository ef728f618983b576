"""Bounded sink+window cache and chunked prefill: same tokens as the unbounded path, bounded tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import generate_with_reference, reference_model, rel_error
from test_equivalence import _left_padded, _swaa
from tiny import VOCAB, tiny_model

from swaa_patch import SWAACache, SWAAConfig, apply_swaa, chunked_prefill
from swaa_patch.cache import SinkWindowLayer
from swaa_patch.compat import cache_kwargs, output_cache

CASES = [
    ("qwen3", "sdpa", 4, 2),
    ("llama", "flex_attention", 5, 0),
    ("gemma2", "eager", 3, 3),
    ("mistral", "sdpa", 6, 1),
    ("qwen3_moe", "flex_attention", 4, 4),
]


def _generate(model, ids, valid, new):
    return model.generate(
        input_ids=ids, attention_mask=valid.long(), max_new_tokens=new, min_new_tokens=new, do_sample=False,
        return_dict_in_generate=True, output_logits=True, pad_token_id=0,
    )


@pytest.mark.parametrize("family, attn, window, keep", CASES)
def test_bounded_cache_generates_the_same_tokens(family, attn, window, keep):
    config = SWAAConfig(sliding_window_size=window, keep_first=keep, force_fa_decode=[2], non_sliding_layers=[1])
    model = tiny_model(family, attn)
    ref = reference_model(model)
    apply_swaa(model, config)
    ids, valid = _left_padded(3, 17, [0, 5, 9], seed=window)
    new = 3 * window + 2
    with torch.no_grad():
        bounded = _generate(model, ids, valid, new)
        assert isinstance(output_cache(bounded), SWAACache)
        model.config.swaa_config = dataclasses.replace(config, bounded_cache=False)
        unbounded = _generate(model, ids, valid, new)
        assert not isinstance(output_cache(unbounded), SWAACache)
    assert torch.equal(bounded.sequences, unbounded.sequences)
    assert rel_error(torch.stack(bounded.logits, 1), torch.stack(unbounded.logits, 1)) < 1e-5
    # and both follow the reference rule
    model.config.swaa_config = config
    _, rule = _swaa(window, keep, [2], (1,), None)
    got, expected, _ = generate_with_reference(model, ref, rule, ids, valid, new)
    assert rel_error(got, expected) < 1e-5


def test_bounded_layers_never_hold_more_than_sinks_plus_window(monkeypatch):
    window, keep = 4, 3
    seen = []
    real_update = SinkWindowLayer.update

    def spy(self, key_states, value_states, *args, **kwargs):
        keys, values = real_update(self, key_states, value_states, *args, **kwargs)
        seen.append((key_states.shape[-2], keys.shape[-2], self.keys.shape[-2]))
        return keys, values

    monkeypatch.setattr(SinkWindowLayer, "update", spy)
    config = SWAAConfig(sliding_window_size=window, keep_first=keep, force_fa_decode=[0], non_sliding_layers=[3])
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    ids, valid = _left_padded(2, 30, [0, 7])
    with torch.no_grad():
        out = _generate(model, ids, valid, 20)
    cache = output_cache(out)
    assert cache.bounded_layers == frozenset({1, 2})
    for i, layer in enumerate(cache.layers):
        stored = layer.keys.shape[-2]
        if i in cache.bounded_layers:
            assert stored <= keep + window - 1 and layer.values.shape[-2] == stored
        else:
            assert stored == 30 + 20 - 1  # full layers keep everything (the last token is not fed back)
    decode_steps = [(n, returned, stored) for n, returned, stored in seen if n == 1]
    assert decode_steps and all(returned <= keep + window and stored <= keep + window - 1 for _, returned, stored in decode_steps)


def test_sinks_are_the_first_real_tokens_of_each_row():
    """With left padding, each row's sink slots hold the keys of its own first real tokens."""
    config = SWAAConfig(sliding_window_size=3, keep_first=2)
    model = apply_swaa(tiny_model("llama", "eager"), config)
    ids, valid = _left_padded(2, 12, [0, 5])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=valid.long(), use_cache=True)
        full = apply_swaa(tiny_model("llama", "eager"), dataclasses.replace(config, bounded_cache=False))
        full_out = full(input_ids=ids, attention_mask=valid.long(), use_cache=True)
    bounded, unbounded = output_cache(out).layers[0], output_cache(full_out).layers[0]
    assert torch.equal(output_cache(out).stored_valid[:, :2], torch.ones(2, 2, dtype=torch.bool))
    for row, first in enumerate([0, 5]):
        assert torch.allclose(bounded.keys[row, :, :2], unbounded.keys[row, :, first : first + 2])
        assert torch.allclose(bounded.keys[row, :, 2:], unbounded.keys[row, :, -2:])  # W - 1 = 2 newest


@pytest.mark.parametrize("family, attn", [("qwen3", "sdpa"), ("gemma3_text", "flex_attention"), ("llama", "eager")])
@pytest.mark.parametrize("bounded", [True, False])
def test_chunked_prefill_equals_one_shot(family, attn, bounded):
    config = SWAAConfig(sliding_window_size=5, keep_first=2, force_fa_decode=[1], bounded_cache=bounded)
    model = apply_swaa(tiny_model(family, attn), config)
    ids, valid = _left_padded(2, 41, [0, 6], seed=2)
    pids = (valid.long().cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        one_shot = model(input_ids=ids, attention_mask=valid.long(), position_ids=pids).logits
        result = chunked_prefill(model, ids, valid.long(), chunk_size=7, return_all_logits=True)
    assert rel_error(result.logits, one_shot, valid) < 1e-5
    assert isinstance(result.cache, SWAACache) == bounded


def test_generate_with_prefill_chunks_matches_one_shot_prefill():
    config = SWAAConfig(sliding_window_size=4, keep_first=2)
    model = apply_swaa(tiny_model("qwen2", "sdpa"), config)
    ids, valid = _left_padded(2, 33, [0, 4], seed=8)
    with torch.no_grad():
        plain = _generate(model, ids, valid, 12)
        chunked = model.generate(
            input_ids=ids, attention_mask=valid.long(), max_new_tokens=12, min_new_tokens=12, do_sample=False,
            prefill_chunk_size=8, return_dict_in_generate=True, output_logits=True, pad_token_id=0,
        )
    assert torch.equal(plain.sequences, chunked.sequences)
    assert rel_error(torch.stack(chunked.logits, 1), torch.stack(plain.logits, 1)) < 1e-5


def test_continue_generation_from_a_chunked_prefill():
    config = SWAAConfig(sliding_window_size=4, keep_first=1)
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    ids = torch.randint(3, VOCAB, (1, 25))
    with torch.no_grad():
        prefilled = chunked_prefill(model, ids, chunk_size=6)
        step = model(
            input_ids=prefilled.logits.argmax(-1), use_cache=True, **cache_kwargs(model, prefilled.cache),
            attention_mask=torch.ones(1, 26, dtype=torch.long),
        )
        reference = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert prefilled.logits.argmax(-1).item() == reference[0, 25].item()
    assert step.logits[:, -1].argmax(-1).item() == reference[0, 26].item()
