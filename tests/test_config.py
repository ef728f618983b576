"""SWAAConfig validation, (de)serialisation and attachment to real models."""

import json

import pytest
import torch
from tiny import tiny_model
from transformers import AutoModelForCausalLM

from swaa_patch import SWAAConfig, apply_swaa


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sliding_window_size": 0}, "sliding_window_size: must be None or an integer >= 1, got 0"),
        ({"sliding_window_size": -3}, "sliding_window_size"),
        ({"sliding_window_size": 2.5}, "sliding_window_size"),
        ({"sliding_window_size": True}, "sliding_window_size"),
        ({"sliding_window_size": "128"}, "sliding_window_size"),
        ({"keep_first": -1}, "keep_first: must be an integer >= 0, got -1"),
        ({"keep_first": 1.0}, "keep_first"),
        ({"keep_first": None}, "keep_first"),
        ({"force_fa_decode": "yes"}, "force_fa_decode"),
        ({"force_fa_decode": [1, -2]}, "force_fa_decode: layer indices must be integers >= 0"),
        ({"force_fa_decode": [1, 1]}, "force_fa_decode: layer indices must be unique"),
        ({"non_sliding_layers": 3}, "non_sliding_layers: must be a list"),
        ({"non_sliding_layers": [0, "1"]}, "non_sliding_layers"),
        ({"non_sliding_layers": [True]}, "non_sliding_layers"),
        ({"query_chunk_size": 0}, "query_chunk_size"),
    ],
)
def test_every_field_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        SWAAConfig(**kwargs)


def test_from_dict_reports_json_path_and_unknown_keys():
    with pytest.raises(
        ValueError, match=r"^settings\[2\]\.swaa_config\.keep_first: must be an integer >= 0, got -1$"
    ):
        SWAAConfig.from_dict({"keep_first": -1}, "settings[2].swaa_config")
    with pytest.raises(ValueError, match=r"swaa_config: unknown field\(s\) \['window'\]"):
        SWAAConfig.from_dict({"window": 3})


def test_layer_index_out_of_range_for_the_attached_model():
    model = tiny_model("qwen3")
    with pytest.raises(ValueError, match=r"non_sliding_layers: layer indices must be in \[0, 3\].*got \[4\]"):
        apply_swaa(model, SWAAConfig(sliding_window_size=4, non_sliding_layers=[1, 4]))
    with pytest.raises(ValueError, match=r"force_fa_decode: layer indices must be in \[0, 3\]"):
        apply_swaa(model, {"sliding_window_size": 4, "force_fa_decode": [7]})


def test_layer_index_checked_where_the_config_is_attached(tmp_path):
    """Every documented way of attaching a config validates it on the spot, not at first forward."""
    model = tiny_model("llama")
    bad = SWAAConfig(sliding_window_size=4, non_sliding_layers=[9])
    with pytest.raises(ValueError, match=r"non_sliding_layers: layer indices must be in \[0, 3\]"):
        model.config.swaa_config = bad  # the reference's style
    assert model.config.swaa_config is None  # nothing half-attached
    with pytest.raises(ValueError, match=r"force_fa_decode: layer indices must be in \[0, 3\]"):
        apply_swaa(model, SWAAConfig(sliding_window_size=4, force_fa_decode=[4]))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="non_sliding_layers"):
        AutoModelForCausalLM.from_pretrained(tmp_path, swaa_config=bad)
    model.config.swaa_config = {"sliding_window_size": 4, "non_sliding_layers": [1, 3]}  # a JSON dict
    assert model.config.swaa_config == SWAAConfig(sliding_window_size=4, non_sliding_layers=[1, 3])


def test_dict_json_and_run_name():
    config = SWAAConfig(
        sliding_window_size=2048, keep_first=100, force_fa_decode=True, non_sliding_layers=[5, 1, 3]
    )
    assert json.loads(json.dumps(config)) == config.to_dict()
    assert config.non_sliding_layers == (1, 3, 5)
    assert config.run_name() == "swa2048_sink100_fad_full1-3-5"
    assert SWAAConfig().run_name() == "full"
    assert SWAAConfig.from_dict(config.to_dict()) == config


def test_config_survives_save_and_load(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("qwen3")
    config = SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=[0, 2], non_sliding_layers=[1])
    model.config.swaa_config = config
    model.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["swaa_config"] == config.to_dict()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 90, (2, 12))
    assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)
    assert SWAAConfig.coerce(loaded.config.swaa_config) == config


def test_config_through_from_pretrained_kwarg(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_model("llama").save_pretrained(tmp_path)
    config = SWAAConfig(sliding_window_size=3, keep_first=1)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, swaa_config=config).eval()
    assert model.config.swaa_config == config
    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 90, (1, 16))
    assert not torch.allclose(model(ids).logits, stock(ids).logits, atol=1e-4)
