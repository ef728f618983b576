"""Run every (model, SWAA config, dataset) block of a settings file; resumable per sample.

Each finished batch is appended (and fsynced) to the block's responses log before the next one
starts, and a block's metrics line is written atomically once all its samples are in; a killed
run therefore restarts exactly where it stopped. Samples are split over the processes of an
``accelerate launch`` (data parallel, one model copy per GPU); each process appends to its own
log, so no two processes ever write the same file.
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

from tqdm.auto import tqdm

from ..config import SWAAConfig
from ..data.loaders import load_records
from ..data.synthetic import generate_task, tokenizer_counter
from ..testing import is_builtin, resolve_builtin_model
from .generation import Prepared, PromptOptions, batches, generate_batch, load_model, load_tokenizer, prepare
from .io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl, write_parquet
from .judge import Judge, make_judge
from .layout import Layout, short_hash
from .metrics import block_metrics
from .scoring import JUDGE, SCORERS, resolve_method
from .settings import DatasetSpec, EvalSettings, settings_to_dict

logger = logging.getLogger(__name__)

# Sample fields copied into each response record (the prompt itself is not: it can be huge).
KEEP_FIELDS = ("question", "answer", "task", "context_length", "depth", "question_type", "seed")
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


def model_display_name(model: str) -> str:
    """``Qwen3-4B`` for ``/m/Qwen3-4B``; ``run-checkpoint-100`` for ``/m/run/checkpoint-100``."""
    if is_builtin(model):
        return model.split(":", 1)[1]
    parts = Path(model).parts
    last = parts[-1]
    if len(parts) > 1 and ("checkpoint" in last or "merged" in last or last == "final"):
        return f"{parts[-2]}-{last}"
    return last


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

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    def model(self, swaa: SWAAConfig | None) -> Any:
        from .. import apply_swaa

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


class EvalRun:
    """Holds the state of one ``swaa eval`` invocation; :meth:`run` does the work."""

    def __init__(self, settings: EvalSettings, on_batch: BatchHook | None = None, judge: Judge | None = None):
        import torch
        from accelerate import PartialState

        self.settings = settings
        self.layout = Layout(Path(settings.output_dir))
        # cpu=True lets torchrun / `accelerate launch --cpu` split work over CPU processes (gloo);
        # without it accelerate treats a CPU-only launch as one process and every rank redoes all.
        self.state = PartialState(cpu=settings.device == "cpu" or not torch.cuda.is_available())
        self.on_batch = on_batch
        self.judge = judge if judge is not None else make_judge(settings.judge)
        self.options = PromptOptions(settings.chat_template, settings.max_prompt_tokens, settings.truncation)
        self._records: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._prepared: dict[tuple[str, str], list[Prepared]] = {}  # tokenised once per model

    @property
    def device(self) -> str:
        if self.settings.device == "auto" or self.state.num_processes > 1:
            return str(self.state.device)
        return self.settings.device

    def run(self) -> list[dict[str, Any]]:
        """Evaluate all blocks; returns the metrics records of this output folder."""
        if self.state.is_main_process:
            atomic_write_json(self.layout.settings, settings_to_dict(self.settings))
        blocks = plan_blocks(self.settings)
        for model in dict.fromkeys(b.model for b in blocks):
            slot = ModelSlot(self.local_model_path(model), self.settings, self.device)
            for block in (b for b in blocks if b.model == model):
                self.run_block(block, slot)
            slot.release()
            self._prepared.clear()
        self.state.wait_for_everyone()
        return read_jsonl(self.layout.metrics)

    def local_model_path(self, model: str) -> str:
        if not is_builtin(model):
            return model
        with self.state.main_process_first():
            return str(resolve_builtin_model(model, self.layout.builtin))

    # -- data -------------------------------------------------------------------------------
    def records(self, block: Block, slot: ModelSlot) -> list[dict[str, Any]]:
        spec = block.dataset
        key = (block.model_name if spec.synthetic else "", spec.name)
        if key not in self._records:
            self._records[key] = self._synthetic(block, slot) if spec.synthetic else load_records(spec.path)
        return self._records[key]

    def _synthetic(self, block: Block, slot: ModelSlot) -> list[dict[str, Any]]:
        spec = block.dataset
        seed = self.settings.seed if spec.seed is None else spec.seed
        # The haystack depends on the Python version (stdlib docstrings), so it is in the key.
        key = short_hash({"spec": asdict(spec), "seed": seed, "python": sys.version_info[:2]})
        cache = self.layout.synthetic_cache(block.model_name, spec.name, key)
        with self.state.main_process_first():
            if not cache.is_file():
                logger.info("generating %s for %s's tokenizer", spec.name, block.model_name)
                counter = tokenizer_counter(slot.tokenizer)
                rows = generate_task(spec.task, counter, spec.lengths, spec.depths, spec.samples, seed)
                atomic_write_jsonl(cache, rows)
        return read_jsonl(cache)

    # -- one block --------------------------------------------------------------------------
    def finished(self, block: Block, sel_key: str) -> bool:
        for record in read_jsonl(self.layout.metrics):
            if (record["run_name"], record["dataset"]) == (block.run_name, block.dataset.name):
                return record.get("selection_key") == sel_key
        return False

    def check_meta(self, block: Block) -> None:
        path = self.layout.block_meta(block.run_name, block.dataset.name)
        meta = generation_meta(self.settings)
        old = read_jsonl(path)[0] if path.is_file() else None
        if old is not None and old != meta:
            changed = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
            raise RuntimeError(
                f"{self.layout.root} holds responses for {block.run_name}/{block.dataset.name} made with "
                f"other generation settings {changed} (old, new); use another output_dir"
            )
        if old is None and self.state.is_main_process:
            atomic_write_jsonl(path, [meta])

    def prepared(self, block: Block, slot: ModelSlot, records: dict[str, dict]) -> list[Prepared]:
        """The block's samples as token ids (same for every config of a model: cached)."""
        key = (block.model, block.dataset.name)
        if key not in self._prepared:
            spec = block.dataset
            limit = spec.limit if spec.limit is not None else self.settings.limit
            self._prepared[key] = prepare(slot.tokenizer, list(records.values()), self.options, limit)
        return self._prepared[key]

    def done_ids(self, block: Block) -> set[str]:
        shards = self.layout.shards(block.run_name, block.dataset.name)
        return {r["id"] for shard in shards for r in read_jsonl(shard)}

    def run_block(self, block: Block, slot: ModelSlot) -> None:
        spec = block.dataset
        sel_key = selection_key(self.settings, spec)
        if self.finished(block, sel_key):
            logger.info("%s | %s: already finished, skipped", block.run_name, spec.name)
            return
        self.check_meta(block)
        records = {r["id"]: r for r in self.records(block, slot)}
        selected = self.prepared(block, slot, records)
        done = self.done_ids(block)
        pending = [p for p in selected if p.id not in done]
        # Every process must split the same pending list: nobody writes before all have read.
        self.state.wait_for_everyone()
        with self.state.split_between_processes(pending) as mine:
            if mine:
                self.generate(block, slot, mine, records)
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            self.finish(block, {p.id for p in selected}, len(pending), sel_key)

    def generate(self, block: Block, slot: ModelSlot, mine: list, records: dict[str, dict]) -> None:
        model = slot.model(block.swaa)
        shard = self.layout.shard(block.run_name, block.dataset.name, self.state.process_index)
        bar = tqdm(total=len(mine), desc=f"{block.run_name} | {block.dataset.name}", unit="sample",
                   disable=not self.state.is_local_main_process)
        for index, batch in enumerate(batches(mine, self.settings.batch_size)):
            start = time.perf_counter()
            outputs = generate_batch(model, slot.tokenizer, batch, self.settings.max_new_tokens)
            seconds = (time.perf_counter() - start) / len(batch)
            rows = self.batch_records(block, batch, outputs, records, seconds)
            append_jsonl(shard, rows)
            bar.update(len(batch))
            if self.on_batch is not None:
                self.on_batch(BatchDone(block, index, tuple(p.id for p in batch)))
        bar.close()

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
        row = {"id": prepared.id, **{k: record[k] for k in KEEP_FIELDS if k in record}}
        row.update(output)
        row.update(
            run_name=block.run_name,
            dataset=block.dataset.name,
            input_tokens=len(prepared.input_ids),
            truncated=prepared.truncated,
            scoring=method,
            score=self.score(method, record, output["response"]),
            seconds=round(seconds, 4),
        )
        return row

    def score(self, method: str, record: dict, response: str) -> float:
        if method == JUDGE:
            if self.judge is None:
                raise RuntimeError("scoring 'judge' needs a 'judge' block in the settings")
            return self.judge(record.get("question", ""), record["answer"], response)
        if method not in SCORERS:
            raise ValueError(f"sample {record['id']}: unknown scoring {method!r}; use one of {sorted(SCORERS)}")
        return SCORERS[method](response, record["answer"])

    def finish(self, block: Block, selected: set[str], new: int, sel_key: str) -> None:
        shards = self.layout.shards(block.run_name, block.dataset.name)
        by_id: dict[str, dict] = {}
        for shard in shards:
            for row in read_jsonl(shard):
                if row["id"] in selected:
                    by_id.setdefault(row["id"], row)
        responses = sorted(by_id.values(), key=lambda r: r["id"])
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


def upsert_metrics(path: Path, record: dict[str, Any]) -> None:
    """Replace the block's line (same run_name and dataset) or add it; atomic rewrite."""
    key = (record["run_name"], record["dataset"])
    rows = [r for r in read_jsonl(path) if (r.get("run_name"), r.get("dataset")) != key]
    atomic_write_jsonl(path, [*rows, record])


def run_eval(settings: EvalSettings, on_batch: BatchHook | None = None, judge: Judge | None = None) -> list[dict]:
    """Evaluate every block of ``settings``, resuming whatever an earlier run finished."""
    return EvalRun(settings, on_batch=on_batch, judge=judge).run()
