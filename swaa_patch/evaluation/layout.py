"""Where an evaluation run keeps its files (one place, so runner and report agree).

    OUTPUT/
      settings.resolved.json                 the validated settings, for the record
      metrics.jsonl                          one line per finished (model, config, dataset) block
      responses/RUN_NAME/DATASET.rank0.jsonl per-sample responses, appended per batch (resume log)
      responses/RUN_NAME/DATASET.parquet     the same, consolidated when the block finishes
      responses/RUN_NAME/DATASET.meta.json   generation settings the responses were made with
      data/MODEL/DATASET-HASH.jsonl          synthetic samples generated for MODEL's tokenizer
      _builtin/NAME/                         built-in tiny models, built on first use
      report.md, plots/*.png                 written by ``swaa report``
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def short_hash(data: Any) -> str:
    """A stable 10-hex-digit fingerprint of JSON-able data."""
    blob = json.dumps(data, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:10]


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def settings(self) -> Path:
        return self.root / "settings.resolved.json"

    @property
    def builtin(self) -> Path:
        return self.root / "_builtin"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def block_dir(self, run_name: str) -> Path:
        return self.root / "responses" / run_name

    def shard(self, run_name: str, dataset: str, rank: int) -> Path:
        return self.block_dir(run_name) / f"{dataset}.rank{rank}.jsonl"

    def shards(self, run_name: str, dataset: str) -> list[Path]:
        return sorted(self.block_dir(run_name).glob(f"{dataset}.rank*.jsonl"))

    def parquet(self, run_name: str, dataset: str) -> Path:
        return self.block_dir(run_name) / f"{dataset}.parquet"

    def block_meta(self, run_name: str, dataset: str) -> Path:
        return self.block_dir(run_name) / f"{dataset}.meta.json"

    def synthetic_cache(self, model_name: str, dataset: str, spec_key: str) -> Path:
        return self.root / "data" / model_name / f"{dataset}-{spec_key}.jsonl"
