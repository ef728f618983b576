"""``swaa serve``: transformers' OpenAI-compatible server with continuous batching on a SWAA model.

End to end: the launcher serves the shipped demo model on loopback; concurrent chat requests get,
sample by sample, the answers ``swaa eval`` gives for the same prompts (greedy, same max tokens,
same chat template). Bad configs and options are refused before the server starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from swaa_patch.cli import main as cli_main
from swaa_patch.evaluation.runner import run_eval
from swaa_patch.evaluation.settings import parse_settings
from swaa_patch.jobs.io import read_jsonl
from swaa_patch.serve import same_model, serve_argv

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "model"
DATA = REPO / "eval" / "lm_eval" / "swaa_demo" / "data"
TASKS = ("passkey", "multikey_niah", "kv_lookup")
LIMIT = 2  # samples per task
MAX_TOKENS = 16
# layers 0 and 2 bounded (4 sinks + a ring of 64), 1 full, 3 force_fa_decode
SWAA = {"sliding_window_size": 64, "keep_first": 4, "force_fa_decode": [3], "non_sliding_layers": [1]}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
STARTUP_S = 180


def swaa_eval_answers(out_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``swaa eval``'s answers with the SWAA config and with full attention, by sample id."""
    settings = parse_settings({
        "output_dir": str(out_dir), "datasets": [str(DATA / f"{t}.jsonl") for t in TASKS], "limit": LIMIT,
        "max_new_tokens": MAX_TOKENS, "batch_size": 2, "dtype": "float32", "device": "cpu", "chat_template": True,
        "settings": [{"swaa_config": SWAA, "model_list": [str(DEMO)]}, {"swaa_config": None, "model_list": [str(DEMO)]}],
    })
    run_eval(settings)
    answers = {}
    for path in out_dir.rglob("*.rank0.jsonl"):
        answers.setdefault(path.parent.name.endswith("__full"), {}).update(
            {r["id"]: r["response"] for r in read_jsonl(path)}
        )
    return answers[False], answers[True]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"swaa serve exited with {server.returncode}: {server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"swaa serve did not answer /health within {STARTUP_S} s")


def chat(url: str, prompt: str) -> str:
    body = {
        "model": str(DEMO), "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS, "temperature": 0,
    }
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_served_answers_equal_swaa_eval(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("openai")
    config = tmp_path / "swaa_config.json"
    config.write_text(json.dumps(SWAA))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "swaa_patch", "serve", str(DEMO), "--swaa-config", str(config),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32",
        "--attn-implementation", "sdpa", "--cb-num-blocks", "256", "--cb-block-size", "32",
        "--cb-max-batch-tokens", "512",
    ]
    server = subprocess.Popen(
        command, cwd=tmp_path, env={**os.environ, **OFFLINE}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        expected, full_attention = swaa_eval_answers(tmp_path / "eval")
        prompts = {row["id"]: row["prompt"] for t in TASKS for row in read_jsonl(DATA / f"{t}.jsonl")}
        wait_healthy(url, server)
        with ThreadPoolExecutor(len(expected)) as pool:  # concurrent requests: batched together
            served = dict(zip(expected, pool.map(lambda i: chat(url, prompts[i]), expected)))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert len(expected) == len(TASKS) * LIMIT
    assert served == expected
    assert expected != full_attention  # the server ran SWAA: its answers are not the stock model's


def test_serve_runs_transformers_serve_with_continuous_batching():
    assert serve_argv("m", ["--port", "9"]) == ["serve", "m", "--continuous-batching", "--port", "9"]
    assert serve_argv("m", ["--no-continuous-batching"]) == ["serve", "m", "--no-continuous-batching"]


def test_the_served_model_is_recognised_in_every_release_s_naming():
    assert same_model(str(DEMO), str(DEMO))  # a local path as given (5.18+)
    assert same_model(f"{DEMO}@main", str(DEMO))  # 5.17 appends a revision to local paths too
    assert same_model("org/name@main", "org/name") and not same_model("org/other@main", "org/name")
    assert not same_model(str(DEMO.parent), str(DEMO))


@pytest.mark.parametrize("config, message", [
    ({"sliding_window_size": 0}, "swaa_config.sliding_window_size: must be None or an integer >= 1"),
    ({"sliding_window_size": 8, "non_sliding_layers": [9]}, "non_sliding_layers: layer indices must be in"),
    ({"window": 8}, "unknown field"),
])
def test_bad_swaa_configs_are_refused_before_the_server_starts(tmp_path, caplog, config, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    pytest.importorskip("fastapi")
    assert cli_main(["serve", str(DEMO), "--swaa-config", str(path), "--port", "1"]) == 2
    assert message in caplog.text


def test_serve_needs_its_config_file(capsys):
    with pytest.raises(SystemExit):
        cli_main(["serve", str(DEMO)])
    assert "--swaa-config" in capsys.readouterr().err
