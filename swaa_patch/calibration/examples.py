"""Calibration prompts and the answer tokens scored after them.

Prompts are read and tokenised exactly as ``swaa eval`` reads them (same dataset specs, chat
template, truncation), so a layer is judged on the inputs it will serve. The scored answer is
either the full-attention model's own greedy answer (``teacher``: what SWA should preserve,
in the model's own words) or the dataset's reference answer as an assistant turn (``reference``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data.loaders import load_records
from ..evaluation.settings import DatasetSpec
from ..jobs.io import atomic_write_jsonl, read_jsonl, short_hash
from ..jobs.prompts import Prepared, eos_ids, response_ids
from .measure import Example


def dataset_records(spec: DatasetSpec, tokenizer: Any, seed: int, data_dir: Path) -> list[dict[str, Any]]:
    """A dataset's records; synthetic ones are generated for ``tokenizer`` once and cached."""
    if not spec.synthetic:
        return load_records(spec.path)
    # The haystack depends on the Python version (stdlib docstrings), so it is in the key.
    key = short_hash({"spec": asdict(spec), "seed": spec.task_seed(seed), "python": sys.version_info[:2],
                      "tokenizer": tokenizer.name_or_path})
    cache = data_dir / f"{spec.name}-{key}.jsonl"
    if not cache.is_file():
        atomic_write_jsonl(cache, spec.synthetic_rows(tokenizer, seed))
    return read_jsonl(cache)


def answer_text(answer: Any) -> str:
    # A list answer (RULER-style) becomes one comma-separated line, as in `swaa sft`.
    return ", ".join(map(str, answer)) if isinstance(answer, (list, tuple)) else str(answer)


def reference_examples(tokenizer: Any, dataset: str, prepared: Sequence[Prepared], records: dict[str, dict],
                       chat_template: bool, max_answer_tokens: int) -> list[Example]:
    """Prompts followed by the dataset's answers, tokenised as ``swaa sft`` tokenises a response."""
    out = []
    for item in prepared:
        record = records[item.id]
        answer = response_ids(tokenizer, record["prompt"], answer_text(record["answer"]), chat_template)
        out.append(Example(item.id, dataset, tuple(item.input_ids), tuple(answer[:max_answer_tokens])))
    return out


def greedy_answer_ids(model: Any, tokenizer: Any, batch: Sequence[Prepared], max_new_tokens: int) -> list[list[int]]:
    """The model's greedy answer to each prompt of a left-padded batch, up to and including its
    first end token (the end is part of what the model must get right)."""
    import torch

    padded = tokenizer.pad({"input_ids": [p.input_ids for p in batch]}, padding=True, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(padded["input_ids"].to(model.device),
                                attention_mask=padded["attention_mask"].to(model.device),
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    stops = eos_ids(model, tokenizer)
    answers = []
    for row in output[:, padded["input_ids"].shape[1] :].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        answers.append(row if end is None else row[: end + 1])
    return answers
