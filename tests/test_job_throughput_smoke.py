"""benchmarks/job_throughput.py end to end on a tiny model on the CPU: `swaa eval` runs as its own
command with `compile` off and on (fresh caches, then the caches of the run before), each in a new
process and output folder, and the table has every row's samples/s against `off`."""

from __future__ import annotations

import os
import sys

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the --tiny smoke run is for CPU machines (run_gpu.sh jobs runs the real one)", allow_module_level=True)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import job_throughput  # noqa: E402


def test_tiny_eval_job_off_and_on(tmp_path):
    out = tmp_path / "job_throughput.md"
    work = tmp_path / "work"
    assert job_throughput.main(["--tiny", "--jobs", "eval", "--out", str(out), "--work", str(work)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| swaa eval")]
    assert [r[1] for r in rows] == [label for _, label in job_throughput.RUNS]
    assert all(r[2] == "8" and float(r[4]) > 0 for r in rows), rows  # samples, samples/s
    assert rows[0][5] == "1.00x |"
    # each row a new process and output folder: every one wrote its own answers, compile on or off
    for mode, index in (("off", 0), ("on", 0), ("on", 1)):
        settings = (work / f"eval-{mode}-{index}" / "settings.json").read_text()
        assert f'"compile": "{mode}"' in settings
        assert any((work / f"eval-{mode}-{index}" / "out").rglob("*.jsonl"))
