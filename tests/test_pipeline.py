"""A plain ``pipeline("text-generation")`` on a SWAA model decodes with the bounded SWAACache."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from swaa_patch import SWAACache, SWAAConfig, apply_swaa
from swaa_patch.compat import CACHE_ARG_NAMES

DEMO = Path(__file__).resolve().parents[1] / "demo" / "model"
CONFIG = SWAAConfig(sliding_window_size=16, keep_first=4, non_sliding_layers=[1, 3])  # of the demo's 8 layers


def test_text_generation_pipeline_uses_the_bounded_cache():
    model = AutoModelForCausalLM.from_pretrained(DEMO, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    apply_swaa(model, CONFIG)
    seen = []

    def spy(module, args, kwargs):  # the decoder stack receives the cache the outer forward chose
        cache = next((kwargs[n] for n in CACHE_ARG_NAMES if kwargs.get(n) is not None), None)
        seen.append(cache)

    handle = model.model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
        prompt = "The pass key is 123456. " + "Remember it well. " * 20 + "What is the pass key?"
        out = generator(prompt, max_new_tokens=6, do_sample=False, return_full_text=False)
    finally:
        handle.remove()
    assert isinstance(out[0]["generated_text"], str)
    assert len(seen) == 6  # prefill + 5 decode steps, all on the same cache
    cache = seen[0]
    assert isinstance(cache, SWAACache) and all(c is cache for c in seen)
    assert cache.bounded_layers == {0, 2, 4, 5, 6, 7}
    for layer in sorted(cache.bounded_layers):  # sinks + W - 1 keys kept, whatever the prompt length
        assert cache.layers[layer].keys.shape[-2] == CONFIG.keep_first + CONFIG.sliding_window_size - 1
    assert cache.layers[1].keys.shape[-2] > 100  # full layers keep every key


@pytest.mark.parametrize("config", [None, SWAAConfig(sliding_window_size=None)])
def test_pipeline_on_a_model_without_an_active_config_keeps_the_stock_cache(config):
    model = AutoModelForCausalLM.from_pretrained(DEMO, dtype="float32").eval()
    apply_swaa(model, config)
    seen = []
    handle = model.model.register_forward_pre_hook(
        lambda m, a, k: seen.append(next((k[n] for n in CACHE_ARG_NAMES if k.get(n) is not None), None)),
        with_kwargs=True,
    )
    try:
        pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(DEMO), device="cpu")(
            "Hello there", max_new_tokens=2, do_sample=False
        )
    finally:
        handle.remove()
    assert seen and not any(isinstance(c, SWAACache) for c in seen)
