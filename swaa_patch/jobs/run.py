"""The resumable, data-parallel skeleton of a job that answers prompts (``swaa eval``, ``distill``).

A unit of work (an eval block, a distill dataset) keeps its answers in one append-only jsonl
shard per process, ``STEM.rankK.jsonl``: each finished batch is appended (and fsynced) before the
next one starts, so a killed run restarts at the first unanswered prompt, and no two processes of
an ``accelerate launch`` ever write the same file. Pending prompts are split between the
processes; with one process the same code just runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl
from .prompts import Prepared, batches
from .validate import settings_to_dict

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.resolved.json"

BatchAnswer = Callable[[list[Prepared]], list[dict[str, Any]]]
BatchDoneHook = Callable[[int, list[Prepared]], None]


def rank_shard(folder: Path, stem: str, rank: int) -> Path:
    """The log of process ``rank`` for one unit of work."""
    return folder / f"{stem}.rank{rank}.jsonl"


def rank_shards(folder: Path, stem: str) -> list[Path]:
    """The logs of every process that worked on one unit, in rank order."""
    return sorted(folder.glob(f"{stem}.rank*.jsonl"))


def logged_rows(shards: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Every logged row by id (the first one where a crash left a duplicate)."""
    rows: dict[str, dict[str, Any]] = {}
    for shard in shards:
        for row in read_jsonl(shard):
            rows.setdefault(row["id"], row)
    return rows


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every key whose value differs."""
    return {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}


class ShardedRun:
    """What eval and distill runs share: processes, device, settings record, resume logs."""

    def __init__(self, root: Path, device: str):
        import torch
        from accelerate import PartialState

        self.root = Path(root)
        self.device_setting = device
        # cpu=True lets torchrun / `accelerate launch --cpu` split work over CPU processes (gloo);
        # without it accelerate treats a CPU-only launch as one process and every rank redoes all.
        self.state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())

    @property
    def device(self) -> str:
        if self.device_setting == "auto" or self.state.num_processes > 1:
            return str(self.state.device)
        return self.device_setting

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def save_settings(self, settings: Any) -> None:
        """``settings.resolved.json``: the validated settings, for the record."""
        if self.is_main:
            atomic_write_json(self.root / SETTINGS_FILE, settings_to_dict(settings))

    def check_generation_meta(self, path: Path, meta: dict[str, Any], what: str) -> None:
        """Refuse answers made with other generation settings; record ``meta`` the first time."""
        old = read_jsonl(path)[0] if path.is_file() else None
        if old is not None and old != meta:
            raise RuntimeError(f"{self.root} holds {what} made with other generation settings "
                               f"{changed_keys(old, meta)} (old, new); use another output_dir")
        self.state.wait_for_everyone()
        if old is None and self.is_main:
            atomic_write_jsonl(path, [meta])

    def cached_rows(self, path: Path, build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Rows built once (by the main process first) and read back from ``path`` by every process."""
        with self.state.main_process_first():
            if not path.is_file():
                atomic_write_jsonl(path, build())
        return read_jsonl(path)

    def answer_pending(self, selected: list[Prepared], folder: Path, stem: str, start: Callable[[], BatchAnswer],
                       desc: str, unit: str, batch_size: int, on_batch: BatchDoneHook | None = None) -> int:
        """Answer the prompts of ``selected`` not yet in the unit's logs; returns how many were pending.

        ``start`` is called only by a process that has prompts to answer (it loads the model); the
        batch function it returns maps a batch to its log rows, appended before the next batch.
        """
        done = logged_rows(rank_shards(folder, stem))
        pending = [p for p in selected if p.id not in done]
        # Every process must split the same pending list: nobody writes before all have read.
        self.state.wait_for_everyone()
        with self.state.split_between_processes(pending) as mine:
            if mine:
                self._answer(mine, rank_shard(folder, stem, self.state.process_index), start(), desc, unit,
                             batch_size, on_batch)
        return len(pending)

    def _answer(self, mine: list[Prepared], shard: Path, answer: BatchAnswer, desc: str, unit: str,
                batch_size: int, on_batch: BatchDoneHook | None) -> None:
        bar = tqdm(total=len(mine), desc=desc, unit=unit, disable=not self.state.is_local_main_process)
        for index, batch in enumerate(batches(mine, batch_size)):
            append_jsonl(shard, answer(batch))
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(index, batch)
        bar.close()
