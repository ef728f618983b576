"""Settings of ``swaa distill`` and ``swaa sft``: JSON in, validated dataclasses out.

Every error names the JSON path of the bad field (``lora.r: must be an integer >= 1, got 0``),
and everything is checked before a model loads. Relative paths inside a file are relative to
the file's folder, so a settings file works from any working directory. Defaults live in the
dataclasses below and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SWAAConfig
from ..data.loaders import load_pairs
from ..evaluation.scoring import SCORING_METHODS
from ..evaluation.settings import DatasetSpec, JudgeSettings, parse_datasets, parse_judge
from ..jobs.liger import LIGER_MODES
from ..jobs.loading import COMMON_RUNTIME, model_job_readers, parse_model
from ..jobs.validate import (
    Reader,
    as_bool,
    as_float,
    as_int,
    as_list,
    as_str,
    fail,
    join,
    load_json_file,
    parse_swaa_config,
    read_dataset,
    read_fields,
    resolve_path,
)
from ..static_cache import COMPILE_MODES
from .kernel_precompile import RECORDED_NAME

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr")
REPORT_TO = ("none", "tensorboard", "wandb", "trackio")


# -- distill ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FilterSettings:
    """Keep a generated answer only if its score against the reference is >= ``min_score``."""

    scoring: str = "auto"  # auto: per row / per task default (as in `swaa eval`)
    min_score: float = 1.0


@dataclass(frozen=True)
class DistillSettings:
    """Everything ``swaa distill`` needs."""

    model: str
    datasets: tuple[DatasetSpec, ...]
    output_dir: Path = Path("distill_output")
    max_prompt_tokens: int | None = None  # longer prompts are dropped (the teacher must see all of it)
    max_new_tokens: int = 512
    batch_size: int = 1
    compile: str = "auto"  # the teacher's decode steps compiled on its stock StaticCache: auto (on CUDA) / on / off
    num_generations: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    filter: FilterSettings | None = None  # None: keep every answer
    drop_unfinished: bool = False  # drop answers cut by max_new_tokens (no EOS)
    limit: int | None = None
    seed: int = 0
    attn_implementation: str = "sdpa"
    dtype: str = "auto"
    device: str = "auto"
    chat_template: bool = True
    judge: JudgeSettings | None = None
    source: Path | None = field(default=None, compare=False)


# -- sft ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA; defaults follow the reference (r 16, alpha 32, dropout 0.1, rsLoRA)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = LORA_TARGETS
    use_rslora: bool = True


@dataclass(frozen=True)
class DataSettings:
    """How (prompt, response) rows become training sequences."""

    max_length: int = 4096  # longer examples are dropped, never truncated (the answer is at the end)
    min_length: int = 1
    packing: bool = True  # several documents per row, each with its own positions, window and sinks
    chat_template: bool = True
    prompt_field: str = "prompt"
    response_field: str = "response"
    limit: int | None = None


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and checkpointing (names as in transformers' TrainingArguments)."""

    learning_rate: float = 1e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    save_steps: int = 100
    save_total_limit: int | None = 3
    seed: int = 0
    gradient_checkpointing: bool = True
    # transformers' every_n_layers: checkpoint every n-th decoder layer; the others keep their activations
    # (no recomputed forward there: faster, at the memory of n-1 of every n layers' activations)
    checkpoint_every_n_layers: int = 1
    report_to: str = "none"
    liger: str = "auto"  # Liger's fused RMSNorm / SwiGLU / RoPE kernels: auto (on for CUDA), on, off
    # the warm start on a GPU: Triton kernels compiled by forked workers from a manifest of an earlier run
    # (training/kernel_precompile.py) and cuBLAS / cuDNN started in a thread (training/gpu_warmup.py) while
    # the model loads: auto (the manifest shipped for this GPU and Triton, if any), off, or a manifest's path
    precompile_kernels: str = "auto"


@dataclass(frozen=True)
class SFTSettings:
    """Everything ``swaa sft`` needs."""

    model: str
    datasets: tuple[Path, ...]
    swaa_config: SWAAConfig | None
    output_dir: Path = Path("sft_output")
    lora: LoraSettings | None = LoraSettings()  # None: full fine-tuning
    data: DataSettings = DataSettings()
    training: TrainSettings = TrainSettings()
    attn_implementation: str = "sdpa"
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    resume: bool = True  # continue from the newest checkpoint in output_dir
    merge: bool = False  # also write OUTPUT/merged (adapter merged into the base)
    peak_tflops: float | None = None  # per device, for MFU; None: from the GPU's name
    source: Path | None = field(default=None, compare=False)


# -- shared readers -----------------------------------------------------------------------------
def _str_list(value: Any, path: str) -> tuple[str, ...]:
    return tuple(as_str(v, join(path, i)) for i, v in enumerate(as_list(value, path)))


def _positive(value: Any, path: str) -> float:
    number = as_float(value, path, 0.0, float("inf"))
    if number <= 0:
        raise fail(path, f"must be a number > 0, got {value!r}")
    return number


# -- distill parsing ----------------------------------------------------------------------------
def parse_filter(value: Any, path: str) -> FilterSettings | None:
    if value is None:
        return None
    readers = {
        "scoring": lambda v, p: as_str(v, p, SCORING_METHODS),
        "min_score": lambda v, p: as_float(v, p, 0.0, 1.0),
    }
    return FilterSettings(**read_fields(value, path, readers))


def parse_distill(data: Any, source: Path | None = None) -> DistillSettings:
    """Validate a parsed distill settings document into :class:`DistillSettings`."""
    base = source.parent if source is not None else Path.cwd()

    readers: dict[str, Reader] = {
        **model_job_readers(base),
        "datasets": lambda v, p: parse_datasets(v, p, base),
        "max_new_tokens": lambda v, p: as_int(v, p, minimum=1),
        "compile": lambda v, p: as_str(v, p, COMPILE_MODES),
        "num_generations": lambda v, p: as_int(v, p, minimum=1),
        "temperature": lambda v, p: as_float(v, p, 0.0, 10.0),
        "top_p": lambda v, p: as_float(v, p, 0.0, 1.0),
        "filter": parse_filter,
        "drop_unfinished": as_bool,
        "judge": parse_judge,
    }
    out = read_fields(data, "", readers, required=("model", "datasets"))
    if "output_dir" not in out and source is not None:
        out["output_dir"] = Path("distill_output") / source.stem
    settings = DistillSettings(**out, source=source)
    _check_distill(settings)
    return settings


def _check_distill(settings: DistillSettings) -> None:
    if settings.num_generations > 1 and settings.temperature == 0.0:
        raise fail("num_generations", "several generations per prompt need sampling: set temperature > 0")
    uses_judge = settings.filter is not None and settings.filter.scoring == "judge"
    uses_judge |= any(spec.scoring == "judge" for spec in settings.datasets)
    if uses_judge and settings.judge is None:
        raise fail("filter.scoring", "'judge' needs a top-level 'judge' block (base_url, model)")


def load_distill_settings(path: str | Path) -> DistillSettings:
    """Read and validate a distill settings file; raises :class:`SettingsError` on any bad field."""
    data, source = load_json_file(path)
    return parse_distill(data, source)


# -- sft parsing --------------------------------------------------------------------------------
def parse_lora(value: Any, path: str) -> LoraSettings | None:
    if value is None:
        return None
    readers = {
        "r": lambda v, p: as_int(v, p, minimum=1),
        "alpha": lambda v, p: as_int(v, p, minimum=1),
        "dropout": lambda v, p: as_float(v, p, 0.0, 0.99),
        "target_modules": _str_list,
        "use_rslora": as_bool,
    }
    return LoraSettings(**read_fields(value, path, readers))


def parse_data(value: Any, path: str) -> DataSettings:
    readers = {
        "max_length": lambda v, p: as_int(v, p, minimum=2),
        "min_length": lambda v, p: as_int(v, p, minimum=1),
        "packing": as_bool,
        "chat_template": as_bool,
        "prompt_field": as_str,
        "response_field": as_str,
        "limit": lambda v, p: as_int(v, p, minimum=1, allow_none=True),
    }
    data = DataSettings(**read_fields(value, path, readers))
    if data.min_length > data.max_length:
        raise fail(join(path, "min_length"), f"must be <= max_length ({data.max_length}), got {data.min_length}")
    return data


def parse_training(value: Any, path: str, base: Path | None = None) -> TrainSettings:
    readers = {
        "learning_rate": _positive,
        "num_train_epochs": _positive,
        "max_steps": lambda v, p: as_int(v, p, minimum=-1),
        "per_device_train_batch_size": lambda v, p: as_int(v, p, minimum=1),
        "gradient_accumulation_steps": lambda v, p: as_int(v, p, minimum=1),
        "warmup_ratio": lambda v, p: as_float(v, p, 0.0, 0.99),
        "lr_scheduler_type": lambda v, p: as_str(v, p, SCHEDULERS),
        "weight_decay": lambda v, p: as_float(v, p, 0.0, 1.0),
        "max_grad_norm": lambda v, p: as_float(v, p, 0.0, 1e6),
        "logging_steps": lambda v, p: as_int(v, p, minimum=1),
        "save_steps": lambda v, p: as_int(v, p, minimum=1),
        "save_total_limit": lambda v, p: as_int(v, p, minimum=1, allow_none=True),
        "seed": lambda v, p: as_int(v, p, minimum=0),
        "gradient_checkpointing": as_bool,
        "checkpoint_every_n_layers": lambda v, p: as_int(v, p, minimum=1),
        "report_to": lambda v, p: as_str(v, p, REPORT_TO),
        "liger": lambda v, p: as_str(v, p, LIGER_MODES),
        "precompile_kernels": lambda v, p: _precompile_setting(v, p, base or Path.cwd()),
    }
    out = read_fields(value, path, readers)
    if out.get("max_steps") == 0:
        raise fail(join(path, "max_steps"), "must be -1 (use num_train_epochs) or >= 1, got 0")
    if out.get("checkpoint_every_n_layers", 1) > 1 and not out.get("gradient_checkpointing", True):
        raise fail(join(path, "checkpoint_every_n_layers"),
                   f"picks which layers gradient checkpointing recomputes; it must be 1 (or left out) when "
                   f"training.gradient_checkpointing is false, got {out['checkpoint_every_n_layers']}")
    return TrainSettings(**out)


def _precompile_setting(value: Any, path: str, base: Path) -> str:
    """"auto", "off", or an existing manifest file, relative to the settings file's folder (whether it
    fits the GPU is checked when training starts)."""
    text = as_str(value, path)
    if text in ("auto", "off"):
        return text
    file = resolve_path(text, base)
    if not file.is_file():
        raise fail(path, f"must be 'auto', 'off' or the path of a kernel manifest file "
                         f"(OUTPUT/{RECORDED_NAME} of an earlier GPU run); {file} is not a file")  # fmt: skip
    return str(file)


def parse_sft_dataset(value: Any, path: str, base: Path, data: DataSettings) -> Path:
    """A local jsonl/parquet/json file whose every row has the prompt and response fields."""
    file = resolve_path(as_str(value, path), base)
    hint = " (see data.prompt_field / data.response_field)"
    read_dataset(file, path, lambda f: load_pairs(f, data.prompt_field, data.response_field), hint)
    return file


def parse_sft(data: Any, source: Path | None = None) -> SFTSettings:
    """Validate a parsed SFT settings document into :class:`SFTSettings`."""
    base = source.parent if source is not None else Path.cwd()
    readers: dict[str, Reader] = {
        "model": lambda v, p: parse_model(v, p, base),
        "datasets": lambda v, p: as_list(v, p),  # checked below, once `data` is known
        "swaa_config": parse_swaa_config,
        "output_dir": lambda v, p: resolve_path(as_str(v, p), base),
        "lora": parse_lora,
        "data": parse_data,
        "training": lambda v, p: parse_training(v, p, base),
        "resume": as_bool,
        "merge": as_bool,
        "peak_tflops": lambda v, p: None if v is None else _positive(v, p),
        **COMMON_RUNTIME,
    }
    out = read_fields(data, "", readers, required=("model", "datasets", "swaa_config"))
    data_settings = out.get("data", DataSettings())
    out["datasets"] = tuple(
        parse_sft_dataset(d, join("datasets", i), base, data_settings) for i, d in enumerate(out["datasets"])
    )
    if "output_dir" not in out and source is not None:
        out["output_dir"] = Path("sft_output") / source.stem
    settings = SFTSettings(**out, source=source)
    if settings.merge and settings.lora is None:
        raise fail("merge", "only a LoRA run can be merged (lora is null: the output is already a full model)")
    return settings


def load_sft_settings(path: str | Path) -> SFTSettings:
    """Read and validate an SFT settings file; raises :class:`SettingsError` on any bad field."""
    data, source = load_json_file(path)
    return parse_sft(data, source)
