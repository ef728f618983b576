"""Aggregate per-sample scores of one (model, config, dataset) block into a metrics record."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..jobs.io import read_jsonl
from .scoring import THINK_END

# The reference's prompt-length bins (tokens), extended downwards for small models.
LENGTH_BINS = (0, 4_000, 16_000, 32_000, 64_000, 128_000)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The block lines of a ``metrics.jsonl`` (lines of other tools, let in by --force, left out)."""
    return [r for r in read_jsonl(path) if "run_name" in r and "dataset" in r]


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def group_accuracy(responses: Iterable[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Accuracy per value of ``key`` (None when no response carries it)."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for response in responses:
        if response.get(key) is not None:
            groups[response[key]].append(float(response["score"]))
    if not groups:
        return None
    return {str(k): _mean(v) for k, v in sorted(groups.items(), key=lambda kv: kv[0])}


def length_bin(tokens: int) -> str:
    lows = [b for b in LENGTH_BINS if b <= tokens]
    low = lows[-1]
    index = LENGTH_BINS.index(low)
    high = LENGTH_BINS[index + 1] if index + 1 < len(LENGTH_BINS) else None
    fmt = lambda n: f"{n // 1000}k"  # noqa: E731
    return f"{fmt(low)}-{fmt(high)}" if high else f"{fmt(low)}+"


def block_metrics(responses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and by question type, context length, depth and prompt-length bin."""
    scores = [float(r["score"]) for r in responses]
    binned = [{**r, "prompt_bin": length_bin(int(r.get("input_tokens", 0)))} for r in responses]
    think = [r for r in responses if "<think>" in r.get("response", "") or THINK_END in r.get("response", "")]
    return {
        "accuracy": _mean(scores),
        "num_samples": len(responses),
        "accuracy_by_type": group_accuracy(responses, "question_type"),
        "accuracy_by_task": group_accuracy(responses, "task"),
        "accuracy_by_context_length": group_accuracy(responses, "context_length"),
        "accuracy_by_depth": group_accuracy(responses, "depth"),
        "accuracy_by_prompt_length": group_accuracy(binned, "prompt_bin"),
        "truncated_ratio": _mean([float(r.get("truncated", False)) for r in responses]),
        "no_think_tag_ratio": _mean([float(THINK_END not in r["response"]) for r in think]) if think else None,
        "avg_response_tokens": _mean([float(r.get("response_tokens", 0)) for r in responses]),
        # decode memory: the most KV bytes one sequence's generation held (generation.generate_batch)
        "max_kv_bytes": max((int(r["kv_bytes"]) for r in responses if r.get("kv_bytes") is not None), default=None),
    }
