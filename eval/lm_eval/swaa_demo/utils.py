"""Data and scoring of the swaa_demo lm-eval tasks (loaded by lm-eval through ``!function``).

The data files are the held-out samples ``swaa eval settings/demo.json`` evaluates, generated
for demo/model's tokenizer (see README.md beside this file); they are read from this folder,
so the tasks work from any working directory and never touch a dataset hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from swaa_patch.evaluation.scoring import SCORERS

DATA = Path(__file__).resolve().parent / "data"
TASKS = ("passkey", "multikey_niah", "kv_lookup", "variable_tracking")


def read_task(name: str) -> list[dict[str, Any]]:
    """The samples of one task, or of all of them for ``name="all"``, in file order."""
    if name != "all" and name not in TASKS:
        raise ValueError(f"dataset_kwargs.task_name: one of {[*TASKS, 'all']}, got {name!r}")
    names = TASKS if name == "all" else (name,)
    return [json.loads(line) for n in names for line in (DATA / f"{n}.jsonl").read_text().splitlines() if line]


def load_split(task_name: str, **_metadata: Any) -> dict[str, Any]:
    """lm-eval's ``custom_dataset`` hook: ``{"test": Dataset}``. lm-eval also passes the run's
    metadata (model args, task version) as keywords; they do not change the data."""
    import datasets

    rows = read_task(task_name)
    if task_name == "all":  # answers are strings or (variable_tracking) lists: one Arrow column cannot hold both
        rows = [{**{k: v for k, v in row.items() if k != "answer"}, "reply": reply(row)} for row in rows]
    return {"test": datasets.Dataset.from_list(rows)}


def reply(doc: dict[str, Any]) -> str:
    """The reply the demo model was trained to give (``The answer is VALUE.``, ``The answers are A, B.``)."""
    from swaa_patch.demo.data import answer_text

    return answer_text(doc["answer"], doc["scoring"])


def process_generation(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``acc``: the sample's own swaa scorer (``numeric`` / ``contains``), as ``swaa eval`` scores."""
    return {"acc": SCORERS[doc["scoring"]](results[0], doc["answer"])}
