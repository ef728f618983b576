"""Evaluation settings: JSON in, validated dataclasses out, every error naming its JSON path.

Two shapes are accepted:

* the reference's: a list of ``{"swaa_config": {...}, "model_list": [...]}`` (every other key
  takes its default; the default dataset is the built-in ``synthetic:passkey``);
* an object with that list under ``"settings"`` plus the run-wide keys of :class:`EvalSettings`.

Relative paths inside a file (models, datasets, output_dir) are relative to the file's folder,
so a settings file works from any working directory. Settings are data: nothing is imported or
executed from them. ``swaa distill`` reads its datasets and judge with the same
:func:`parse_dataset` and :func:`parse_judge`.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import SWAAConfig
from ..data.loaders import load_records
from ..data.synthetic import generate_task, tokenizer_counter
from ..data.tasks import TASKS
from ..jobs.loading import ATTN_IMPLEMENTATIONS, DTYPES, parse_model
from ..jobs.validate import (
    as_bool,
    as_float,
    as_int,
    as_list,
    as_str,
    check_keys,
    check_unique_names,
    fail,
    join,
    load_json_file,
    parse_device,
    parse_swaa_config,
    read_dataset,
    resolve_path,
)
from ..static_cache import COMPILE_MODES
from .scoring import SCORING_METHODS

SYNTHETIC_PREFIX = "synthetic:"
API_KEY_ENV = re.compile(r"[A-Z][A-Z0-9_]*_(API_KEY|TOKEN)")
TRUNCATION = ("middle", "skip")


@dataclass(frozen=True)
class JudgeSettings:
    """An OpenAI-compatible chat endpoint used as a judge. The key is read from ``api_key_env``."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset file, or a synthetic task generated for each model's tokenizer."""

    name: str
    path: Path | None = None
    task: str | None = None
    lengths: tuple[int, ...] = (1024,)
    depths: tuple[float, ...] = (0.5,)
    samples: int = 1  # per (length, depth) cell
    seed: int | None = None  # None: the run's seed
    scoring: str = "auto"  # auto: the row's "scoring" field, else the run's scoring
    limit: int | None = None

    @property
    def synthetic(self) -> bool:
        return self.task is not None

    def task_seed(self, run_seed: int) -> int:
        """The seed of a synthetic task: its own, else the run's."""
        return run_seed if self.seed is None else self.seed

    def synthetic_rows(self, tokenizer: Any, run_seed: int) -> list[dict[str, Any]]:
        """The synthetic task's samples, sized in ``tokenizer``'s tokens."""
        counter = tokenizer_counter(tokenizer)
        return generate_task(self.task, counter, self.lengths, self.depths, self.samples, self.task_seed(run_seed))


@dataclass(frozen=True)
class RunSpec:
    """One entry of the reference's list: a SWAA config applied to each model of a list."""

    swaa_config: SWAAConfig | None
    model_list: tuple[str, ...]


@dataclass(frozen=True)
class EvalSettings:
    """Everything ``swaa eval`` needs. Defaults live here and nowhere else."""

    runs: tuple[RunSpec, ...]
    datasets: tuple[DatasetSpec, ...] = (DatasetSpec(name="passkey", task="passkey"),)
    output_dir: Path = Path("eval_output")
    max_prompt_tokens: int | None = None
    truncation: str = "middle"  # over-long prompts: keep head + tail ("middle") or drop ("skip")
    max_new_tokens: int = 64
    batch_size: int = 1
    compile: str = "auto"  # decode steps compiled on a StaticSWAACache: auto (on CUDA) / on / off
    limit: int | None = None  # first N samples of each dataset
    seed: int = 0
    attn_implementation: str = "sdpa"
    dtype: str = "auto"
    device: str = "auto"
    chat_template: bool = True
    scoring: str = "auto"  # auto: per row / per task default, else exact_match
    judge: JudgeSettings | None = None
    source: Path | None = field(default=None, compare=False)


RUN_KEYS = ("swaa_config", "model_list")
TOP_KEYS = tuple(f.name for f in fields(EvalSettings) if f.name not in ("runs", "source")) + ("settings",)


def parse_run(data: Any, path: str, base: Path) -> RunSpec:
    check_keys(data, path, RUN_KEYS, required=RUN_KEYS)
    swaa = parse_swaa_config(data["swaa_config"], join(path, "swaa_config"))
    models_path = join(path, "model_list")
    models = as_list(data["model_list"], models_path)
    return RunSpec(swaa, tuple(parse_model(m, join(models_path, i), base) for i, m in enumerate(models)))


def parse_file_dataset(raw: str, path: str, base: Path, extra: Mapping[str, Any]) -> DatasetSpec:
    file = resolve_path(raw, base)
    read_dataset(file, path, load_records)  # every row checked now, before any model loads
    return DatasetSpec(name=extra.get("name") or file.stem, path=file, **_common_dataset_fields(extra, path))


def _common_dataset_fields(data: Mapping[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "scoring" in data:
        out["scoring"] = as_str(data["scoring"], join(path, "scoring"), SCORING_METHODS)
    if "limit" in data:
        out["limit"] = as_int(data["limit"], join(path, "limit"), minimum=1, allow_none=True)
    return out


def parse_synthetic(data: Mapping[str, Any], path: str) -> DatasetSpec:
    task = as_str(data["task"], join(path, "task"), sorted(TASKS))
    out: dict[str, Any] = {"name": data.get("name") or task, "task": task}
    if "lengths" in data:
        lengths = as_list(data["lengths"], join(path, "lengths"))
        out["lengths"] = tuple(as_int(v, join(join(path, "lengths"), i), minimum=16) for i, v in enumerate(lengths))
    if "depths" in data:
        depths = as_list(data["depths"], join(path, "depths"))
        out["depths"] = tuple(as_float(v, join(join(path, "depths"), i), 0.0, 1.0) for i, v in enumerate(depths))
    if "samples" in data:
        out["samples"] = as_int(data["samples"], join(path, "samples"), minimum=1)
    if "seed" in data:
        out["seed"] = as_int(data["seed"], join(path, "seed"), minimum=0, allow_none=True)
    return DatasetSpec(**out, **_common_dataset_fields(data, path))


DATASET_FILE_KEYS = ("path", "name", "scoring", "limit")
DATASET_TASK_KEYS = ("task", "name", "lengths", "depths", "samples", "seed", "scoring", "limit")


def parse_dataset(data: Any, path: str, base: Path) -> DatasetSpec:
    """``"file.parquet"``, ``"synthetic:passkey"``, ``{"path": ...}`` or ``{"task": ...}``."""
    if isinstance(data, str):
        if data.startswith(SYNTHETIC_PREFIX):
            return parse_synthetic({"task": data[len(SYNTHETIC_PREFIX) :]}, path)
        return parse_file_dataset(data, path, base, {})
    if isinstance(data, Mapping) and "task" in data:
        check_keys(data, path, DATASET_TASK_KEYS)
        return parse_synthetic(data, path)
    check_keys(data, path, DATASET_FILE_KEYS, required=("path",))
    if "name" in data:
        as_str(data["name"], join(path, "name"))
    return parse_file_dataset(as_str(data["path"], join(path, "path")), join(path, "path"), base, data)


def parse_datasets(value: Any, path: str, base: Path) -> tuple[DatasetSpec, ...]:
    """A non-empty list of dataset specs with distinct names (they name output files)."""
    specs = tuple(parse_dataset(d, join(path, i), base) for i, d in enumerate(as_list(value, path)))
    check_unique_names([spec.name for spec in specs], path, "dataset")
    return specs


def parse_judge_url(value: Any, path: str) -> str:
    """An https URL, or http to this machine (loopback): prompts and the key must not travel in clear."""
    url = as_str(value, path)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise fail(path, f"must be an https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise fail(path, "must not hold credentials (the key comes from api_key_env)")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise fail(path, f"must use https (http only to localhost, 127.0.0.0/8 or ::1), got {url!r}")
    return url


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_api_key_env(value: Any, path: str) -> str | None:
    """The name of the environment variable holding the judge's key: ``*_API_KEY`` or ``*_TOKEN``."""
    name = as_str(value, path, allow_none=True)
    if name is not None and not API_KEY_ENV.fullmatch(name):
        raise fail(path, f"must name an environment variable ending in _API_KEY or _TOKEN "
                         f"(e.g. OPENAI_API_KEY), got {name!r}")
    return name


def parse_judge(data: Any, path: str) -> JudgeSettings | None:
    if data is None:
        return None
    names = [f.name for f in fields(JudgeSettings)]
    check_keys(data, path, names, required=("base_url", "model"))
    out: dict[str, Any] = {
        "base_url": parse_judge_url(data["base_url"], join(path, "base_url")),
        "model": as_str(data["model"], join(path, "model")),
    }
    if "api_key_env" in data:
        out["api_key_env"] = parse_api_key_env(data["api_key_env"], join(path, "api_key_env"))
    if "timeout_s" in data:
        out["timeout_s"] = as_float(data["timeout_s"], join(path, "timeout_s"), 1.0, 3600.0)
    if "max_retries" in data:
        out["max_retries"] = as_int(data["max_retries"], join(path, "max_retries"), minimum=0)
    return JudgeSettings(**out)


def parse_settings(data: Any, source: Path | None = None) -> EvalSettings:
    """Validate a parsed settings document (list or object) into :class:`EvalSettings`."""
    base = source.parent if source is not None else Path.cwd()
    if isinstance(data, list):
        data = {"settings": data}
    check_keys(data, "settings file", TOP_KEYS, required=("settings",))
    runs = as_list(data["settings"], "settings")
    out: dict[str, Any] = {"runs": tuple(parse_run(r, f"settings[{i}]", base) for i, r in enumerate(runs))}
    if "datasets" in data:
        out["datasets"] = parse_datasets(data["datasets"], "datasets", base)
    if "output_dir" in data:
        out["output_dir"] = resolve_path(as_str(data["output_dir"], "output_dir"), base)
    elif source is not None:
        out["output_dir"] = Path("eval_output") / source.stem
    readers = {
        "max_prompt_tokens": lambda v, p: as_int(v, p, minimum=16, allow_none=True),
        "truncation": lambda v, p: as_str(v, p, TRUNCATION),
        "max_new_tokens": lambda v, p: as_int(v, p, minimum=1),
        "batch_size": lambda v, p: as_int(v, p, minimum=1),
        "compile": lambda v, p: as_str(v, p, COMPILE_MODES),
        "limit": lambda v, p: as_int(v, p, minimum=1, allow_none=True),
        "seed": lambda v, p: as_int(v, p, minimum=0),
        "attn_implementation": lambda v, p: as_str(v, p, ATTN_IMPLEMENTATIONS),
        "dtype": lambda v, p: as_str(v, p, DTYPES),
        "device": parse_device,
        "chat_template": as_bool,
        "scoring": lambda v, p: as_str(v, p, SCORING_METHODS),
        "judge": parse_judge,
    }
    for key, read in readers.items():
        if key in data:
            out[key] = read(data[key], key)
    settings = EvalSettings(**out, source=source)
    _check_judge_use(settings)
    return settings


def _check_judge_use(settings: EvalSettings) -> None:
    if settings.judge is not None:
        return
    if settings.scoring == "judge":
        raise fail("scoring", "'judge' needs a 'judge' block (base_url, model)")
    for i, spec in enumerate(settings.datasets):
        if spec.scoring == "judge":
            raise fail(f"datasets[{i}].scoring", "'judge' needs a top-level 'judge' block (base_url, model)")


def load_settings(path: str | Path) -> EvalSettings:
    """Read and validate a settings JSON file; raises :class:`SettingsError` on any bad field."""
    data, source = load_json_file(path)
    return parse_settings(data, source=source)
