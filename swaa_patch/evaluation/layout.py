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
      swaa_run.json, .swaa-rankK.lock        the folder's kind and each process's lock (jobs/output.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..jobs.run import rank_shard, rank_shards


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def block_dir(self, run_name: str) -> Path:
        return self.root / "responses" / run_name

    def shard(self, run_name: str, dataset: str, rank: int) -> Path:
        return rank_shard(self.block_dir(run_name), dataset, rank)

    def shards(self, run_name: str, dataset: str) -> list[Path]:
        return rank_shards(self.block_dir(run_name), dataset)

    def parquet(self, run_name: str, dataset: str) -> Path:
        return self.block_dir(run_name) / f"{dataset}.parquet"

    def block_meta(self, run_name: str, dataset: str) -> Path:
        return self.block_dir(run_name) / f"{dataset}.meta.json"

    def synthetic_cache(self, model_name: str, dataset: str, spec_key: str) -> Path:
        return self.root / "data" / model_name / f"{dataset}-{spec_key}.jsonl"
