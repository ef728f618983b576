"""``swaa make-data``: write synthetic task files, sized for a given tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.synthetic import generate_task, tokenizer_counter
from ..data.tasks import TASKS
from .builtin_models import BUILTIN_MODELS, build_tiny_tokenizer, builtin_key, is_builtin
from .errors import SettingsError
from .io import atomic_write_jsonl, write_parquet

logger = logging.getLogger(__name__)


def load_counting_tokenizer(name: str) -> Any:
    """A tokenizer folder, or a built-in model's tokenizer (trained offline, no model built)."""
    if is_builtin(name):
        try:
            key = builtin_key(name)
        except ValueError as err:
            raise SettingsError(f"tokenizer: {err}") from None
        return build_tiny_tokenizer(BUILTIN_MODELS[key])
    from transformers import AutoTokenizer

    if not Path(name).is_dir():
        raise SettingsError(f"tokenizer: folder not found: {name} (hub ids are not fetched: offline)")
    return AutoTokenizer.from_pretrained(name)


def make_data(
    tasks: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    seed: int,
    tokenizer: str,
    out_dir: Path,
    fmt: str = "jsonl",
) -> list[Path]:
    """One ``TASK.jsonl`` (or ``.parquet``) per task in ``out_dir``; ``["all"]`` means every task."""
    names = sorted(TASKS) if list(tasks) == ["all"] else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise SettingsError(f"tasks: unknown task(s) {unknown}; known: {sorted(TASKS)}")
    counter = tokenizer_counter(load_counting_tokenizer(tokenizer))
    written = []
    for task in tqdm(names, desc="tasks", unit="task"):
        rows = generate_task(task, counter, lengths, depths, samples, seed)
        path = out_dir / f"{task}.{fmt}"
        if fmt == "parquet":
            write_parquet(path, rows)
        else:
            atomic_write_jsonl(path, rows)
        written.append(path)
    return written
