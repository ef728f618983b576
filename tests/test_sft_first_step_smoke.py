"""benchmarks/sft_first_step.py on the tiny model on the CPU: a fresh process (it re-executes itself with
empty compile caches), two trainings at two lengths, every span of the timeline in the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the --tiny smoke run is for CPU machines", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sft_first_step.py"


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)


def test_tiny_run_reports_each_span(tmp_path):
    """One run with --caches DIR (the empty-caches default differs only by a fresh temporary DIR): the
    caches live in DIR, kept for a next run, and the report names them."""
    out, caches = tmp_path / "first_step.md", tmp_path / "kept caches"
    done = run("--tiny", "--variant", "swaa", "--work-dir", str(tmp_path / "work"), "--out", str(out),
               f"--caches={caches}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert caches.is_dir() and f"caches kept in `{caches}` (empty unless an earlier run filled them)" in text
    spans = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines()
             if line.startswith("| ") and " | " in line and not line.startswith("| ---")]  # fmt: skip
    for name in ("imports (torch, transformers, trl, swaa_patch; precompile workers forked)", "first length: step 1 done",
                 "first length: step 2 done", "new length: trainer built (model loaded)", "new length: step 2 done"):
        assert name in spans, (name, spans)
    at = [float(line.split(" | ")[1]) for line in text.splitlines() if line.startswith("| first length: step")]
    assert at == sorted(at) and at[0] > 0  # seconds from the process's start, increasing
    assert "first step as `swaa sft` logs it" in text and "training 1: 96 tokens" in text
    assert "settings and data ready (the model folder built when absent)" in spans
    assert "training 1's training.precompile_kernels: auto" in text and "no workers" in text  # none on a CPU


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1"], "--steps: must be >= 2"),
    (["--n", "100", "--new-length", "100"], "--new-length: must be in [1, --n)"),
    (["--tiny", "--variant", "swaa_cudnn_liger"], "--tiny: Liger's kernels, cuDNN's window and FA4 need a GPU"),
])
def test_bad_options_name_themselves(argv, message):
    done = run(*argv)
    assert done.returncode != 0 and message in done.stderr


def test_caches_option_is_read_before_argparse():
    sys.path.insert(0, str(SCRIPT.parent))
    from sft_first_step import caches_option

    assert caches_option(["--n", "5", "--caches", "/x"]) == "/x"
    assert caches_option(["--caches=/y", "--tiny"]) == "/y"
    assert caches_option(["--tiny"]) is None
