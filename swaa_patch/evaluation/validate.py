"""Typed readers for JSON values that report the JSON path of a bad field.

Every reader takes the value and its path (``settings[0].model_list[2]``) and either returns a
clean Python value or raises :class:`SettingsError` whose message starts with that path.
Keys starting with ``_`` are notes for people (JSON has no comments) and are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

NOTE_PREFIX = "_"


class SettingsError(ValueError):
    """A settings file is invalid; the message names the JSON path of the bad field."""


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
