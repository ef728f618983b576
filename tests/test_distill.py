"""`swaa distill`: teacher answers in batches, filtering, resume, settings validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from swaa_patch import SWAAConfig, apply_swaa
from swaa_patch.evaluation.generation import generate_batch
from swaa_patch.jobs.builtin_models import resolve_builtin_model
from swaa_patch.jobs.io import read_jsonl
from swaa_patch.jobs.loading import load_model, load_tokenizer
from swaa_patch.jobs.prompts import PromptOptions, prepare
from swaa_patch.jobs.validate import SettingsError
from swaa_patch.training.distill import run_distill
from swaa_patch.training.settings import FilterSettings, load_distill_settings, parse_distill

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return resolve_builtin_model("builtin:tiny-random-qwen3", tmp_path_factory.mktemp("distill") / "builtin")


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    """Short prompts whose reference answers a stub judge accepts ("keep") or rejects ("drop")."""
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Fact {i}: the key is {1000 + i}. What is the key?",
             "answer": "keep" if i % 2 == 0 else "drop"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings_for(model_dir, datasets, out, **extra):
    return parse_distill({"model": str(model_dir), "datasets": datasets, "output_dir": str(out),
                          "max_new_tokens": 4, "batch_size": 2, "dtype": "float32", "device": "cpu", **extra})


def test_shipped_settings_parse():
    settings = load_distill_settings(ROOT / "settings" / "distill_tiny.json")
    assert settings.model == "builtin:tiny-random-qwen3" and len(settings.datasets) == 2


@pytest.mark.parametrize("patch, message", [
    ({"num_generations": 2}, "num_generations: several generations per prompt need sampling"),
    ({"filter": {"min_score": 2}}, "filter.min_score: must be a number in [0.0, 1.0], got 2"),
    ({"filter": {"scoring": "judge"}}, "filter.scoring: 'judge' needs a top-level 'judge' block"),
    ({"datasets": [{"task": "nope"}]}, "datasets[0].task: must be one of"),
    ({"truncation": "middle"}, "settings file: unknown key(s) ['truncation']"),
])
def test_settings_errors_name_the_json_path(model_dir, tmp_path, patch, message):
    raw = {"model": str(model_dir), "datasets": ["synthetic:passkey"], "output_dir": str(tmp_path), **patch}
    with pytest.raises(SettingsError) as err:
        parse_distill(raw)
    assert message in str(err.value)


def test_greedy_answers_come_from_the_full_attention_model_and_resume(model_dir, qa_file, tmp_path):
    # A teacher folder whose config.json carries a SWAAConfig: distill must still use full attention.
    swa_dir = tmp_path / "swa_model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.swaa_config = SWAAConfig(sliding_window_size=2, force_fa_decode=False)
    model.save_pretrained(swa_dir)
    load_tokenizer(str(model_dir)).save_pretrained(swa_dir)
    settings = settings_for(swa_dir, [str(qa_file)], tmp_path / "out")

    def crash(index: int) -> None:
        if index == 1:
            raise RuntimeError("simulated crash after two batches")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_distill(settings, on_batch=crash)
    shard = tmp_path / "out" / "generations" / "qa.rank0.jsonl"
    assert len(read_jsonl(shard)) == 4  # two batches of two, durably written
    dataset = run_distill(settings)
    logged = read_jsonl(shard)
    assert len(logged) == 5 and len({r["id"] for r in logged}) == 5  # resumed: nothing generated twice

    tokenizer = load_tokenizer(str(model_dir))
    stock = load_model(str(model_dir), "float32", "sdpa", "cpu")
    prepared = prepare(tokenizer, read_jsonl(qa_file), PromptOptions(True, None, "skip"))
    expected = {p.id: out["response"] for p, out in zip(prepared, generate_batch(stock, tokenizer, prepared, 4))}
    rows = read_jsonl(dataset)
    assert {r["sample_id"]: r["response"] for r in rows} == expected
    swa = apply_swaa(stock, model.config.swaa_config)
    as_swa = {p.id: out["response"] for p, out in zip(prepared, generate_batch(swa, tokenizer, prepared, 4))}
    assert as_swa != expected  # the check above would catch a teacher that ran with the window
    assert {"prompt", "response", "answer", "score", "teacher", "finished"} <= set(rows[0])


def test_filter_keeps_answers_the_scorer_accepts_and_sampling_is_reproducible(model_dir, qa_file, tmp_path):
    settings = settings_for(model_dir, [str(qa_file)], tmp_path / "a", num_generations=2, temperature=1.0)
    settings = replace(settings, filter=FilterSettings(scoring="judge", min_score=1.0))

    def judge(question: str, answer, response: str) -> float:
        return 1.0 if answer == "keep" else 0.0

    rows = read_jsonl(run_distill(settings, judge=judge))
    assert sorted({r["sample_id"] for r in rows}) == ["q0", "q2", "q4"]
    assert sorted(r["generation"] for r in rows if r["sample_id"] == "q0") == [0, 1]
    again = read_jsonl(run_distill(replace(settings, output_dir=tmp_path / "b"), judge=judge))
    assert [r["response"] for r in again] == [r["response"] for r in rows]  # seeded per batch
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())["datasets"]["qa"]
    assert summary == {**summary, "prompts": 5, "answers": 10, "kept": 6, "teacher_accuracy": 0.6}


def test_cli_runs_the_shipped_tiny_settings(tmp_path):
    from swaa_patch.cli import main

    assert main(["distill", str(ROOT / "settings" / "distill_tiny.json"), "--output-dir", str(tmp_path)]) == 0
    rows = read_jsonl(tmp_path / "dataset.jsonl")
    assert len(rows) == 6 and all(r["prompt"] and "response" in r for r in rows)
    assert main(["distill", str(ROOT / "settings" / "distill_tiny.json"), "--output-dir", str(tmp_path)]) == 0
    assert len(read_jsonl(tmp_path / "generations" / "passkey.rank0.jsonl")) == 4  # finished: nothing redone


def test_compiled_teacher_answers_like_the_eager_one_and_compiles_once(model_dir, qa_file, tmp_path):
    """`compile: on` (stock StaticCache + compiled decode steps for the full-attention teacher; dynamo
    alone on a CPU): 5 prompts in batches of 2 give `compile: off`'s answers, and the last batch of
    one prompt is filled to 2 rather than compiling the step again."""
    import torch
    from torch._dynamo.utils import counters

    answers, graphs = {}, {}
    for mode in ("off", "on"):
        torch._dynamo.reset()
        before = counters["stats"]["unique_graphs"]
        dataset = run_distill(settings_for(model_dir, [str(qa_file)], tmp_path / mode, compile=mode))
        graphs[mode] = counters["stats"]["unique_graphs"] - before
        answers[mode] = {r["sample_id"]: r["response"] for r in read_jsonl(dataset)}
    assert len(answers["on"]) == 5 and answers["on"] == answers["off"]
    assert graphs == {"off": 0, "on": 1}
