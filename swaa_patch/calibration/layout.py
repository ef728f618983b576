"""Where ``swaa calibrate`` keeps its files, what a stored score depends on, and the score store.

    OUTPUT/
      settings.resolved.json      the validated settings
      calibration.meta.json       settings the scores were made with (checked on resume)
      data/DATASET-HASH.jsonl     synthetic prompts generated for the model's tokenizer
      targets/DATASET.jsonl       teacher answers (token ids), appended per batch
      scores.json                 every scored layer set (the resume state)
      calibration.json            sensitivity, greedy steps, choice, calibrated config: all scores
      swaa_config.json            the calibrated SWAAConfig (SWAAConfig.from_dict, `swaa eval` settings)
      report.md, plots/layer_scores.png
      swaa_run.json, .swaa-rank0.lock  the folder's kind and the run's lock (jobs/output.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jobs.io import atomic_write_json
from ..jobs.validate import settings_to_dict
from .settings import CalibrationSettings


@dataclass(frozen=True)
class CalibrationLayout:
    root: Path

    @property
    def meta(self) -> Path:
        return self.root / "calibration.meta.json"

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def targets(self, dataset: str) -> Path:
        return self.root / "targets" / f"{dataset}.jsonl"

    @property
    def result(self) -> Path:
        return self.root / "calibration.json"

    @property
    def config(self) -> Path:
        return self.root / "swaa_config.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plot(self) -> Path:
        return self.root / "plots" / "layer_scores.png"


def calibration_meta(settings: CalibrationSettings) -> dict[str, Any]:
    """Settings that change a target or a score, as JSON (budget, metric and batching do not)."""
    recipe = settings.swaa_config
    meta = {
        "model": settings.model,
        "datasets": settings_to_dict(settings.datasets),
        "recipe": {k: recipe.to_dict()[k] for k in ("sliding_window_size", "keep_first", "force_fa_decode")},
        "target": settings.calibrate.target,
        "max_answer_tokens": settings.calibrate.max_answer_tokens,
        **{k: getattr(settings, k) for k in ("max_prompt_tokens", "truncation", "limit", "seed", "chat_template",
                                             "attn_implementation", "dtype")},
    }
    return json.loads(json.dumps(meta, default=str))


class ScoreStore:
    """Scored layer sets and the full-attention reference, persisted after every unit."""

    def __init__(self, path: Path):
        self.path = path
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.reference: dict[str, Any] | None = data.get("reference")
        self.sets: dict[str, dict[str, Any]] = data.get("sets", {})

    def save(self) -> None:
        atomic_write_json(self.path, {"reference": self.reference, "sets": self.sets})
