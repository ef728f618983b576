"""Crash-safe files: atomic whole-file writes and durable jsonl appends.

A job killed at any instant leaves every file either in its old or its new state (whole-file
writes go to a temp file in the same folder, are fsynced, then ``os.replace``d), and a jsonl
log loses at most the line being written: :func:`read_jsonl` skips such a torn line, and
:func:`compact_jsonl` (called before a log is appended to again) removes it with one warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; results should get the usual permissions of a new file.
_FILE_MODE = 0o666 & ~current_umask()


def short_hash(data: Any) -> str:
    """A stable 10-hex-digit fingerprint of JSON-able data."""
    blob = json.dumps(data, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:10]


def _dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(_dumps(r) + "\n" for r in records))


def append_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """Append records and fsync, so they survive a crash right after this returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(_dumps(r) + "\n" for r in records)
    with path.open("a", encoding="utf-8") as handle:
        _terminate_partial_line(handle, path)
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())


def _terminate_partial_line(handle: Any, path: Path) -> None:
    # A crash mid-write can leave a line without "\n"; start on a fresh line so the next
    # record is not glued to the broken one (read_jsonl skips the broken one).
    size = path.stat().st_size
    if size:
        with path.open("rb") as check:
            check.seek(size - 1)
            if check.read(1) != b"\n":
                handle.write("\n")


def _parsed_lines(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a jsonl file and the numbers of its unparsable (torn) lines."""
    records, torn = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn.append(number)
    return records, torn


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a jsonl file; missing file -> []; unparsable (torn) lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records, torn = _parsed_lines(path)
    if torn:
        logger.debug("%s: skipping torn line(s) %s", path, torn)
    return records


def compact_jsonl(path: str | os.PathLike) -> int:
    """Rewrite a jsonl log without its torn lines (atomically), warning once; returns how many went."""
    path = Path(path)
    if not path.is_file():
        return 0
    records, torn = _parsed_lines(path)
    if torn:
        atomic_write_jsonl(path, records)
        logger.warning("%s: removed %d torn line(s) %s left by an interrupted write", path, len(torn), torn)
    return len(torn)


def write_parquet(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Write records as parquet atomically (pyarrow, from the ``eval`` extra)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(_uniform_columns(records)), tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _uniform_columns(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-encode the values of columns that mix types (e.g. str and list answers)."""
    kinds: dict[str, set[type]] = {}
    for record in records:
        for key, value in record.items():
            if value is not None:
                kinds.setdefault(key, set()).add(type(value))
    mixed = {key for key, types in kinds.items() if len(types) > 1 and types != {int, float}}
    if not mixed:
        return records
    return [{k: (_dumps(v) if k in mixed and v is not None else v) for k, v in r.items()} for r in records]
