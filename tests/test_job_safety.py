"""Long jobs never lie about what they computed: changed settings, two runs at once, foreign folders,
over-long prompts, torn lines, Ctrl-C and the judge's key. Each test builds its bad situation itself."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swaa_patch.cli import main as cli_main
from swaa_patch.evaluation import runner as runner_module
from swaa_patch.evaluation.judge import make_judge
from swaa_patch.evaluation.layout import Layout
from swaa_patch.evaluation.report import write_report
from swaa_patch.evaluation.runner import run_eval
from swaa_patch.evaluation.settings import JudgeSettings, parse_settings
from swaa_patch.jobs.builtin_models import TinySpec, build_tiny_model
from swaa_patch.jobs.errors import RunRefused
from swaa_patch.jobs.io import read_jsonl
from swaa_patch.jobs.output import LOCK_PATTERN, check_output_dir
from swaa_patch.jobs.validate import SettingsError
from swaa_patch.training.distill import run_distill
from swaa_patch.training.settings import parse_distill

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3"))


@pytest.fixture(scope="module")
def short_model(tmp_path_factory):
    """The tiny model with only 160 positions: 192-token prompts do not fit."""
    return str(build_tiny_model(tmp_path_factory.mktemp("short") / "short-qwen3", TinySpec(max_position_embeddings=160)))


def eval_settings(tmp_path: Path, model: str, **extra):
    data = {
        "output_dir": str(tmp_path / "out"),
        "datasets": [{"task": "passkey", "lengths": [128, 192], "depths": [0.5], "samples": 1}],
        "max_new_tokens": 4,
        "batch_size": 1,
        "settings": [{"swaa_config": None, "model_list": [model]}],
        **extra,
    }
    return parse_settings(data, source=tmp_path / "settings.json")


def write_settings(tmp_path: Path, model: str, **extra) -> Path:
    data = {"output_dir": "out", "max_new_tokens": 4, "settings": [{"swaa_config": None, "model_list": [model]}],
            "datasets": [{"task": "passkey", "lengths": [128], "depths": [0.2, 0.8], "samples": 1}], **extra}
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(data))
    return path


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


# -- 3. a changed generation setting on a finished folder ------------------------------------------
def test_finished_eval_refuses_a_changed_generation_setting(tmp_path, tiny_model, caplog):
    run_eval(eval_settings(tmp_path, tiny_model))
    resolved = (tmp_path / "out" / "settings.resolved.json").read_text()
    with pytest.raises(RunRefused, match=r"max_new_tokens 4 -> 2.*--recompute"):
        run_eval(eval_settings(tmp_path, tiny_model, max_new_tokens=2))
    assert (tmp_path / "out" / "settings.resolved.json").read_text() == resolved  # not relabelled

    redone: list[str] = []
    metrics = run_eval(eval_settings(tmp_path, tiny_model, max_new_tokens=2),
                       on_batch=lambda e: redone.extend(e.ids), recompute=True)
    assert len(redone) == 2 and metrics[0]["num_samples"] == 2
    rows = read_jsonl(next((tmp_path / "out" / "responses").glob("*/passkey.rank0.jsonl")))
    assert len(rows) == 2 and all(r["response_tokens"] <= 2 for r in rows)
    assert json.loads((tmp_path / "out" / "settings.resolved.json").read_text())["max_new_tokens"] == 2


def test_cli_refusal_is_one_line(tmp_path, tiny_model, caplog, capsys):
    settings = write_settings(tmp_path, tiny_model)
    assert cli_main(["eval", str(settings), "--no-report"]) == 0
    changed = write_settings(tmp_path, tiny_model, max_new_tokens=3)
    caplog.clear()
    assert cli_main(["eval", str(changed), "--no-report"]) == 2
    (line,) = error_lines(caplog)
    assert "max_new_tokens 4 -> 3" in line and "Traceback" not in caplog.text + capsys.readouterr().err


def test_finished_distill_refuses_changed_generation_settings(tmp_path, tiny_model):
    raw = {"model": tiny_model, "datasets": [{"task": "passkey", "lengths": [128], "depths": [0.5]}],
           "output_dir": str(tmp_path / "d"), "max_new_tokens": 3, "device": "cpu"}
    run_distill(parse_distill(raw))
    with pytest.raises(RunRefused, match=r"max_new_tokens 3 -> 2"):
        run_distill(parse_distill({**raw, "max_new_tokens": 2}))
    rows = read_jsonl(run_distill(parse_distill({**raw, "max_new_tokens": 2}), recompute=True))
    assert len(rows) == 1 and rows[0]["response_tokens"] <= 2


# -- 5. one process per output folder ------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from pathlib import Path
from swaa_patch.jobs.output import OutputLock
OutputLock(Path(sys.argv[1]), 0).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_lock_refuses_and_a_killed_one_is_taken_over(tmp_path, tiny_model, caplog):
    settings = eval_settings(tmp_path, tiny_model, limit=1)
    out = Path(settings.output_dir)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                          env=env) as other:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(RunRefused, match=f"in use by process {other.pid} on"):
            run_eval(settings)
        assert not Layout(out).metrics.exists()
        other.kill()  # SIGKILL: its lock file stays behind, naming a process that is gone
    assert (out / LOCK_PATTERN.format(rank=0)).is_file()
    with caplog.at_level(logging.WARNING):
        assert len(run_eval(settings)) == 1
    assert f"its process {other.pid} on" in caplog.text and "is gone" in caplog.text
    assert not (out / LOCK_PATTERN.format(rank=0)).exists()  # released at the end


# -- 6. prompts longer than the model's positions ------------------------------------------------
def test_over_long_prompts_are_cut_marked_and_reported(tmp_path, short_model, caplog):
    with caplog.at_level(logging.WARNING):
        (metrics,) = run_eval(eval_settings(tmp_path, short_model))
    rows = {r["context_length"]: r for r in read_jsonl(next((tmp_path / "out" / "responses").glob("*/*.rank0.jsonl")))}
    assert rows[128]["truncated"] is False and rows[128]["input_tokens"] == rows[128]["prompt_tokens"]
    assert rows[192]["truncated"] is True and rows[192]["input_tokens"] == 160 - 4 < rows[192]["prompt_tokens"]
    assert metrics["truncated_ratio"] == 0.5 and "1 prompt(s) longer than 156 tokens were cut" in caplog.text

    skipped = run_eval(eval_settings(tmp_path / "skip", short_model, truncation="skip"))
    assert skipped[0]["num_samples"] == 1
    with pytest.raises(SettingsError, match=r"max_new_tokens: must be < the model's max_position_embeddings \(160\)"):
        run_eval(eval_settings(tmp_path / "big", short_model, max_new_tokens=160))


def test_distill_drops_prompts_the_teacher_cannot_read_whole(tmp_path, short_model):
    raw = {"model": short_model, "datasets": [{"task": "passkey", "lengths": [128, 192], "depths": [0.5]}],
           "output_dir": str(tmp_path / "d"), "max_new_tokens": 3, "device": "cpu"}
    rows = read_jsonl(run_distill(parse_distill(raw)))
    assert [r["sample_id"].split("-")[1] for r in rows] == ["L128"]


# -- 7. Ctrl-C --------------------------------------------------------------------------------------
def test_ctrl_c_prints_what_finished_and_exits_130(tmp_path, tiny_model, caplog, capsys, monkeypatch):
    settings = write_settings(tmp_path, tiny_model, settings=[
        {"swaa_config": None, "model_list": [tiny_model]},
        {"swaa_config": {"sliding_window_size": 32}, "model_list": [tiny_model]}])
    real = runner_module.generate_batch
    calls = []

    def interrupted_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "generate_batch", interrupted_on_third_batch)
    assert cli_main(["eval", str(settings), "--no-report"]) == 130
    (line,) = error_lines(caplog)
    assert line.startswith("interrupted: 1 of 2 blocks finished in ") and "run the same command again" in line
    assert "Traceback" not in caplog.text + capsys.readouterr().err
    monkeypatch.setattr(runner_module, "generate_batch", real)
    assert cli_main(["eval", str(settings), "--no-report"]) == 0
    assert len(read_jsonl(tmp_path / "out" / "metrics.jsonl")) == 2


# -- 8. a torn line -------------------------------------------------------------------------------
def test_a_torn_line_is_removed_on_the_next_write_and_warned_about_once(tmp_path, tiny_model, caplog):
    settings = eval_settings(tmp_path, tiny_model, datasets=[
        {"task": "passkey", "lengths": [128], "depths": [0.1, 0.5, 0.9], "samples": 1}])

    def stop_after_first(event):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_eval(settings, on_batch=stop_after_first)
    (shard,) = (tmp_path / "out" / "responses").glob("*/passkey.rank0.jsonl")
    with shard.open("a") as handle:
        handle.write('{"id": "passkey-L128-D0.90-S0-0", "respo')
    with caplog.at_level(logging.DEBUG):
        run_eval(settings)
    torn = [r for r in caplog.records if "torn" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(torn) == 1 and "removed 1 torn line(s)" in torn[0].getMessage()
    assert all(line.startswith("{") and line.endswith("}") for line in shard.read_text().splitlines())
    assert len(read_jsonl(shard)) == 3
    caplog.clear()
    run_eval(settings)
    assert "torn" not in caplog.text


# -- 9. security and foreign folders ---------------------------------------------------------------
@pytest.mark.parametrize("judge, message", [
    ({"base_url": "http://judge.example.com/v1"}, "judge.base_url: must use https"),
    ({"base_url": "ftp://judge.example.com"}, "judge.base_url: must be an https:// URL"),
    ({"base_url": "https://user:pw@judge.example.com"}, "judge.base_url: must not hold credentials"),
    ({"api_key_env": "HOME"}, "judge.api_key_env: must name an environment variable ending in _API_KEY or _TOKEN"),
    ({"api_key_env": "AWS_SECRET_ACCESS_KEY"}, "judge.api_key_env: must name"),
])
def test_judge_settings_refuse_clear_text_urls_and_arbitrary_variables(tmp_path, tiny_model, judge, message):
    block = {"base_url": "https://judge.example.com/v1", "model": "m", **judge}
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        eval_settings(tmp_path, tiny_model, judge=block)


@pytest.mark.parametrize("url", ["https://judge.example.com/v1", "http://localhost:8000/v1",
                                 "http://127.0.0.5:8000/v1", "http://[::1]:8000/v1"])
def test_judge_settings_accept_https_and_loopback(tmp_path, tiny_model, url):
    settings = eval_settings(tmp_path, tiny_model, judge={"base_url": url, "model": "m", "api_key_env": "MY_TOKEN"})
    assert make_judge(settings.judge) is not None


def test_a_judge_built_in_code_is_checked_too():
    with pytest.raises(SettingsError, match="judge.api_key_env"):
        make_judge(JudgeSettings(base_url="https://x.example.com", model="m", api_key_env="PATH"))


@pytest.mark.parametrize("target", ["/etc", "/etc/swaa", "/usr/lib/x", "/", "~"])
def test_system_folders_are_never_output_folders(target):
    with pytest.raises(RunRefused, match="system"):
        check_output_dir(Path(target).expanduser(), "eval", force=True)


@pytest.mark.parametrize("content, message", [
    ({"checkpoint-10/trainer_state.json": "{}"}, "holds a swaa sft run"),
    ({"generations/qa.rank0.jsonl": ""}, "holds a swaa distill run"),
    ({"metrics.jsonl": '{"acc": 0.5}\n'}, "metrics.jsonl without run_name"),
    ({"notes.txt": "mine", "src/main.py": ""}, "notes.txt, src"),
])
def test_a_folder_of_another_kind_is_refused_unless_forced(tmp_path, tiny_model, content, message):
    out = tmp_path / "out"
    for name, text in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    with pytest.raises(RunRefused, match=message):
        run_eval(eval_settings(tmp_path, tiny_model, limit=1))
    assert sorted(p.name for p in out.iterdir()) == sorted({n.split("/")[0] for n in content})  # untouched
    check_output_dir(out, "eval", force=True)


def test_foreign_metrics_lines_let_in_by_force_are_left_out(tmp_path, tiny_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"acc": 0.5}\n')
    metrics = run_eval(eval_settings(tmp_path, tiny_model, limit=1), force=True)
    assert [m["run_name"] for m in metrics] == ["tiny-qwen3__full"]
    assert "tiny-qwen3__full" in write_report(out).read_text()


def test_a_report_not_written_by_swaa_is_not_overwritten(tmp_path, tiny_model):
    run_eval(eval_settings(tmp_path, tiny_model, limit=1))
    report = tmp_path / "out" / "report.md"
    report.write_text("# My own notes\n")
    with pytest.raises(RunRefused, match="was not written by `swaa report`"):
        write_report(tmp_path / "out")
    assert report.read_text() == "# My own notes\n"
    write_report(tmp_path / "out", force=True)
    assert report.read_text().startswith("# SWAA evaluation report")
    write_report(tmp_path / "out")  # its own report is replaced without asking


def test_no_pickle_loading_anywhere():
    sources = [p for p in (REPO / "swaa_patch").rglob("*.py")] + list((REPO / "benchmarks").glob("*.py"))
    offenders = [str(p) for p in sources if "weights_only=False" in p.read_text(encoding="utf-8")]
    assert offenders == []
    loads = [p for p in sources if "torch.load(" in p.read_text(encoding="utf-8")]
    assert all("weights_only=True" in p.read_text(encoding="utf-8") for p in loads)


def test_processes_of_one_launch_each_hold_their_own_rank_lock(tmp_path):
    """Ranks share the folder: rank 1's lock does not block rank 0 (accelerate launch keeps working)."""
    from swaa_patch.jobs.output import claimed_output_dir

    out = tmp_path / "out"
    with claimed_output_dir(out, "eval", False, 1, lambda: None):
        assert (out / LOCK_PATTERN.format(rank=1)).read_text().startswith(f'{{"pid": {os.getpid()}')
        with claimed_output_dir(out, "eval", False, 0, lambda: None):
            assert (out / "swaa_run.json").is_file()
        with pytest.raises(RunRefused, match="in use"):
            with claimed_output_dir(out, "eval", False, 1, lambda: None):
                pass
