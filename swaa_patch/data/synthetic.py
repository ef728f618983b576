"""Hide a task's needles in stdlib text and size the prompt to a token budget.

The prompt length is measured with the caller's tokenizer (``count_tokens``), so a sample built
for Qwen3 has the requested number of *Qwen3* tokens. The haystack is cut on a word boundary
found by binary search; needles sit on sentence boundaries at their relative depth.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .haystack import haystack_paragraphs, load_paragraphs
from .tasks import TASKS, Draw, Needle

CountTokens = Callable[[str], int]

PROMPT_TEMPLATE = (
    "Some facts are hidden in the following text taken from the Python documentation. "
    "Read it carefully and answer the question after it.\n\n"
    "{context}\n\n"
    "Question: {question}\nAnswer:"
)
LENGTH_TOLERANCE = 0.02
_SENTENCE_END = re.compile(r"[.!?]\s+")
_WORD = re.compile(r"\S+")


def tokenizer_counter(tokenizer: Any) -> CountTokens:
    """Token counter for a Hugging Face tokenizer (special tokens excluded)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def insert_needles(text: str, needles: Sequence[Needle]) -> str:
    """Insert each needle as its own sentence at the sentence boundary nearest its depth."""
    bounds = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
    placed = []
    for order, needle in enumerate(needles):
        target = needle.depth * len(text)
        i = bisect.bisect_left(bounds, target)
        nearest = min(bounds[max(i - 1, 0) : i + 1], key=lambda b: (abs(b - target), b))
        placed.append((nearest, order, needle.text))
    # Insert from the back so earlier offsets stay valid; equal offsets keep needle order.
    for pos, _, sentence in sorted(placed, reverse=True):
        if pos >= len(text):
            text = f"{text} {sentence}" if text else sentence
        else:
            text = f"{text[:pos]}{sentence} {text[pos:]}"
    return text


def render_prompt(haystack: str, draw: Draw, num_words: int, word_ends: Sequence[int]) -> str:
    cut = haystack[: word_ends[num_words - 1]] if num_words > 0 else ""
    context = insert_needles(cut, draw.needles)
    return PROMPT_TEMPLATE.format(context=context, question=draw.question)


def _chars_per_token(count_tokens: CountTokens) -> float:
    probe = "\n\n".join(load_paragraphs()[:40])
    return len(probe) / max(count_tokens(probe), 1)


def size_prompt(draw: Draw, rng: random.Random, length: int, count_tokens: CountTokens) -> tuple[str, int]:
    """The longest prompt with at most ``length`` tokens; returns (prompt, measured tokens)."""
    min_chars = int(length * _chars_per_token(count_tokens) * 1.5) + 2000
    haystack = "\n\n".join(haystack_paragraphs(rng, min_chars))
    word_ends = [m.end() for m in _WORD.finditer(haystack)]
    lo, hi = 0, len(word_ends)
    if count_tokens(render_prompt(haystack, draw, 0, word_ends)) > length:
        raise ValueError(f"length {length} is too short for the task's question and needles")
    while lo < hi:  # largest word count whose prompt fits
        mid = (lo + hi + 1) // 2
        if count_tokens(render_prompt(haystack, draw, mid, word_ends)) <= length:
            lo = mid
        else:
            hi = mid - 1
    prompt = render_prompt(haystack, draw, lo, word_ends)
    return prompt, count_tokens(prompt)


def sample_rng(task: str, length: int, depth: float, seed: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: stable across runs and platforms.
    return random.Random(f"{task}|{length}|{depth:.4f}|{seed}|{index}")


def make_sample(
    task: str, length: int, depth: float, seed: int, index: int, count_tokens: CountTokens
) -> dict[str, Any]:
    """One synthetic sample as a flat record (prompt / question / answer + metadata)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    family = TASKS[task]
    rng = sample_rng(task, length, depth, seed, index)
    draw = family.draw(rng, depth)
    try:
        prompt, measured = size_prompt(draw, rng, length, count_tokens)
    except ValueError as err:
        raise ValueError(f"task {task}: {err}") from None
    return {
        "id": f"{task}-L{length}-D{depth:.2f}-S{seed}-{index}",
        "task": task,
        "prompt": prompt,
        "question": draw.question,
        "answer": draw.answer,
        "scoring": family.scoring,
        "context_length": length,
        "prompt_tokens": measured,
        "depth": depth,
        "seed": seed,
    }


def generate_task(
    task: str,
    count_tokens: CountTokens,
    lengths: Iterable[int],
    depths: Iterable[float],
    samples_per_cell: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Every (length, depth, index) cell of one task family, in a fixed order."""
    return [
        make_sample(task, length, depth, seed, index, count_tokens)
        for length in lengths
        for depth in depths
        for index in range(samples_per_cell)
    ]
