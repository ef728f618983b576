"""FSDP2 as sft/accelerate_fsdp.yaml asks for it (each decoder layer checkpointed and sharded with
``fully_shard``, then the root), on two CPU processes (gloo): the SWAA-patched model with LoRA and its
addmm update trains to the same loss and LoRA gradients as one unsharded model at the same global batch
(tests/fsdp2_worker.py). accelerate 1.15 applies FSDP only on accelerators, so ``swaa sft`` under that
config is a GPU run (``benchmarks/run_gpu.sh sft_2gpu``); this checks that SWAA composes with FSDP2's
sharded parameters, unshard hooks and checkpointed recompute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fsdp2_worker.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """One two-rank launch: the FSDP2 run and its control."""
    out = tmp_path_factory.mktemp("fsdp2") / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               str(out)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fsdp2_two_ranks_match_one_unsharded_model(results):
    result = results["fsdp2"]
    assert result["world"] == 2 and result["sharded_parameters"] == result["parameters"] > 0  # really sharded
    assert result["fused_adapters"] == 28 and result["lora_weights"] == 56  # 7 projections x 4 layers, A and B
    assert result["names_match"]
    assert result["loss"] == pytest.approx(result["reference_loss"], rel=1e-6)
    assert result["worst_grad_rel"] < 1e-5, result
    assert result["loss"] != pytest.approx(result["stock_loss"], rel=1e-3)  # SWAA's rule, not full attention


@pytest.mark.slow
def test_the_comparison_catches_ranks_on_the_wrong_examples(results):
    """The control: both ranks on example 0 is not the global batch, and the check says so."""
    result = results["control"]
    assert result["worst_grad_rel"] > 1e-3 and result["loss"] != pytest.approx(result["reference_loss"], rel=1e-6)
