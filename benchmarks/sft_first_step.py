"""Where a `swaa sft` run's first step goes: process start to the first step, compiles and graph builds apart.

The row is ``sft_speed.py``'s (its model folder, data and settings: Qwen3-4B shape, LoRA r 16 on every
projection, gradient checkpointing, batch 1, one n-token example per step), trained in this process by
``swaa_patch.training.sft.build_trainer``, in a process started with empty Triton and inductor caches
(as on a fresh machine), or with ``--caches DIR``'s, kept between runs (a second run times a machine that
has trained before: the kernels load from disk). Two trainings run one after the other in that process:
``--steps`` steps at n tokens, then ``--steps`` at ``n - --new-length`` tokens, a length the process has
not seen (real data varies in length: what does a new length cost once everything else is warm?).

Timed, from the process's start (wall seconds, the GPU synchronised at each step's end): imports, the
trainer built (model loaded), train() begun, each step's end. Inside each span: the seconds spent in
Triton compiles (``JITFunction._do_compile``: every Triton kernel, SWAA's, Liger's and trl's, by kernel
name, a disk-cache hit included), in each kernel's module load and launcher build at its first launch
(``CompiledKernel._init_handles``) and in cuDNN graph builds (cudnn-frontend's SDPA forward and backward
graphs, one per shape), so the first step splits into compiles, graph builds and the rest.

The first training runs with ``--precompile``'s ``training.precompile_kernels`` (the warm start: workers forked
where ``run_sft`` forks them, after the imports and before the first CUDA call; ``off`` for the time without it).

    python benchmarks/sft_first_step.py --n 32768 --variant swaa_cudnn_liger   # on the GPU, ~1-2 min
    python benchmarks/sft_first_step.py --n 131072 --caches /tmp/kc            # twice: empty, then kept caches
    python benchmarks/sft_first_step.py --tiny                                 # the CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

START_ENV = "SWAA_FIRST_STEP_START"  # the launcher's wall clock, so the re-executed process counts from it


@dataclass
class Spans:
    """Seconds spent in each kind of compile, by span: span i ends at the i-th :meth:`mark`."""

    start: float
    marks: list[tuple[str, float]] = field(default_factory=list)
    spent: dict[int, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    counts: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def add(self, what: str, seconds: float) -> None:
        self.spent[len(self.marks)][what] += seconds
        self.counts[len(self.marks)][what] += 1

    def mark(self, name: str) -> None:
        self.marks.append((name, time.time() - self.start))


def timed(spans: Spans, label, fn):
    """``fn`` wrapped to add its wall time under ``label(*args)`` to the current span."""

    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spans.add(label(*args, **kwargs), time.perf_counter() - begin)

    return wrapper


def triton_kernel_name(source, *args, **kwargs) -> str:
    """The kernel's name from a JITFunction (``_do_compile``'s self) or an ASTSource (``compile``'s src)."""
    fn = getattr(source, "fn", None)
    return "triton: " + str(getattr(fn, "__name__", getattr(source, "name", "?")))


def instrument(spans: Spans) -> list[str]:
    """Wrap Triton's compile and cudnn-frontend's SDPA graph builders; the ones found, by name."""
    found = []
    try:
        import triton.compiler
        from triton.compiler.compiler import CompiledKernel
        from triton.runtime.jit import JITFunction

        if hasattr(CompiledKernel, "_init_handles"):  # at the first launch: the module load and the launcher build
            init = CompiledKernel._init_handles
            first = timed(spans, lambda k: f"triton load + launcher: {k.name}", init)
            # called at every launch; only the first (module not yet loaded) does the work
            CompiledKernel._init_handles = lambda k: init(k) if k.module is not None else first(k)
            found.append("triton CompiledKernel._init_handles")
        if hasattr(JITFunction, "_do_compile"):  # one call per kernel variant (a disk-cache hit included)
            JITFunction._do_compile = timed(spans, triton_kernel_name, JITFunction._do_compile)
            found.append("triton JITFunction._do_compile")
        else:  # older Triton: JITFunction binds `from ..compiler import compile` on first use
            triton.compiler.compile = timed(spans, triton_kernel_name, triton.compiler.compile)
            found.append("triton.compiler.compile")
    except ImportError:
        pass
    try:
        from cudnn.sdpa.fwd import torch_op

        for name, label in (("_build_graph", "cuDNN forward graph"), ("_build_bwd_graph", "cuDNN backward graph")):
            if hasattr(torch_op, name):
                setattr(torch_op, name, timed(spans, lambda *a, _l=label, **k: _l, getattr(torch_op, name)))
                found.append(f"cudnn {name}")
    except Exception:  # no cudnn-frontend (or no usable cuDNN): its path is off anyway
        pass
    return found


def versions() -> str:
    """sft_speed.py's package versions, and cudnn-frontend's (the Hopper default's band kernels)."""
    import sft_speed

    try:
        cudnn = f", nvidia-cudnn-frontend {importlib.metadata.version('nvidia-cudnn-frontend')}"
    except importlib.metadata.PackageNotFoundError:
        cudnn = ", nvidia-cudnn-frontend not installed"
    return sft_speed.versions() + cudnn


def caches_option(argv: list[str]) -> str | None:
    """``--caches DIR`` (or ``--caches=DIR``) from the raw arguments, before argparse runs in the relaunched process."""
    for i, arg in enumerate(argv):
        if arg == "--caches" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--caches="):
            return arg.split("=", 1)[1]
    return None


def relaunch_cold(argv: list[str]) -> None:
    """Re-execute this script with the start time recorded (once), its compile caches empty (a fresh
    directory) or ``--caches DIR``'s, kept between invocations (a machine that has trained before)."""
    if os.environ.get(START_ENV):
        return
    kept = caches_option(argv)
    caches = Path(kept).resolve() if kept else Path(tempfile.mkdtemp(prefix="swaa_first_step_caches_"))
    caches.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, START_ENV: repr(time.time()), "TRITON_CACHE_DIR": str(caches / "triton"),
           "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor")}  # fmt: skip
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    relaunch_cold(argv)
    spans = Spans(start=float(os.environ[START_ENV]))

    import torch

    found = instrument(spans)  # before any module defines its Triton kernels
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent))
    sys.path.insert(0, str(here))
    import sft_speed  # this folder's: the row's model folder, data and settings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sft_speed.add_in_process_options(p, "swaa_cudnn_liger")
    p.add_argument("--new-length", type=int, default=1000, help="the second training's examples are this much shorter")
    p.add_argument("--steps", type=int, default=2, help="steps per training (>= 2: the second is the warm one)")
    p.add_argument("--out", default="benchmarks/results/sft_first_step_raw.md")
    p.add_argument("--precompile", default="auto",
                   help="training.precompile_kernels of the first training: auto (the manifest shipped for this GPU "
                        "and Triton, if any), off, or a manifest file (the second training: off, its process has "
                        "compiled everything already)")  # fmt: skip
    p.add_argument("--manifest-out", default=None,
                   help="copy the first training's recorded kernel manifest (OUTPUT/kernel_manifest.json) here")
    p.add_argument("--caches", default=None,
                   help="compile caches (Triton, inductor) in this folder, kept: a second run finds the first's "
                        "kernels on disk (default: a fresh empty folder, as on a fresh machine)")  # fmt: skip
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error(f"--steps: must be >= 2 (the second step is the warm one), got {args.steps}")
    if not 0 < args.new_length < args.n:
        p.error(f"--new-length: must be in [1, --n), got {args.new_length}")
    if sft_speed.tiny_blocker(args.tiny, args.variant):
        p.error(sft_speed.tiny_blocker(args.tiny, args.variant))
    from transformers import TrainerCallback

    from swaa_patch.training import kernel_precompile
    from swaa_patch.training.sft import build_trainer

    # where `swaa sft` (run_sft) forks them: everything imported, no CUDA call made yet
    precompile = args.precompile if args.precompile in ("auto", "off") else str(Path(args.precompile).resolve())
    workers = None if args.tiny else kernel_precompile.fork_workers(precompile)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("sft_first_step.py needs a CUDA device (or --tiny)")

    from swaa_patch.backends import triton_swa_train
    from swaa_patch.jobs.io import atomic_write_text

    spans.mark("imports (torch, transformers, trl, swaa_patch; precompile workers forked)")
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        args.n = sft_speed.TINY_DEFAULTS["sizes"][0]
        args.new_length = min(args.new_length, args.n // 4)
    speed = sft_speed.in_process_args(args.tiny, args.work_dir, args.n, args.steps)
    runs = []
    for tag, n, kernels in (("first length", args.n, precompile), ("new length", args.n - args.new_length, "off")):
        row, settings = sft_speed.in_process_row(speed, n, args.variant, args.steps, args.steps, "first-step")
        training = dataclasses.replace(settings.training, precompile_kernels=kernels)
        runs.append((tag, row, dataclasses.replace(settings, training=training)))
    spans.mark("settings and data ready (the model folder built when absent)")

    class StepMarks(TrainerCallback):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def on_train_begin(self, *a, **k):
            spans.mark(f"{self.tag}: train() begun")

        def on_step_end(self, args_, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            spans.mark(f"{self.tag}: step {state.global_step} done")

    trainings, forked = [], workers
    for tag, row, settings in runs:
        triton_swa_train.PATH_COUNTS.clear()
        with triton_swa_train.fused_train(sft_speed.fused_train_mode(speed, row)):
            trainer = build_trainer(settings, callbacks=(StepMarks(tag),), precompile=workers)
            workers = None
            spans.mark(f"{tag}: trainer built (model loaded)")
            trainer.train()
        missing = sft_speed.kernel_missing(args.variant, dict(triton_swa_train.PATH_COUNTS))
        if missing:
            raise SystemExit(f"{args.variant}: {missing}")
        history = [h for h in trainer.state.log_history if "loss" in h]
        first_s = row.tokens / history[0]["tokens_per_s"] if history and "tokens_per_s" in history[0] else math.nan
        trainings.append((tag, row, [h["loss"] for h in history], first_s))
        recorded = Path(settings.output_dir) / kernel_precompile.RECORDED_NAME
        if args.manifest_out and tag == "first length" and recorded.is_file():
            shutil.copyfile(recorded, args.manifest_out)
        trainer.restore_kernels()
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    label = sft_speed.row_label(speed, trainings[0][1])
    summary = forked.summary if forked is not None else None
    text = report(spans, found, label, trainings, sft_speed.device_name(speed), versions(), args.caches, precompile,
                  summary)  # fmt: skip
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0


def report(spans: Spans, found: list[str], label: str, trainings: list, device: str, versions: str,
           caches: str | None = None, precompile: str = "off", summary: str | None = None) -> str:  # fmt: skip
    lines = [
        "# `swaa sft` from process start to its first steps: compiles and graph builds apart",
        "",
        f"- date: {datetime.date.today()}; device: {device}; {versions}",
        f"- row: {label}; one process with "
        + (f"the Triton / inductor caches kept in `{caches}` (empty unless an earlier run filled them)" if caches else
           "empty Triton / inductor caches")
        + f"; training 1: {trainings[0][1].tokens} tokens "
        f"per example, training 2 (same process, a new trainer and model load): {trainings[1][1].tokens} tokens",
        f"- training 1's training.precompile_kernels: {precompile} (its wait for the workers falls in `train() begun`): "
        + (summary or "no workers"),
        "- losses: " + "; ".join(f"{tag} " + " / ".join(f"{x:.4f}" for x in losses) for tag, _, losses, _ in trainings),
        "- first step as `swaa sft` logs it (train() start to the first log, sft_speed.md's `first step s`): "
        + "; ".join(f"{tag} {first_s:.1f} s" for tag, _, _, first_s in trainings),
        f"- instrumented: {', '.join(found) or 'nothing (no Triton, no cudnn-frontend)'}; times are wall seconds, "
        "the GPU synchronised at each step's end",
        "",
        "| span ends at | at s | span s | Triton compiles + launchers (n) s | cuDNN graph builds (n) s | rest s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    previous = 0.0
    for index, (name, at) in enumerate(spans.marks):
        spent, counts = spans.spent.get(index, {}), spans.counts.get(index, {})
        triton_s = sum(s for k, s in spent.items() if k.startswith("triton"))
        triton_n = sum(c for k, c in counts.items() if k.startswith("triton"))
        cudnn_s = sum(s for k, s in spent.items() if k.startswith("cuDNN"))
        cudnn_n = sum(c for k, c in counts.items() if k.startswith("cuDNN"))
        span = at - previous
        lines.append(f"| {name} | {at:.1f} | {span:.2f} | {triton_s:.2f} ({triton_n}) | {cudnn_s:.2f} ({cudnn_n}) | "
                     f"{span - triton_s - cudnn_s:.2f} |")
        previous = at
    lines += ["", "## Compiles and graph builds by span and name", "", "| span ends at | what | n | s |",
              "| --- | --- | --- | --- |"]
    for index, (name, _) in enumerate(spans.marks):
        spent, counts = spans.spent.get(index, {}), spans.counts.get(index, {})
        for what, s in sorted(spent.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {what} | {counts[what]} | {s:.2f} |")
    lines += ["", "## Compiles and graph builds by name (all spans)", "", "| what | n | s |", "| --- | --- | --- |"]
    total_s: dict[str, float] = defaultdict(float)
    total_n: dict[str, int] = defaultdict(int)
    for key in spans.spent:
        for what, s in spans.spent[key].items():
            total_s[what] += s
            total_n[what] += spans.counts[key][what]
    for what, s in sorted(total_s.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {what} | {total_n[what]} | {s:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
