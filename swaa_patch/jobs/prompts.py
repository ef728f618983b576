"""Prompts -> token ids exactly as every job tokenises them, and batches of similar length.

``swaa eval``, ``swaa distill``, ``swaa sft`` and the demo's held-out check all encode a prompt
with :func:`prompt_ids` (one user turn through the chat template, no extra special tokens), so
a student is trained on the very ids it is evaluated on. A prompt longer than its budget (the
settings' ``max_prompt_tokens``, and what the model's positions leave after the answer) is cut in
the middle and marked ``truncated``, or dropped, as the settings' ``truncation`` says. An
answer that follows a prompt is encoded by :func:`response_ids` (the assistant turn, as ``swaa
sft`` trains on it) and ends at one of :func:`eos_ids`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .validate import fail

logger = logging.getLogger(__name__)


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
    prompt_tokens: int  # before any cut


def within_model(options: PromptOptions, max_positions: int | None, max_new_tokens: int) -> PromptOptions:
    """``options`` whose prompt budget also leaves room for ``max_new_tokens`` in the model's positions."""
    if max_positions is None:
        return options
    room = max_positions - max_new_tokens
    if room < 1:
        raise fail("max_new_tokens", f"must be < the model's max_position_embeddings ({max_positions}) to leave "
                                     f"room for a prompt, got {max_new_tokens}")
    budget = room if options.max_prompt_tokens is None else min(room, options.max_prompt_tokens)
    return dataclasses.replace(options, max_prompt_tokens=budget)


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


def response_ids(tokenizer: Any, prompt: str, response: str, chat_template: bool) -> list[int]:
    """Token ids of the answer as it follows the prompt (assistant turn or text + EOS)."""
    if not chat_template:
        return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise ValueError(
            "the chat template does not render the conversation as prompt + answer (e.g. it rewrites earlier "
            "turns); set data.chat_template to false or use a template without that behaviour"
        )
    return tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a generated answer: the generation config's and the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def truncate_middle(ids: list[int], limit: int) -> list[int]:
    """Keep the first and last ``limit // 2`` tokens (LongBench's convention)."""
    if len(ids) <= limit:
        return ids
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head) :]


def prepare(
    tokenizer: Any, records: Sequence[dict[str, Any]], options: PromptOptions, limit: int | None = None
) -> list[Prepared]:
    """Token ids of the first ``limit`` usable records (over-long: middle-truncated or dropped, logged)."""
    out: list[Prepared] = []
    dropped = 0
    for record in records:
        if limit is not None and len(out) >= limit:
            break
        ids = prompt_ids(tokenizer, record["prompt"], options.chat_template)
        cap = options.max_prompt_tokens
        too_long = cap is not None and len(ids) > cap
        if too_long and options.truncation == "skip":
            dropped += 1
            continue
        out.append(Prepared(record["id"], truncate_middle(ids, cap) if too_long else ids, too_long, len(ids)))
    cut = sum(p.truncated for p in out)
    if cut or dropped:
        logger.warning("%d prompt(s) longer than %d tokens were %s", cut or dropped, options.max_prompt_tokens,
                       "cut in the middle (marked truncated)" if cut else "dropped")
    return out


def batches(items: Sequence[Prepared], batch_size: int) -> Iterator[list[Prepared]]:
    """Longest prompts first: similar lengths share a batch (less padding) and OOM shows early."""
    ordered = sorted(items, key=lambda p: (-len(p.input_ids), p.id))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]
