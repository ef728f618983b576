"""Where one `swaa sft` training step spends its time: the GPU kernels of a profiled step, by kind.

The row is ``sft_speed.py``'s (the same model folder, data and settings: Qwen3-4B shape, LoRA r 16 on
every projection, gradient checkpointing, batch 1, one n-token example per step), trained in this
process by ``swaa_patch.training.sft.build_trainer``. Steps before ``--profile-step`` warm up (the first
compiles); that step runs under torch.profiler between two CUDA synchronisations. The report gives
the step's wall time, the GPU's kernel time (wall minus kernels: the GPU idle, waiting for the host),
the kernel time by kind (matmuls, SWAA's attention kernels, Liger's, elementwise and copies, the rest)
and the top kernels. A step that recomputes its checkpointed layers runs their forward kernels twice:
``--checkpoint-every`` shows the price of that next to a row that keeps more activations.

    python benchmarks/sft_profile.py --n 32768 --variant swaa_triton_liger   # on the GPU, ~2 min
    python benchmarks/sft_profile.py --tiny                                  # the CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import re
import sys
import time
from pathlib import Path

import torch
import transformers
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_common import kernel_table  # noqa: E402  (this folder is on sys.path)
from sft_speed import (  # noqa: E402
    TINY_DEFAULTS,
    Row,
    SFTSpeedArgs,
    add_in_process_options,
    fused_train_mode,
    in_process_args,
    in_process_row,
    kernel_missing,
    row_label,
    tiny_blocker,
)

from swaa_patch.backends import triton_swa_train  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402
from swaa_patch.training.sft import build_trainer  # noqa: E402

log = logging.getLogger("sft_profile")

# Kernel kinds, first match wins (names as the profiler reports them on an H200 with torch 2.11).
KINDS = (
    ("matmul", re.compile(r"nvjet|gemm|cutlass|xmma|splitKreduce|cublas", re.I)),
    ("attention", re.compile(r"swa_sink|sink_merge|flex_attention|sdpa|flash|fmha|attention", re.I)),
    ("Liger", re.compile(r"liger|rms_norm|swiglu|rope|cross_entropy|element_mul", re.I)),
    ("communication", re.compile(r"nccl", re.I)),
    ("elementwise / copies", re.compile(r"elementwise|vectorized|unrolled|copy|cast|fill|reduce|cat|index", re.I)),
)


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


class ProfileStep(TrainerCallback):
    """Profiles the training step numbered ``step`` (1-based), synchronising the GPU at both ends."""

    def __init__(self, step: int, device: torch.device) -> None:
        self.step, self.device = step, device
        self.prof = None
        self.wall_s = float("nan")
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            self._sync()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.prof = profile(activities=activities)
            self.prof.start()
            self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.prof is not None and state.global_step == self.step:
            self._sync()
            self.wall_s = time.perf_counter() - self._start
            self.prof.stop()


def train_and_profile(args: argparse.Namespace, speed: SFTSpeedArgs) -> tuple[ProfileStep, Row, list[float], dict]:
    row, settings = in_process_row(speed, args.n, args.variant, args.profile_step, args.profile_step * 2, "profile",
                                   args.checkpoint_every)  # fmt: skip
    # the kernel the row names (sft_speed.run_row sets the same variable for its subprocess)
    callback = ProfileStep(args.profile_step, torch.device("cpu" if args.tiny else "cuda"))
    triton_swa_train.PATH_COUNTS.clear()
    with triton_swa_train.fused_train(fused_train_mode(speed, row)):
        trainer = build_trainer(settings, callbacks=(callback,))
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return callback, row, losses, dict(triton_swa_train.PATH_COUNTS)


def report(args: argparse.Namespace, speed: SFTSpeedArgs, callback: ProfileStep, row: Row, losses: list[float],
           calls: dict) -> str:  # fmt: skip
    gpu_us, kernels, top = kernel_table(callback.prof, 1)
    by_kind: dict[str, float] = {}
    for name, us, _ in top:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + us
    wall_ms = callback.wall_s * 1e3
    device = "CPU" if args.tiny else torch.cuda.get_device_name()
    label = row_label(speed, row)
    lines = [
        "# One `swaa sft` training step, profiled: where the GPU time goes",
        "",
        f"- date: {datetime.date.today()}; device: {device}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, python {platform.python_version()}",
        f"- row: {label}; n = {row.n} tokens ({row.tokens} in the example); sft_speed.py's model folder, data and "
        f"settings; step {args.profile_step} profiled after {args.profile_step - 1} warm-up step(s); losses "
        + " / ".join(f"{x:.4f}" for x in losses),
        f"- attention calls of all {args.profile_step} steps by path (SWAA_FUSED_TRAIN's kernel, or why a call kept "
        f"the backend's): {calls or 'none (stock, or SWAA_FUSED_TRAIN off)'}",
        f"- step wall {wall_ms:.1f} ms ({row.tokens / callback.wall_s:,.0f} tok/s); GPU kernels {gpu_us / 1e3:.1f} ms "
        f"({kernels} launches); GPU idle (wall - kernels) {wall_ms - gpu_us / 1e3:.1f} ms",
        "",
        "| kind | ms | share of kernel time |",
        "| --- | --- | --- |",
    ]
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {us / 1e3:.1f} | {100 * us / max(gpu_us, 1e-9):.1f} % |")
    lines += ["", f"## Top {args.top} kernels", "", "| kernel | kind | ms | launches |", "| --- | --- | --- | --- |"]
    for name, us, count in top[: args.top]:
        lines.append(f"| `{name[:110]}` | {kind_of(name)} | {us / 1e3:.2f} | {count:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_in_process_options(p, "swaa_triton_liger")
    p.add_argument("--checkpoint-every", type=int, default=1, help="training.checkpoint_every_n_layers")
    p.add_argument("--profile-step", type=int, default=3, help="the step profiled (earlier ones warm up)")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/sft_profile.md")
    args = p.parse_args(argv)
    if args.profile_step < 2:
        p.error(f"--profile-step: must be >= 2 (the first step compiles), got {args.profile_step}")
    if args.checkpoint_every < 1:
        p.error(f"--checkpoint-every: must be an integer >= 1, got {args.checkpoint_every}")
    if tiny_blocker(args.tiny, args.variant):
        p.error(tiny_blocker(args.tiny, args.variant))
    if args.tiny:
        args.n = TINY_DEFAULTS["sizes"][0]
    elif not torch.cuda.is_available():
        raise SystemExit("sft_profile.py needs a CUDA device (or --tiny)")
    speed = in_process_args(args.tiny, args.work_dir, args.n, args.profile_step)
    callback, row, losses, calls = train_and_profile(args, speed)
    if callback.prof is None:
        raise SystemExit(f"step {args.profile_step} never ran: the data has fewer steps")
    missing = kernel_missing(args.variant, calls)
    if missing:
        raise SystemExit(f"{args.variant}: {missing}")
    text = report(args, speed, callback, row, losses, calls)
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
