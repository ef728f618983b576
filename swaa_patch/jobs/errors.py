"""The errors a job reports as one line: bad input, refusals, and an interrupted run.

The command line prints the message of any of :data:`ONE_LINE_ERRORS` as a single line and
exits with 2 (130 for :class:`Interrupted`); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from ..data.loaders import DatasetError


class JobError(Exception):
    """Bad input or a refusal; the message says what and how to fix it."""


class SettingsError(JobError, ValueError):
    """A settings file is invalid; the message names the JSON path of the bad field."""


class RunRefused(JobError, RuntimeError):
    """The output folder cannot be used as asked: in use, another kind of run, or changed settings."""


class Interrupted(JobError):
    """Ctrl-C: the message says what finished and how to resume. ``quiet`` on non-main processes."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


ONE_LINE_ERRORS = (JobError, DatasetError)
