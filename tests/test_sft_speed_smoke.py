"""benchmarks/sft_speed.py end to end on a tiny model on the CPU (each row a real `swaa sft` process), a
--resume that keeps the rows, the Triton training kernel's row against the backend's, and the same-run
checks (Liger vs not, Triton vs not, 2 GPUs vs 1) on made-up rows."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the --tiny smoke run is for CPU machines", allow_module_level=True)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import sft_speed  # noqa: E402


def test_tiny_run_writes_a_passing_report_and_resumes(tmp_path):
    out = tmp_path / "sft_speed.md"
    args = sft_speed.SFTSpeedArgs(tiny=True, out=str(out), work_dir=str(tmp_path / "work"))
    assert sft_speed.main(args) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 1 | 96 |")]
    assert len(rows) == 3 and rows[0].endswith("| ok |") and rows[1].endswith("| ok |"), rows
    assert "| stock (sdpa, full attention) | 1gpu |" in rows[0] and "| 1.00x |" in rows[0]
    # first step s (from the process's start): the second is the longer, imports and model load included
    first, start = rows[0].split(" | ")[6].replace(")", "").split(" (")
    assert 0 < float(first) < float(start)
    assert "skipped: Liger's kernels run on a GPU" in rows[2]
    assert sft_speed.main(replace(args, resume=True)) == 0  # nothing left to run: the rows are kept
    assert "rows from 2 invocation(s)" in out.read_text() and out.read_text().count("| 1 | 96 |") == 3


def test_tiny_triton_row_trains_on_the_kernel_and_matches_the_backend(tmp_path):
    """`swaa sft` with SWAA_FUSED_TRAIN (force_fa_decode answers included) gives the backend's first loss
    and gradient norm; the kernels run on Triton's interpreter."""
    out = tmp_path / "sft_speed.md"
    args = sft_speed.SFTSpeedArgs(tiny=True, out=str(out), work_dir=str(tmp_path / "work"),
                                  variants=("swaa", "swaa_triton"))  # fmt: skip
    assert sft_speed.main(args) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 1 | 96 |")]
    assert len(rows) == 2 and "(Triton fwd+bwd)" in rows[1] and rows[1].endswith("| ok |"), rows
    assert "vs the backend's kernel: loss" in rows[1]
    metrics = json.loads((tmp_path / "work" / "runs" / "96-swaa_triton-1gpu" / "train_metrics.json").read_text())
    calls = metrics["metrics"]["fused_train_calls"]
    assert calls["triton"] > 0 and set(calls) <= {"triton", "no grad"}, calls  # every training call took it


def test_tiny_row_checkpointing_every_second_layer_matches_every_layer(tmp_path):
    """--checkpoint-every 1,2: one row each, the second's `swaa sft` run with
    training.checkpoint_every_n_layers 2, checked against the first (same first loss and gradient norm)."""
    out = tmp_path / "sft_speed.md"
    argv = ["--tiny", "--variants", "swaa", "--checkpoint-every", "1,2", "--out", str(out),
            "--work-dir", str(tmp_path / "work")]  # fmt: skip
    assert sft_speed.main(sft_speed.parse_args(argv)) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 1 | 96 |")]
    assert len(rows) == 2 and ", checkpointing 1 in 2 layers |" in rows[1] and rows[1].endswith("| ok |"), rows
    assert "vs checkpointing every layer: loss" in rows[1]
    settings = json.loads((tmp_path / "work" / "runs" / "96-swaa-1gpu-ckpt2.json").read_text())
    assert settings["training"]["checkpoint_every_n_layers"] == 2
    with pytest.raises(SystemExit):
        sft_speed.parse_args(["--checkpoint-every", "0"])


def test_checks_compare_liger_with_its_base_and_two_gpus_with_one():
    row = sft_speed.Row
    rows = [row(32, "swaa", "1gpu", losses=[10.0, 9.0], grad_norm=1.0),
            row(32, "swaa_liger", "1gpu", losses=[10.001, 9.0], grad_norm=1.01),
            row(32, "stock", "1gpu", losses=[11.0], grad_norm=1.0),
            row(32, "stock_liger", "1gpu", losses=[11.5], grad_norm=1.0),
            row(32, "swaa_liger", "1gpu_accum2", losses=[10.0, 9.0]),
            row(32, "swaa_liger", "ddp", losses=[10.0, 9.001]),
            row(32, "swaa_liger", "fsdp", losses=[10.0, 9.5]),
            row(32, "swaa_triton_liger", "1gpu", losses=[10.002, 9.0], grad_norm=1.0)]
    sft_speed.cross_check(rows)
    assert rows[1].ok and rows[1].check.startswith("vs no Liger: loss 1.0e-04")
    assert not rows[3].ok  # Liger changed the loss by 4.5 %
    assert rows[5].ok and "vs 1 GPU (accumulation 2): losses 1.1e-04 over 2 steps" in rows[5].check
    assert not rows[6].ok
    # no swaa_triton row to compare the Liger effect with; the kernel's against swaa_liger
    assert rows[7].ok and rows[7].check.startswith("vs the backend's kernel: loss 1.0e-04")


def test_checks_are_rewritten_not_appended_when_rows_arrive():
    """cross_check runs after every new row: a row's check text must not repeat (it did three times)."""
    rows = [sft_speed.Row(32, "swaa", "1gpu", losses=[10.0], grad_norm=1.0),
            sft_speed.Row(32, "swaa_triton", "1gpu", losses=[10.0], grad_norm=1.0)]  # fmt: skip
    sft_speed.cross_check(rows)
    sft_speed.cross_check(rows)
    assert rows[1].check == "vs the backend's kernel: loss 0.0e+00, grad norm 0.0e+00"


@pytest.mark.parametrize("warm", [False, True])
def test_each_row_starts_with_empty_compile_caches_unless_warm(tmp_path, monkeypatch, warm):
    seen = []

    def fake_run(command, cwd, env, capture_output, text):
        seen.append(env)
        return type("Done", (), {"returncode": 1, "stdout": "", "stderr": "stopped here"})()

    monkeypatch.setattr(sft_speed.subprocess, "run", fake_run)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    (tmp_path / "runs").mkdir()
    args = sft_speed.SFTSpeedArgs(tiny=True, work_dir=str(tmp_path), warm_caches=warm)
    row = sft_speed.run_row(args, sft_speed.Row(96, "swaa", "1gpu"), tmp_path / "model", tmp_path / "d.jsonl", tmp_path)
    assert not row.ok and row.note == "ERROR exit 1: stopped here"
    if warm:
        assert "TRITON_CACHE_DIR" not in seen[0]
    else:
        caches = tmp_path / "runs" / "96-swaa-1gpu-caches"
        assert seen[0]["TRITON_CACHE_DIR"] == str(caches / "triton")
        assert seen[0]["TORCHINDUCTOR_CACHE_DIR"] == str(caches / "inductor")
    assert seen[0]["SWAA_FUSED_TRAIN"] == "off"  # a flex row stays on flex whatever the default


@pytest.mark.parametrize(
    "variant, calls, ok, mode",
    [
        ("swaa_cudnn_liger", {"cudnn": 4, "no grad": 2}, True, "auto"),
        ("swaa_cudnn_liger", {"triton": 4}, False, "auto"),
        ("swaa_cudnn", {}, False, "auto"),
        ("swaa_fa4_liger", {"fa4": 4, "no grad": 2}, True, "fa4"),
        ("swaa_fa4", {"cudnn": 4}, False, "fa4"),
    ],
)
def test_fused_rows_fail_unless_their_kernel_served_the_calls(tmp_path, variant, calls, ok, mode):
    """A `_cudnn` row runs SWAA_FUSED_TRAIN=auto and a `_fa4` row =fa4, which fall back (to Triton, or to
    cuDNN) without their package or off Hopper: the row fails then instead of reporting another kernel's
    numbers under its name."""
    step = {"loss": 1.0, "tokens_per_s": 96.0, "mfu": 0.1, "peak_gib": 1.0}
    saved = {"log_history": [step, dict(step, loss=0.9)], "metrics": {"fused_train_calls": calls}}
    (tmp_path / "train_metrics.json").write_text(json.dumps(saved))
    row = sft_speed.read_metrics(sft_speed.Row(96, variant, "1gpu", tokens=96, steps=2), tmp_path)
    assert row.ok is ok and ("served no attention call" in row.note) is not ok, row.note
    assert sft_speed.fused_train_mode(sft_speed.SFTSpeedArgs(), row) == mode


def test_tiny_cudnn_rows_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / "sft_speed.md"
    args = sft_speed.SFTSpeedArgs(tiny=True, out=str(out), work_dir=str(tmp_path / "work"), variants=("swaa_cudnn",))
    assert sft_speed.main(args) == 0
    assert "skipped: cuDNN's sliding window and FA4 run on a Hopper GPU" in out.read_text()
