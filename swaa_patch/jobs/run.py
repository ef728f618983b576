"""The resumable, data-parallel skeleton of a job that answers prompts (``swaa eval``, ``distill``;
``calibrate`` uses its folder, settings and Ctrl-C handling in one process).

A unit of work (an eval block, a distill dataset) keeps its answers in one append-only jsonl
shard per process, ``STEM.rankK.jsonl``: each finished batch is appended (and fsynced) before the
next one starts, so a killed run restarts at the first unanswered prompt, and no two processes of
an ``accelerate launch`` ever write the same file. Pending prompts are split between the
processes; with one process the same code just runs.

:meth:`ShardedRun.run` holds the output folder (:mod:`.output`) while the job works, and turns
Ctrl-C into :class:`~.errors.Interrupted` saying what finished. Answers are tied to the settings
that made them (a ``.meta.json`` per unit): other settings are refused, naming the differing
keys, unless the run was asked to discard and recompute them.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import Interrupted, RunRefused
from .io import append_jsonl, atomic_write_json, atomic_write_jsonl, compact_jsonl, read_jsonl
from .output import claimed_output_dir
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


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``max_new_tokens 16 -> 8, dtype 'auto' -> 'float32'``."""
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def stored_meta(path: Path) -> dict[str, Any] | None:
    """The settings recorded with a unit's answers (None before its first answer)."""
    rows = read_jsonl(path) if path.is_file() else []
    return rows[0] if rows else None


def meta_changes(path: Path, meta: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings in ``meta`` that differ from those recorded at ``path`` (none if nothing is)."""
    old = stored_meta(path)
    return {} if old is None else changed_keys(old, meta)


class ShardedRun(abc.ABC):
    """What eval, distill and calibrate runs share: processes, device, output folder, settings checks, resume logs.

    A subclass names its ``kind`` and implements :meth:`work` (the job) and :meth:`progress` (what
    is finished, for the line printed on Ctrl-C).
    """

    kind = ""

    def __init__(self, root: Path, device: str, force: bool = False, recompute: bool = False):
        import torch
        from accelerate import PartialState

        self.root = Path(root)
        self.device_setting = device
        self.force, self.recompute = force, recompute
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

    def run(self) -> Any:
        """Do the job while holding the output folder; Ctrl-C becomes one line saying what finished."""
        with claimed_output_dir(self.root, self.kind, self.force, self.state.process_index,
                                self.state.wait_for_everyone):
            try:
                return self.work()
            except KeyboardInterrupt:
                raise Interrupted(f"interrupted: {self.progress()}; run the same command again to resume",
                                  quiet=not self.is_main) from None

    @abc.abstractmethod
    def work(self) -> Any:
        """The job itself (called by :meth:`run` with the output folder held)."""

    @abc.abstractmethod
    def progress(self) -> str:
        """What is finished so far, in a few words (the Ctrl-C line)."""

    def save_settings(self, settings: Any) -> None:
        """``settings.resolved.json``: the validated settings, for the record."""
        if self.is_main:
            atomic_write_json(self.root / SETTINGS_FILE, settings_to_dict(settings))

    def settle_changed_meta(self, changed: dict[str, dict[str, tuple[Any, Any]]],
                            discard: Callable[[str], None]) -> None:
        """Units whose answers were made with other settings: refused, or with ``recompute`` discarded.

        ``changed`` maps a unit's name to its changed keys; ``discard(name)`` deletes its answers.
        """
        if not changed:
            return
        keys = describe_changes({k: v for changes in changed.values() for k, v in changes.items()})
        if not self.recompute:
            names = ", ".join(list(changed)[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise RunRefused(f"{self.root} holds answers made with other settings ({keys}) for {names}; "
                             "rerun with --recompute to discard and recompute them, or use another output_dir")
        self.state.wait_for_everyone()
        if self.is_main:
            for name in changed:
                logger.warning("%s: discarding answers made with other settings (%s)", name, keys)
                discard(name)
        self.state.wait_for_everyone()

    def record_meta(self, path: Path, meta: dict[str, Any]) -> None:
        """Record the settings a unit's answers are made with (before its first answer)."""
        self.state.wait_for_everyone()
        if self.is_main and stored_meta(path) != meta:
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
        compact_jsonl(shard)  # a line torn by a killed run goes before this run appends
        bar = tqdm(total=len(mine), desc=desc, unit=unit, disable=not self.state.is_local_main_process)
        for index, batch in enumerate(batches(mine, batch_size)):
            append_jsonl(shard, answer(batch))
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(index, batch)
        bar.close()
