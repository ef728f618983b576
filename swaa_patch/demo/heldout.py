"""Held-out accuracy of a model under training, measured the way ``swaa eval`` measures it.

Greedy generation through the evaluation code (same chat template, left padding and scorers),
plus teacher-forced accuracy of the reply tokens: a smoother signal early in training, when
whole answers are still rarely right.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..evaluation.generation import generate_batch
from ..evaluation.scoring import SCORERS
from ..jobs.prompts import PromptOptions, batches, prepare
from .data import collate, encode


def _autocast(model: Any):
    import torch

    if model.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def generation_accuracy(
    model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], batch_size: int, max_new_tokens: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Per-task mean score of greedy replies, and every (id, answer, response, score)."""
    by_id = {r["id"]: r for r in records}
    options = PromptOptions(chat_template=True, max_prompt_tokens=None, truncation="middle")
    prepared = prepare(tokenizer, records, options)
    scores: dict[str, list[float]] = defaultdict(list)
    responses = []
    with _autocast(model):
        for batch in batches(prepared, batch_size):
            for item, out in zip(batch, generate_batch(model, tokenizer, batch, max_new_tokens)):
                record = by_id[item.id]
                score = SCORERS[record["scoring"]](out["response"], record["answer"])
                scores[record["task"]].append(score)
                responses.append({"id": item.id, "answer": record["answer"], "response": out["response"],
                                  "score": score})
    return {task: sum(v) / len(v) for task, v in scores.items()}, responses


def teacher_forced_accuracy(
    model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], batch_size: int
) -> tuple[float, dict[str, float]]:
    """Share of reply tokens, and per task of answer-value tokens, predicted right given the true
    prefix. Chance for a value token is about 1/10 (digits) to 1/16 (hex)."""
    import torch

    reply_right = reply_total = 0
    value: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with torch.inference_mode(), _autocast(model):
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            batch = {k: v.to(model.device) for k, v in collate([encode(tokenizer, r) for r in chunk],
                                                                tokenizer.pad_token_id).items()}
            hits = model(input_ids=batch["input_ids"]).logits.argmax(-1) == batch["targets"]
            reply_right += int(hits[batch["answer_mask"]].sum())
            reply_total += int(batch["answer_mask"].sum())
            for row, record in enumerate(chunk):
                mask = batch["value_mask"][row]
                value[record["task"]][0] += int(hits[row][mask].sum())
                value[record["task"]][1] += int(mask.sum())
    return reply_right / max(reply_total, 1), {task: r / max(n, 1) for task, (r, n) in value.items()}


def heldout_metrics(
    model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], batch_size: int, max_new_tokens: int
) -> dict[str, Any]:
    """Generation accuracy per task and its mean, teacher-forced token accuracies, a few examples."""
    was_training = model.training
    model.eval()
    try:
        per_task, responses = generation_accuracy(model, tokenizer, records, batch_size, max_new_tokens)
        reply_acc, value_acc = teacher_forced_accuracy(model, tokenizer, records, batch_size)
    finally:
        model.train(was_training)
    return {
        "accuracy": per_task,
        "mean_accuracy": sum(per_task.values()) / max(len(per_task), 1),
        "reply_token_accuracy": reply_acc,
        "value_token_accuracy": value_acc,
        "samples": len(responses),
        "examples": responses[:6],
    }
