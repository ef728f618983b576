"""Calibrated vs hand-picked vs random full-layer sets on the demo model, as one markdown table.

Runs the shipped commands and reads what they write:

1. ``swaa calibrate settings/demo_calibrate.json`` chooses the full layers (calibration prompts,
   task seed 3);
2. the sets compared: the calibrated one, the hand pick (the demo's interleaved row) and
   ``--random-sets K`` sets of the same size drawn uniformly without replacement (seeded) from all
   of them (8 layers with 4 full: 70 sets, too many to train each on a CPU). Their mean is an
   unbiased estimate of a random choice's accuracy; when K covers every set it is the exact mean.
   Each gets its calibration score (KL to full attention) from the same calibration run;
3. ``swaa eval`` of settings/demo_layer_sets.json (datasets, seeds and the full-attention row)
   with one row per compared set added: held-out accuracy, task seed 0;
4. with ``--sft-steps N``, the same sets after LoRA SFT: ``swaa distill
   settings/demo_distill.json`` (the full model's own answers), then for every set ``swaa sft``
   with the demo's interleaved recipe (settings/demo_sft_interleaved.json) but that set's full
   layers and N steps, and ``swaa eval`` of the adapters on the same held-out tasks.

Writes ``benchmarks/results/calibration_demo.md`` (atomically) with the date, machine, versions,
commands, wall and CPU time of each step, and the table. Run from anywhere::

    python benchmarks/calibration_demo.py [--sft-steps 400]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from swaa_patch.calibration.report import sensitivity_table
from swaa_patch.calibration.run import CalibrationRun
from swaa_patch.calibration.settings import load_calibration_settings
from swaa_patch.cli import main as swaa
from swaa_patch.evaluation.report import environment_lines, format_bytes
from swaa_patch.evaluation.settings import load_settings
from swaa_patch.jobs.io import atomic_write_json, atomic_write_text, read_jsonl
from swaa_patch.jobs.validate import resolve_path

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("swaa.benchmarks")


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the parallel `swaa sft` runs)."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def timed(step: Any) -> tuple[Any, float, float]:
    """Run ``step()``; returns its result, wall seconds and CPU seconds (this process and its children)."""
    cpu, start = cpu_seconds(), time.perf_counter()
    result = step()
    return result, time.perf_counter() - start, cpu_seconds() - cpu


class SetScores(CalibrationRun):
    """Scores the given sets of full layers, holding the output folder as the calibration does."""

    def __init__(self, settings_path: Path, sets: list[tuple[int, ...]]):
        super().__init__(load_calibration_settings(settings_path))
        self.sets = sets

    def work(self) -> dict[tuple[int, ...], dict[str, Any]]:
        self.prepare()
        return {layers: self.score(frozenset(layers)) for layers in self.sets}


def score_sets(settings_path: Path, sets: list[tuple[int, ...]]) -> dict[tuple[int, ...], dict[str, Any]]:
    """Calibration scores of ``sets`` (the search's own are reused)."""
    return SetScores(settings_path, sets).run()


def draw_sets(num_layers: int, size: int, count: int, seed: int) -> tuple[list[tuple[int, ...]], bool]:
    """``count`` distinct sets of ``size`` layers drawn uniformly (sorted), and whether they are all of them."""
    every = list(itertools.combinations(range(num_layers), size))
    if count >= len(every):
        return every, True
    return sorted(random.Random(seed).sample(every, count)), False


def layer_sets_settings(base: Path, sets: list[tuple[int, ...]], swaa: dict[str, Any], out: Path) -> Path:
    """``base`` (datasets, seeds, the full-attention row) with one row per set of full layers under the
    calibration's ``swaa`` recipe, written beside ``out``; its path."""
    settings = json.loads(base.read_text(encoding="utf-8"))
    rows = settings["settings"]
    if len(rows) != 1 or rows[0]["swaa_config"] is not None:
        raise SystemExit(f"{base}: 'settings' must hold only the full-attention row (swaa_config null); "
                         "the compared layer sets are added by this script")
    absolute(rows[0], base.parent, ("model_list",))
    recipe = {k: swaa[k] for k in ("sliding_window_size", "keep_first", "force_fa_decode")}
    rows += [{"swaa_config": {**recipe, "non_sliding_layers": list(layers)}, "model_list": rows[0]["model_list"]}
             for layers in sets]
    return write_eval_settings(settings, out)


def write_eval_settings(settings: dict[str, Any], out: Path) -> Path:
    """``settings`` with ``out`` as its output folder, written beside it as OUT.json; that file's path."""
    settings["output_dir"] = str(out)
    path = out.parent / f"{out.name}.json"
    atomic_write_json(path, settings)
    return path


def absolute(settings: dict[str, Any], base: Path, keys: tuple[str, ...]) -> None:
    """Settings paths are read relative to their file: make ``keys`` absolute for a copy elsewhere."""
    for key in keys:
        value = settings[key]
        settings[key] = [str(resolve_path(v, base)) for v in value] if isinstance(value, list) else str(resolve_path(value, base))


def sft_every_set(recipe: Path, layer_sets: list[tuple[int, ...]], steps: int, root: Path,
                  jobs: int = 1) -> dict[tuple[int, ...], Path]:
    """``swaa sft`` of ``recipe`` once per layer set (that set full, ``steps`` steps), ``jobs`` at a
    time (a tiny model leaves a GPU mostly idle); the adapters. Each run's log: ROOT/NAME.log."""
    adapters, commands = {}, []
    for layers in layer_sets:
        settings = json.loads(recipe.read_text(encoding="utf-8"))
        absolute(settings, recipe.parent, ("model", "datasets"))
        settings["swaa_config"]["non_sliding_layers"] = list(layers)
        name = "full" + "-".join(map(str, layers))
        settings["output_dir"] = str(root / name)
        settings["_about"] = f"{recipe.name} with full layers {list(layers)} (written by benchmarks/calibration_demo.py)"
        path = root / "settings" / f"{name}.json"
        atomic_write_json(path, settings)
        commands.append((root / f"{name}.log", [sys.executable, "-m", "swaa_patch.cli", "sft", str(path),
                                                "--max-steps", str(steps)]))
        adapters[layers] = root / name / "final"
    running: list[tuple[Path, subprocess.Popen]] = []

    def wait_one() -> None:
        log, proc = running.pop(0)
        if proc.wait() != 0:
            raise SystemExit(f"swaa sft failed: see {log}")

    for log, command in commands:
        if len(running) >= jobs:
            wait_one()
        with open(log, "w") as out:
            # `python -m` from the repository root imports this checkout's swaa_patch
            running.append((log, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)))
    while running:
        wait_one()
    return adapters


def eval_adapters(layer_sets_eval: Path, adapters: dict[tuple[int, ...], Path], out: Path) -> Path:
    """The layer-set evaluation with each set's adapter in place of the base model; its output folder."""
    settings = json.loads(layer_sets_eval.read_text(encoding="utf-8"))
    for row in settings["settings"]:
        config = row["swaa_config"]
        if config is None:
            absolute(row, layer_sets_eval.parent, ("model_list",))
        else:
            row["model_list"] = [str(adapters[tuple(config["non_sliding_layers"])])]
    path = write_eval_settings(settings, out)
    if swaa(["eval", str(path)]) != 0:
        raise SystemExit(f"swaa eval {path} failed")
    return out


def row_key(metric: dict[str, Any]) -> tuple[int, ...] | None:
    """A metrics record's table row: the tuple of full layers (None: stock full attention)."""
    return None if metric["sliding_window_size"] is None else tuple(metric["non_sliding_layers"])


def accuracy_rows(metrics: list[dict[str, Any]]) -> dict[Any, dict[str, float]]:
    """Accuracy per dataset, keyed by :func:`row_key`."""
    rows: dict[Any, dict[str, float]] = {}
    for m in metrics:
        rows.setdefault(row_key(m), {})[m["dataset"]] = m["accuracy"]
    return rows


def decode_kv(metrics: list[dict[str, Any]]) -> dict[Any, str]:
    """The most KV bytes one sequence's decoding held, per row (keyed by :func:`row_key`)."""
    most: dict[Any, int] = {}
    for m in metrics:
        if m.get("max_kv_bytes") is not None:
            most[row_key(m)] = max(most.get(row_key(m), 0), int(m["max_kv_bytes"]))
    return {key: format_bytes(n) for key, n in most.items()}


def datasets_of(metrics: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(m["dataset"] for m in metrics))


def mean_of(values: dict[str, float], datasets: list[str]) -> float:
    return sum(values[d] for d in datasets) / len(datasets)


def set_table(acc: dict, layer_sets: list[tuple[int, ...]], labels: dict[tuple[int, ...], str], datasets: list[str],
              extra_head: list[str], extra: dict[Any, str], drawn: list[tuple[int, ...]],
              random_label: str) -> tuple[list[str], dict[str, float]]:
    """Rows of accuracy per layer set, the full-attention row (key None) first and the mean over the
    ``drawn`` sets (the estimate of a random choice, key "mean") last; ``extra`` holds each row's cells
    before the accuracies, under ``extra_head``."""
    def cells(values: dict[str, float]) -> str:
        return " | ".join(f"{values[d]:.3f}" for d in datasets) + f" | {mean_of(values, datasets):.3f}"

    def row(first: str, label: str, key: Any, values: dict[str, float]) -> str:
        return f"| {first} | {label} | " + "".join(f"{c} | " for c in extra[key]) + cells(values) + " |"

    mean = {d: sum(acc[layers][d] for layers in drawn) / len(drawn) for d in datasets}
    lines = ["| full layers | chosen by | " + "".join(f"{h} | " for h in extra_head) + " | ".join(datasets) + " | mean |",
             "|---" * (len(datasets) + 3 + len(extra_head)) + "|",
             row("all (full attention)", "-", None, acc[None])]
    lines += [row(", ".join(map(str, layers)), labels.get(layers, "-"), layers, acc[layers]) for layers in layer_sets]
    lines.append(row(random_label, "-", "mean", mean))
    return lines, mean


def random_label(drawn: list[tuple[int, ...]], exact: bool, seed: int) -> str:
    if exact:
        return f"mean of all {len(drawn)} sets (= random choice)"
    return f"mean of the {len(drawn)} random draws (seed {seed}; estimates a random choice)"


def render(result: dict[str, Any], scores: dict, metrics: list[dict[str, Any]], hand_picked: tuple[int, ...],
           drawn: list[tuple[int, ...]], exact: bool, seed: int,
           timings: dict[str, tuple[float, float]], commands: dict[str, str], machine: str,
           sft_metrics: list[dict[str, Any]] | None = None, sft_steps: int = 0, jobs: int = 1) -> str:
    acc = accuracy_rows(metrics)
    datasets = datasets_of(metrics)
    chosen = tuple(result["non_sliding_layers"])
    layer_sets = sorted(scores)
    names = (("calibration", {chosen}), ("hand (demo.json)", {hand_picked}), ("random draw", set(drawn) if not exact else set()))
    labels = {layers: " + ".join(n for n, group in names if layers in group) for layers in layer_sets}
    labels = {k: v for k, v in labels.items() if v}
    baseline = random_label(drawn, exact, seed)
    kv = decode_kv(metrics)
    extra: dict[Any, list[str]] = {layers: [f"{scores[layers]['kl']:.4f}", f"{scores[layers]['delta_nll']:.4f}"]
                                   for layers in layer_sets}
    extra.update({None: ["0", "0"], "mean": ["-", "-"]})
    extra = {key: [*cells, kv.get(key, "-")] for key, cells in extra.items()}
    lines, mean = set_table(acc, layer_sets, labels, datasets,
                            ["KL (calibration)", "ΔNLL (calibration)", "decode KV / sequence"], extra, drawn, baseline)
    summary = (f"Mean accuracy before SFT: calibrated {chosen} {mean_of(acc[chosen], datasets):.3f}, hand-picked "
               f"{hand_picked} {mean_of(acc[hand_picked], datasets):.3f}, random set of {len(chosen)} ({baseline}) "
               f"{mean_of(mean, datasets):.3f}, full attention {mean_of(acc[None], datasets):.3f}.\n")
    after = ""
    if sft_metrics:
        sft_acc = accuracy_rows(sft_metrics)
        sft_kv = decode_kv(sft_metrics)
        before: dict[Any, list[str]] = {key: [f"{mean_of(acc[key], datasets):.3f}", sft_kv.get(key, "-")]
                                        for key in [None, *layer_sets]}
        before["mean"] = [f"{mean_of(mean, datasets):.3f}", "-"]
        sft_lines, sft_mean = set_table(sft_acc, layer_sets, labels, datasets,
                                        ["mean before SFT", "decode KV / sequence"], before, drawn, baseline)
        after = (
            f"\n## After LoRA SFT ({sft_steps} steps per set)\n\n"
            f"Each set: `swaa sft` of settings/demo_sft_interleaved.json (LoRA r 16 on all 7 projections, lr 1e-3, batch 2 "
            f"packed to 2,048 tokens, the full model's own answers from `swaa distill settings/demo_distill.json`) with that "
            f"set's full layers and `--max-steps {sft_steps}` (the shipped demo adapter trains 2,000), then `swaa eval` on "
            f"the same held-out tasks. Computed on:\n\n{environment_lines(sft_metrics)}\n\n" + "\n".join(sft_lines) + "\n\n"
            f"Mean accuracy after SFT: calibrated {chosen} {mean_of(sft_acc[chosen], datasets):.3f}, hand-picked "
            f"{hand_picked} {mean_of(sft_acc[hand_picked], datasets):.3f}, random set ({baseline}) "
            f"{mean_of(sft_mean, datasets):.3f}, full attention {mean_of(sft_acc[None], datasets):.3f}.\n"
        )
    steps = "\n".join(f"- `{commands[k]}`: {wall:.0f} s wall, {cpu:.0f} s CPU" for k, (wall, cpu) in timings.items())
    threads = os.environ.get("OMP_NUM_THREADS", "torch default")
    flags = (f" --sft-steps {sft_steps}" if sft_steps else "") + ("" if exact else f" --random-sets {len(drawn)} --seed {seed}")
    flags += f" --jobs {jobs}" if sft_steps and jobs > 1 else ""
    return (
        f"# Calibrated full-attention layers on the demo model ({time.strftime('%Y-%m-%d')})\n\n"
        f"`OMP_NUM_THREADS={threads} python benchmarks/calibration_demo.py{flags}`, {machine}; its steps:\n\n{steps}\n\n"
        f"Computed on:\n\n{environment_lines(metrics)}\n\n"
        f"Recipe: window {result['swaa_config']['sliding_window_size']}, keep_first "
        f"{result['swaa_config']['keep_first']}, force_fa_decode {result['swaa_config']['force_fa_decode']}, "
        f"before SFT; budget {result['budget']} of {result['num_layers']} layers full. Calibration: "
        f"{sum(result['examples'].values())} prompts (task seed 3), KL to full attention over the full model's "
        f"own greedy answers ({result['answer_tokens']} tokens). Accuracy: `swaa eval`, held-out task seed 0.\n\n"
        + "\n".join(lines) + "\n\n"
        f"Per-layer sensitivity on the calibration prompts (from `calibration.json`):\n\n{sensitivity_table(result)}\n\n"
        + summary + after
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", type=Path, default=REPO / "settings" / "demo_calibrate.json")
    parser.add_argument("--eval", type=Path, default=REPO / "settings" / "demo_layer_sets.json")
    parser.add_argument("--hand-picked", type=int, nargs="+", default=[1, 3, 5, 7])
    parser.add_argument("--random-sets", type=int, default=8,
                        help="sets of the budget's size drawn at random (all of them when there are no more)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "calibration_demo.md")
    parser.add_argument("--sft-steps", type=int, default=0, help="> 0: also every set after LoRA SFT of this many steps")
    parser.add_argument("--distill", type=Path, default=REPO / "settings" / "demo_distill.json")
    parser.add_argument("--sft-recipe", type=Path, default=REPO / "settings" / "demo_sft_interleaved.json")
    parser.add_argument("--sft-root", type=Path, default=REPO / "sft_output" / "layer_sets")
    parser.add_argument("--jobs", type=int, default=1, help="`swaa sft` runs at once (e.g. 5 on a GPU)")
    args = parser.parse_args()
    if args.sft_steps < 0:
        parser.error(f"--sft-steps: must be >= 0, got {args.sft_steps}")
    if args.jobs < 1:
        parser.error(f"--jobs: must be >= 1, got {args.jobs}")
    if args.random_sets < 1:
        parser.error(f"--random-sets: must be >= 1, got {args.random_sets}")
    commands = {"calibrate": f"swaa calibrate {args.calibrate.relative_to(REPO)}",
                "score": "score the compared sets (CalibrationRun.score)",
                "eval": f"swaa eval {args.eval.relative_to(REPO)} + a row per compared set"}
    outputs = [Path(load_calibration_settings(args.calibrate).output_dir), Path(load_settings(args.eval).output_dir)]
    earlier = outputs + ([REPO / "distill_output" / "demo", args.sft_root / f"steps{args.sft_steps}"] if args.sft_steps else [])
    resumed = [str(p) for p in earlier if p.exists()]
    if resumed:
        logger.warning("%s exist: the times below cover only the work they lack; delete them for a timed run", resumed)
    load = os.getloadavg()
    timings = {}
    code, *timings["calibrate"] = timed(lambda: swaa(["calibrate", str(args.calibrate)]))
    if code != 0:
        raise SystemExit(code)
    result = json.loads((outputs[0] / "calibration.json").read_text(encoding="utf-8"))
    hand = tuple(args.hand_picked)
    if len(hand) != result["budget"] or not all(0 <= i < result["num_layers"] for i in hand):
        parser.error(f"--hand-picked: must be {result['budget']} layers in [0, {result['num_layers'] - 1}], got {list(hand)}")
    drawn, exact = draw_sets(result["num_layers"], result["budget"], args.random_sets, args.seed)
    compared = sorted({tuple(result["non_sliding_layers"]), hand, *drawn})
    scores, *timings["score"] = timed(lambda: score_sets(args.calibrate, compared))
    eval_settings = layer_sets_settings(args.eval, compared, result["swaa_config"], outputs[1])
    code, *timings["eval"] = timed(lambda: swaa(["eval", str(eval_settings)]))
    if code != 0:
        raise SystemExit(code)
    metrics = read_jsonl(outputs[1] / "metrics.jsonl")
    sft_metrics = None
    if args.sft_steps:
        commands["distill"] = f"swaa distill {args.distill.relative_to(REPO)}"
        commands["sft"] = f"swaa sft (each set, --max-steps {args.sft_steps}; {args.jobs} at a time)"
        commands["sft_eval"] = "swaa eval (the adapters)"
        code, *timings["distill"] = timed(lambda: swaa(["distill", str(args.distill)]))
        if code != 0:
            raise SystemExit(code)
        adapters, *timings["sft"] = timed(lambda: sft_every_set(args.sft_recipe, sorted(scores), args.sft_steps,
                                                                  args.sft_root / f"steps{args.sft_steps}", args.jobs))  # fmt: skip
        out, *timings["sft_eval"] = timed(lambda: eval_adapters(eval_settings, adapters, REPO / "eval_output" /
                                                                f"demo_layer_sets_sft{args.sft_steps}"))  # fmt: skip
        sft_metrics = read_jsonl(out / "metrics.jsonl")
    machine = (f"{os.cpu_count()} CPU cores shared with other jobs (load average {load[0]:.1f} at the start, "
               f"{os.getloadavg()[0]:.1f} at the end)")
    if resumed:
        machine += f"; resumed from existing outputs {resumed}: times cover only the missing work"
    text = render(result, scores, metrics, hand, drawn, exact, args.seed, timings, commands, machine, sft_metrics,
                  args.sft_steps, args.jobs)
    atomic_write_text(args.out, text)
    logger.info("wrote %s:\n%s", args.out, text)


if __name__ == "__main__":
    main()
