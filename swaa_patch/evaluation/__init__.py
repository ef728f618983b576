"""JSON-driven, resumable long-context evaluation of SWAA configurations (``swaa eval``)."""

from ..jobs.validate import SettingsError
from .settings import EvalSettings, load_settings, parse_settings

__all__ = ["EvalSettings", "SettingsError", "load_settings", "parse_settings", "run_eval", "write_report"]


def __getattr__(name: str):
    # runner/report pull in torch, accelerate and matplotlib: import them on first use only.
    if name == "run_eval":
        from .runner import run_eval

        return run_eval
    if name == "write_report":
        from .report import write_report

        return write_report
    raise AttributeError(name)
