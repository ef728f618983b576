"""Settings validation: every bad field is reported with its JSON path, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swaa_patch.evaluation.settings import (
    DatasetSpec,
    load_settings,
    parse_settings,
)
from swaa_patch.jobs.validate import SettingsError, settings_to_dict

REPO = Path(__file__).resolve().parents[1]
SWA = {"sliding_window_size": 64, "keep_first": 4, "force_fa_decode": True, "non_sliding_layers": [1]}


@pytest.fixture()
def model_dir(tmp_path):
    folder = tmp_path / "models" / "m1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "p", "question": "q", "answer": "a"}) + "\n")
    return path


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(data))
    return path


def _full(model_dir: Path, data_file: Path, **extra):
    return {
        "datasets": [
            str(data_file),
            "synthetic:passkey",
            {"task": "depth_qa", "lengths": [256], "depths": [0.5]},
        ],
        "settings": [{"swaa_config": dict(SWA), "model_list": [str(model_dir)]}],
        **extra,
    }


def test_reference_format_list_is_accepted(tmp_path, model_dir):
    settings = load_settings(_write(tmp_path, [{"swaa_config": SWA, "model_list": ["models/m1"]}]))
    (run,) = settings.runs
    assert run.swaa_config.sliding_window_size == 64 and run.swaa_config.non_sliding_layers == (1,)
    assert run.model_list == (str(model_dir.resolve()),)  # relative to the settings file
    assert settings.datasets == (DatasetSpec(name="passkey", task="passkey"),)
    assert settings.output_dir == Path("eval_output") / "settings"


def test_full_format_with_every_key(tmp_path, model_dir, data_file):
    data = _full(
        model_dir,
        data_file,
        output_dir="out",
        max_prompt_tokens=4096,
        truncation="skip",
        max_new_tokens=16,
        batch_size=8,
        limit=10,
        seed=3,
        attn_implementation="eager",
        dtype="bfloat16",
        device="cuda:1",
        chat_template=False,
        scoring="judge",
        judge={"base_url": "http://localhost:8000/v1", "model": "j"},
    )
    settings = load_settings(_write(tmp_path, data))
    assert settings.output_dir == (tmp_path / "out").resolve()
    assert [d.name for d in settings.datasets] == ["data", "passkey", "depth_qa"]
    assert settings.datasets[0].path == data_file.resolve()
    assert settings.datasets[2].lengths == (256,)
    assert (settings.batch_size, settings.limit, settings.device, settings.truncation) == (
        8,
        10,
        "cuda:1",
        "skip",
    )
    assert settings.judge.model == "j" and settings.judge.api_key_env == "OPENAI_API_KEY"
    assert json.dumps(settings_to_dict(settings))  # the resolved snapshot is JSON


def test_null_swaa_config_means_stock_model(tmp_path, model_dir):
    settings = load_settings(_write(tmp_path, [{"swaa_config": None, "model_list": [str(model_dir)]}]))
    assert settings.runs[0].swaa_config is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["settings"][0]["swaa_config"].update(keep_first=-1),
            "settings[0].swaa_config.keep_first: must be an integer >= 0, got -1",
        ),
        (
            lambda d: d["settings"][0]["swaa_config"].update(window=3),
            "settings[0].swaa_config: unknown field(s) ['window']",
        ),
        (
            lambda d: d["settings"][0]["swaa_config"].update(sliding_window_size="2k"),
            "settings[0].swaa_config.sliding_window_size: must be None or an integer >= 1",
        ),
        (lambda d: d["settings"][0].update(lora="x"), "settings[0]: unknown key(s) ['lora']"),
        (lambda d: d["settings"][0].pop("model_list"), "settings[0]: missing required key(s) ['model_list']"),
        (
            lambda d: d["settings"][0].update(model_list="m"),
            "settings[0].model_list: must be a list, got str",
        ),
        (lambda d: d["settings"][0].update(model_list=[]), "settings[0].model_list: must not be empty"),
        (
            lambda d: d["settings"][0]["model_list"].append("/no/such/model"),
            "settings[0].model_list[1]: model path does not exist",
        ),
        (
            lambda d: d["settings"][0]["model_list"].append("Qwen/Qwen3-4B"),
            "settings[0].model_list[1]: model path does not exist",
        ),  # hub ids are never fetched
        (
            lambda d: d["settings"][0]["model_list"].append("builtin:gpt-5"),
            "settings[0].model_list[1]: unknown built-in model",
        ),
        (lambda d: d.update(max_new_tokens=0), "max_new_tokens: must be an integer >= 1, got 0"),
        (lambda d: d.update(batch_size="4"), "batch_size: must be an integer >= 1, got '4'"),
        (lambda d: d.update(chat_template="yes"), "chat_template: must be true or false, got 'yes'"),
        (lambda d: d.update(dtype="fp8"), "dtype: must be one of"),
        (lambda d: d.update(attn_implementation="paged"), "attn_implementation: must be one of"),
        (lambda d: d.update(device="tpu"), "device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        (lambda d: d.update(scoring="bleu"), "scoring: must be one of"),
        (lambda d: d.update(scoring="judge"), "scoring: 'judge' needs a 'judge' block"),
        (lambda d: d.update(judge={"model": "m"}), "judge: missing required key(s) ['base_url']"),
        (
            lambda d: d.update(judge={"base_url": "u", "model": "m", "api_key": "sk-x"}),
            "judge: unknown key(s) ['api_key']",
        ),
        (lambda d: d.update(max_prompt_length=10), "settings file: unknown key(s) ['max_prompt_length']"),
        (lambda d: d.update(settings={}), "settings: must be a list, got dict"),
        (lambda d: d["datasets"].append("missing.parquet"), "datasets[3]: cannot read dataset"),
        (lambda d: d["datasets"].append("data.csv"), "datasets[3]: unsupported dataset format '.csv'"),
        (lambda d: d["datasets"].append("synthetic:sudoku"), "datasets[3].task: must be one of"),
        (
            lambda d: d["datasets"].append({"task": "passkey", "lengths": [0]}),
            "datasets[3].lengths[0]: must be an integer >= 16, got 0",
        ),
        (
            lambda d: d["datasets"].append({"task": "passkey", "depths": [0.5, 1.5]}),
            "datasets[3].depths[1]: must be a number in [0.0, 1.0], got 1.5",
        ),
        (
            lambda d: d["datasets"].append({"task": "passkey", "needles": 3}),
            "datasets[3]: unknown key(s) ['needles']",
        ),
        (
            lambda d: d["datasets"].append({"task": "passkey", "name": "pj", "scoring": "judge"}),
            "datasets[3].scoring: 'judge' needs",
        ),
        (lambda d: d["datasets"].append({"name": "x"}), "datasets[3]: missing required key(s) ['path']"),
        (
            lambda d: d["datasets"].append("synthetic:passkey"),
            "datasets[3].name: duplicate dataset name 'passkey'",
        ),
    ],
)
def test_invalid_settings_name_the_json_path(tmp_path, model_dir, data_file, mutate, message):
    data = _full(model_dir, data_file)
    mutate(data)
    with pytest.raises(SettingsError) as err:
        load_settings(_write(tmp_path, data))
    assert str(err.value).startswith(message.split(" must")[0].split(": ")[0])
    assert message in str(err.value)


def test_dataset_without_required_fields(tmp_path, model_dir, data_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "label": "a"}) + "\n")
    data = _full(model_dir, data_file)
    data["datasets"].append({"path": str(bad)})
    with pytest.raises(SettingsError, match=r"datasets\[3\]\.path: dataset .* lacks field\(s\) \['answer'\]"):
        load_settings(_write(tmp_path, data))


def test_corrupt_dataset_and_json(tmp_path, model_dir, data_file):
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    data = _full(model_dir, data_file)
    data["datasets"] = [str(broken)]
    with pytest.raises(SettingsError, match=r"datasets\[0\]: cannot read dataset"):
        load_settings(_write(tmp_path, data))
    path = tmp_path / "s.json"
    path.write_text('{"settings": [}')
    with pytest.raises(SettingsError, match="invalid JSON at line 1"):
        load_settings(path)
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(tmp_path / "absent.json")


def test_settings_are_data_not_code(tmp_path, model_dir):
    # Strings that look like code stay strings and fail validation as plain values.
    data = [
        {"swaa_config": {"keep_first": "__import__('os').system('false')"}, "model_list": [str(model_dir)]}
    ]
    with pytest.raises(SettingsError, match="keep_first: must be an integer"):
        parse_settings(data, source=_write(tmp_path, data))


@pytest.mark.parametrize("name", ["eval_tiny.json", "eval_reference_format.json"])
def test_shipped_settings_validate(name):
    settings = load_settings(REPO / "settings" / name)
    assert settings.runs and settings.datasets
