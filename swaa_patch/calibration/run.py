"""``swaa calibrate``: score layer sets on calibration prompts, choose the full layers, write them.

A unit of work is one set of full-attention layers scored over every calibration prompt. Each
finished unit is merged into ``scores.json`` (rewritten atomically) before the next starts, and
teacher answers are appended per batch, so a killed run resumes where it stopped: known sets are
never scored again, and a run whose units are all known never loads the model. Scores do not
depend on the budget or the metric (both metrics are stored), so a rerun with a larger budget
or the other metric reuses every set already scored. Settings that change a score are stored in
``calibration.meta.json``; an output folder made with other values is refused. The files are
listed in ``layout.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import SWAAConfig
from ..evaluation.generation import PromptOptions, batches, load_model, load_tokenizer, prepare
from ..evaluation.io import append_jsonl, atomic_write_json, read_jsonl
from ..evaluation.settings import settings_to_dict
from ..evaluation.validate import SettingsError
from ..patch import apply_swaa
from ..testing import is_builtin, resolve_builtin_model
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
    from transformers import AutoConfig

    from ..evaluation.generation import _adapter_base

    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        folder = Path(_adapter_base(folder))
    return AutoConfig.from_pretrained(folder).get_text_config().num_hidden_layers


class CalibrationRun:
    """One ``swaa calibrate`` invocation; :meth:`run` does the work and returns the result dict."""

    def __init__(self, settings: CalibrationSettings, on_unit: Callable[[Layers], None] | None = None):
        self.settings = settings
        self.layout = CalibrationLayout(Path(settings.output_dir))
        self.on_unit = on_unit
        self.metric_key = METRIC_KEYS[settings.calibrate.metric]
        self._model: Any = None
        self._reference: list[Any] | None = None
        self.bar: Any = None

    def run(self) -> dict[str, Any]:
        num_layers, budget = self.prepare()
        total = num_layers + 1 + greedy_sets(num_layers, budget)
        self.bar = tqdm(total=total, desc="calibrate", unit="set")
        sensitivity = {layer: self.score(s) for layer, s in sensitivity_sets(num_layers).items()}
        all_sliding = self.score(frozenset())
        steps = greedy_select(num_layers, budget, lambda layers: self.score(layers)[self.metric_key])
        self.bar.close()
        result = build_result(self.settings, num_layers, budget, self.examples, self.store, sensitivity,
                              all_sliding, steps, self.environment())
        atomic_write_json(self.layout.config, result["swaa_config"])
        atomic_write_json(self.layout.result, result)
        write_report(result, self.layout.report, self.layout.plot)
        logger.info("calibrated non_sliding_layers %s (%s %.4g; all sliding %.4g): %s", result["non_sliding_layers"],
                    self.metric_key, steps[-1].score, all_sliding[self.metric_key], self.layout.config)
        return result

    def prepare(self) -> tuple[int, int]:
        """Check the output folder, resolve the budget against the model's layer count (before any
        weights load), and make the calibration examples; returns (layers, full layers to choose).
        After it, :meth:`score` scores any layer set (benchmarks score sets the search skips)."""
        self.check_meta()
        atomic_write_json(self.layout.settings, settings_to_dict(self.settings))
        self.model_path = self.local_model_path()
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
        meta = calibration_meta(self.settings)
        old = json.loads(self.layout.meta.read_text(encoding="utf-8")) if self.layout.meta.is_file() else None
        if old is not None and old != meta:
            changed = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
            raise RuntimeError(f"{self.layout.root} holds scores made with other settings {changed} (old, new); "
                               "use another output_dir")
        if old is None:
            atomic_write_json(self.layout.meta, meta)

    def local_model_path(self) -> str:
        model = self.settings.model
        return str(resolve_builtin_model(model, self.layout.builtin)) if is_builtin(model) else model

    @property
    def device(self) -> str:
        import torch

        if self.settings.device != "auto":
            return self.settings.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def environment(self) -> str:
        from ..evaluation.runner import environment

        return environment(self.device)

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
            raise ValueError("no calibration prompt is left (all longer than max_prompt_tokens with truncation "
                             "'skip'?)")
        return examples

    def teacher_examples(self, dataset: str, prepared: list) -> list[Example]:
        """Prompts followed by the full-attention model's greedy answers (generated once, logged)."""
        path = self.layout.targets(dataset)
        done = {row["id"]: row for row in read_jsonl(path)}
        pending = [p for p in prepared if p.id not in done]
        if pending:
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


def run_calibration(settings: CalibrationSettings, on_unit: Callable[[Layers], None] | None = None) -> dict[str, Any]:
    """Calibrate (or finish calibrating) ``non_sliding_layers``; returns the result written to
    ``calibration.json``, whose ``swaa_config`` is the calibrated config."""
    return CalibrationRun(settings, on_unit=on_unit).run()


def calibrated_config(result: dict[str, Any]) -> SWAAConfig:
    return SWAAConfig.from_dict(result["swaa_config"])
