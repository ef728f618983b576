"""Self-distillation data: answers of the ORIGINAL full-attention model to long prompts.

``swaa distill`` loads the model without SWAA (a SWAA config found in its config.json is removed:
the teacher is the full-attention model), generates answers in left-padded batches (greedy, or
sampled ``num_generations`` times), scores them against the reference answers with the
evaluation scorers, and writes the training set. Each finished batch is appended (fsynced) to
a per-process log before the next starts, so a killed run resumes at the first unfinished
sample; samples are split over the processes of ``accelerate launch``.

    OUTPUT/
      settings.resolved.json          the validated settings
      generation.meta.json            settings the answers were made with (checked on resume)
      generations/DATASET.rankR.jsonl every answer with its score (the resume log)
      dataset.jsonl                   the training set: prompt, response + metadata (kept rows)
      summary.json                    per dataset: prompts, answers, kept, teacher accuracy
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.loaders import load_records
from ..data.synthetic import generate_task, tokenizer_counter
from ..evaluation.generation import Prepared, PromptOptions, batches, load_model, load_tokenizer, prepare
from ..evaluation.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl
from ..evaluation.judge import Judge, make_judge
from ..evaluation.layout import short_hash
from ..evaluation.runner import KEEP_FIELDS, model_display_name
from ..evaluation.scoring import JUDGE, SCORERS, resolve_method
from ..evaluation.settings import DatasetSpec, settings_to_dict
from ..scope import swaa_enabled
from ..testing import is_builtin, resolve_builtin_model
from .settings import DistillSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillLayout:
    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "settings.resolved.json"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def builtin(self) -> Path:
        return self.root / "_builtin"

    @property
    def generation_meta(self) -> Path:
        return self.root / "generation.meta.json"

    def shard(self, dataset: str, rank: int) -> Path:
        return self.root / "generations" / f"{dataset}.rank{rank}.jsonl"

    def shards(self, dataset: str) -> list[Path]:
        return sorted((self.root / "generations").glob(f"{dataset}.rank*.jsonl"))

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
    so a resumed run draws the same answers."""
    import torch

    padded = tokenizer.pad({"input_ids": [p.input_ids for p in batch]}, padding=True, return_tensors="pt")
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
        )
    stops = _eos_ids(model, tokenizer)
    rows = output[:, padded["input_ids"].shape[1] :].tolist()
    answers = [_generation(row, stops, tokenizer) for row in rows]
    n = settings.num_generations
    return [answers[i * n : (i + 1) * n] for i in range(len(batch))]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _generation(row: list[int], stops: set[int], tokenizer: Any) -> Generation:
    end = next((i for i, t in enumerate(row) if t in stops), None)
    kept = row if end is None else row[:end]
    kept = [t for t in kept if t != tokenizer.pad_token_id]
    return Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept), end is not None)


class DistillRun:
    """One ``swaa distill`` invocation; :meth:`run` does the work and returns the dataset path."""

    def __init__(self, settings: DistillSettings, judge: Judge | None = None,
                 on_batch: Callable[[int], None] | None = None):
        import torch
        from accelerate import PartialState

        self.settings = settings
        self.layout = DistillLayout(Path(settings.output_dir))
        self.state = PartialState(cpu=settings.device == "cpu" or not torch.cuda.is_available())
        self.judge = judge if judge is not None else make_judge(settings.judge)
        self.on_batch = on_batch
        # Over-long prompts are dropped, never cut: the teacher must have read what the student will.
        self.options = PromptOptions(settings.chat_template, settings.max_prompt_tokens, "skip")
        self._model: Any = None

    @property
    def device(self) -> str:
        if self.settings.device == "auto" or self.state.num_processes > 1:
            return str(self.state.device)
        return self.settings.device

    def run(self) -> Path:
        self.check_meta()
        if self.state.is_main_process:
            atomic_write_json(self.layout.settings, settings_to_dict(self.settings))
        model_path = self.local_model_path()
        self.tokenizer = load_tokenizer(model_path)
        self.model_path = model_path
        for spec in self.settings.datasets:
            self.run_dataset(spec)
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            self.write_dataset()
        self.state.wait_for_everyone()
        return self.layout.dataset

    def check_meta(self) -> None:
        """Answers made with other generation settings are never mixed into one training set."""
        meta = generation_meta(self.settings)
        path = self.layout.generation_meta
        old = read_jsonl(path)[0] if path.is_file() else None
        if old is not None and old != meta:
            changed = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
            raise RuntimeError(f"{self.layout.root} holds answers made with other generation settings {changed} "
                               "(old, new); use another output_dir")
        self.state.wait_for_everyone()
        if old is None and self.state.is_main_process:
            atomic_write_jsonl(path, [meta])

    def local_model_path(self) -> str:
        model = self.settings.model
        if not is_builtin(model):
            return model
        with self.state.main_process_first():
            return str(resolve_builtin_model(model, self.layout.builtin))

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
        seed = self.settings.seed if spec.seed is None else spec.seed
        key = short_hash({"spec": asdict(spec), "seed": seed, "python": sys.version_info[:2],
                          "tokenizer": self.model_path})
        cache = self.layout.synthetic_cache(spec.name, key)
        with self.state.main_process_first():
            if not cache.is_file():
                rows = generate_task(spec.task, tokenizer_counter(self.tokenizer), spec.lengths, spec.depths,
                                     spec.samples, seed)
                atomic_write_jsonl(cache, rows)
        return read_jsonl(cache)

    def run_dataset(self, spec: DatasetSpec) -> None:
        records = {r["id"]: r for r in self.records(spec)}
        limit = spec.limit if spec.limit is not None else self.settings.limit
        selected = prepare(self.tokenizer, list(records.values()), self.options, limit)
        done = {row["id"] for shard in self.layout.shards(spec.name) for row in read_jsonl(shard)}
        pending = [p for p in selected if p.id not in done]
        logger.info("%s: %d prompts, %d already done", spec.name, len(selected), len(selected) - len(pending))
        self.state.wait_for_everyone()
        with self.state.split_between_processes(pending) as mine:
            if mine:
                self.generate(spec, mine, records)

    def generate(self, spec: DatasetSpec, mine: list[Prepared], records: dict[str, dict]) -> None:
        model = self.teacher()
        shard = self.layout.shard(spec.name, self.state.process_index)
        bar = tqdm(total=len(mine), desc=f"distill | {spec.name}", unit="prompt",
                   disable=not self.state.is_local_main_process)
        for index, batch in enumerate(batches(mine, self.settings.batch_size)):
            seed = int(short_hash([self.settings.seed, [p.id for p in batch]]), 16) % (2**31)
            with swaa_enabled(model, None):  # the teacher is the full-attention model
                answers = generate_answers(model, self.tokenizer, batch, self.settings, seed)
            rows = [self.row(spec, p, records[p.id], answers[i]) for i, p in enumerate(batch)]
            append_jsonl(shard, rows)
            bar.update(len(batch))
            if self.on_batch is not None:
                self.on_batch(index)
        bar.close()

    def row(self, spec: DatasetSpec, prepared: Prepared, record: dict, answers: list[Generation]) -> dict:
        """One prompt's log line: its answers, each scored and marked kept or not."""
        method = self.scoring_method(spec, record)
        scored = []
        for g, answer in enumerate(answers):
            score = self.score(method, record, answer.text)
            scored.append({"generation": g, "response": answer.text, "response_tokens": answer.tokens,
                           "finished": answer.finished, "score": score})
        return {"id": prepared.id, "dataset": spec.name, "prompt_tokens": len(prepared.input_ids),
                "scoring": method, "answers": scored}

    def scoring_method(self, spec: DatasetSpec, record: dict) -> str:
        run_method = self.settings.filter.scoring if self.settings.filter is not None else "auto"
        return resolve_method(spec.scoring, run_method, record)

    def score(self, method: str, record: dict, response: str) -> float:
        if method == JUDGE:
            if self.judge is None:
                raise RuntimeError("scoring 'judge' needs a 'judge' block in the settings")
            return self.judge(record.get("question", ""), record["answer"], response)
        return SCORERS[method](response, record["answer"])

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
            logged = {}
            for shard in self.layout.shards(spec.name):
                for row in read_jsonl(shard):
                    logged.setdefault(row["id"], row)
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
        **{k: record[k] for k in KEEP_FIELDS if k in record},
    }


def run_distill(settings: DistillSettings, judge: Judge | None = None,
                on_batch: Callable[[int], None] | None = None) -> Path:
    """Generate (or finish generating) the self-distillation set; returns dataset.jsonl's path."""
    return DistillRun(settings, judge=judge, on_batch=on_batch).run()
