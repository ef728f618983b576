"""`accelerate launch --config_file sft/accelerate_ddp.yaml --num_processes 2 -m swaa_patch.cli sft` end to
end on a CPU (two gloo processes): both ranks train, the run is saved once, and its losses equal one
process's at the same global batch (gradient accumulation 2).

sft/accelerate_fsdp.yaml is not tested here: accelerate 1.15 applies FSDP only on accelerators, so on
CPUs that launch runs as this data-parallel one (swaa sft logs a warning saying so); tests/test_fsdp2_cpu.py
applies what it asks of FSDP2 with torch's calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swaa_patch.training.settings import parse_sft
from swaa_patch.training.sft import run_sft

pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[1]
SWAA = {"sliding_window_size": 16, "keep_first": 2, "force_fa_decode": True}


def settings(data: Path, out: Path, accumulation: int) -> dict:
    return {"model": "builtin:tiny-random-qwen3", "swaa_config": SWAA, "datasets": [str(data)],
            "output_dir": str(out), "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"max_length": 256, "packing": False},
            "training": {"learning_rate": 1e-2, "max_steps": 2, "per_device_train_batch_size": 1,
                         "gradient_accumulation_steps": accumulation, "warmup_ratio": 0.0, "logging_steps": 1,
                         "save_steps": 2, "lr_scheduler_type": "constant"},
            "resume": False}


def losses(out: Path) -> list[float]:
    history = json.loads((out / "train_metrics.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.slow
def test_two_process_ddp_launch_matches_one_process_at_the_same_global_batch(tmp_path):
    data = tmp_path / "train.jsonl"
    row = {"prompt": "The pass key is 7341. " + "The sky is blue. " * 12 + "What is the pass key?", "response": "7341"}
    data.write_text((json.dumps(row) + "\n") * 8)  # identical rows: the samplers' orders cannot differ
    launched = tmp_path / "ddp.json"
    launched.write_text(json.dumps(settings(data, tmp_path / "ddp", 1)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "sft" / "accelerate_ddp.yaml"),
               "--num_processes", "2", "-m", "swaa_patch.cli", "sft", str(launched)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "train_metrics.json").read_text())["metrics"]
    assert metrics["num_processes"] == 2 and metrics["distributed_type"] == "MULTI_CPU"
    assert (tmp_path / "ddp" / "final" / "adapter_config.json").is_file()
    assert (tmp_path / "ddp" / "checkpoint-2" / "swaa_checkpoint.json").is_file()

    one = run_sft(parse_sft(settings(data, tmp_path / "one", 2)))
    assert one.metrics["num_processes"] == 1
    # float32 in both (the DDP config's mixed_precision bf16 no longer leaks into a float32 run: with it the losses
    # differed by 3e-5 and 2e-4); identical examples on both processes: the same losses, bit-identical when measured
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "one"), rel=1e-6)
