"""What ``swaa calibrate`` writes for people: all scores as one JSON, a markdown report, a plot.

The result dict (``calibration.json``) holds every number; the markdown tables and the PNG are
rendered from it alone, so they can be rebuilt from the JSON without a model.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..jobs.io import atomic_write_bytes, atomic_write_text
from .layout import ScoreStore
from .measure import Example
from .search import GreedyStep, chosen_layers, layers_key
from .settings import CalibrationSettings

SCORE_KEYS = ("kl", "delta_nll", "nll")


def _scores(entry: dict[str, Any]) -> dict[str, float]:
    return {k: entry[k] for k in SCORE_KEYS}


def build_result(settings: CalibrationSettings, num_layers: int, budget: int, examples: Sequence[Example],
                 store: ScoreStore, sensitivity: dict[int, dict[str, Any]], all_sliding: dict[str, Any],
                 steps: Sequence[GreedyStep], environment: str) -> dict[str, Any]:
    """Every score of the run, the greedy choice and the calibrated config, JSON-ready."""
    chosen = chosen_layers(steps)
    config = replace(settings.swaa_config, non_sliding_layers=chosen)
    sets = dict(store.sets)
    greedy = []
    for index, step in enumerate(steps, 1):
        candidates = [{"layer": layer, **_scores(sets[layers_key([*step.before, layer])])} for layer in step.candidates]
        greedy.append({"step": index, "before": list(step.before), "chosen": step.chosen, "candidates": candidates})
    return {
        "model": settings.model,
        "num_layers": num_layers,
        "budget": budget,
        "metric": settings.calibrate.metric,
        "target": settings.calibrate.target,
        "examples": dict(Counter(e.dataset for e in examples)),
        "answer_tokens": sum(len(e.answer_ids) for e in examples),
        "non_sliding_layers": list(chosen),
        "swaa_config": config.to_dict(),
        "reference": store.reference,
        "all_sliding": _scores(all_sliding),
        "calibrated": _scores(sets[layers_key(chosen)]),
        "sensitivity": [{"layer": layer, **_scores(entry)} for layer, entry in sorted(sensitivity.items())],
        "greedy": greedy,
        "sets": sets,
        "environment": environment,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def sensitivity_table(result: dict[str, Any]) -> str:
    """Markdown: per layer, the damage when it alone slides and the score when it alone is full."""
    first = {c["layer"]: c for c in result["greedy"][0]["candidates"]} if result["greedy"] else {}
    picked = {step["chosen"]: step["step"] for step in result["greedy"]}
    lines = ["| layer | KL, layer alone sliding | ΔNLL, layer alone sliding | KL, layer alone full | "
             "ΔNLL, layer alone full | chosen at step |", "|---|---|---|---|---|---|"]
    for row in result["sensitivity"]:
        alone = first.get(row["layer"])
        full = [_fmt(alone["kl"]), _fmt(alone["delta_nll"])] if alone else ["-", "-"]
        step = str(picked.get(row["layer"], ""))
        lines.append(f"| {row['layer']} | {_fmt(row['kl'])} | {_fmt(row['delta_nll'])} | " + " | ".join(full)
                     + f" | {step} |")
    return "\n".join(lines)


def greedy_table(result: dict[str, Any]) -> str:
    """Markdown: each greedy step's candidates (full set after adding it) and the pick."""
    lines = ["| step | full before | candidate | KL | ΔNLL | |", "|---|---|---|---|---|---|"]
    for step in result["greedy"]:
        before = ", ".join(map(str, step["before"])) or "none"
        for c in step["candidates"]:
            mark = "**chosen**" if c["layer"] == step["chosen"] else ""
            lines.append(f"| {step['step']} | {before} | {c['layer']} | {_fmt(c['kl'])} | {_fmt(c['delta_nll'])} "
                         f"| {mark} |")
    return "\n".join(lines)


def render_markdown(result: dict[str, Any], plot_name: str) -> str:
    recipe = {k: result["swaa_config"][k] for k in ("sliding_window_size", "keep_first", "force_fa_decode")}
    examples = ", ".join(f"{name} {n}" for name, n in result["examples"].items())
    calibrated, sliding = result["calibrated"], result["all_sliding"]
    return (
        f"# SWAA layer calibration\n\n"
        f"Model `{result['model']}` ({result['num_layers']} layers), recipe {recipe}; "
        f"{result['budget']} full layers chosen by `{result['metric']}` on `{result['target']}` answers "
        f"({examples} prompts, {result['answer_tokens']} answer tokens).\n\n"
        f"Computed on {result['environment']}, {result['finished_at']}.\n\n"
        f"**non_sliding_layers = {result['non_sliding_layers']}**: KL {_fmt(calibrated['kl'])}, "
        f"ΔNLL {_fmt(calibrated['delta_nll'])} (every layer sliding: KL {_fmt(sliding['kl'])}, "
        f"ΔNLL {_fmt(sliding['delta_nll'])}; full attention NLL {_fmt(result['reference']['nll'])}).\n\n"
        f"KL = mean over answer tokens of KL(full attention || config); ΔNLL = the answer tokens' NLL under "
        f"the config minus under full attention. Lower is closer to full attention.\n\n"
        f"## Per-layer sensitivity\n\n{sensitivity_table(result)}\n\n"
        f"## Greedy choice (re-scored after each pick)\n\n{greedy_table(result)}\n\n"
        f"## Calibrated config\n\n```json\n{json.dumps(result['swaa_config'])}\n```\n\n"
        f"![layer scores](plots/{plot_name})\n"
    )


def plot_scores(result: dict[str, Any], path: Path) -> Path:
    """Left: per-layer sensitivity (alone sliding) and gain (alone full); right: the greedy curve."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    key = "kl" if result["metric"] == "kl" else "delta_nll"
    layers = [row["layer"] for row in result["sensitivity"]]
    first = {c["layer"]: c[key] for c in result["greedy"][0]["candidates"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 0.35 * len(layers) + 6), 3.6))
    width = 0.4
    left.bar([x - width / 2 for x in layers], [row[key] for row in result["sensitivity"]], width,
             label="layer alone sliding")
    left.bar([x + width / 2 for x in layers], [first[x] for x in layers], width, label="layer alone full")
    left.axhline(result["all_sliding"][key], color="grey", linestyle="--", linewidth=1, label="all sliding")
    for layer in result["non_sliding_layers"]:
        left.axvspan(layer - 0.5, layer + 0.5, color="tab:green", alpha=0.12)
    left.set_xlabel("layer (shaded: chosen full)")
    left.set_ylabel(key)
    left.legend(fontsize=7)
    steps = [0] + [s["step"] for s in result["greedy"]]
    curve = [result["all_sliding"][key]]
    curve += [next(c[key] for c in s["candidates"] if c["layer"] == s["chosen"]) for s in result["greedy"]]
    right.plot(steps, curve, marker="o")
    right.set_xlabel("full layers (greedy)")
    right.set_ylabel(key)
    right.set_xticks(steps)
    fig.suptitle(f"{Path(result['model']).name}: sensitivity to sliding ({key})", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_report(result: dict[str, Any], report: Path, plot: Path) -> Path:
    """report.md and the plot beside it, both written atomically."""
    plot_scores(result, plot)
    atomic_write_text(report, render_markdown(result, plot.name))
    return report
