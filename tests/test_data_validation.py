"""Bad data files are found whole, before any model loads: one error naming file:line and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swaa_patch.cli import main as cli_main
from swaa_patch.data.loaders import DatasetError, load_pairs, load_records
from swaa_patch.evaluation.settings import parse_settings
from swaa_patch.jobs.validate import SettingsError
from swaa_patch.training.settings import parse_distill, parse_sft

GOOD = {"prompt": "What is the code?", "answer": "42"}


@pytest.fixture()
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def rows(*items: dict) -> list[str]:
    return [json.dumps(item) for item in items]


def corrupt_parquet(path: Path) -> Path:
    """A parquet file whose schema reads fine but whose data page is garbage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = [{"prompt": f"prompt number {i} " * 20, "answer": str(i)} for i in range(200)]
    pq.write_table(pa.Table.from_pylist(table), path)
    data = bytearray(path.read_bytes())
    data[200:600] = b"\xab" * 400
    path.write_bytes(bytes(data))
    assert pq.read_schema(path).names == ["prompt", "answer"]  # what a schema-only check would see
    return path


@pytest.mark.parametrize("lines, message", [
    (rows(GOOD, GOOD) + ['{"prompt": "torn", "answ'], r"bad\.jsonl:3: not valid JSON"),
    (rows(GOOD) + ["", "not json at all"], r"bad\.jsonl:3: not valid JSON"),  # blank lines still count
    (rows(GOOD, {**GOOD, "id": 2}, {"prompt": "p", "id": 3}, {"prompt": "q", "id": 4}),
     r"bad\.jsonl:3: lacks field\(s\) \['answer'\]"),
    (rows(GOOD, {"prompt": 7, "answer": "a", "id": 9}), r"bad\.jsonl:2: field 'prompt' must be a string, got int"),
    (rows(GOOD, {"prompt": "p", "answer": {"x": 1}, "id": 9}), r"bad\.jsonl:2: field 'answer' must be a string"),
    (rows(GOOD) + ["[1, 2]"], r"bad\.jsonl:2: must be a JSON object, got list"),
    (rows({**GOOD, "id": "a"}, {**GOOD, "id": "a"}), r"bad\.jsonl:2: duplicate sample id 'a' \(first at .*bad\.jsonl:1\)"),
])
def test_every_jsonl_line_is_checked_with_its_1_based_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DatasetError, match=message):
        load_records(path)


def test_a_corrupt_parquet_data_page_names_the_file(tmp_path):
    path = corrupt_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match=r"bad\.parquet: not a readable parquet file: .*[Cc]orrupt"):
        load_records(path)


def test_json_rows_are_numbered_from_1(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "id": 1}, {"question": "q", "answer": "a", "id": 2}]))
    with pytest.raises(DatasetError, match=r"bad\.json row 3: lacks field\(s\) \['prompt \(or context \+ question\)'\]"):
        load_records(path)


def test_training_pairs_need_both_fields_on_every_row(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", rows({"prompt": "p", "response": "r"}, {"prompt": "p"}))
    with pytest.raises(DatasetError, match=r"train\.jsonl:2: lacks field\(s\) \['response'\]"):
        load_pairs(path, "prompt", "response")


def test_eval_settings_refuse_a_bad_later_line(tmp_path, model_dir):
    path = write_jsonl(tmp_path / "bad.jsonl", rows(GOOD, {**GOOD, "id": 1}, {**GOOD, "id": 2}, {"prompt": "p", "id": 3}))
    data = {"settings": [{"swaa_config": None, "model_list": [str(model_dir)]}], "datasets": [str(path)]}
    with pytest.raises(SettingsError, match=r"^datasets\[0\]: dataset .*bad\.jsonl:4: lacks field\(s\) \['answer'\]"):
        parse_settings(data, source=tmp_path / "s.json")


def test_distill_and_sft_settings_check_every_row(tmp_path, model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", rows({"prompt": "p", "response": "r", "answer": "a"}) + ["{oops"])
    with pytest.raises(SettingsError, match=r"^datasets\[0\]: cannot read dataset .*bad\.jsonl:2: not valid JSON"):
        parse_distill({"model": str(model_dir), "datasets": [str(bad)]})
    with pytest.raises(SettingsError, match=r"^datasets\[0\]: cannot read dataset .*bad\.jsonl:2: not valid JSON"):
        parse_sft({"model": str(model_dir), "swaa_config": None, "datasets": [str(bad)]})
    parquet = corrupt_parquet(tmp_path / "train.parquet")
    with pytest.raises(SettingsError, match=r"^datasets\[0\]: cannot read dataset .*train\.parquet"):
        parse_sft({"model": str(model_dir), "swaa_config": None, "datasets": [str(parquet)],
                   "data": {"response_field": "answer"}})


@pytest.mark.parametrize("command", ["eval", "distill", "sft"])
def test_cli_prints_one_line_and_exits_2(tmp_path, model_dir, caplog, capsys, command):
    bad = write_jsonl(tmp_path / "bad.jsonl", rows({"prompt": "p", "response": "r", "answer": "a"},
                                                   {"prompt": "p", "response": "r", "answer": None}))
    settings = {
        "eval": {"settings": [{"swaa_config": None, "model_list": [str(model_dir)]}], "datasets": [str(bad)]},
        "distill": {"model": str(model_dir), "datasets": [str(bad)]},
        "sft": {"model": str(model_dir), "swaa_config": None, "datasets": [str(bad)],
                "data": {"response_field": "answer"}},
    }[command]
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    assert cli_main([command, str(path), "--output-dir", str(tmp_path / "out")]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "bad.jsonl:2" in errors[0].getMessage() and "'answer'" in errors[0].getMessage()
    assert "Traceback" not in caplog.text + capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written (or loaded)
