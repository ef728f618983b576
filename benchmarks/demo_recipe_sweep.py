"""Several `swaa train-demo` recipes side by side on one GPU, in one results table: for issue 18's
search for a deeper demo model's recipe.

A tiny model leaves most of an H200 idle, so recipes run at once, one ``swaa train-demo`` process
each, in their own folders under ``--work``. A device call has a time limit and returns only a few
files, so the sweep stops its processes at ``--time-limit-s`` (each resumes from its last checkpoint
when the sweep runs again with the same ``--work`` on a warm machine) and writes what came of every
recipe into one Markdown table plus one JSON file: held-out exact-match and value-token accuracy at
every evaluation, from the finished model's ``training_summary.json`` or, for a recipe still
running, from its checkpoint. ``--models-tar`` packs the finished models into one file.

    python benchmarks/demo_recipe_sweep.py --common "--num-layers 8 --save-dtype bfloat16 --max-steps 8000" \\
        --recipe lr5e-4="--learning-rate 5e-4 --warmup-steps 500" --recipe lr3e-4="--learning-rate 3e-4" \\
        --time-limit-s 540 --out $OUT/demo_sweep.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from swaa_patch.demo.train import STATE_FILE, SUMMARY_FILE, checkpoint_dir  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

RESUMES = "stopped at the time limit (resumes from its checkpoint)"


@dataclass
class Recipe:
    name: str
    args: list[str]


@dataclass
class Outcome:
    """What one recipe's folder holds after the sweep."""

    recipe: Recipe
    status: str  # finished / RESUMES / stopped before its first checkpoint / failed
    steps: int = 0
    max_steps: int = 0
    train_seconds: float = 0.0
    liger: bool | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)


def parse_recipe(text: str) -> Recipe:
    name, sep, flags = text.partition("=")
    if not sep or not name or any(c in name for c in "/ "):
        raise SystemExit(f"--recipe: expected NAME=\"train-demo flags\" (NAME without '/' or spaces), got {text!r}")
    return Recipe(name, shlex.split(flags))


def model_dir(work: Path, recipe: Recipe) -> Path:
    return work / recipe.name / "model"


def launch(recipe: Recipe, common: list[str], work: Path) -> subprocess.Popen:
    folder = work / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "swaa_patch.cli", "train-demo", "--output-dir", str(model_dir(work, recipe)),
           *common, *recipe.args]  # fmt: skip
    (folder / "command.txt").write_text(shlex.join(cmd) + "\n")
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    with open(folder / "train.log", "a") as log:  # the child writes through its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent,
                                start_new_session=True)  # fmt: skip


def run_all(recipes: list[Recipe], common: list[str], work: Path, time_limit_s: float) -> dict[str, int | None]:
    """Run every recipe at once; at the time limit, stop the ones still running (SIGTERM to their
    process group, so data-loader workers go too). Returns each recipe's exit code (None: stopped)."""
    procs = {r.name: launch(r, common, work) for r in recipes}
    deadline = time.monotonic() + time_limit_s
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(1.0)
    codes: dict[str, int | None] = {}
    for name, proc in procs.items():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            codes[name] = None
        else:
            codes[name] = proc.returncode
    return codes


def outcome(recipe: Recipe, work: Path, code: int | None) -> Outcome:
    folder = model_dir(work, recipe)
    summary = folder / SUMMARY_FILE
    if summary.is_file():
        s = json.loads(summary.read_text())
        return Outcome(recipe, "finished", s["steps"], s["max_steps"], s["train_seconds"], s["liger"], s["evals"])
    state_file = checkpoint_dir(folder) / STATE_FILE
    if code is None:
        status = RESUMES if state_file.is_file() else "stopped before its first checkpoint"
    else:
        status = f"failed (exit {code}; see its train.log)"
    if not state_file.is_file():
        return Outcome(recipe, status)
    import torch

    state = torch.load(state_file, map_location="cpu", weights_only=True)["state"]
    return Outcome(recipe, status, state["step"], state["max_steps"], state["train_seconds"], None, state["evals"])


def fmt_tasks(values: dict[str, float], tasks: list[str]) -> str:
    return " / ".join(f"{values[t]:.3f}" if t in values else "-" for t in tasks)


def report(outcomes: list[Outcome], common: list[str], device: str) -> str:
    tasks = sorted({t for o in outcomes for e in o.evals for t in e.get("accuracy", {})})
    lines = [
        "# Demo recipe sweep: `swaa train-demo` recipes side by side",
        "",
        f"- date: {datetime.date.today()}; device: {device}; every recipe its own process, all at once",
        f"- flags common to every recipe: `{shlex.join(common)}`",
        f"- held-out accuracy per task, in this order: {' / '.join(tasks)} (exact match of the generated value; "
        "value tokens: share of the value's tokens right under teacher forcing)",
        "",
        "| recipe | its flags | status | steps | train s | s/step | Liger |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        per_step = f"{o.train_seconds / o.steps:.3f}" if o.steps else "-"
        liger = "-" if o.liger is None else ("on" if o.liger else "off")
        lines.append(f"| {o.recipe.name} | `{shlex.join(o.recipe.args)}` | {o.status} | {o.steps} of {o.max_steps} | "
                     f"{o.train_seconds:.0f} | {per_step} | {liger} |")  # fmt: skip
    lines += ["", "| recipe | step | exact | mean | value tokens |", "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        for e in o.evals:
            lines.append(f"| {o.recipe.name} | {e['step']} | {fmt_tasks(e['accuracy'], tasks)} | "
                         f"{e['mean_accuracy']:.3f} | {fmt_tasks(e['value_token_accuracy'], tasks)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def device_name(common: list[str]) -> str:
    import torch

    if "cpu" in common or not torch.cuda.is_available():
        return "CPU"
    return torch.cuda.get_device_name(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", action="append", required=True, metavar='NAME="FLAGS"',
                   help="a recipe: its name and its `swaa train-demo` flags (repeat for each recipe)")
    p.add_argument("--common", default="", help="`swaa train-demo` flags every recipe gets (before its own)")
    p.add_argument("--work", default=".demo_sweep", help="the recipes' folders (kept: a later sweep resumes them)")
    p.add_argument("--time-limit-s", type=float, default=540.0, help="stop the recipes still running after this")
    p.add_argument("--out", default="demo_sweep.md", help="the table (a .json with every evaluation beside it)")
    p.add_argument("--models-tar", default="", help="pack the finished models into this one .tar")
    a = p.parse_args(argv)
    recipes = [parse_recipe(text) for text in a.recipe]
    if len({r.name for r in recipes}) != len(recipes):
        raise SystemExit("--recipe: names must differ")
    common = shlex.split(a.common)
    work = Path(a.work).resolve()
    codes = run_all(recipes, common, work, a.time_limit_s)
    outcomes = [outcome(r, work, codes[r.name]) for r in recipes]
    atomic_write_text(a.out, report(outcomes, common, device_name(common)))
    records = [{"recipe": o.recipe.name, "args": o.recipe.args, "status": o.status, "steps": o.steps,
                "max_steps": o.max_steps, "train_seconds": o.train_seconds, "evals": o.evals} for o in outcomes]  # fmt: skip
    atomic_write_text(str(Path(a.out).with_suffix(".json")), json.dumps({"common": common, "recipes": records}, indent=1))
    if a.models_tar:
        with tarfile.open(a.models_tar, "w") as tar:
            for o in outcomes:
                if o.status == "finished":
                    tar.add(model_dir(work, o.recipe), arcname=o.recipe.name)
    sys.stdout.write(Path(a.out).read_text())
    return 0 if all(o.status in ("finished", RESUMES) for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
