"""Settings of ``swaa calibrate``: JSON in, validated dataclasses out, errors naming the JSON path.

The run-wide keys (model, datasets, prompt options, runtime) mean what they mean in ``swaa eval``
and ``swaa distill``; ``swaa_config`` is the SWA recipe to calibrate (window, sinks,
force_fa_decode), whose ``non_sliding_layers`` the command chooses; ``calibrate`` holds the
method's own knobs. The budget is checked against the model's layer count by
:func:`resolve_budget` as soon as the layer count is known, before any weights load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SWAAConfig
from ..evaluation.settings import TRUNCATION, DatasetSpec, parse_datasets
from ..jobs.errors import SettingsError
from ..jobs.loading import model_job_readers
from ..jobs.validate import Reader, as_int, as_str, fail, join, load_json_file, parse_swaa_config, read_fields

METRICS = ("kl", "nll")  # KL(full || candidate) over answer tokens, or the increase of their NLL
TARGETS = ("teacher", "reference")  # the full model's own greedy answer, or the dataset's answer


@dataclass(frozen=True)
class CalibrateOptions:
    """How layers are scored and how many stay full.

    ``budget``: an integer is a number of full-attention layers, a number in (0, 1) a fraction of
    the model's layers (rounded down: the decode KV memory stays within that share).
    """

    budget: int | float = 0.5
    metric: str = "kl"
    target: str = "teacher"
    max_answer_tokens: int = 32  # teacher answers are generated up to this; reference answers cut to it


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything ``swaa calibrate`` needs. Defaults live here and nowhere else."""

    model: str
    datasets: tuple[DatasetSpec, ...]
    swaa_config: SWAAConfig
    calibrate: CalibrateOptions = CalibrateOptions()
    output_dir: Path = Path("calibration_output")
    max_prompt_tokens: int | None = None
    truncation: str = "middle"
    batch_size: int = 1
    limit: int | None = None
    seed: int = 0
    attn_implementation: str = "sdpa"
    dtype: str = "auto"
    device: str = "auto"
    chat_template: bool = True
    source: Path | None = field(default=None, compare=False)


def _budget(value: Any, path: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(path, f"must be a number of layers (integer >= 1) or a fraction in (0, 1), got {value!r}")
    if isinstance(value, int):
        return as_int(value, path, minimum=1)
    if not 0.0 < value < 1.0:
        raise fail(path, f"must be a number of layers (integer >= 1) or a fraction in (0, 1), got {value!r}")
    return float(value)


def parse_options(value: Any, path: str) -> CalibrateOptions:
    readers: dict[str, Reader] = {
        "budget": _budget,
        "metric": lambda v, p: as_str(v, p, METRICS),
        "target": lambda v, p: as_str(v, p, TARGETS),
        "max_answer_tokens": lambda v, p: as_int(v, p, minimum=1),
    }
    return CalibrateOptions(**read_fields(value, path, readers))


def _recipe(value: Any, path: str) -> SWAAConfig:
    config = parse_swaa_config(value, path)
    if config is None or not config.enabled:
        raise fail(join(path, "sliding_window_size"), "must be an integer >= 1: calibration compares sliding "
                                                       "layers against full ones")
    if config.non_sliding_layers:
        raise fail(join(path, "non_sliding_layers"), "must be empty: `swaa calibrate` chooses them, got "
                                                      f"{list(config.non_sliding_layers)}")
    return config


def parse_calibration(data: Any, source: Path | None = None) -> CalibrationSettings:
    """Validate a parsed calibration settings document into :class:`CalibrationSettings`."""
    base = source.parent if source is not None else Path.cwd()
    readers: dict[str, Reader] = {
        **model_job_readers(base),
        "datasets": lambda v, p: parse_datasets(v, p, base),
        "swaa_config": _recipe,
        "calibrate": parse_options,
        "truncation": lambda v, p: as_str(v, p, TRUNCATION),
    }
    out = read_fields(data, "", readers, required=("model", "datasets", "swaa_config"))
    if "output_dir" not in out and source is not None:
        out["output_dir"] = Path("calibration_output") / source.stem
    return CalibrationSettings(**out, source=source)


def load_calibration_settings(path: str | Path) -> CalibrationSettings:
    """Read and validate a calibration settings file; raises :class:`SettingsError` on any bad field."""
    data, source = load_json_file(path)
    return parse_calibration(data, source)


def resolve_budget(budget: int | float, num_layers: int) -> int:
    """The number of full layers ``budget`` means for a model of ``num_layers`` layers; raises
    :class:`SettingsError` (path ``calibrate.budget``) unless it is in [1, num_layers - 1]."""
    count = budget if isinstance(budget, int) else math.floor(budget * num_layers)
    if not 1 <= count <= num_layers - 1:
        meant = "" if isinstance(budget, int) else f" ({budget} of {num_layers} layers is {count})"
        raise SettingsError(f"calibrate.budget: must give between 1 and {num_layers - 1} full layers for this "
                            f"model ({num_layers} layers){meant}, got {budget!r}")
    return count
