"""Calibrated vs hand-picked vs random full-layer sets on the demo model, as one markdown table.

Runs the shipped commands and reads what they write:

1. ``swaa calibrate settings/demo_calibrate.json`` chooses the full layers (calibration prompts,
   task seed 3);
2. the calibration score (KL to full attention) of every other set of the same size, from the
   same calibration run, so the table shows how the score orders all of them;
3. ``swaa eval settings/demo_layer_sets.json``: held-out accuracy (task seed 0) of full attention
   and of every set of the budget's size (with 4 layers and 2 full there are 6: the mean over
   all of them is the exact expectation of a random choice).

Writes ``benchmarks/results/calibration_demo.md`` (atomically) with the date, machine, versions,
commands, wall and CPU time of each step, and the table. Run from anywhere::

    python benchmarks/calibration_demo.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

from swaa_patch.calibration.report import sensitivity_table
from swaa_patch.calibration.run import CalibrationRun
from swaa_patch.calibration.settings import load_calibration_settings
from swaa_patch.cli import main as swaa
from swaa_patch.evaluation.report import environment_lines
from swaa_patch.evaluation.settings import load_settings
from swaa_patch.jobs.io import atomic_write_text, read_jsonl

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("swaa.benchmarks")


def timed(step: Any) -> tuple[Any, float, float]:
    """Run ``step()``; returns its result, wall seconds and CPU seconds of this process."""
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return result, time.perf_counter() - start, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


class EverySet(CalibrationRun):
    """Scores every set of ``size`` full layers, holding the output folder as the calibration does."""

    def __init__(self, settings_path: Path, size: int):
        super().__init__(load_calibration_settings(settings_path))
        self.size = size

    def work(self) -> dict[tuple[int, ...], dict[str, Any]]:
        num_layers, _ = self.prepare()
        sets = itertools.combinations(range(num_layers), self.size)
        return {layers: self.score(frozenset(layers)) for layers in sets}


def score_every_set(settings_path: Path, size: int) -> dict[tuple[int, ...], dict[str, Any]]:
    """Calibration scores of every set of ``size`` full layers (the search's own are reused)."""
    return EverySet(settings_path, size).run()


def accuracy_rows(metrics: list[dict[str, Any]]) -> dict[Any, dict[str, float]]:
    """Accuracy per dataset, keyed by the tuple of full layers (None: stock full attention)."""
    rows: dict[Any, dict[str, float]] = {}
    for m in metrics:
        key = None if m["sliding_window_size"] is None else tuple(m["non_sliding_layers"])
        rows.setdefault(key, {})[m["dataset"]] = m["accuracy"]
    return rows


def render(result: dict[str, Any], scores: dict, metrics: list[dict[str, Any]], hand_picked: tuple[int, ...],
           timings: dict[str, tuple[float, float]], commands: dict[str, str], machine: str) -> str:
    acc = accuracy_rows(metrics)
    datasets = list(dict.fromkeys(m["dataset"] for m in metrics))
    chosen = tuple(result["non_sliding_layers"])

    def cells(values: dict[str, float]) -> str:
        mean = sum(values[d] for d in datasets) / len(datasets)
        return " | ".join(f"{values[d]:.3f}" for d in datasets) + f" | {mean:.3f}"

    head = "| full layers | chosen by | KL (calibration) | ΔNLL (calibration) | " + " | ".join(datasets) + " | mean |"
    lines = [head, "|---" * (len(datasets) + 5) + "|", "| all (full attention) | - | 0 | 0 | " + cells(acc[None]) + " |"]
    for layers in sorted(scores):
        how = " + ".join(n for n, s in (("calibration", chosen), ("hand (demo.json)", hand_picked)) if s == layers)
        s = scores[layers]
        lines.append(f"| {', '.join(map(str, layers))} | {how or '-'} | {s['kl']:.4f} | {s['delta_nll']:.4f} | "
                     + cells(acc[layers]) + " |")
    mean = {d: sum(acc[layers][d] for layers in scores) / len(scores) for d in datasets}
    lines.append(f"| mean of all {len(scores)} sets (= random choice) | - | - | - | " + cells(mean) + " |")
    overall = {name: sum(values[d] for d in datasets) / len(datasets)
               for name, values in (("calibrated", acc[chosen]), ("hand", acc[hand_picked]), ("random", mean))}
    steps = "\n".join(f"- `{commands[k]}`: {wall:.0f} s wall, {cpu:.0f} s CPU" for k, (wall, cpu) in timings.items())
    threads = os.environ.get("OMP_NUM_THREADS", "torch default")
    return (
        f"# Calibrated full-attention layers on the demo model ({time.strftime('%Y-%m-%d')})\n\n"
        f"`OMP_NUM_THREADS={threads} python benchmarks/calibration_demo.py`, {machine}; its steps:\n\n{steps}\n\n"
        f"Computed on:\n\n{environment_lines(metrics)}\n\n"
        f"Recipe: window {result['swaa_config']['sliding_window_size']}, keep_first "
        f"{result['swaa_config']['keep_first']}, force_fa_decode {result['swaa_config']['force_fa_decode']}, "
        f"before SFT; budget {result['budget']} of {result['num_layers']} layers full. Calibration: "
        f"{sum(result['examples'].values())} prompts (task seed 3), KL to full attention over the full model's "
        f"own greedy answers ({result['answer_tokens']} tokens). Accuracy: `swaa eval`, held-out task seed 0.\n\n"
        + "\n".join(lines) + "\n\n"
        f"Per-layer sensitivity on the calibration prompts (from `calibration.json`):\n\n{sensitivity_table(result)}\n\n"
        f"Mean accuracy: calibrated {chosen} {overall['calibrated']:.3f}, hand-picked {hand_picked} "
        f"{overall['hand']:.3f}, random set of {len(chosen)} (mean of all {len(scores)}) {overall['random']:.3f}, "
        f"full attention {sum(acc[None][d] for d in datasets) / len(datasets):.3f}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", type=Path, default=REPO / "settings" / "demo_calibrate.json")
    parser.add_argument("--eval", type=Path, default=REPO / "settings" / "demo_layer_sets.json")
    parser.add_argument("--hand-picked", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "calibration_demo.md")
    args = parser.parse_args()
    commands = {"calibrate": f"swaa calibrate {args.calibrate.relative_to(REPO)}",
                "score": "score every other set of the same size (CalibrationRun.score)",
                "eval": f"swaa eval {args.eval.relative_to(REPO)}"}
    outputs = [Path(load_calibration_settings(args.calibrate).output_dir), Path(load_settings(args.eval).output_dir)]
    resumed = [str(p) for p in outputs if p.exists()]
    if resumed:
        logger.warning("%s exist: the times below cover only the work they lack; delete them for a timed run", resumed)
    load = os.getloadavg()
    timings = {}
    code, *timings["calibrate"] = timed(lambda: swaa(["calibrate", str(args.calibrate)]))
    if code != 0:
        raise SystemExit(code)
    result = json.loads((outputs[0] / "calibration.json").read_text(encoding="utf-8"))
    scores, *timings["score"] = timed(lambda: score_every_set(args.calibrate, result["budget"]))
    code, *timings["eval"] = timed(lambda: swaa(["eval", str(args.eval)]))
    if code != 0:
        raise SystemExit(code)
    metrics = read_jsonl(outputs[1] / "metrics.jsonl")
    machine = (f"{os.cpu_count()} CPU cores shared with other jobs (load average {load[0]:.1f} at the start, "
               f"{os.getloadavg()[0]:.1f} at the end)")
    if resumed:
        machine += f"; resumed from existing outputs {resumed}: times cover only the missing work"
    text = render(result, scores, metrics, tuple(args.hand_picked), timings, commands, machine)
    atomic_write_text(args.out, text)
    logger.info("wrote %s:\n%s", args.out, text)


if __name__ == "__main__":
    main()
