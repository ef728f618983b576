"""Self-distillation data: answers of the ORIGINAL full-attention model to long prompts.

``swaa distill`` loads the model without SWAA (a SWAA config found in its config.json is removed:
the teacher is the full-attention model), generates answers in left-padded batches (greedy, or
sampled ``num_generations`` times), scores them against the reference answers with the
evaluation scorers, and writes the training set. Each finished batch is appended (fsynced) to
a per-process log before the next starts, so a killed run resumes at the first unfinished
sample; samples are split over the processes of ``accelerate launch`` (:class:`~swaa_patch.jobs.run.ShardedRun`).

    OUTPUT/
      settings.resolved.json          the validated settings
      generation.meta.json            settings the answers were made with (checked on resume)
      generations/DATASET.rankR.jsonl every answer with its score (the resume log)
      dataset.jsonl                   the training set: prompt, response + metadata (kept rows)
      summary.json                    per dataset: prompts, answers, kept, teacher accuracy
      data/DATASET-HASH.jsonl         synthetic prompts generated for the teacher's tokenizer
      swaa_run.json, .swaa-rankK.lock the folder's kind and each process's lock (jobs/output.py)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.loaders import METADATA_FIELDS, load_records
from ..evaluation.judge import Judge, make_judge, score_response
from ..evaluation.scoring import resolve_method
from ..evaluation.settings import DatasetSpec
from ..jobs.io import atomic_write_json, atomic_write_jsonl, short_hash
from ..jobs.loading import load_model, load_tokenizer, local_model_path, max_positions, model_display_name
from ..jobs.prompts import Prepared, PromptOptions, eos_ids, prepare, within_model
from ..jobs.run import BatchAnswer, ShardedRun, logged_rows, meta_changes, rank_shards
from ..scope import swaa_enabled
from ..static_cache import compiled_generation, filled_batch
from .settings import DistillSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillLayout:
    root: Path

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def generation_meta(self) -> Path:
        return self.root / "generation.meta.json"

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    def shards(self, dataset: str) -> list[Path]:
        return rank_shards(self.generations, dataset)

    def synthetic_cache(self, dataset: str, key: str) -> Path:
        return self.root / "data" / f"{dataset}-{key}.jsonl"


@dataclass(frozen=True)
class Generation:
    """One answer of the teacher."""

    text: str
    tokens: int
    finished: bool  # ended with EOS (False: cut by max_new_tokens)


def generate_answers(model: Any, tokenizer: Any, batch: Sequence[Prepared], settings: DistillSettings,
                     seed: int) -> list[list[Generation]]:
    """``num_generations`` answers per prompt of a left-padded batch; sampling is seeded per batch,
    so a resumed run draws the same answers. A compiled batch shorter than ``batch_size`` is filled
    up to it (:func:`~swaa_patch.static_cache.filled_batch`)."""
    import torch

    prompts = filled_batch([p.input_ids for p in batch], settings.compile, model.device, settings.batch_size)
    padded = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
    sample = settings.temperature > 0
    extra = {"temperature": settings.temperature, "top_p": settings.top_p} if sample else {}
    torch.manual_seed(seed)
    with torch.inference_mode():
        output = model.generate(
            padded["input_ids"].to(model.device),
            attention_mask=padded["attention_mask"].to(model.device),
            max_new_tokens=settings.max_new_tokens,
            do_sample=sample,
            num_return_sequences=settings.num_generations,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
            **compiled_generation(settings.compile, model.device),
        )
    stops = eos_ids(model, tokenizer)
    n = settings.num_generations
    rows = output[: len(batch) * n, padded["input_ids"].shape[1] :].tolist()  # filler rows' answers dropped
    answers = [_generation(row, stops, tokenizer) for row in rows]
    return [answers[i * n : (i + 1) * n] for i in range(len(batch))]


def _generation(row: list[int], stops: set[int], tokenizer: Any) -> Generation:
    end = next((i for i, t in enumerate(row) if t in stops), None)
    kept = row if end is None else row[:end]
    kept = [t for t in kept if t != tokenizer.pad_token_id]
    return Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept), end is not None)


class DistillRun(ShardedRun):
    """One ``swaa distill`` invocation; :meth:`run` does the work and returns the dataset path."""

    kind = "distill"

    def __init__(self, settings: DistillSettings, judge: Judge | None = None,
                 on_batch: Callable[[int], None] | None = None, force: bool = False, recompute: bool = False):
        super().__init__(Path(settings.output_dir), settings.device, force=force, recompute=recompute)
        self.settings = settings
        self.layout = DistillLayout(self.root)
        self.judge = judge if judge is not None else make_judge(settings.judge)
        self.on_batch = on_batch
        # Over-long prompts are dropped, never cut: the teacher must have read what the student will.
        self.options = PromptOptions(settings.chat_template, settings.max_prompt_tokens, "skip")
        self._model: Any = None

    def work(self) -> Path:
        meta = generation_meta(self.settings)
        changes = meta_changes(self.layout.generation_meta, meta)
        self.settle_changed_meta({"generations": changes} if changes else {}, lambda name: self.discard())
        self.record_meta(self.layout.generation_meta, meta)
        self.save_settings(self.settings)
        self.model_path = local_model_path(self.settings.model, self.root)
        self.tokenizer = load_tokenizer(self.model_path)
        for spec in self.settings.datasets:
            self.run_dataset(spec)
        self.state.wait_for_everyone()
        if self.is_main:
            self.write_dataset()
        self.state.wait_for_everyone()
        return self.layout.dataset

    def progress(self) -> str:
        answered = sum(len(logged_rows(self.layout.shards(spec.name))) for spec in self.settings.datasets)
        return f"{answered} prompts answered in {self.layout.generations}"

    def discard(self) -> None:
        """Delete every answer and the training set made from them, so they are generated again."""
        for path in [*self.layout.generations.glob("*.jsonl"), self.layout.dataset, self.layout.summary]:
            path.unlink(missing_ok=True)

    def teacher(self) -> Any:
        """The teacher model, loaded on first use (a finished run never loads it); it answers inside
        ``swaa_enabled(model, None)``: full attention, whatever its config.json says."""
        if self._model is None:
            s = self.settings
            logger.info("loading teacher %s on %s", self.model_path, self.device)
            model = load_model(self.model_path, s.dtype, s.attn_implementation, self.device)
            if getattr(model.config, "swaa_config", None) is not None:
                logger.info("ignoring the model's swaa_config: answers come from full attention")
            self._model = model
        return self._model

    def records(self, spec: DatasetSpec) -> list[dict[str, Any]]:
        if not spec.synthetic:
            return load_records(spec.path)
        key = short_hash({"spec": asdict(spec), "seed": spec.task_seed(self.settings.seed),
                          "python": sys.version_info[:2], "tokenizer": self.model_path})
        path = self.root / "data" / f"{spec.name}-{key}.jsonl"
        return self.cached_rows(path, lambda: spec.synthetic_rows(self.tokenizer, self.settings.seed))

    def run_dataset(self, spec: DatasetSpec) -> None:
        records = {r["id"]: r for r in self.records(spec)}
        limit = spec.limit if spec.limit is not None else self.settings.limit
        options = within_model(self.options, max_positions(self.model_path), self.settings.max_new_tokens)
        selected = prepare(self.tokenizer, list(records.values()), options, limit)
        pending = self.answer_pending(
            selected, self.layout.generations, spec.name, start=lambda: self.answerer(spec, records),
            desc=f"distill | {spec.name}", unit="prompt", batch_size=self.settings.batch_size,
            on_batch=None if self.on_batch is None else lambda index, batch: self.on_batch(index),
        )
        logger.info("%s: %d prompts, %d already done", spec.name, len(selected), len(selected) - pending)

    def answerer(self, spec: DatasetSpec, records: dict[str, dict]) -> BatchAnswer:
        """Answers and scores one batch with the teacher (loaded on the first call)."""
        model = self.teacher()

        def answer(batch: list[Prepared]) -> list[dict[str, Any]]:
            seed = int(short_hash([self.settings.seed, [p.id for p in batch]]), 16) % (2**31)
            with swaa_enabled(model, None):  # the teacher is the full-attention model
                answers = generate_answers(model, self.tokenizer, batch, self.settings, seed)
            return [self.row(spec, p, records[p.id], answers[i]) for i, p in enumerate(batch)]

        return answer

    def row(self, spec: DatasetSpec, prepared: Prepared, record: dict, answers: list[Generation]) -> dict:
        """One prompt's log line: its answers, each scored and marked kept or not."""
        method = self.scoring_method(spec, record)
        scored = []
        for g, answer in enumerate(answers):
            score = score_response(method, record, answer.text, self.judge)
            scored.append({"generation": g, "response": answer.text, "response_tokens": answer.tokens,
                           "finished": answer.finished, "score": score})
        return {"id": prepared.id, "dataset": spec.name, "prompt_tokens": len(prepared.input_ids),
                "scoring": method, "answers": scored}

    def scoring_method(self, spec: DatasetSpec, record: dict) -> str:
        run_method = self.settings.filter.scoring if self.settings.filter is not None else "auto"
        return resolve_method(spec.scoring, run_method, record)

    def keep(self, answer: dict) -> bool:
        """Applied when the set is written, so a changed filter needs no new generation."""
        if self.settings.drop_unfinished and not answer["finished"]:
            return False
        return self.settings.filter is None or answer["score"] >= self.settings.filter.min_score

    # -- the training set --------------------------------------------------------------------
    def write_dataset(self) -> None:
        """Rewrite dataset.jsonl and summary.json from all logs (atomic, idempotent)."""
        rows: list[dict[str, Any]] = []
        summary: dict[str, Any] = {"model": self.settings.model, "datasets": {}}
        for spec in self.settings.datasets:
            records = {r["id"]: r for r in self.records(spec)}
            logged = logged_rows(self.layout.shards(spec.name))
            kept = [training_row(records[i], logged[i], a, self.settings.model)
                    for i in sorted(logged) for a in logged[i]["answers"] if self.keep(a)]
            rows.extend(kept)
            answers = [a for row in logged.values() for a in row["answers"]]
            summary["datasets"][spec.name] = {
                "prompts": len(logged),
                "answers": len(answers),
                "kept": len(kept),
                "teacher_accuracy": sum(a["score"] for a in answers) / len(answers) if answers else None,
                "finished": sum(a["finished"] for a in answers),
            }
        atomic_write_jsonl(self.layout.dataset, rows)
        atomic_write_json(self.layout.summary, summary)
        for name, stats in summary["datasets"].items():
            logger.info("%s: kept %d of %d answers (teacher accuracy %s)", name, stats["kept"], stats["answers"],
                        "n/a" if stats["teacher_accuracy"] is None else f"{stats['teacher_accuracy']:.3f}")


def generation_meta(settings: DistillSettings) -> dict[str, Any]:
    """Settings that change an answer (the filter does not: it is applied when the set is written)."""
    keys = ("model", "max_new_tokens", "max_prompt_tokens", "num_generations", "temperature", "top_p",
            "chat_template", "attn_implementation", "dtype", "seed")
    return {k: getattr(settings, k) for k in keys}


def training_row(record: dict, logged: dict, answer: dict, model: str) -> dict[str, Any]:
    """A row of the training set: prompt, response and where they came from."""
    return {
        "id": f"{logged['dataset']}/{record['id']}#{answer['generation']}",
        "prompt": record["prompt"],
        "response": answer["response"],
        "dataset": logged["dataset"],
        "sample_id": record["id"],
        "generation": answer["generation"],
        "teacher": model_display_name(model),
        "score": answer["score"],
        "scoring": logged["scoring"],
        "finished": answer["finished"],
        "prompt_tokens": logged["prompt_tokens"],
        "response_tokens": answer["response_tokens"],
        **{k: record[k] for k in METADATA_FIELDS if k in record},
    }


def run_distill(settings: DistillSettings, judge: Judge | None = None,
                on_batch: Callable[[int], None] | None = None, force: bool = False, recompute: bool = False) -> Path:
    """Generate (or finish generating) the self-distillation set; returns dataset.jsonl's path.

    ``force``: use an output folder that holds files of another kind of run; ``recompute``: discard
    answers made with other generation settings and generate them again.
    """
    return DistillRun(settings, judge=judge, on_batch=on_batch, force=force, recompute=recompute).run()
