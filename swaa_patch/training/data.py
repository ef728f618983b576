"""(prompt, response) rows -> token ids with the loss on the response only, ready for packing.

Prompts are tokenised exactly as ``swaa eval`` and ``swaa distill`` tokenise them
(:func:`~swaa_patch.jobs.prompts.prompt_ids`: one user turn through the chat template, no extra
special tokens), so the student is trained on the very
prompt ids it will see at inference; the response tokens (the assistant turn, end-of-turn token
included) are the only ones with labels, prompt tokens carry -100.

Packing: trl 1.16's ``SFTConfig(packing=True, packing_strategy="bfd")`` already does what SWAA
needs. Its best-fit-decreasing packer keeps documents whole and records their lengths, and its
padding-free collator concatenates a batch into one row whose ``position_ids`` restart at 0 for
each document, without an attention mask. SWAA's plan reads exactly that as document
boundaries (each document gets its own window and sinks and never sees another), so no custom
collator is needed. Examples longer than ``max_length`` (or the model's
``max_position_embeddings``) are dropped here rather than truncated by the packer, which would cut
off the answer at the end of the sequence.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.loaders import load_pairs
from ..jobs.errors import SettingsError
from ..jobs.prompts import prompt_ids, response_ids
from ..plan import IGNORE_INDEX
from .settings import DataSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_example(tokenizer: Any, prompt: str, response: str, chat_template: bool) -> Encoded:
    """Prompt + response ids; labels are -100 on every prompt token."""
    head = prompt_ids(tokenizer, prompt, chat_template)
    tail = response_ids(tokenizer, prompt, response, chat_template)
    return Encoded(head + tail, [IGNORE_INDEX] * len(head) + tail)


def load_rows(paths: Iterable[Path], data: DataSettings) -> list[dict[str, Any]]:
    """Rows of every training file, in order, with their prompt and response as strings."""
    rows = [{"prompt": prompt, "response": _as_text(response)}
            for path in paths for prompt, response in load_pairs(path, data.prompt_field, data.response_field)]
    return rows[: data.limit] if data.limit is not None else rows


def _as_text(value: Any) -> str:
    # A list answer (RULER-style reference used as the target) becomes one comma-separated line.
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def encode_rows(tokenizer: Any, rows: list[dict[str, Any]], data: DataSettings,
                max_positions: int | None = None) -> list[Encoded]:
    """Encode rows, dropping those outside [min_length, max_length] tokens or longer than the model's
    positions (counted, logged)."""
    longest = data.max_length if max_positions is None else min(data.max_length, max_positions)
    kept: list[Encoded] = []
    too_long = too_short = 0
    for row in rows:
        encoded = encode_example(tokenizer, row["prompt"], row["response"], data.chat_template)
        if len(encoded.input_ids) > longest:
            too_long += 1
        elif len(encoded.input_ids) < data.min_length:
            too_short += 1
        else:
            kept.append(encoded)
    logger.info("training examples: %d kept, %d longer than %d tokens, %d shorter than %d dropped",
                len(kept), too_long, longest, too_short, data.min_length)
    if not kept:
        raise SettingsError(f"data: no training example fits between min_length={data.min_length} and "
                            f"{longest} tokens (max_length, or the model's max_position_embeddings)")
    return kept


def content_fingerprint(encoded: list[Encoded]) -> str:
    """A digest of every row's ids and labels, for the dataset's cache fingerprint."""
    digest = hashlib.sha256()
    for e in encoded:
        for ids in (e.input_ids, e.labels):
            digest.update(len(ids).to_bytes(8, "little"))
            digest.update(array("q", ids).tobytes())
    return digest.hexdigest()[:32]


def build_dataset(encoded: list[Encoded]):
    """A ``datasets.Dataset`` with ``input_ids`` and ``labels``: trl skips its own tokenisation.

    Its fingerprint is a digest of the rows (:func:`content_fingerprint`) instead of the one
    ``Dataset.from_dict`` derives by pickling the Arrow table with dill: on the GPU machine's Python
    3.12 (pyarrow 24-26, dill 0.4.1) that pickling raised ``PicklingError: Can't pickle <class
    'MonthDayNano'>`` before a single step, and a digest of the ids identifies the data just as well."""
    from datasets.table import InMemoryTable

    from datasets import Dataset

    columns = {"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]}
    return Dataset(InMemoryTable.from_pydict(columns), fingerprint=content_fingerprint(encoded))


def load_training_set(tokenizer: Any, paths: Iterable[Path], data: DataSettings, max_positions: int | None = None):
    """Read, encode and filter the training files into a ``datasets.Dataset``."""
    return build_dataset(encode_rows(tokenizer, load_rows(paths, data), data, max_positions))
