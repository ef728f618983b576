"""Read datasets (parquet, jsonl, json) whole, every row checked, errors naming file:line and field.

An evaluation record needs ``answer`` and either ``prompt`` or ``context`` + ``question``; the
latter is turned into ``"Context: {context}\\n\\nQuestion: {question}"`` exactly as the reference
does. Other fields (``question_type``, ``context_length``, ``depth``, ``scoring``...) are kept as
metadata for scoring and reports. A training pair needs its prompt and response fields.

Every reader parses the whole file and checks every row, so a bad line is reported before any
model loads: ``qa.jsonl:4: field 'answer' is missing``. Rows are numbered from 1: the line of a
jsonl file, the position in a json list or a parquet table (``qa.parquet row 3``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMATS = (".parquet", ".jsonl", ".json")
# Sample fields copied into each response and training row (the prompt is not: it can be huge).
METADATA_FIELDS = ("question", "answer", "task", "context_length", "depth", "question_type", "seed")
REQUIRED_ONE_OF = (("prompt",), ("context", "question"))

NumberedRow = tuple[str, dict[str, Any]]  # (where: "file:line" or "file row N", the row)


class DatasetError(ValueError):
    """A dataset file holds an invalid row; the message says where and which field."""


class UnreadableDataset(DatasetError):
    """A dataset file (or one of its lines) cannot be parsed at all."""


def dataset_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UnreadableDataset(f"unsupported dataset format {suffix!r} for {path}; use one of {list(FORMATS)}")
    return suffix


def numbered_rows(path: str | Path) -> list[NumberedRow]:
    """Every row of a dataset file with where it stands; DatasetError on anything unreadable."""
    path = Path(path)
    kind = dataset_format(path)
    if kind == ".parquet":
        return [(f"{path} row {n}", row) for n, row in enumerate(_parquet_rows(path), 1)]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UnreadableDataset(f"{path}: {err}") from None
    if kind == ".jsonl":
        return [(f"{path}:{n}", _json_object(line, f"{path}:{n}"))
                for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = _json_value(text, str(path))
    if not isinstance(rows, list):
        raise UnreadableDataset(f"{path}: a .json dataset must hold a list of objects, got {type(rows).__name__}")
    return [(f"{path} row {n}", _as_object(row, f"{path} row {n}")) for n, row in enumerate(rows, 1)]


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()  # reads every page: a corrupt one fails here
    except (OSError, ValueError, pa.ArrowException) as err:
        raise UnreadableDataset(f"{path}: not a readable parquet file: {err}") from None


def _json_value(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UnreadableDataset(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None


def _json_object(line: str, where: str) -> dict[str, Any]:
    return _as_object(_json_value(line, where), where)


def _as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnreadableDataset(f"{where}: must be a JSON object, got {type(value).__name__}")
    return value


def missing_fields(columns: set[str]) -> list[str]:
    """Fields a row lacks to be evaluable (empty when it is fine)."""
    missing = [] if "answer" in columns else ["answer"]
    if not any(all(c in columns for c in group) for group in REQUIRED_ONE_OF):
        missing.append("prompt (or context + question)")
    return missing


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def check_answer(value: Any, where: str, field: str) -> None:
    """A reference answer or response: a string, a number, or a non-empty list of them."""
    if _is_scalar(value) or (isinstance(value, list) and value and all(_is_scalar(v) for v in value)):
        return
    raise DatasetError(f"{where}: field {field!r} must be a string, a number or a non-empty list of them, "
                       f"got {_describe(value)}")


def check_text(value: Any, where: str, field: str) -> None:
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {field!r} must be a string, got {_describe(value)}")


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {json.dumps(value, default=str)[:40]}"


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value if isinstance(value, str) else str(value)


def _sample_id(row: dict[str, Any], index: int, where: str) -> str:
    value = row.get("id", row.get("_id", index))
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DatasetError(f"{where}: field 'id' must be a string or an integer, got {_describe(value)}")
    return str(value)


def normalize_row(row: dict[str, Any], index: int, where: str) -> dict[str, Any]:
    """One evaluation record: id, prompt, question, answer plus the row's other fields."""
    missing = missing_fields({k for k, v in row.items() if v is not None})
    if missing:
        raise DatasetError(f"{where}: lacks field(s) {missing}")
    check_answer(row["answer"], where, "answer")
    record = {k: v for k, v in row.items() if k not in ("context", "prompt")}
    if row.get("prompt") is not None:
        check_text(row["prompt"], where, "prompt")
        record["prompt"] = row["prompt"]
    else:
        check_text(row["context"], where, "context")
        check_text(row["question"], where, "question")
        record["prompt"] = f"Context: {row['context']}\n\nQuestion: {row['question']}"
    record["id"] = _sample_id(row, index, where)
    record["question"] = str(row.get("question") or "")
    record["answer"] = _plain(row["answer"])
    return record


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Load and check every row of a dataset file; ids must be unique (row index when absent)."""
    records: list[dict[str, Any]] = []
    first_seen: dict[str, str] = {}
    for index, (where, row) in enumerate(numbered_rows(path)):
        record = normalize_row(row, index, where)
        if record["id"] in first_seen:
            raise DatasetError(f"{where}: duplicate sample id {record['id']!r} (first at {first_seen[record['id']]})")
        first_seen[record["id"]] = where
        records.append(record)
    return records


def load_pairs(path: str | Path, prompt_field: str, response_field: str) -> list[tuple[str, Any]]:
    """``(prompt, response)`` of every row of a training file, each checked."""
    pairs = []
    for where, row in numbered_rows(path):
        missing = [f for f in (prompt_field, response_field) if row.get(f) is None]
        if missing:
            raise DatasetError(f"{where}: lacks field(s) {missing}")
        check_text(row[prompt_field], where, prompt_field)
        check_answer(row[response_field], where, response_field)
        pairs.append((row[prompt_field], row[response_field]))
    return pairs
