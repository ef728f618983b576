"""Run every (model, SWAA config, dataset) block of a settings file; resumable per sample.

Each block keeps its responses in per-process logs (:class:`~swaa_patch.jobs.run.ShardedRun`:
appended and fsynced after every batch, pending samples split over the processes of an
``accelerate launch``); its metrics line is written atomically once all its samples are in, so a
killed run restarts exactly where it stopped. Before anything runs, every block's stored
generation settings are compared with the new ones: a difference is refused (or, with
``recompute``, the block's responses are discarded and made again), finished blocks included.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import SWAAConfig
from ..data.loaders import METADATA_FIELDS, load_records
from ..jobs.io import atomic_write_jsonl, read_jsonl, short_hash, write_parquet
from ..jobs.loading import load_model, load_tokenizer, local_model_path, max_positions, model_display_name
from ..jobs.prompts import Prepared, PromptOptions, prepare, within_model
from ..jobs.run import BatchAnswer, ShardedRun, logged_rows, meta_changes
from ..patch import apply_swaa
from ..static_cache import CompiledConfigs
from .generation import generate_batch
from .judge import Judge, make_judge, score_response
from .layout import Layout
from .metrics import block_metrics, read_metrics
from .scoring import resolve_method
from .settings import DatasetSpec, EvalSettings

logger = logging.getLogger(__name__)

JUDGE_THREADS = 8


@dataclass(frozen=True)
class Block:
    """One unit of work and of results: a model, a SWAA config and a dataset."""

    model: str
    model_name: str
    swaa: SWAAConfig | None
    dataset: DatasetSpec

    @property
    def config_name(self) -> str:
        return self.swaa.run_name() if self.swaa is not None else "full"

    @property
    def run_name(self) -> str:
        return f"{self.model_name}__{self.config_name}"


@dataclass(frozen=True)
class BatchDone:
    """Passed to the ``on_batch`` hook after a batch's responses are durably written."""

    block: Block
    batch_index: int
    ids: tuple[str, ...]


BatchHook = Callable[[BatchDone], None]


def unique_model_names(models: list[str]) -> dict[str, str]:
    """Readable names per model; a path hash is appended only where two names collide."""
    names = {m: model_display_name(m) for m in models}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {m: n if counts[n] == 1 else f"{n}-{short_hash(m)[:6]}" for m, n in names.items()}


def plan_blocks(settings: EvalSettings) -> list[Block]:
    """All blocks, grouped by model (loaded once), in settings order, duplicates dropped."""
    models = list(dict.fromkeys(m for run in settings.runs for m in run.model_list))
    names = unique_model_names(models)
    blocks: dict[tuple[str, str], Block] = {}
    for model in models:
        for run in settings.runs:
            if model not in run.model_list:
                continue
            for spec in settings.datasets:
                block = Block(model, names[model], run.swaa_config, spec)
                blocks.setdefault((block.run_name, spec.name), block)
    return list(blocks.values())


def selection_key(settings: EvalSettings, spec: DatasetSpec) -> str:
    """Fingerprint of what decides a block's sample set; a finished block with it is skipped."""
    keys = ("limit", "max_prompt_tokens", "truncation", "chat_template", "seed")
    return short_hash({"dataset": asdict(spec), **{k: getattr(settings, k) for k in keys}})


def generation_meta(settings: EvalSettings) -> dict[str, Any]:
    """Settings that change a response; responses made with other values are never mixed in."""
    keys = ("max_new_tokens", "max_prompt_tokens", "truncation", "chat_template", "attn_implementation", "dtype")
    return {k: getattr(settings, k) for k in keys}


def environment(device: str) -> str:
    """Where a block was computed (device, library versions): kept in its metrics record, so a
    report names the hardware behind every number, also when blocks come from several machines."""
    import platform

    import torch
    import transformers

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    return (f"{name}; torch {torch.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()}")


class ModelSlot:
    """Loads a model's tokenizer, then the model itself, only when some block needs them."""

    def __init__(self, path: str, settings: EvalSettings, device: str):
        self.path, self.settings, self.device = path, settings, device
        self._tokenizer: Any = None
        self._model: Any = None
        self._max_positions: int | None = None

    @property
    def max_positions(self) -> int | None:
        if self._max_positions is None:
            self._max_positions = max_positions(self.path)
        return self._max_positions

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    def model(self, swaa: SWAAConfig | None) -> Any:
        if self._model is None:
            logger.info("loading %s on %s", self.path, self.device)
            s = self.settings
            self._model = load_model(self.path, s.dtype, s.attn_implementation, self.device)
        if swaa is not None:
            swaa.check_layers(self._model.config.num_hidden_layers)
        return apply_swaa(self._model, swaa)

    def release(self) -> None:
        if self._model is not None:
            self._model = None
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class EvalRun(ShardedRun):
    """Holds the state of one ``swaa eval`` invocation; :meth:`run` does the work."""

    kind = "eval"

    def __init__(self, settings: EvalSettings, on_batch: BatchHook | None = None, judge: Judge | None = None,
                 force: bool = False, recompute: bool = False):
        super().__init__(Path(settings.output_dir), settings.device, force=force, recompute=recompute)
        self.settings = settings
        self.layout = Layout(self.root)
        self.on_batch = on_batch
        self.judge = judge if judge is not None else make_judge(settings.judge)
        self.options = PromptOptions(settings.chat_template, settings.max_prompt_tokens, settings.truncation)
        self._records: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._prepared: dict[tuple[str, str], list[Prepared]] = {}  # tokenised once per model
        self.compiled = CompiledConfigs()

    def work(self) -> list[dict[str, Any]]:
        """Evaluate all blocks; returns the metrics records of this output folder."""
        blocks = plan_blocks(self.settings)
        by_name = {f"{b.run_name}/{b.dataset.name}": b for b in blocks}
        changed = {name: self.meta_changes(block) for name, block in by_name.items()}
        self.settle_changed_meta({n: c for n, c in changed.items() if c}, lambda n: self.discard(by_name[n]))
        self.save_settings(self.settings)
        for model in dict.fromkeys(b.model for b in blocks):
            slot = ModelSlot(local_model_path(model, self.root), self.settings, self.device)
            for block in (b for b in blocks if b.model == model):
                self.run_block(block, slot)
            slot.release()
            self._prepared.clear()
        self.state.wait_for_everyone()
        return self.metrics()

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.layout.metrics)

    def progress(self) -> str:
        blocks = plan_blocks(self.settings)
        done = {(r["run_name"], r["dataset"]) for r in self.metrics()}
        finished = sum((b.run_name, b.dataset.name) in done for b in blocks)
        return (f"{finished} of {len(blocks)} blocks finished in {self.root} "
                "(the responses of unfinished blocks are kept)")

    # -- data -------------------------------------------------------------------------------
    def records(self, block: Block, slot: ModelSlot) -> list[dict[str, Any]]:
        spec = block.dataset
        key = (block.model_name if spec.synthetic else "", spec.name)
        if key not in self._records:
            self._records[key] = self._synthetic(block, slot) if spec.synthetic else load_records(spec.path)
        return self._records[key]

    def _synthetic(self, block: Block, slot: ModelSlot) -> list[dict[str, Any]]:
        spec = block.dataset
        seed = spec.task_seed(self.settings.seed)
        # The haystack depends on the Python version (stdlib docstrings), so it is in the key.
        key = short_hash({"spec": asdict(spec), "seed": seed, "python": sys.version_info[:2]})

        def build() -> list[dict[str, Any]]:
            logger.info("generating %s for %s's tokenizer", spec.name, block.model_name)
            return spec.synthetic_rows(slot.tokenizer, self.settings.seed)

        return self.cached_rows(self.layout.synthetic_cache(block.model_name, spec.name, key), build)

    # -- one block --------------------------------------------------------------------------
    def finished(self, block: Block, sel_key: str) -> bool:
        for record in self.metrics():
            if (record["run_name"], record["dataset"]) == (block.run_name, block.dataset.name):
                return record.get("selection_key") == sel_key
        return False

    def meta_changes(self, block: Block) -> dict[str, tuple[Any, Any]]:
        """Generation settings that differ from those the block's stored responses were made with."""
        return meta_changes(self.layout.block_meta(block.run_name, block.dataset.name), generation_meta(self.settings))

    def discard(self, block: Block) -> None:
        """Delete a block's responses and metrics line, so it is computed again."""
        name = block.dataset.name
        paths = self.layout.shards(block.run_name, name)
        paths += [self.layout.parquet(block.run_name, name), self.layout.block_meta(block.run_name, name)]
        for path in paths:
            path.unlink(missing_ok=True)
        atomic_write_jsonl(self.layout.metrics, other_blocks(self.layout.metrics, (block.run_name, name)))

    def prepared(self, block: Block, slot: ModelSlot, records: dict[str, dict]) -> list[Prepared]:
        """The block's samples as token ids (same for every config of a model: cached)."""
        key = (block.model, block.dataset.name)
        if key not in self._prepared:
            spec = block.dataset
            limit = spec.limit if spec.limit is not None else self.settings.limit
            options = within_model(self.options, slot.max_positions, self.settings.max_new_tokens)
            self._prepared[key] = prepare(slot.tokenizer, list(records.values()), options, limit)
        return self._prepared[key]

    def run_block(self, block: Block, slot: ModelSlot) -> None:
        spec = block.dataset
        sel_key = selection_key(self.settings, spec)
        if self.finished(block, sel_key):
            logger.info("%s | %s: already finished, skipped", block.run_name, spec.name)
            return
        self.record_meta(self.layout.block_meta(block.run_name, spec.name), generation_meta(self.settings))
        records = {r["id"]: r for r in self.records(block, slot)}
        selected = self.prepared(block, slot, records)
        new = self.answer_pending(
            selected, self.layout.block_dir(block.run_name), spec.name,
            start=lambda: self.answerer(block, slot, records),
            desc=f"{block.run_name} | {spec.name}", unit="sample", batch_size=self.settings.batch_size,
            on_batch=None if self.on_batch is None else lambda i, b: self.on_batch(BatchDone(
                block, i, tuple(p.id for p in b))),
        )
        self.state.wait_for_everyone()
        if self.is_main:
            self.finish(block, {p.id for p in selected}, new, sel_key)

    def answerer(self, block: Block, slot: ModelSlot, records: dict[str, dict]) -> BatchAnswer:
        """Generates and scores one batch with the block's model (loaded on the first call)."""
        model = slot.model(block.swaa)
        self.compiled.switch_to(block.run_name, self.settings.compile, model.device)

        def answer(batch: list[Prepared]) -> list[dict[str, Any]]:
            start = time.perf_counter()
            outputs = generate_batch(model, slot.tokenizer, batch, self.settings.max_new_tokens, self.settings.compile,
                                     self.settings.batch_size)
            seconds = (time.perf_counter() - start) / len(batch)
            return self.batch_records(block, batch, outputs, records, seconds)

        return answer

    def batch_records(self, block: Block, batch: list, outputs: list[dict], records: dict, seconds: float) -> list:
        """Response records of a batch, scored concurrently (a judge is a remote call)."""
        with ThreadPoolExecutor(max_workers=JUDGE_THREADS) as pool:
            futures = [
                pool.submit(self.response_record, block, p, out, records[p.id], seconds)
                for p, out in zip(batch, outputs)
            ]
            return [f.result() for f in futures]

    def response_record(self, block: Block, prepared: Any, output: dict, record: dict, seconds: float) -> dict:
        method = resolve_method(block.dataset.scoring, self.settings.scoring, record)
        row = {"id": prepared.id, **{k: record[k] for k in METADATA_FIELDS if k in record}}
        row.update(output)
        row.update(
            run_name=block.run_name,
            dataset=block.dataset.name,
            input_tokens=len(prepared.input_ids),
            prompt_tokens=prepared.prompt_tokens,
            truncated=prepared.truncated,
            scoring=method,
            score=score_response(method, record, output["response"], self.judge),
            seconds=round(seconds, 4),
        )
        return row

    def finish(self, block: Block, selected: set[str], new: int, sel_key: str) -> None:
        logged = logged_rows(self.layout.shards(block.run_name, block.dataset.name))
        responses = sorted((row for i, row in logged.items() if i in selected), key=lambda r: r["id"])
        metrics = {
            "run_name": block.run_name,
            "model_name": block.model_name,
            "model": block.model,
            "dataset": block.dataset.name,
            "config_name": block.config_name,
            **(block.swaa or SWAAConfig()).to_dict(),
            **block_metrics(responses),
            "selection_key": sel_key,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "environment": environment(self.device),
        }
        write_parquet(self.layout.parquet(block.run_name, block.dataset.name), responses)
        upsert_metrics(self.layout.metrics, metrics)
        logger.info(
            "%s | %s: accuracy %.3f over %d samples (%d new)",
            block.run_name, block.dataset.name, metrics["accuracy"], len(responses), new,
        )


def other_blocks(path: Path, key: tuple[str, str]) -> list[dict[str, Any]]:
    """The metrics lines of every block but ``key`` (run_name, dataset)."""
    return [r for r in read_jsonl(path) if (r.get("run_name"), r.get("dataset")) != key]


def upsert_metrics(path: Path, record: dict[str, Any]) -> None:
    """Replace the block's line (same run_name and dataset) or add it; atomic rewrite."""
    atomic_write_jsonl(path, [*other_blocks(path, (record["run_name"], record["dataset"])), record])


def run_eval(settings: EvalSettings, on_batch: BatchHook | None = None, judge: Judge | None = None,
             force: bool = False, recompute: bool = False) -> list[dict]:
    """Evaluate every block of ``settings``, resuming whatever an earlier run finished.

    ``force``: use an output folder that holds files of another kind of run; ``recompute``: discard
    and recompute blocks whose responses were made with other generation settings.
    """
    return EvalRun(settings, on_batch=on_batch, judge=judge, force=force, recompute=recompute).run()
