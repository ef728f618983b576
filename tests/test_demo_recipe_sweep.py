"""benchmarks/demo_recipe_sweep.py on the CPU with tiny recipes: recipes run at once and land in one
table (finished models packed into one tar); a recipe stopped at the time limit is reported from its
checkpoint (and resumes); one stopped before any checkpoint says so and fails the sweep."""

from __future__ import annotations

import os
import shutil
import sys
import tarfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import demo_recipe_sweep as sweep  # noqa: E402

TINY = ("--hidden-size 32 --num-layers 2 --intermediate-size 64 --head-dim 16 --batch-size 2 --max-steps 6 "
        "--eval-every 3 --eval-samples 1 --eval-lengths 512 --eval-depths 0.5 --save-every 3 --device cpu "
        "--liger off --num-workers 0 --vocab-size 512")  # fmt: skip


def test_recipes_side_by_side_stop_and_resume(tmp_path):
    work, out, tar = tmp_path / "work", tmp_path / "sweep.md", tmp_path / "models.tar"
    argv = ["--work", str(work), "--out", str(out), "--models-tar", str(tar), "--common", TINY,
            "--recipe", "a=--learning-rate 1e-3", "--recipe", "b=--learning-rate 5e-4 --keep-checkpoint"]  # fmt: skip
    assert sweep.main(argv) == 0
    text = out.read_text()
    assert "| a | `--learning-rate 1e-3` | finished | 6 of 6 |" in text
    assert text.count("| a | 3 |") == 1 and text.count("| b | 6 |") == 1  # an evaluation row per eval
    with tarfile.open(tar) as t:
        assert {"a/model.safetensors", "b/training_summary.json"} <= set(t.getnames())
    assert (tmp_path / "sweep.json").is_file()

    # b as if stopped after its step-3 checkpoint: reported from the checkpoint, and a later sweep resumes it
    b = sweep.Recipe("b", ["--learning-rate", "5e-4", "--keep-checkpoint"])
    shutil.rmtree(sweep.model_dir(work, b))
    stopped = sweep.outcome(b, work, None)
    assert stopped.status == sweep.RESUMES and stopped.steps == 3 and [e["step"] for e in stopped.evals] == [3]

    # no time at all: stopped before any checkpoint, and the sweep says it failed
    argv = ["--work", str(work), "--out", str(out), "--time-limit-s", "0", "--common", TINY, "--recipe", "c="]
    assert sweep.main(argv) == 1
    assert "| c | `` | stopped before its first checkpoint | 0 of 0 |" in out.read_text()
