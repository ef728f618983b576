"""Training batches streamed from the synthetic task generators, and the held-out samples.

Seeds: every evaluation (settings files, the validation set below) uses task seeds below
:data:`TRAIN_SEED_BASE`; training samples use ``TRAIN_SEED_BASE + seed``. A sample's random
stream is keyed by its seed (``sample_rng``), so no training sample can equal a held-out one.

A batch is a pure function of its step number: the step fixes the context length of the whole
batch (no padding waste) and each row's task and evidence depth. Training therefore resumes
exactly, and data-loader workers need no shared state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data.haystack import load_paragraphs
from ..data.synthetic import generate_task, make_sample, tokenizer_counter
from ..jobs.prompts import prompt_ids

TRAIN_SEED_BASE = 1_000_000  # settings files must use task seeds below this
VALIDATION_SEED = 1  # monitoring during training; settings/demo.json (the reported test) uses 0
IGNORE_INDEX = -100  # as in transformers' losses
LENGTH_SLACK = 1.05  # a sized-by-estimate prompt may overshoot its length by this much
MAX_TRIES = 4


def reply_parts(answer: str | Sequence[str], scoring: str) -> tuple[str, str, str]:
    """(lead-in, value, ending) of the reply the model is trained to give, in a shape its scorer reads.

    The short fixed lead-in matters: the first reply token is predicted by the prefill, the value
    itself by decode steps, as with real chat models that answer in a sentence (and that is what
    ``force_fa_decode`` acts on).
    """
    if scoring == "choice":
        return "The correct answer is (", str(answer), ")."
    if isinstance(answer, str):
        return "The answer is ", answer, "."
    return "The answers are ", ", ".join(answer), "."


def answer_text(answer: str | Sequence[str], scoring: str) -> str:
    return "".join(reply_parts(answer, scoring))


@dataclass(frozen=True)
class Encoded:
    """A sample's prompt ids (as ``swaa eval`` builds them) and reply ids (end-of-turn included)."""

    prompt: list[int]
    reply: list[int]
    value: tuple[int, int]  # reply[value[0]:value[1]] are the tokens that spell the answer value


def encode(tokenizer: Any, record: dict[str, Any]) -> Encoded:
    prompt = prompt_ids(tokenizer, record["prompt"], chat_template=True)
    lead, value, end = reply_parts(record["answer"], record["scoring"])
    reply = tokenizer(lead + value + end, add_special_tokens=False, return_offsets_mapping=True)
    lo, hi = len(lead), len(lead) + len(value)
    inside = [i for i, (a, b) in enumerate(reply["offset_mapping"]) if a < hi and b > lo]
    return Encoded(prompt, reply["input_ids"] + [tokenizer.eos_token_id], (inside[0], inside[-1] + 1))


def collate(samples: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, next-token ``targets``, and masks of the positions whose target
    is a reply token (``answer_mask``) or a token of the answer value (``value_mask``).

    No attention mask: right padding only ever follows the real tokens of a causal model, so
    sdpa keeps its fast ``is_causal`` path.
    """
    import torch

    width = max(len(s.prompt) + len(s.reply) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    answer_mask = torch.zeros((len(samples), width), dtype=torch.bool)
    value_mask = torch.zeros((len(samples), width), dtype=torch.bool)
    for row, sample in enumerate(samples):
        ids = torch.tensor(sample.prompt + sample.reply)
        start = len(sample.prompt) - 1  # the position that predicts the first reply token
        input_ids[row, : len(ids)] = ids
        targets[row, : len(ids) - 1] = ids[1:]
        answer_mask[row, start : len(ids) - 1] = True
        value_mask[row, start + sample.value[0] : start + sample.value[1]] = True
    return {"input_ids": input_ids, "targets": targets, "answer_mask": answer_mask, "value_mask": value_mask}


@dataclass(frozen=True)
class StreamSpec:
    """What the training stream draws from."""

    tasks: tuple[str, ...]
    min_length: int
    max_length: int
    batch_size: int
    seed: int = 0

    @property
    def task_seed(self) -> int:
        return TRAIN_SEED_BASE + self.seed


class TrainBatches:
    """``batches[step]`` is the collated training batch of that step (map-style, for DataLoader)."""

    def __init__(self, tokenizer: Any, spec: StreamSpec, num_steps: int):
        self.tokenizer, self.spec, self.num_steps = tokenizer, spec, num_steps
        probe = "\n\n".join(load_paragraphs()[:40])  # also warms the corpus cache before workers fork
        self.chars_per_token = len(probe) / len(tokenizer(probe)["input_ids"])

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> dict[str, Any]:
        spec = self.spec
        rng = random.Random(f"demo-train|{spec.seed}|{step}")
        length = rng.randint(spec.min_length, spec.max_length)
        samples = []
        for row in range(spec.batch_size):
            task, depth = rng.choice(spec.tasks), round(rng.random(), 4)
            samples.append(self.example(task, length, depth, step * spec.batch_size + row))
        return collate(samples, self.tokenizer.pad_token_id)

    def example(self, task: str, length: int, depth: float, index: int) -> Encoded:
        """One sample of about ``length`` prompt tokens, sized by a chars-per-token estimate.

        The exact binary search of ``swaa eval`` costs ~10 tokenisations per sample; here one
        estimate and one tokenisation suffice, plus a shorter retry when the estimate overshoots.
        """
        def estimate(text: str) -> int:
            return int(len(text) / self.chars_per_token)

        target, encoded = length, None
        for _ in range(MAX_TRIES):
            try:
                record = make_sample(task, target, depth, self.spec.task_seed, index, estimate)
            except ValueError:  # this draw's needles need more room (long hex tokenisations)
                target = int(target * 1.25) + 1
                continue
            encoded = encode(self.tokenizer, record)
            if len(encoded.prompt) <= length * LENGTH_SLACK:
                break
            target = int(target * length / len(encoded.prompt))
        if encoded is None:
            raise ValueError(f"no {task} sample fits near {length} tokens; raise min_length")
        return encoded


def check_min_length(tokenizer: Any, tasks: Sequence[str], min_length: int) -> None:
    """Fail early, naming the task, if a ``min_length``-token prompt cannot hold a task's needles."""
    count = tokenizer_counter(tokenizer)
    for task in tasks:
        try:
            make_sample(task, min_length, 0.5, TRAIN_SEED_BASE, 0, count)
        except ValueError as err:
            raise ValueError(f"min_length {min_length} is too short for this tokenizer: {err}") from None


def heldout_records(
    tokenizer: Any, tasks: Sequence[str], lengths: Sequence[int], depths: Sequence[float],
    samples_per_cell: int, seed: int = VALIDATION_SEED,
) -> list[dict[str, Any]]:
    """Held-out samples exactly as ``swaa eval`` generates them for this tokenizer."""
    if seed >= TRAIN_SEED_BASE:
        raise ValueError(f"held-out seeds must be < {TRAIN_SEED_BASE} (training seeds start there), got {seed}")
    count = tokenizer_counter(tokenizer)
    return [row for task in tasks for row in generate_task(task, count, lengths, depths, samples_per_cell, seed)]
