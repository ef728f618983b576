"""Typed readers for JSON settings that report the JSON path of a bad field.

Every reader takes the value and its path (``settings[0].model_list[2]``) and either returns a
clean Python value or raises :class:`SettingsError` whose message starts with that path.
Keys starting with ``_`` are notes for people (JSON has no comments) and are ignored.
Relative paths in a settings file are relative to the file's folder (:func:`resolve_path`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..config import SWAAConfig
from ..data.loaders import FORMATS, DatasetError, UnreadableDataset
from .errors import SettingsError

NOTE_PREFIX = "_"
Reader = Callable[[Any, str], Any]
T = TypeVar("T")


def fail(path: str, message: str) -> SettingsError:
    return SettingsError(f"{path}: {message}")


def check_keys(data: Any, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> Mapping:
    """``data`` must be an object with only ``allowed`` keys and every ``required`` one."""
    allowed = tuple(allowed)
    if not isinstance(data, Mapping):
        raise fail(path, f"must be an object, got {type(data).__name__}")
    unknown = sorted(k for k in set(data) - set(allowed) if not str(k).startswith(NOTE_PREFIX))
    if unknown:
        raise fail(path, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise fail(path, f"missing required key(s) {missing}")
    return data


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def as_int(value: Any, path: str, minimum: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        none = " or null" if allow_none else ""
        raise fail(path, f"must be an integer{bound}{none}, got {value!r}")
    return value


def as_float(value: Any, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise fail(path, f"must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def as_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise fail(path, f"must be true or false, got {value!r}")
    return value


def as_str(value: Any, path: str, choices: Iterable[str] | None = None, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise fail(path, f"must be a non-empty string, got {value!r}")
    if choices is not None and value not in tuple(choices):
        raise fail(path, f"must be one of {list(choices)}, got {value!r}")
    return value


def as_list(value: Any, path: str, non_empty: bool = True) -> list:
    if not isinstance(value, list):
        raise fail(path, f"must be a list, got {type(value).__name__}")
    if non_empty and not value:
        raise fail(path, "must not be empty")
    return value


def read_fields(data: Any, path: str, readers: Mapping[str, Reader], required: tuple[str, ...] = ()) -> dict:
    """Validate an object whose keys are ``readers``' keys; returns the read values."""
    check_keys(data, path or "settings file", readers, required=required)
    return {key: read(data[key], join(path, key)) for key, read in readers.items() if key in data}


def parse_swaa_config(value: Any, path: str) -> SWAAConfig | None:
    """A SWAAConfig object, or ``null`` for stock full attention."""
    try:
        return None if value is None else SWAAConfig.from_dict(value, path)
    except ValueError as err:  # SWAAConfig names the path already; one error type for callers
        raise SettingsError(str(err)) from None


def resolve_path(raw: str, base: Path) -> Path:
    """``raw`` as an absolute path; a relative one is taken relative to ``base``."""
    path = Path(raw).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def read_dataset(file: Path, path: str, read: Callable[[Path], list[T]], hint: str = "") -> list[T]:
    """``read(file)``, every row checked; a bad file or row, or no row, is a SettingsError at ``path``."""
    if file.suffix.lower() not in FORMATS:
        raise fail(path, f"unsupported dataset format {file.suffix!r}; use one of {list(FORMATS)}")
    try:
        rows = read(file)
    except UnreadableDataset as err:
        raise fail(path, f"cannot read dataset {err}") from None
    except DatasetError as err:
        raise fail(path, f"dataset {err}{hint}") from None
    if not rows:
        raise fail(path, f"dataset {file} holds no rows")
    return rows


def parse_device(value: Any, path: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    device = as_str(value, path)
    head, _, index = device.partition(":")
    if head not in ("auto", "cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise fail(path, f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return device


def check_unique_names(names: Sequence[str], path: str, what: str) -> None:
    """Items of the list at ``path`` need distinct names (they name output files)."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise fail(f"{join(path, i)}.name", f"duplicate {what} name {name!r}; set a distinct 'name'")
        seen.add(name)


def load_json_file(path: str | Path) -> tuple[Any, Path]:
    """A settings file's parsed JSON and its absolute path; unreadable or invalid JSON is a SettingsError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8")), path.resolve()
    except OSError as err:
        raise SettingsError(f"{path}: cannot read settings file: {err}") from None
    except json.JSONDecodeError as err:
        raise SettingsError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def settings_to_dict(settings: Any) -> Any:
    """A JSON-ready snapshot of resolved settings (eval, distill or SFT), written next to the outputs."""
    if isinstance(settings, Path):
        return str(settings)
    if isinstance(settings, SWAAConfig):
        return settings.to_dict()
    if isinstance(settings, (tuple, list)):
        return [settings_to_dict(v) for v in settings]
    if is_dataclass(settings) and not isinstance(settings, type):
        return {f.name: settings_to_dict(getattr(settings, f.name)) for f in fields(settings)}
    return settings
