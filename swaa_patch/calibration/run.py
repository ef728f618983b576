"""``swaa calibrate``: score layer sets on calibration prompts, choose the full layers, write them.

A unit of work is one set of full-attention layers scored over every calibration prompt. Each
finished unit is merged into ``scores.json`` (rewritten atomically) before the next starts, and
teacher answers are appended per batch, so a killed run resumes where it stopped: known sets are
never scored again, and a run whose units are all known never loads the model. Scores do not
depend on the budget or the metric (both metrics are stored), so a rerun with a larger budget
or the other metric reuses every set already scored. Settings that change a score are stored in
``calibration.meta.json``; an output folder made with other values is refused (``recompute``:
its scores and teacher answers are discarded). The run holds its output folder and turns Ctrl-C
into one line as every job does (:class:`~swaa_patch.jobs.run.ShardedRun`; it runs in one
process). The files are listed in ``layout.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import SWAAConfig
from ..evaluation.runner import environment
from ..jobs.errors import RunRefused, SettingsError
from ..jobs.io import append_jsonl, atomic_write_json, compact_jsonl, read_jsonl
from ..jobs.loading import load_model, load_tokenizer, local_model_path, text_config
from ..jobs.prompts import PromptOptions, batches, prepare
from ..jobs.run import ShardedRun, meta_changes
from ..jobs.validate import fail
from ..patch import apply_swaa
from .examples import dataset_records, greedy_answer_ids, reference_examples
from .layout import CalibrationLayout, ScoreStore, calibration_meta
from .measure import Example, aggregate, answer_log_probs, example_score
from .report import build_result, write_report
from .search import Layers, greedy_select, greedy_sets, layers_key, sensitivity_sets
from .settings import CalibrationSettings, resolve_budget

logger = logging.getLogger(__name__)
METRIC_KEYS = {"kl": "kl", "nll": "delta_nll"}  # what the greedy stage minimises


def num_hidden_layers(model_path: str) -> int:
    """The decoder's layer count, read from the config alone (no weights load)."""
    return text_config(model_path).num_hidden_layers


class CalibrationRun(ShardedRun):
    """One ``swaa calibrate`` invocation; :meth:`run` does the work and returns the result dict."""

    kind = "calibrate"

    def __init__(self, settings: CalibrationSettings, on_unit: Callable[[Layers], None] | None = None,
                 force: bool = False, recompute: bool = False):
        super().__init__(Path(settings.output_dir), settings.device, force=force, recompute=recompute)
        self.settings = settings
        self.layout = CalibrationLayout(self.root)
        self.on_unit = on_unit
        self.metric_key = METRIC_KEYS[settings.calibrate.metric]
        self.store: ScoreStore | None = None
        self._model: Any = None
        self._reference: list[Any] | None = None
        self.bar: Any = None

    def work(self) -> dict[str, Any]:
        num_layers, budget = self.prepare()
        total = num_layers + 1 + greedy_sets(num_layers, budget)
        self.bar = tqdm(total=total, desc="calibrate", unit="set")
        sensitivity = {layer: self.score(s) for layer, s in sensitivity_sets(num_layers).items()}
        all_sliding = self.score(frozenset())
        steps = greedy_select(num_layers, budget, lambda layers: self.score(layers)[self.metric_key])
        self.bar.close()
        result = build_result(self.settings, num_layers, budget, self.examples, self.store, sensitivity,
                              all_sliding, steps, environment(self.device))
        atomic_write_json(self.layout.config, result["swaa_config"])
        atomic_write_json(self.layout.result, result)
        write_report(result, self.layout.report, self.layout.plot)
        logger.info("calibrated non_sliding_layers %s (%s %.4g; all sliding %.4g): %s", result["non_sliding_layers"],
                    self.metric_key, steps[-1].score, all_sliding[self.metric_key], self.layout.config)
        return result

    def progress(self) -> str:
        store = self.store if self.store is not None else ScoreStore(self.layout.scores)
        answers = sum(len(read_jsonl(path)) for path in self.layout.root.glob("targets/*.jsonl"))
        teacher = f", {answers} teacher answers" if answers else ""
        return f"{len(store.sets)} layer sets scored{teacher} in {self.root}"

    def prepare(self) -> tuple[int, int]:
        """Check the settings against the folder's, resolve the budget against the model's layer count
        (before any weights load), and make the calibration examples; returns (layers, full layers to
        choose). After it, :meth:`score` scores any layer set (benchmarks score sets the search skips)."""
        if self.state.num_processes > 1:
            raise RunRefused("swaa calibrate runs in one process: start it without accelerate launch or torchrun")
        self.check_meta()
        self.save_settings(self.settings)
        self.model_path = local_model_path(self.settings.model, self.root)
        num_layers = num_hidden_layers(self.model_path)
        budget = resolve_budget(self.settings.calibrate.budget, num_layers)
        try:
            self.settings.swaa_config.check_layers(num_layers)  # force_fa_decode may list layers
        except ValueError as err:
            raise SettingsError(f"swaa_config.{err}") from None
        self.tokenizer = load_tokenizer(self.model_path)
        self.examples = self.load_examples()
        self.store = ScoreStore(self.layout.scores)
        return num_layers, budget

    def check_meta(self) -> None:
        """Scores and teacher answers made with other settings: refused, or with ``recompute`` discarded."""
        meta = calibration_meta(self.settings)
        changes = meta_changes(self.layout.meta, meta)
        self.settle_changed_meta({"scores and teacher answers": changes} if changes else {},
                                 lambda name: self.discard())
        self.record_meta(self.layout.meta, meta)

    def discard(self) -> None:
        """Delete every score and teacher answer and what was made from them."""
        results = [self.layout.result, self.layout.config, self.layout.report, self.layout.plot]
        for path in [self.layout.scores, *self.layout.root.glob("targets/*.jsonl"), *results]:
            path.unlink(missing_ok=True)

    def model(self) -> Any:
        """The model, loaded on first use (a run with every unit already scored never loads it)."""
        if self._model is None:
            s = self.settings
            logger.info("loading %s on %s", self.model_path, self.device)
            self._model = load_model(self.model_path, s.dtype, s.attn_implementation, self.device)
        return self._model

    # -- prompts and targets -----------------------------------------------------------------
    def load_examples(self) -> list[Example]:
        s = self.settings
        options = PromptOptions(s.chat_template, s.max_prompt_tokens, s.truncation)
        examples: list[Example] = []
        for spec in s.datasets:
            records = {r["id"]: r for r in dataset_records(spec, self.tokenizer, s.seed, self.layout.data)}
            limit = spec.limit if spec.limit is not None else s.limit
            prepared = prepare(self.tokenizer, list(records.values()), options, limit)
            if s.calibrate.target == "reference":
                examples += reference_examples(self.tokenizer, spec.name, prepared, records, s.chat_template,
                                               s.calibrate.max_answer_tokens)
            else:
                examples += self.teacher_examples(spec.name, prepared)
        if not examples:
            raise fail("max_prompt_tokens", "leaves no calibration prompt (every one is longer, and truncation is "
                                            "'skip')")
        return examples

    def teacher_examples(self, dataset: str, prepared: list) -> list[Example]:
        """Prompts followed by the full-attention model's greedy answers (generated once, logged)."""
        path = self.layout.targets(dataset)
        done = {row["id"]: row for row in read_jsonl(path)}
        pending = [p for p in prepared if p.id not in done]
        if pending:
            compact_jsonl(path)  # a line torn by a killed run goes before this run appends
            model = apply_swaa(self.model(), None)
            for batch in tqdm(list(batches(pending, self.settings.batch_size)), desc=f"teacher answers | {dataset}",
                              unit="batch"):
                answers = greedy_answer_ids(model, self.tokenizer, batch, self.settings.calibrate.max_answer_tokens)
                rows = [{"id": p.id, "answer_ids": ids, "answer": self.tokenizer.decode(ids, skip_special_tokens=True)}
                        for p, ids in zip(batch, answers)]
                append_jsonl(path, rows)
                done.update((row["id"], row) for row in rows)
        logger.info("%s: %d prompts, %d teacher answers generated now", dataset, len(prepared), len(pending))
        return [Example(p.id, dataset, tuple(p.input_ids), tuple(done[p.id]["answer_ids"])) for p in prepared]

    # -- scoring -----------------------------------------------------------------------------
    def score(self, layers: Layers) -> dict[str, Any]:
        """The scores of ``layers`` full (all others sliding): stored, or measured and stored now."""
        key = layers_key(layers)
        if key not in self.store.sets:
            start = time.perf_counter()
            scores = self.measure(layers)
            scores["seconds"] = round(time.perf_counter() - start, 3)
            self.store.sets[key] = {"full_layers": sorted(layers), **scores}
            self.store.save()
            logger.info("full layers [%s]: kl %.5f, delta_nll %+.5f over %d prompts in %.1f s", key, scores["kl"],
                        scores["delta_nll"], scores["examples"], scores["seconds"])
            if self.on_unit is not None:
                self.on_unit(layers)
        if self.bar is not None:
            self.bar.update(1)
        return self.store.sets[key]

    def measure(self, layers: Layers) -> dict[str, Any]:
        reference = self.reference()
        config = replace(self.settings.swaa_config, non_sliding_layers=tuple(sorted(layers)))
        scores = []
        for batch in self.batches():
            outputs = answer_log_probs(self.model(), [self.examples[i] for i in batch], config, self.pad_id)
            for i, out in zip(batch, outputs):
                scores.append((self.examples[i], example_score(reference[i], out, self.examples[i].answer_ids)))
        return aggregate(scores, self.reference_nll())

    def reference(self) -> list[Any]:
        """Full-attention answer log-probs of every example, computed once per process (kept on the
        CPU: examples x answer tokens x vocabulary floats)."""
        if self._reference is None:
            reference: list[Any] = [None] * len(self.examples)
            scores = []
            for batch in self.batches():
                outputs = answer_log_probs(self.model(), [self.examples[i] for i in batch], None, self.pad_id)
                for i, out in zip(batch, outputs):
                    reference[i] = out
                    scores.append((self.examples[i], example_score(out, out, self.examples[i].answer_ids)))
            self._reference = reference
            if self.store.reference is None:
                self.store.reference = aggregate(scores, {})
                self.store.save()
        return self._reference

    def reference_nll(self) -> dict[str, float]:
        ref = self.store.reference
        return {"": ref["nll"], **{name: d["nll"] for name, d in ref["by_dataset"].items()}}

    def batches(self) -> list[list[int]]:
        """Example indices, longest first, ``batch_size`` per forward."""
        order = sorted(range(len(self.examples)),
                       key=lambda i: (-len(self.examples[i].prompt_ids) - len(self.examples[i].answer_ids), i))
        size = self.settings.batch_size
        return [order[start : start + size] for start in range(0, len(order), size)]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def run_calibration(settings: CalibrationSettings, on_unit: Callable[[Layers], None] | None = None,
                    force: bool = False, recompute: bool = False) -> dict[str, Any]:
    """Calibrate (or finish calibrating) ``non_sliding_layers``; returns the result written to
    ``calibration.json``, whose ``swaa_config`` is the calibrated config.

    ``force``: use an output folder that holds files of another kind of run; ``recompute``: discard
    scores and teacher answers made with other settings and compute them again.
    """
    return CalibrationRun(settings, on_unit=on_unit, force=force, recompute=recompute).run()


def calibrated_config(result: dict[str, Any]) -> SWAAConfig:
    return SWAAConfig.from_dict(result["swaa_config"])
