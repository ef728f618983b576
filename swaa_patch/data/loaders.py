"""Read evaluation datasets (parquet, jsonl, json) into records with prompt / question / answer.

A record needs ``answer`` and either ``prompt`` or ``context`` + ``question``; the latter is
turned into ``"Context: {context}\\n\\nQuestion: {question}"`` exactly as the reference does.
Other fields (``question_type``, ``context_length``, ``depth``, ``scoring``...) are kept as
metadata for scoring and reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMATS = (".parquet", ".jsonl", ".json")
# Sample fields copied into each response and training row (the prompt is not: it can be huge).
METADATA_FIELDS = ("question", "answer", "task", "context_length", "depth", "question_type", "seed")
REQUIRED_ONE_OF = (("prompt",), ("context", "question"))


def dataset_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported dataset format {suffix!r} for {path}; use one of {list(FORMATS)}")
    return suffix


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a dataset file as plain dicts."""
    path = Path(path)
    kind = dataset_format(path)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if kind == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a .json dataset must hold a list of objects")
    return rows


def dataset_columns(path: str | Path) -> set[str]:
    """Field names of a dataset, reading as little as possible (schema, or the first row)."""
    path = Path(path)
    kind = dataset_format(path)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)
    if kind == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    return set(json.loads(line))
        return set()
    rows = read_rows(path)
    return set(rows[0]) if rows and isinstance(rows[0], dict) else set()


def missing_fields(columns: set[str]) -> list[str]:
    """Fields a dataset lacks to be evaluable (empty when it is fine)."""
    missing = [] if "answer" in columns else ["answer"]
    if not any(all(c in columns for c in group) for group in REQUIRED_ONE_OF):
        missing.append("prompt (or context + question)")
    return missing


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value if isinstance(value, str) else str(value)


def normalize_row(row: dict[str, Any], index: int, source: str) -> dict[str, Any]:
    """One evaluation record: id, prompt, question, answer plus the row's other fields."""
    if "answer" not in row or row["answer"] is None:
        raise ValueError(f"{source}: row {index} has no 'answer'")
    record = {k: v for k, v in row.items() if k not in ("context", "prompt")}
    if row.get("prompt") is not None:
        record["prompt"] = str(row["prompt"])
    elif row.get("context") is not None and row.get("question") is not None:
        record["prompt"] = f"Context: {row['context']}\n\nQuestion: {row['question']}"
    else:
        raise ValueError(f"{source}: row {index} has neither 'prompt' nor 'context' + 'question'")
    record["id"] = str(row.get("id", row.get("_id", index)))
    record["question"] = str(row.get("question") or "")
    record["answer"] = _plain(row["answer"])
    return record


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Load and normalise a dataset file; ids must be unique (row index when absent)."""
    rows = read_rows(path)
    records = [normalize_row(row, i, str(path)) for i, row in enumerate(rows)]
    seen: set[str] = set()
    for record in records:
        if record["id"] in seen:
            raise ValueError(f"{path}: duplicate sample id {record['id']!r}")
        seen.add(record["id"])
    return records
