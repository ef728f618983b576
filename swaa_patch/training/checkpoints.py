"""What an SFT output folder holds, and how a run resumes it without ever trusting a torn save.

A checkpoint is committed in order: the trainer writes ``checkpoint-N/`` (weights, optimizer,
scheduler, RNG state, ``trainer_state.json``), then :class:`CheckpointCommit` adds
``swaa_config.json``, fsyncs every file and writes ``swaa_checkpoint.json`` last. Only a
checkpoint with that marker is complete: resume takes the newest complete one and logs the
newer ones it skips (a kill in the middle of a save). Older checkpoints are rotated by this
callback, never before the new one is complete, so a kill never leaves a folder without one.

A folder that already holds results (checkpoints or ``final/``) records the settings that
made them in ``training.meta.json``; a run with settings that would change those results is
refused, naming the differing keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..config import SWAAConfig
from ..jobs.errors import RunRefused
from ..jobs.io import atomic_write_json
from ..jobs.run import SETTINGS_FILE, describe_changes
from ..jobs.validate import settings_to_dict
from .adapter import SWAA_CONFIG_FILE, save_swaa_config
from .settings import SFTSettings

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "swaa_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
META_FILE = "training.meta.json"
FINAL_DIR = "final"
MERGED_DIR = "merged"
METRICS_FILE = "train_metrics.json"
_STEP = re.compile(r"checkpoint-(\d+)")
# Settings that do not change the trained weights: a resumed run may change them freely.
NOT_RESULTS = {"output_dir", "resume", "merge", "peak_tflops", "source", "training.logging_steps",
               "training.save_steps", "training.save_total_limit", "training.report_to",
               "training.gradient_checkpointing", "training.checkpoint_every_n_layers", "training.liger",
               "training.precompile_kernels"}


# -- checkpoints --------------------------------------------------------------------------------
def checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, oldest first."""
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
             if p.is_dir() and (m := _STEP.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def is_complete(folder: Path, markers_in_use: bool) -> bool:
    """A committed checkpoint. In a folder from before the marker existed, swaa_config.json (then
    written after everything else) and trainer_state.json mark it."""
    if markers_in_use:
        return (folder / COMPLETE_MARKER).is_file()
    return (folder / SWAA_CONFIG_FILE).is_file() and (folder / TRAINER_STATE).is_file()


def complete_checkpoints(output_dir: Path) -> list[Path]:
    found = checkpoints(output_dir)
    markers_in_use = any((p / COMPLETE_MARKER).is_file() for p in found)
    return [p for p in found if is_complete(p, markers_in_use)]


def resume_point(output_dir: Path) -> Path | None:
    """The newest complete checkpoint; the newer incomplete ones are logged as skipped."""
    complete = complete_checkpoints(output_dir)
    newest = complete[-1] if complete else None
    for folder in checkpoints(output_dir):
        if folder not in complete and (newest is None or _step(folder) > _step(newest)):
            logger.warning("skipping %s: incomplete (the run was killed while saving it)", folder)
    return newest


def _step(folder: Path) -> int:
    return int(_STEP.fullmatch(folder.name).group(1))


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` (and the folder itself) to disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_checkpoint(folder: Path, swaa: SWAAConfig | None, step: int) -> None:
    """swaa_config.json, everything flushed, then the marker: the checkpoint is complete."""
    save_swaa_config(folder, swaa)
    fsync_tree(folder)
    atomic_write_json(folder / COMPLETE_MARKER, {"global_step": step})


def rotate_checkpoints(output_dir: Path, keep: int | None) -> None:
    """Keep the ``keep`` newest complete checkpoints; incomplete ones older than the newest go too."""
    complete = complete_checkpoints(output_dir)
    if not complete:
        return
    doomed = complete[: -keep] if keep is not None and len(complete) > keep else []
    doomed += [p for p in checkpoints(output_dir) if p not in complete and _step(p) < _step(complete[-1])]
    for folder in doomed:
        logger.info("removing %s (save_total_limit)", folder)
        shutil.rmtree(folder, ignore_errors=True)


class CheckpointCommit(TrainerCallback):
    """Commits each checkpoint the trainer saved (see the module docstring), then rotates old ones."""

    def __init__(self, swaa: SWAAConfig | None, keep: int | None):
        self.swaa, self.keep = swaa, keep

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every process has written its part of the checkpoint
        if state.is_world_process_zero:
            output = Path(args.output_dir)
            commit_checkpoint(output / f"checkpoint-{state.global_step}", self.swaa, state.global_step)
            rotate_checkpoints(output, self.keep)


class LogAtSaves(TrainerCallback):
    """Logs the loss at every save and at the last step, so the log history covers every step and a
    resumed run's train_loss can be averaged over all of them (:func:`train_loss`)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True


def train_loss(log_history: list[dict[str, Any]]) -> float | None:
    """Mean training loss over every step logged so far, resumed sessions included."""
    logged = sorted({h["step"]: h["loss"] for h in log_history if "loss" in h and "step" in h}.items())
    if not logged:
        return None
    total, previous = 0.0, 0
    for step, loss in logged:
        total += loss * (step - previous)
        previous = step
    return total / previous


# -- settings of the results in a folder --------------------------------------------------------
def has_results(output_dir: Path) -> bool:
    return bool(checkpoints(output_dir)) or (output_dir / FINAL_DIR).is_dir()


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_meta(settings: SFTSettings) -> dict[str, Any]:
    """The settings that decide the trained weights, flattened, plus the training files' contents."""
    flat = _flat(settings_to_dict(settings))
    meta = {k: v for k, v in flat.items() if k not in NOT_RESULTS}
    meta["datasets_sha256"] = [file_sha256(Path(p)) for p in settings.datasets]
    return meta


def stored_training_meta(output_dir: Path) -> dict[str, Any] | None:
    """The recorded meta; a folder from before training.meta.json falls back to settings.resolved.json."""
    for name in (META_FILE, SETTINGS_FILE):
        path = output_dir / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if name == META_FILE else {k: v for k, v in _flat(data).items() if k not in NOT_RESULTS}
    return None


def result_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys (dotted) whose values differ; a key absent on one side counts as null there."""
    keys = set(old) | set(new)
    if "datasets_sha256" not in old:
        keys.discard("datasets_sha256")  # settings.resolved.json of an older run: contents not recorded
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


def check_training_settings(output_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse to resume results made with settings that would change them (RunRefused naming the keys)."""
    old = stored_training_meta(output_dir)
    changes = result_changes(old, meta) if old is not None else {}
    if changes:
        raise RunRefused(f"{output_dir} holds training results made with other settings ({describe_changes(changes)}); "
                         "use another output_dir, or --no-resume to train again from scratch (its checkpoints "
                         "and final/ are replaced)")


def clear_results(output_dir: Path) -> None:
    """Remove what an earlier run trained (checkpoints, final/, merged/, metrics) before starting over."""
    doomed = [*checkpoints(output_dir), output_dir / FINAL_DIR, output_dir / MERGED_DIR, output_dir / METRICS_FILE,
              output_dir / META_FILE]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    logger.warning("%s: removed the results of the earlier run (--no-resume)", output_dir)
