"""``swaa_enabled``: nestable, exception-safe, restores config and cache behaviour; None = full attention."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from swaa_patch import SWAACache, SWAAConfig, apply_swaa, remove_swaa, swaa_enabled
from swaa_patch.compat import output_cache

OUTER = SWAAConfig(sliding_window_size=6, keep_first=2)
INNER = SWAAConfig(sliding_window_size=4, keep_first=1, non_sliding_layers=[1])
IDS = torch.randint(3, 96, (1, 40), generator=torch.Generator().manual_seed(1))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def generated_cache(model):
    with torch.no_grad():
        out = model.generate(IDS, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    return output_cache(out)


def test_nested_scopes_restore_each_config_in_turn():
    model = apply_swaa(tiny_model("qwen3"), OUTER)
    reference = {name: logits(apply_swaa(tiny_model("qwen3"), cfg)) for name, cfg in
                 (("outer", OUTER), ("inner", INNER), ("full", None))}
    with swaa_enabled(model, INNER):
        torch.testing.assert_close(logits(model), reference["inner"], rtol=0, atol=0)
        with swaa_enabled(model, None):
            torch.testing.assert_close(logits(model), reference["full"], rtol=0, atol=0)
        torch.testing.assert_close(logits(model), reference["inner"], rtol=0, atol=0)
    assert model.config.swaa_config is OUTER
    torch.testing.assert_close(logits(model), reference["outer"], rtol=0, atol=0)
    assert not torch.equal(reference["outer"], reference["full"])  # the scopes above could be told apart


def test_an_exception_inside_restores_the_config_and_propagates():
    model = apply_swaa(tiny_model("qwen3"), OUTER)
    with pytest.raises(KeyError, match="boom"), swaa_enabled(model, None):
        raise KeyError("boom")
    assert model.config.swaa_config is OUTER
    assert isinstance(generated_cache(model), SWAACache)


def test_full_attention_scope_gives_a_stock_cache_then_the_bounded_one_again():
    model = apply_swaa(tiny_model("qwen3"), OUTER)
    with swaa_enabled(model, None):
        assert not isinstance(generated_cache(model), SWAACache)
    assert isinstance(generated_cache(model), SWAACache)


def test_a_stock_model_is_stock_again_after_the_scope():
    model = remove_swaa(tiny_model("qwen3"))  # no config, no hooks: as built before hack_hf_swaa
    assert all(getattr(m, "_swaa_hook", None) is None for m in model.modules())
    model.config.__dict__.pop("swaa_config", None)
    stock = logits(model)
    with swaa_enabled(model, OUTER) as inside:
        assert inside is model
        assert isinstance(generated_cache(model), SWAACache)
    assert "swaa_config" not in model.config.__dict__
    assert all(getattr(m, "_swaa_hook", None) is None for m in model.modules())
    assert not isinstance(generated_cache(model), SWAACache)
    torch.testing.assert_close(logits(model), stock, rtol=0, atol=0)


def test_a_bad_config_raises_on_entry_and_changes_nothing():
    model = apply_swaa(tiny_model("qwen3"), OUTER)
    with pytest.raises(ValueError, match=r"non_sliding_layers: layer indices must be in \[0, 3\]"):
        with swaa_enabled(model, {"sliding_window_size": 4, "non_sliding_layers": [7]}):
            pytest.fail("the block must not run")
    assert model.config.swaa_config is OUTER


def test_a_raw_json_config_comes_back_as_the_same_object():
    model = tiny_model("qwen3")
    raw = {"sliding_window_size": 6, "keep_first": 2}
    model.config.__dict__["swaa_config"] = raw  # as from_pretrained leaves a config.json value
    apply_swaa(model, raw)
    model.config.__dict__["swaa_config"] = raw
    with swaa_enabled(model, None):
        pass
    assert model.config.__dict__["swaa_config"] is raw
