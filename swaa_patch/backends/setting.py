"""A process-wide kernel choice: a default from an environment variable, a setter that returns
the previous value, and a context manager that restores it. Bad values are refused with the
allowed ones named, from the environment as from code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class KernelSetting:
    def __init__(self, name: str, env_var: str, choices: tuple[str, ...], default: str) -> None:
        self.name, self.env_var, self.choices = name, env_var, choices
        self.value = self._check(os.environ.get(env_var, default), env_var)

    def _check(self, value: str, source: str) -> str:
        if value not in self.choices:
            raise ValueError(f"{source}: must be one of {self.choices}, got {value!r}")
        return value

    def get(self) -> str:
        return self.value

    def set(self, value: str) -> str:
        """Set the process default; returns the previous one."""
        previous, self.value = self.value, self._check(value, self.name)
        return previous

    @contextmanager
    def scoped(self, value: str) -> Iterator[None]:
        """The setting is ``value`` inside the block, the previous one after it (exceptions too)."""
        previous = self.set(value)
        try:
            yield
        finally:
            self.set(previous)
