"""The eval runner on a tiny random Qwen3: batching, scoring, sample-level resume, report, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from swaa_patch.cli import main as cli_main
from swaa_patch.evaluation import runner as runner_module
from swaa_patch.evaluation.layout import Layout
from swaa_patch.evaluation.report import write_report
from swaa_patch.evaluation.runner import run_eval
from swaa_patch.evaluation.settings import parse_settings
from swaa_patch.jobs.builtin_models import build_tiny_model
from swaa_patch.jobs.errors import SettingsError
from swaa_patch.jobs.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SWA = {"sliding_window_size": 32, "keep_first": 2, "force_fa_decode": True, "non_sliding_layers": []}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3"))


def make_settings(tmp_path: Path, model: str, **extra):
    data = {
        "output_dir": str(tmp_path / "out"),
        "datasets": [{"task": "passkey", "lengths": [128, 192], "depths": [0.2, 0.5, 0.8], "samples": 1}],
        "max_new_tokens": 4,
        "batch_size": 2,
        "settings": [
            {"swaa_config": None, "model_list": [model]},
            {"swaa_config": SWA, "model_list": [model]},
        ],
        **extra,
    }
    return parse_settings(data, source=tmp_path / "settings.json")


class Crash(RuntimeError):
    pass


def shard_rows(layout: Layout) -> dict[str, list[dict]]:
    return {p.parent.name: read_jsonl(p) for p in (layout.root / "responses").glob("*/*.rank*.jsonl")}


def test_resume_after_crash_redoes_nothing(tmp_path, tiny_model, monkeypatch):
    settings = make_settings(tmp_path, tiny_model)
    layout = Layout(settings.output_dir)
    seen: list[list[tuple[str, str]]] = []

    def crash_after_two(event):
        seen.append([(event.block.run_name, i) for i in event.ids])
        if len(seen) == 2:
            raise Crash("simulated kill")

    with pytest.raises(Crash):
        run_eval(settings, on_batch=crash_after_two)
    first = [key for batch in seen for key in batch]
    assert len(first) == 4 and not layout.metrics.exists()
    # A kill in the middle of a write leaves a torn line; it must be ignored, not fatal.
    (shard,) = layout.block_dir("tiny-qwen3__full").glob("passkey.rank0.jsonl")
    with shard.open("a") as handle:
        handle.write('{"id": "passkey-L192-D0.80-S0-0", "respo')

    redo: list[tuple[str, str]] = []
    metrics = run_eval(settings, on_batch=lambda e: redo.extend((e.block.run_name, i) for i in e.ids))
    assert not set(redo) & set(first)  # nothing finished before the crash is generated again
    assert len(redo) == 6 + 6 - 4
    assert [(m["run_name"], m["num_samples"]) for m in metrics] == [
        ("tiny-qwen3__full", 6),
        ("tiny-qwen3__swa32_sink2_fad", 6),
    ]
    for run, rows in shard_rows(layout).items():
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) == 6, run
        assert all(r["scoring"] == "numeric" and r["score"] in (0.0, 1.0) for r in rows)
        assert all(
            r["input_tokens"] >= r["context_length"] - 3 and r["context_length"] in (128, 192) for r in rows
        )

    # Everything done: a third run generates nothing and never loads the model.
    monkeypatch.setattr(runner_module, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    again: list[str] = []
    assert len(run_eval(settings, on_batch=lambda e: again.extend(e.ids))) == 2
    assert again == []


def test_more_samples_later_reuses_finished_ones(tmp_path, tiny_model):
    small = make_settings(tmp_path, tiny_model, limit=2)
    run_eval(small)
    more = make_settings(tmp_path, tiny_model, limit=4)
    new: list[str] = []
    metrics = run_eval(more, on_batch=lambda e: new.extend(e.ids))
    assert len(new) == 2 * 2 and {m["num_samples"] for m in metrics} == {4}


def test_changed_generation_settings_are_refused(tmp_path, tiny_model):
    run_eval(make_settings(tmp_path, tiny_model, limit=1))
    with pytest.raises(RuntimeError, match="max_new_tokens"):
        run_eval(make_settings(tmp_path, tiny_model, limit=2, max_new_tokens=5))


def test_metrics_record_is_flat_and_readable(tmp_path, tiny_model):
    (full, swa) = run_eval(make_settings(tmp_path, tiny_model, limit=2))
    assert full["config_name"] == "full" and full["sliding_window_size"] is None
    assert swa["run_name"] == "tiny-qwen3__swa32_sink2_fad"
    assert (swa["sliding_window_size"], swa["keep_first"], swa["force_fa_decode"]) == (32, 2, True)
    assert set(swa["accuracy_by_context_length"]) <= {"128", "192"} and 0.0 <= swa["accuracy"] <= 1.0
    assert swa["environment"].startswith("CPU (") and f"torch {torch.__version__}," in swa["environment"]
    parquet = Layout(tmp_path / "out").parquet(swa["run_name"], "passkey")
    import pyarrow.parquet as pq

    assert pq.read_table(parquet).num_rows == 2


def test_batched_left_padding_matches_one_by_one(tmp_path, tiny_model):
    rows = {}
    for batch_size in (1, 3):
        out = tmp_path / f"b{batch_size}"
        run_eval(
            make_settings(
                out,
                tiny_model,
                batch_size=batch_size,
                max_new_tokens=6,
                settings=[{"swaa_config": None, "model_list": [tiny_model]}],
            )
        )
        rows[batch_size] = {
            r["id"]: r["response"] for r in read_jsonl(next((out / "out").glob("responses/*/*.jsonl")))
        }
    assert rows[1] == rows[3]


def test_truncation_and_skip(tmp_path, tiny_model):
    cut = make_settings(tmp_path / "cut", tiny_model, max_prompt_tokens=64, truncation="middle", limit=2)
    (m, _) = run_eval(cut)
    rows = next(iter(shard_rows(Layout(cut.output_dir)).values()))
    assert m["truncated_ratio"] == 1.0 and all(r["input_tokens"] == 64 for r in rows)
    skip = make_settings(tmp_path / "skip", tiny_model, max_prompt_tokens=170, truncation="skip")
    (m, _) = run_eval(skip)
    assert m["num_samples"] == 3  # only the 128-token prompts fit


def test_file_dataset_with_fake_judge(tmp_path, tiny_model):
    data = tmp_path / "qa.jsonl"
    rows = [
        {
            "context": f"The code is {i}.",
            "question": "What is the code?",
            "answer": str(i),
            "question_type": t,
        }
        for i, t in enumerate(["a", "a", "b"])
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []

    def fake_judge(question, answer, response):
        calls.append((question, answer))
        return 1.0 if answer == "1" else 0.0

    settings = make_settings(
        tmp_path,
        tiny_model,
        datasets=[{"path": str(data), "scoring": "judge"}],
        chat_template=False,
        judge={"base_url": "https://judge.invalid/v1", "model": "never-called"},
    )
    (full, swa) = run_eval(settings, judge=fake_judge)
    assert len(calls) == 6 and calls[0][0] == "What is the code?"
    assert full["accuracy"] == swa["accuracy"] == round(1 / 3, 4)
    assert full["accuracy_by_type"] == {"a": 0.5, "b": 0.0}


def test_decode_kv_bytes_are_measured_flat_for_a_bounded_cache(tmp_path, tiny_model):
    """max_kv_bytes is what the generation's cache held per sequence: full attention grows with the
    prompt; a bounded cache holds keep_first + W - 1 keys per layer at any length (cache.py)."""
    bounded = {**SWA, "force_fa_decode": False}
    settings = make_settings(tmp_path, tiny_model, settings=[
        {"swaa_config": None, "model_list": [tiny_model]}, {"swaa_config": bounded, "model_list": [tiny_model]}])
    full, swa = run_eval(settings)
    config = json.loads((Path(tiny_model) / "config.json").read_text())
    per_key = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 4  # float32
    assert swa["max_kv_bytes"] == per_key * (bounded["keep_first"] + bounded["sliding_window_size"] - 1)
    assert full["max_kv_bytes"] >= per_key * 192  # the longest prompt's keys at least
    import pyarrow.parquet as pq

    responses = pq.read_table(Layout(settings.output_dir).parquet(swa["run_name"], "passkey")).to_pylist()
    assert len(responses) == 6 and {r["kv_bytes"] for r in responses} == {swa["max_kv_bytes"]}  # flat in length


def test_report_writes_table_and_plots(tmp_path, tiny_model):
    run_eval(make_settings(tmp_path, tiny_model, limit=3))
    report = write_report(tmp_path / "out")
    text = report.read_text()
    assert "| run | passkey | mean | decode KV / sequence |" in text and "tiny-qwen3__swa32_sink2_fad" in text
    assert "Computed on:\n\n- CPU (" in text and f"torch {torch.__version__}" in text and ": 2 blocks" in text
    plots = {p.name for p in (tmp_path / "out" / "plots").glob("*.png")}
    assert {
        "accuracy_by_config.png",
        "accuracy_by_context_length.png",
        "accuracy_by_depth.png",
        "heatmap_passkey.png",
    } <= plots
    assert all((tmp_path / "out" / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)


def test_cli_rejects_bad_settings_before_loading(tmp_path, caplog):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"swaa_config": {"keep_first": -1}, "model_list": ["builtin:tiny-random-qwen3"]}])
    )
    assert cli_main(["eval", str(bad)]) == 2
    assert "settings[0].swaa_config.keep_first: must be an integer >= 0, got -1" in caplog.text


def test_cli_make_data(tmp_path):
    out = tmp_path / "data"
    args = [
        "make-data",
        "--tasks",
        "passkey",
        "depth_qa",
        "--lengths",
        "200",
        "--depths",
        "0.5",
        "--samples",
        "2",
        "--out-dir",
        str(out),
        "--format",
        "parquet",
    ]
    assert cli_main(args) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out / "passkey.parquet").num_rows == 2
    assert pq.read_table(out / "depth_qa.parquet").column("answer").to_pylist()[0] in "ABCD"


def test_end_to_end_shipped_settings(tmp_path):
    """What CI runs: the shipped settings file, builtin tiny model built on the fly, then the report."""
    out = tmp_path / "e2e"
    assert cli_main(["eval", str(REPO / "settings" / "eval_tiny.json"), "--output-dir", str(out)]) == 0
    metrics = read_jsonl(out / "metrics.jsonl")
    assert len(metrics) == 3 * 3
    assert {m["dataset"] for m in metrics} == {"passkey", "depth_qa", "variable_tracking_file"}
    assert (out / "report.md").is_file() and (out / "plots" / "accuracy_by_config.png").is_file()
    assert cli_main(["report", str(out)]) == 0


@pytest.mark.slow
def test_data_parallel_over_two_cpu_processes(tmp_path, tiny_model):
    """Regression: a CPU-only torchrun launch once made every rank redo (and race on) all work."""
    import os
    import subprocess
    import sys

    settings = tmp_path / "dp.json"
    settings.write_text(
        json.dumps(
            {
                "output_dir": "out",
                "max_new_tokens": 3,
                "batch_size": 2,
                "device": "cpu",
                "datasets": [
                    {"task": "passkey", "lengths": [128], "depths": [0.1, 0.4, 0.6, 0.9], "samples": 1}
                ],
                "settings": [{"swaa_config": SWA, "model_list": [tiny_model]}],
            }
        )
    )
    # A CPU test everywhere: with GPUs visible, gloo barriers would address cuda:RANK.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "swaa_patch.cli",
        "eval",
        str(settings),
        "--no-report",
    ]
    proc = subprocess.run(cmd, env=env, timeout=240, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    layout = Layout(tmp_path / "out")
    shards = layout.shards("tiny-qwen3__swa32_sink2_fad", "passkey")
    assert [p.name for p in shards] == ["passkey.rank0.jsonl", "passkey.rank1.jsonl"]
    ids = [r["id"] for p in shards for r in read_jsonl(p)]
    assert len(ids) == len(set(ids)) == 4 and all(len(read_jsonl(p)) == 2 for p in shards)
    (metrics,) = read_jsonl(layout.metrics)
    assert metrics["num_samples"] == 4


def test_compiled_decoding_answers_like_the_eager_path(tmp_path, tiny_model):
    """`compile: on` (StaticSWAACache + compiled decode steps; dynamo alone on a CPU) gives the
    answers of `compile: off` (the dynamic bounded cache), batched with left padding, for the
    full-attention row and the SWAA row."""
    rows = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        run_eval(make_settings(out, tiny_model, compile=mode, batch_size=3, max_new_tokens=6))
        rows[mode] = {
            (p.parent.name, r["id"]): r["response"]
            for p in (out / "out").glob("responses/*/*.jsonl") for r in read_jsonl(p)
        }
    assert len(rows["on"]) == len(rows["off"]) > 0
    assert rows["on"] == rows["off"]


def test_a_short_last_batch_does_not_compile_the_decode_step_again(tmp_path, tiny_model):
    """6 samples in batches of 4: the last batch of 2 is filled to 4 under `compile: on`, so every row
    compiles what batches of 3 (no short batch) compile, and answers stay those of `compile: off`."""
    from torch._dynamo.utils import counters

    graphs, answers = {}, {}
    for mode, batch_size in (("on", 3), ("on", 4), ("off", 4)):
        torch._dynamo.reset()
        before = counters["stats"]["unique_graphs"]
        out = tmp_path / f"{mode}{batch_size}"
        run_eval(make_settings(out, tiny_model, compile=mode, batch_size=batch_size, max_new_tokens=6))
        graphs[mode, batch_size] = counters["stats"]["unique_graphs"] - before
        rows = [r for p in (out / "out").glob("responses/*/*.jsonl") for r in read_jsonl(p)]
        answers[mode, batch_size] = {(r["run_name"], r["id"]): r["response"] for r in rows}
        if mode == "on":  # one static cache per row, reused by every batch: the same bytes per sequence
            assert len({(r["run_name"], r["kv_bytes"]) for r in rows}) == 2
    assert graphs["on", 4] == graphs["on", 3] > 0 and graphs["off", 4] == 0
    assert len(answers["on", 4]) == 12 and answers["on", 4] == answers["off", 4]


def test_compile_setting_is_validated(tmp_path, tiny_model):
    with pytest.raises(SettingsError, match=r"compile: must be one of \['auto', 'on', 'off'\], got 'always'"):
        make_settings(tmp_path, tiny_model, compile="always")


def test_compiled_rows_do_not_pile_up_in_dynamos_cache(tmp_path, tiny_model):
    """Each compiled row (model + SWAA config) adds an entry to dynamo's cache of the decoder's forward;
    at `recompile_limit` entries a fullgraph compile fails hard (the 9th row of an H200 eval did). The
    runner drops a finished row's graphs, so even a limit of 1 lets several rows compile in turn."""
    torch._dynamo.reset()
    rows = [{"swaa_config": config, "model_list": [tiny_model]} for config in (None, SWA, {**SWA, "keep_first": 0})]
    with torch._dynamo.config.patch(recompile_limit=1):
        metrics = run_eval(make_settings(tmp_path, tiny_model, compile="on", max_new_tokens=3, settings=rows))
    assert len({m["run_name"] for m in metrics}) == 3
