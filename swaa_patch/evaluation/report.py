"""``swaa report OUTPUT_DIR``: a markdown accuracy table and PNG plots from an eval folder.

Reads ``metrics.jsonl`` (and the per-sample responses for the length x depth heatmaps); writes
``report.md`` and ``plots/*.png`` atomically. Plots by context length / depth appear only for
datasets whose samples carry that metadata (the synthetic tasks do).
"""

from __future__ import annotations

import io
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..jobs.errors import RunRefused
from ..jobs.io import atomic_write_bytes, atomic_write_text, read_jsonl
from .layout import Layout
from .metrics import read_metrics

logger = logging.getLogger(__name__)

REPORT_TITLE = "# SWAA evaluation report"
CONFIG_COLUMNS = ("sliding_window_size", "keep_first", "force_fa_decode", "non_sliding_layers")


def _ordered(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def accuracy_table(metrics: list[dict[str, Any]]) -> str:
    """Markdown: one row per run (model x config), one column per dataset, the mean, and the most
    KV bytes one sequence's decoding held in any of the run's blocks (decode memory, measured)."""
    runs = _ordered([m["run_name"] for m in metrics])
    datasets = _ordered([m["dataset"] for m in metrics])
    acc = {(m["run_name"], m["dataset"]): m["accuracy"] for m in metrics}
    lines = ["| run | " + " | ".join(datasets) + " | mean | decode KV / sequence |", "|---" * (len(datasets) + 3) + "|"]
    for run in runs:
        cells = [acc.get((run, d)) for d in datasets]
        known = [c for c in cells if c is not None]
        mean = f"{sum(known) / len(known):.3f}" if known else "-"
        row = [f"{c:.3f}" if c is not None else "-" for c in cells]
        kv = [m["max_kv_bytes"] for m in metrics if m["run_name"] == run and m.get("max_kv_bytes") is not None]
        lines.append(f"| {run} | " + " | ".join(row) + f" | {mean} | {format_bytes(max(kv)) if kv else '-'} |")
    return "\n".join(lines)


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def config_table(metrics: list[dict[str, Any]]) -> str:
    """Markdown: what each run name stands for (model and flattened SWAA config)."""
    lines = ["| run | model | " + " | ".join(CONFIG_COLUMNS) + " |", "|---" * (len(CONFIG_COLUMNS) + 2) + "|"]
    seen = set()
    for m in metrics:
        if m["run_name"] in seen:
            continue
        seen.add(m["run_name"])
        values = [str(m.get(c)) for c in CONFIG_COLUMNS]
        lines.append(f"| {m['run_name']} | {m['model']} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def environment_lines(metrics: list[dict[str, Any]]) -> str:
    """Markdown bullets: each machine that computed blocks (from the metrics records), with the date."""
    blocks: dict[str, list[str]] = {}
    for m in metrics:
        blocks.setdefault(m.get("environment", "not recorded (older metrics)"), []).append(m["finished_at"])
    return "\n".join(f"- {env}: {len(dates)} blocks, finished {min(dates)} to {max(dates)}"
                     for env, dates in blocks.items())


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_by_config(metrics: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: accuracy of every run on every dataset."""
    plt = _pyplot()
    runs = _ordered([m["run_name"] for m in metrics])
    datasets = _ordered([m["dataset"] for m in metrics])
    acc = {(m["run_name"], m["dataset"]): m["accuracy"] for m in metrics}
    width = 0.8 / max(len(datasets), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs) * max(1, len(datasets) / 2)), 4))
    for j, dataset in enumerate(datasets):
        xs = [i + j * width for i in range(len(runs))]
        ax.bar(xs, [acc.get((r, dataset), 0.0) for r in runs], width, label=dataset)
    ax.set_xticks([i + width * (len(datasets) - 1) / 2 for i in range(len(runs))])
    ax.set_xticklabels(runs, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Accuracy by configuration")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_by_key(metrics: list[dict[str, Any]], key: str, xlabel: str, path: Path) -> Path | None:
    """One panel per dataset, one line per run: accuracy against context length or depth."""
    rows = [m for m in metrics if m.get(key)]
    if not rows:
        return None
    plt = _pyplot()
    datasets = _ordered([m["dataset"] for m in rows])
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for m in (r for r in rows if r["dataset"] == dataset):
            points = sorted(m[key].items(), key=lambda kv: _num(kv[0]))
            ax.plot([_num(k) for k, _ in points], [v for _, v in points], marker="o", label=m["run_name"])
        ax.set_title(dataset)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)
    return path


def depth_length_grid(responses: list[dict[str, Any]]) -> tuple[list[float], list[float], list[list[float]]] | None:
    """Mean score per (depth, context_length) cell, or None without that metadata."""
    cells: dict[tuple[float, float], list[float]] = defaultdict(list)
    for r in responses:
        if r.get("depth") is not None and r.get("context_length") is not None:
            cells[(float(r["depth"]), float(r["context_length"]))].append(float(r["score"]))
    if not cells:
        return None
    depths = sorted({d for d, _ in cells})
    lengths = sorted({n for _, n in cells})
    grid = [[sum(cells[(d, n)]) / len(cells[(d, n)]) if cells[(d, n)] else float("nan") for n in lengths] for d in depths]
    return depths, lengths, grid


def plot_heatmaps(layout: Layout, metrics: list[dict[str, Any]]) -> list[Path]:
    """Needle-in-a-haystack style heatmaps (depth x length) per dataset, one panel per run."""
    plt = _pyplot()
    out = []
    for dataset in _ordered([m["dataset"] for m in metrics]):
        runs = _ordered([m["run_name"] for m in metrics if m["dataset"] == dataset])
        grids = {}
        for run in runs:
            rows = [r for shard in layout.shards(run, dataset) for r in read_jsonl(shard)]
            grid = depth_length_grid(list({r["id"]: r for r in rows}.values()))
            if grid is not None:
                grids[run] = grid
        if not grids:
            continue
        fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 3.4), squeeze=False)
        for ax, (run, (depths, lengths, grid)) in zip(axes[0], grids.items()):
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            ax.set_xticks(range(len(lengths)), [str(int(n)) for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=7)
            ax.set_xlabel("context length (tokens)")
            ax.set_title(run, fontsize=8)
        axes[0][0].set_ylabel("evidence depth")
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
        path = layout.plots / f"heatmap_{_slug(dataset)}.png"
        _save(fig, path)
        plt.close(fig)
        out.append(path)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def check_report_target(path: Path, force: bool) -> None:
    """An existing ``report.md`` is replaced only if ``swaa report`` wrote it (or with ``force``)."""
    if force or not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as handle:
        if handle.readline().rstrip("\n") != REPORT_TITLE:
            raise RunRefused(f"{path} was not written by `swaa report`; move it away, or pass --force to replace it")


def write_report(output_dir: str | Path, force: bool = False) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for an eval output folder; returns report.md."""
    layout = Layout(Path(output_dir))
    metrics = read_metrics(layout.metrics)
    if not metrics:
        raise RunRefused(f"no finished blocks in {layout.metrics}; run `swaa eval` first")
    check_report_target(layout.report, force)
    plots = [plot_by_config(metrics, layout.plots / "accuracy_by_config.png")]
    plots.append(plot_by_key(metrics, "accuracy_by_context_length", "context length (tokens)",
                             layout.plots / "accuracy_by_context_length.png"))
    plots.append(plot_by_key(metrics, "accuracy_by_depth", "evidence depth", layout.plots / "accuracy_by_depth.png"))
    plots.extend(plot_heatmaps(layout, metrics))
    images = "\n\n".join(f"![{p.stem}](plots/{p.name})" for p in plots if p is not None)
    text = (
        f"{REPORT_TITLE}\n\nSource: `{layout.metrics}` ({len(metrics)} blocks).\n\n"
        f"Computed on:\n\n{environment_lines(metrics)}\n\n"
        f"## Accuracy\n\n{accuracy_table(metrics)}\n\n## Configurations\n\n{config_table(metrics)}\n\n"
        f"## Plots\n\n{images}\n"
    )
    atomic_write_text(layout.report, text)
    logger.info("wrote %s and %d plots", layout.report, sum(p is not None for p in plots))
    return layout.report
