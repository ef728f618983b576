"""benchmarks/model_speed.py end to end on a tiny model on the CPU (Triton through its interpreter):
every variant runs, the Triton path is taken on every layer, and the checks pass."""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("triton", reason="the benchmark's Triton variant needs triton")
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the --tiny smoke run is for CPU machines with TRITON_INTERPRET=1", allow_module_level=True)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import model_speed  # noqa: E402


def test_tiny_run_writes_a_passing_report(tmp_path):
    out = tmp_path / "model_speed.md"
    args = model_speed.ModelSpeedArgs(
        tiny=True,
        sizes=(33,),
        decode_steps=3,
        check_n=33,
        variants=("stock", "floor", "native_sdpa", "swaa_sdpa", "swaa_triton", "swaa_cudnn"),
        out=str(out),
    )
    assert model_speed.main(args) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 33 |")]
    assert len(rows) == 6 and all(row.endswith("| ok |") or "skipped" in row for row in rows), rows
    assert "prefill path: Triton kernel" in text and "float32: triton path (2/2 layers) vs sdpa path" in text
    assert "cuDNN window + Triton sinks | - |" in text  # no GPU / cudnn-frontend here: a skipped row
    assert "no attention at all" in text
