"""The ``swaa`` command line: one subcommand per row of :data:`SUBCOMMANDS`.

Each subcommand is a dataclass of arguments (fields become flags; defaults live there only)
plus a ``main(args) -> int`` that tests call directly, without a subprocess. To add one
(``distill``, ``sft``, ``merge``...), write its dataclass and main and add a table row.
Heavy imports (torch, transformers) happen inside the mains so ``swaa --help`` stays fast.

Bad input and refusals (:data:`~swaa_patch.jobs.errors.ONE_LINE_ERRORS`) print one line and exit
with 2; Ctrl-C prints one line saying what finished and how to resume, and exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .demo.train import TrainDemoArgs
from .demo.train import main as train_demo_main
from .jobs.errors import ONE_LINE_ERRORS, Interrupted, SettingsError
from .jobs.loading import is_adapter_folder

logger = logging.getLogger("swaa")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class EvalArgs:
    """Evaluate every (model, SWAA config, dataset) of a settings file; resumes automatically."""

    settings: str = field(metadata=_help("settings JSON file (see eval/README.md)", positional=True))
    output_dir: str | None = field(default=None, metadata=_help("override the settings' output_dir"))
    limit: int | None = field(default=None, metadata=_help("override the settings' sample limit per dataset"))
    report: bool = field(default=True, metadata=_help("write report.md and plots when done"))
    recompute: bool = field(default=False, metadata=_help(
        "discard and recompute blocks whose responses were made with other generation settings"))
    force: bool = field(default=False, metadata=_help(
        "use an output folder that holds files of another kind of run, and replace a report.md not written by swaa"))


@dataclass
class ReportArgs:
    """Write report.md (accuracy tables) and plots/*.png for an eval output folder."""

    output_dir: str = field(metadata=_help("folder written by `swaa eval`", positional=True))
    force: bool = field(default=False, metadata=_help("replace a report.md that `swaa report` did not write"))


@dataclass
class MakeDataArgs:
    """Generate synthetic long-context samples (jsonl/parquet) sized for a tokenizer."""

    tasks: list[str] = field(default_factory=lambda: ["all"], metadata=_help("task names, or 'all'"))
    lengths: list[int] = field(default_factory=lambda: [1024], metadata=_help("prompt lengths in tokens"))
    depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9], metadata=_help("evidence depths in [0, 1]"))
    samples: int = field(default=2, metadata=_help("samples per (length, depth) cell"))
    seed: int = field(default=0, metadata=_help("random seed"))
    tokenizer: str = field(
        default="builtin:tiny-random-qwen3", metadata=_help("tokenizer folder, or a built-in model name")
    )
    out_dir: str = field(default="datasets/synthetic", metadata=_help("folder for TASK.jsonl files"))
    format: str = field(default="jsonl", metadata=_help("jsonl or parquet", choices=("jsonl", "parquet")))


@dataclass
class DistillArgs:
    """Self-distillation: answers of the original full-attention model to long prompts; resumes."""

    settings: str = field(metadata=_help("distill settings JSON (see sft/README.md)", positional=True))
    output_dir: str | None = field(default=None, metadata=_help("override the settings' output_dir"))
    limit: int | None = field(default=None, metadata=_help("override the settings' prompt limit per dataset"))
    recompute: bool = field(default=False, metadata=_help(
        "discard and recompute answers made with other generation settings"))
    force: bool = field(default=False, metadata=_help("use an output folder that holds files of another kind of run"))


@dataclass
class SFTArgs:
    """LoRA fine-tuning of a SWA-patched model (trl SFTTrainer); resumes the newest checkpoint."""

    settings: str = field(metadata=_help("SFT settings JSON (see sft/README.md)", positional=True))
    output_dir: str | None = field(default=None, metadata=_help("override the settings' output_dir"))
    max_steps: int | None = field(default=None, metadata=_help("override training.max_steps"))
    resume: bool | None = field(default=None, metadata=_help(
        "override the settings' resume (--no-resume: train from scratch, replacing earlier results)"))
    force: bool = field(default=False, metadata=_help("use an output folder that holds files of another kind of run"))


@dataclass
class MergeArgs:
    """Merge a LoRA adapter saved by `swaa sft` into its base model (keeps its SWAAConfig)."""

    adapter: str = field(metadata=_help("adapter folder (OUTPUT/final or a checkpoint)", positional=True))
    output: str = field(metadata=_help("folder for the merged model", positional=True))
    base: str | None = field(default=None, metadata=_help("base model folder (default: the adapter's)"))
    dtype: str = field(default="auto", metadata=_help("dtype of the merged weights",
                                                      choices=("auto", "float32", "float16", "bfloat16")))
    keep_swaa_config: bool = field(default=True, metadata=_help("store the SWAAConfig in the merged config.json"))


@dataclass
class CalibrateArgs:
    """Choose the full-attention layers (non_sliding_layers) from data; writes a ready SWAAConfig; resumes."""

    settings: str = field(metadata=_help("calibration settings JSON (see eval/calibrate.md)", positional=True))
    output_dir: str | None = field(default=None, metadata=_help("override the settings' output_dir"))
    limit: int | None = field(default=None, metadata=_help("override the settings' prompt limit per dataset"))
    recompute: bool = field(default=False, metadata=_help(
        "discard and recompute scores and teacher answers made with other settings"))
    force: bool = field(default=False, metadata=_help("use an output folder that holds files of another kind of run"))


@dataclass
class ServeArgs:
    """Serve a model with SWAA over an OpenAI-compatible API: transformers serve with continuous batching."""

    model: str = field(metadata=_help("model folder or hub id (transformers serve's forced model)", positional=True))
    swaa_config: str = field(metadata=_help("SWAAConfig JSON file (e.g. a calibration's swaa_config.json)", required=True))
    options: list[str] = field(default_factory=list, metadata=_help(
        "any further option goes to `transformers serve` (--host, --port, --device, --cb-* ...); "
        "give them after MODEL", suppress=True))


def load_with_overrides(loader: Any, args: Any, **overrides: Any) -> Any:
    """``loader(args.settings)`` with the command line's overrides applied (None: not given);
    an invalid settings file raises SettingsError (one line, exit 2)."""
    settings = loader(args.settings)
    if overrides.get("output_dir") is not None:
        overrides["output_dir"] = Path(overrides["output_dir"])
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def eval_main(args: EvalArgs) -> int:
    from .evaluation.report import write_report
    from .evaluation.runner import run_eval
    from .evaluation.settings import load_settings

    settings = load_with_overrides(load_settings, args, output_dir=args.output_dir, limit=args.limit)
    run_eval(settings, force=args.force, recompute=args.recompute)
    if args.report and _is_main_process():
        write_report(settings.output_dir, force=args.force)
    return 0


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def report_main(args: ReportArgs) -> int:
    from .evaluation.report import write_report

    logger.info("report: %s", write_report(args.output_dir, force=args.force))
    return 0


def make_data_main(args: MakeDataArgs) -> int:
    from .jobs.make_data import make_data

    for path in make_data(args.tasks, args.lengths, args.depths, args.samples, args.seed,
                          args.tokenizer, Path(args.out_dir), args.format):
        logger.info("wrote %s", path)
    return 0


def distill_main(args: DistillArgs) -> int:
    from .training.distill import run_distill
    from .training.settings import load_distill_settings

    settings = load_with_overrides(load_distill_settings, args, output_dir=args.output_dir, limit=args.limit)
    logger.info("distill dataset: %s", run_distill(settings, force=args.force, recompute=args.recompute))
    return 0


def sft_main(args: SFTArgs) -> int:
    from .training.settings import load_sft_settings

    settings = load_with_overrides(load_sft_settings, args, output_dir=args.output_dir, resume=args.resume)
    if args.max_steps is not None:
        settings = dataclasses.replace(settings, training=dataclasses.replace(settings.training,
                                                                             max_steps=args.max_steps))
    from .training.sft import run_sft

    run_sft(settings, force=args.force)
    return 0


def calibrate_main(args: CalibrateArgs) -> int:
    from .calibration.run import run_calibration
    from .calibration.settings import load_calibration_settings

    settings = load_with_overrides(load_calibration_settings, args, output_dir=args.output_dir, limit=args.limit)
    run_calibration(settings, force=args.force, recompute=args.recompute)
    return 0


def serve_main(args: ServeArgs) -> int:
    from .serve import serve

    return serve(args.model, args.swaa_config, args.options)


def merge_main(args: MergeArgs) -> int:
    import torch

    from .training.adapter import merge_swaa_adapter

    if not is_adapter_folder(args.adapter):
        raise SettingsError(f"adapter: {args.adapter} holds no adapter_config.json (a LoRA adapter saved by swaa sft)")
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    merge_swaa_adapter(args.adapter, args.output, base=args.base, dtype=dtype, keep_swaa_config=args.keep_swaa_config)
    return 0


@dataclass(frozen=True)
class Subcommand:
    args: type
    main: Callable[[Any], int]
    passthrough: str | None = None  # the args field that takes options the subcommand does not know


SUBCOMMANDS: dict[str, Subcommand] = {
    "eval": Subcommand(EvalArgs, eval_main),
    "report": Subcommand(ReportArgs, report_main),
    "make-data": Subcommand(MakeDataArgs, make_data_main),
    "distill": Subcommand(DistillArgs, distill_main),
    "sft": Subcommand(SFTArgs, sft_main),
    "merge": Subcommand(MergeArgs, merge_main),
    "calibrate": Subcommand(CalibrateArgs, calibrate_main),
    "train-demo": Subcommand(TrainDemoArgs, train_demo_main),
    "serve": Subcommand(ServeArgs, serve_main, passthrough="options"),
}


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0] if len(inner) == 1 else hint
    return hint


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag (or positional) per dataclass field: type, default, choices and help from it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        positional = meta.pop("positional", False)
        if meta.pop("suppress", False):  # filled from the options the parser does not know
            continue
        hint = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = {"help": meta.pop("help", None), **meta}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is list:
            kwargs.update(type=typing.get_args(hint)[0], nargs="+")
        else:
            kwargs["type"] = hint
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        if positional:
            parser.add_argument(f.name, **kwargs)
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swaa", description="Sliding Window Attention Adaptation tools")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in SUBCOMMANDS.items():
        doc = (command.args.__doc__ or "").strip()
        add_dataclass_arguments(sub.add_parser(name, help=doc, description=doc), command.args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parsed, unknown = parser.parse_known_args(argv)
    namespace = vars(parsed)
    logging.basicConfig(level=namespace.pop("log_level"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = SUBCOMMANDS[namespace.pop("command")]
    if command.passthrough is not None:
        namespace[command.passthrough] = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return run_command(command, command.args(**namespace))


def run_command(command: Subcommand, args: Any) -> int:
    """``command.main(args)``, with bad input and refusals as one line (exit 2) and Ctrl-C as one line (130)."""
    try:
        return command.main(args)
    except Interrupted as err:
        if not err.quiet:
            logger.error("%s", err)
        return 130
    except KeyboardInterrupt:
        logger.error("interrupted; what was saved is kept: run the same command again to resume")
        return 130
    except SettingsError as err:
        logger.error("invalid settings: %s", err)
        return 2
    except ONE_LINE_ERRORS as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
