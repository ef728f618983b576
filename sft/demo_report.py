"""Before/after table of the demo's LoRA SFT (``demo/adapt.sh``), markdown, written atomically.

Reads one ``swaa eval settings/demo.json`` output: for every shipped adapter row, "before" is the
base model evaluated with the same SWAAConfig and "after" the adapter; full attention is the
ceiling. Adds the distillation summary and each adapter's training metrics (steps, loss, speed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from swaa_patch.evaluation.report import environment_lines
from swaa_patch.jobs.io import atomic_write_text, read_jsonl

CONFIG_KEYS = ("sliding_window_size", "keep_first", "force_fa_decode", "non_sliding_layers")


def config_key(metric: dict[str, Any]) -> tuple:
    return tuple(json.dumps(metric[k]) for k in CONFIG_KEYS)


def accuracy_by_run(metrics: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    runs: dict[str, dict[str, float]] = {}
    for m in metrics:
        runs.setdefault(m["run_name"], {})[m["dataset"]] = m["accuracy"]
    return runs


def training_line(adapter: Path) -> str:
    data = json.loads((adapter / "train_metrics.json").read_text(encoding="utf-8"))
    logged = [h for h in data.get("log_history", []) if "loss" in h]
    first, last = (logged[0], logged[-1]) if logged else ({}, {})
    speed = max((h.get("tokens_per_s", 0.0) for h in logged), default=0.0)
    m = data["metrics"]
    return (f"- `{adapter.name}`: {m.get('global_step')} steps, {m.get('train_runtime')} s, loss "
            f"{first.get('loss', float('nan')):.4f} (first log) -> {last.get('loss', float('nan')):.4f} (last log), "
            f"up to {speed:.0f} tokens/s")


def training_libraries() -> str:
    """peft / trl of this process (demo/adapt.sh writes the report right after training)."""
    import peft
    import trl

    return f"peft {peft.__version__}, trl {trl.__version__}"


def render(metrics_path: Path, distill: Path, adapters: list[Path]) -> str:
    metrics = read_jsonl(metrics_path)
    runs = accuracy_by_run(metrics)
    datasets = sorted({m["dataset"] for m in metrics})
    adapter_names = {a.name for a in adapters}
    by_config: dict[tuple, str] = {}
    after_rows: list[tuple[str, dict[str, Any]]] = []
    for m in metrics:
        if m["model_name"] in adapter_names:
            after_rows.append((m["run_name"], m))
        elif m["sliding_window_size"] is not None:
            by_config.setdefault(config_key(m), m["run_name"])
    full = next((m["run_name"] for m in metrics if m["sliding_window_size"] is None), None)

    def row(label: str, run: str) -> str:
        acc = runs[run]
        values = [f"{acc[d]:.3f}" if d in acc else "-" for d in datasets]
        mean = sum(acc.values()) / len(acc)
        return f"| {label} | `{run}` | " + " | ".join(values) + f" | {mean:.3f} |"

    samples = {m["dataset"]: m["num_samples"] for m in metrics}
    lines = [
        f"# Self-distillation + LoRA SFT on the demo model ({time.strftime('%Y-%m-%d')})",
        "",
        "Produced by `OUT=DIR bash demo/adapt.sh`: the shipped full-attention demo model (demo/model) answers",
        "fresh prompts, a LoRA adapter is trained per SWA recipe on those answers with the SWA-patched model,",
        "and `swaa eval settings/demo.json` scores every row on the held-out tasks (task seed 0; samples: "
        + ", ".join(f"{d} {n}" for d, n in sorted(samples.items())) + ").",
        f"Training libraries: {training_libraries()}. Evaluated on:",
        "",
        environment_lines(metrics),
        "",
        "| stage | run | " + " | ".join(datasets) + " | mean |",
        "| --- | --- | " + " | ".join("---" for _ in datasets) + " | --- |",
    ]
    if full:
        lines.append(row("full attention (ceiling)", full))
    seen: set[str] = set()
    for run, m in after_rows:
        if run in seen:
            continue
        seen.add(run)
        before = by_config.get(config_key(m))
        if before:
            lines.append(row("before: SWA recipe, no SFT", before))
        lines.append(row("after: same recipe + LoRA SFT", run))
    summary = json.loads(distill.read_text(encoding="utf-8")) if distill.is_file() else {}
    lines += ["", "Distillation (teacher = full attention, correct answers kept):", ""]
    lines += [f"- {name}: kept {d['kept']} of {d['prompts']} (teacher accuracy {d['teacher_accuracy']:.3f})"
              for name, d in summary.get("datasets", {}).items()]
    lines += ["", "LoRA SFT:", "", *(training_line(a) for a in adapters), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True, help="metrics.jsonl of `swaa eval settings/demo.json`")
    parser.add_argument("--distill", type=Path, required=True, help="summary.json of `swaa distill`")
    parser.add_argument("--adapters", type=Path, nargs="+", required=True, help="shipped adapter folders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    atomic_write_text(args.out, render(args.metrics, args.distill, args.adapters))


if __name__ == "__main__":
    main()
