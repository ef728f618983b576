"""Prompts -> token ids exactly as every job tokenises them, and batches of similar length.

``swaa eval``, ``swaa distill``, ``swaa sft`` and the demo's held-out check all encode a prompt
with :func:`prompt_ids` (one user turn through the chat template, no extra special tokens), so
a student is trained on the very ids it is evaluated on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptOptions:
    chat_template: bool
    max_prompt_tokens: int | None
    truncation: str  # "middle" keeps head and tail; "skip" drops over-long prompts


@dataclass(frozen=True)
class Prepared:
    """A record's token ids, ready to batch."""

    id: str
    input_ids: list[int]
    truncated: bool


def prompt_ids(tokenizer: Any, prompt: str, chat_template: bool) -> list[int]:
    if not chat_template:
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer of {tokenizer.name_or_path} has no chat template; set \"chat_template\": false"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    # The template already holds the special tokens (BOS included where the model uses one).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def truncate_middle(ids: list[int], limit: int) -> list[int]:
    """Keep the first and last ``limit // 2`` tokens (LongBench's convention)."""
    if len(ids) <= limit:
        return ids
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head) :]


def prepare(
    tokenizer: Any, records: Sequence[dict[str, Any]], options: PromptOptions, limit: int | None = None
) -> list[Prepared]:
    """Token ids of the first ``limit`` usable records (over-long: middle-truncated or dropped)."""
    out: list[Prepared] = []
    for record in records:
        if limit is not None and len(out) >= limit:
            break
        ids = prompt_ids(tokenizer, record["prompt"], options.chat_template)
        cap = options.max_prompt_tokens
        too_long = cap is not None and len(ids) > cap
        if too_long and options.truncation == "skip":
            continue
        out.append(Prepared(record["id"], truncate_middle(ids, cap) if too_long else ids, too_long))
    return out


def batches(items: Sequence[Prepared], batch_size: int) -> Iterator[list[Prepared]]:
    """Longest prompts first: similar lengths share a batch (less padding) and OOM shows early."""
    ordered = sorted(items, key=lambda p: (-len(p.input_ids), p.id))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]
