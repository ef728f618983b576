"""`swaa sft` training speed on the Qwen3-4B shape: stock vs SWAA, with and without Liger, 32K-256K tokens,
one GPU and two (DDP, FSDP2), with correctness checked in the same run.

Every row is one `swaa sft` run in a fresh process (`python -m swaa_patch.cli sft ROW.json`, or under
`accelerate launch` with sft/accelerate_ddp.yaml / accelerate_fsdp.yaml for the 2-GPU layouts), so the
first step is what a user waits for on a fresh machine: each row gets empty Triton and inductor cache
folders (flex's, Liger's and the Triton training kernel's compiles all included; `--warm-caches` shares
them, as a second run on the same machine would; the first-step seconds of rows measured before this
option depended on which row ran first: 12.8 s vs 42.7 s for the same flex + Liger row). Model: the Qwen3-4B shape saved as a model folder by
this script (random bf16 weights, the built-in tiny model's tokenizer: every id < 2048 is a valid
token). Each step trains one example: a prompt of ~n tokens and a short answer (labels on the answer
only), batch 1, no packing; LoRA r 16 (alpha 32, dropout 0: runs compare losses exactly) on
q/k/v/o/gate/up/down, gradient checkpointing (FSDP: FSDP's own activation checkpointing), constant lr.

Numbers are `swaa sft`'s own logs (one per step): s/step and tokens/s from its throughput meter, MFU
from its FLOP count (a sliding layer visits min(p+1, W) keys plus the sinks: training/flops.py),
peak GiB = the largest per-GPU torch max_memory_allocated. first step s = from train() to the first
step's log (compiles included). A row that runs out of memory says so.

Variants: `stock` (no SWAA, sdpa), `stock_liger`, `swaa` (W 2048, keep_first 100, flex_attention),
`swaa_liger`, `swaa_triton[_liger]` (the Triton fwd+bwd, SWAA_FUSED_TRAIN=triton), `swaa_cudnn[_liger]`
(cuDNN's window fwd+bwd + the Triton sinks, SWAA_FUSED_TRAIN=auto with cudnn-frontend installed),
`swaa_fa4[_liger]` (FlashAttention-4's block-sparse fwd+bwd of the whole rule, SWAA_FUSED_TRAIN=fa4 with
flash-attn-4 installed). Layouts: `1gpu`; `1gpu_accum2` (gradient accumulation 2: the global batch of two GPUs),
`ddp`, `fsdp` (2 processes, batch 1 each). Checks: Liger vs not at the same (n, layout): first-step loss
and grad norm; 2-GPU layouts vs `1gpu_accum2`: every step's loss (identical examples, so the data
order cannot differ). Rows are written (atomically) after each one; `--resume` keeps the rows of an
earlier invocation (state: OUT.json beside --out), so a plan longer than one 10-minute device call is
split by `--sizes` / `--variants` / `--layouts` over several.

    python benchmarks/sft_speed.py [--sizes 32768,131072] [--variants swaa,swaa_liger] [--resume]
    python benchmarks/sft_speed.py --layouts 1gpu_accum2,ddp,fsdp --variants swaa_liger   # 2 GPUs
    python benchmarks/sft_speed.py --tiny          # CPU smoke run of the same code, well under a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_common import compile_cache_env, given_options, with_tiny_defaults  # noqa: E402

from swaa_patch.jobs.io import atomic_write_json, atomic_write_text  # noqa: E402

from shapes import QWEN3_4B  # noqa: E402  (benchmarks/shapes.py: this folder is on sys.path)

log = logging.getLogger("sft_speed")

TINY = dict(QWEN3_4B, vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)  # fmt: skip
VARIANTS = ("stock", "stock_liger", "swaa", "swaa_liger", "swaa_triton", "swaa_triton_liger", "swaa_cudnn",
            "swaa_cudnn_liger", "swaa_fa4", "swaa_fa4_liger")  # fmt: skip
# a variant marker -> the fused-training kernel its rows must have run (SWAA_FUSED_TRAIN falls back without it)
SERVED_BY = {"_cudnn": "cudnn", "_fa4": "fa4"}
LAYOUTS = ("1gpu", "1gpu_accum2", "ddp", "fsdp")
LABELS = {"stock": "stock (sdpa, full attention)", "stock_liger": "stock + Liger",
          "swaa": "SWAA W={W} k={k} ({attn})", "swaa_liger": "SWAA W={W} k={k} ({attn}) + Liger",
          "swaa_triton": "SWAA W={W} k={k} (Triton fwd+bwd)",
          "swaa_triton_liger": "SWAA W={W} k={k} (Triton fwd+bwd) + Liger",
          "swaa_cudnn": "SWAA W={W} k={k} (cuDNN window fwd+bwd + Triton sinks)",
          "swaa_cudnn_liger": "SWAA W={W} k={k} (cuDNN window fwd+bwd + Triton sinks) + Liger",
          "swaa_fa4": "SWAA W={W} k={k} (FA4 block-sparse fwd+bwd)",
          "swaa_fa4_liger": "SWAA W={W} k={k} (FA4 block-sparse fwd+bwd) + Liger"}  # fmt: skip
# layout -> (processes, gradient accumulation, accelerate config or None)
LAYOUT_SETUP = {"1gpu": (1, 1, None), "1gpu_accum2": (1, 2, None), "ddp": (2, 1, "sft/accelerate_ddp.yaml"),
                "fsdp": (2, 1, "sft/accelerate_fsdp.yaml")}  # fmt: skip
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LOSS_RTOL = 1e-2  # bf16: Liger's kernels and PyTorch's ops, or 1 vs 2 GPUs, differ by rounding only
GRAD_NORM_RTOL = 5e-2
# For the time plan only (H200, issue 17's measurements of `swaa sft`, transformers 5.17, torch 2.11):
# stock s/step = a (n/32K) + b (n/32K)^2 through 6,185 tok/s at 32K and 2,482 at 128K; SWAA ~9,300 tok/s;
# Liger +30 % (a plain peft loop measured 12,226-12,371 tok/s); a row's process start and model load,
# and the flex compile of a fresh process.
PLAN = {"stock_a": 2.667, "stock_b": 2.633, "swaa_tps": 9300.0, "liger_gain": 1.3, "start_s": 25.0,
        "compile_s": 35.0, "build_s": 60.0}  # fmt: skip


@dataclass
class SFTSpeedArgs:
    sizes: tuple[int, ...] = (32768, 65536, 131072, 262144)
    variants: tuple[str, ...] = ("stock", "swaa", "swaa_liger")
    layouts: tuple[str, ...] = ("1gpu",)
    window: int = 2048
    keep_first: int = 100
    steps: int = 2  # the first step (compiles) + timed steps (one: the device-time budget; --steps 3 for two)
    stock_max_steps_above: int = 131072  # stock rows longer than this run the first step only (~3 min at 256K)
    answer: str = "The pass key is 7341."  # the trained answer (a few tokens)
    budget_s: float = 540.0  # warn when the plan exceeds this (a 10-minute device call, start-up left over)
    work_dir: str = ".sft_speed"  # the model folder, the data and each row's output (kept for --resume)
    out: str = "benchmarks/results/sft_speed.md"
    resume: bool = False
    tiny: bool = False
    warm_caches: bool = False  # share Triton / inductor caches between rows (first step: not a fresh machine's)
    checkpoint_every: tuple[int, ...] = (1,)  # training.checkpoint_every_n_layers of the rows (one row each)
    given: tuple[str, ...] = ()  # options the command line named (bench_common.given_options)


TINY_DEFAULTS = dict(sizes=(96,), window=16, keep_first=4, steps=2, stock_max_steps_above=10**9)  # fmt: skip
CPU_SKIP = ("skipped: Liger's kernels run on a GPU (tests/test_liger.py runs them on Triton's CPU interpreter)")
FUSED_SKIP = ("skipped: cuDNN's sliding window and FA4 run on a Hopper GPU (tests/test_triton_swa_train.py stands them in "
              "on the CPU)")


@dataclass
class Row:
    n: int
    variant: str
    layout: str
    tokens: int = 0  # tokens per step and process
    steps: int = 0
    first_s: float = math.nan
    start_s: float = math.nan  # the first step's end, counted from the process's start
    step_s: float = math.nan
    tokens_per_s: float = math.nan
    mfu: float = math.nan
    peak_gib: float = math.nan
    losses: list[float] = dataclasses.field(default_factory=list)
    grad_norm: float = math.nan  # first step's
    check: str = "-"
    ok: bool = True
    note: str = ""
    run: int = 1
    checkpoint_every: int = 1  # training.checkpoint_every_n_layers (1: every layer recomputes its forward)

    @property
    def key(self) -> tuple[int, str, str, int]:
        return self.n, self.variant, self.layout, self.checkpoint_every

    @property
    def name(self) -> str:
        """The row's file names under the work folder."""
        every = f"-ckpt{self.checkpoint_every}" if self.checkpoint_every > 1 else ""
        return f"{self.n}-{self.variant}-{self.layout}{every}"


# -- the model folder and the data ------------------------------------------------------------------
def build_model_folder(args: SFTSpeedArgs, shape: dict, work: Path) -> Path:
    """The model shape with random weights (bf16 on GPU) and the built-in tokenizer, reused when present."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    from swaa_patch.jobs.builtin_models import resolve_builtin_model

    folder = work / ("model-tiny" if args.tiny else "model-qwen3-4b-shape")
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(resolve_builtin_model("builtin:tiny-random-qwen3", work / "builtin"))
    device = "cpu" if args.tiny else "cuda"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**shape, eos_token_id=tokenizer.eos_token_id,
                                                             pad_token_id=tokenizer.pad_token_id),
                                                 dtype=torch.float32 if args.tiny else torch.bfloat16)
    staging = folder.with_name(folder.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, folder)
    del model
    log.info("built %s in %.0f s", folder, time.perf_counter() - start)
    return folder


def prompt_of_length(tokenizer, total: int, answer: str) -> tuple[str, int]:
    """A prompt whose example (chat template, prompt + answer turn) is ``total`` tokens, or a few more."""
    from swaa_patch.training.data import encode_example

    unit = "The grass is green and the sky is blue. "
    per_unit = len(tokenizer(unit * 64, add_special_tokens=False)["input_ids"]) / 64
    overhead = len(encode_example(tokenizer, "", answer, True).input_ids)
    units = max(1, int((total - overhead) / per_unit))
    for _ in range(6):
        prompt = unit * units
        length = len(encode_example(tokenizer, prompt, answer, True).input_ids)
        if 0 <= total - length < per_unit:
            break
        units += int((total - length) / per_unit) or (1 if length < total else -1)
    return prompt, length


def write_data(args: SFTSpeedArgs, model_dir: Path, work: Path, n: int, rows: int) -> tuple[Path, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt, length = prompt_of_length(tokenizer, n, args.answer)
    path = work / f"data-{n}.jsonl"
    line = json.dumps({"prompt": prompt, "response": args.answer}) + "\n"
    atomic_write_text(path, line * rows)  # identical rows: 1 and 2 GPUs see the same examples
    return path, length


# -- one row trained in the calling process (sft_profile.py, sft_first_step.py) ----------------------------
TINY_VARIANT_ERROR = ("--tiny: Liger's kernels, cuDNN's window and FA4 need a GPU; pick a variant without _liger, "
                      "_cudnn or _fa4")


def add_in_process_options(p: argparse.ArgumentParser, variant: str) -> None:
    """The row's options: --n, --variant (default ``variant``), --work-dir and --tiny."""
    p.add_argument("--n", type=int, default=32768, help="tokens per example")
    p.add_argument("--variant", default=variant, choices=VARIANTS)
    p.add_argument("--work-dir", default=".sft_speed", help="sft_speed.py's work folder (its model folder is reused)")
    p.add_argument("--tiny", action="store_true", help="the tiny model on the CPU")


def tiny_blocker(tiny: bool, variant: str) -> str | None:
    """Why ``--tiny`` (the CPU) cannot run ``variant``, or None."""
    return TINY_VARIANT_ERROR if tiny and (variant.endswith("_liger") or served_by(variant)) else None


def in_process_args(tiny: bool, work_dir: str, n: int, steps: int) -> SFTSpeedArgs:
    """This script's arguments for one n-token row (its tiny defaults on the CPU)."""
    speed = SFTSpeedArgs(tiny=tiny, work_dir=work_dir)
    if tiny:
        speed = with_tiny_defaults(speed, TINY_DEFAULTS)
    return dataclasses.replace(speed, sizes=(n,), steps=steps)


def in_process_row(speed: SFTSpeedArgs, n: int, variant: str, steps: int, data_rows: int, prefix: str,
                   checkpoint_every: int = 1) -> tuple[Row, Any]:  # fmt: skip
    """A row's model folder (built when absent), data (``data_rows`` identical examples of n tokens) and
    parsed `swaa sft` settings, the output under ``runs/PREFIX-ROW``: (row, settings)."""
    from swaa_patch.training.settings import parse_sft

    work = Path(speed.work_dir).resolve()
    (work / "runs").mkdir(parents=True, exist_ok=True)
    model_dir = build_model_folder(speed, TINY if speed.tiny else QWEN3_4B, work)
    data, tokens = write_data(speed, model_dir, work, n, data_rows)
    row = Row(n, variant, "1gpu", tokens=tokens, steps=steps, checkpoint_every=checkpoint_every)
    return row, parse_sft(row_settings(speed, row, model_dir, data, work / "runs" / f"{prefix}-{row.name}"))


# -- one row ----------------------------------------------------------------------------------------
def steps_of(args: SFTSpeedArgs, n: int, variant: str) -> int:
    return 1 if variant.startswith("stock") and n > args.stock_max_steps_above else args.steps


def row_settings(args: SFTSpeedArgs, row: Row, model_dir: Path, data: Path, out: Path) -> dict:
    processes, accumulation, config = LAYOUT_SETUP[row.layout]
    swaa = None if row.variant.startswith("stock") else {"sliding_window_size": args.window,
                                                          "keep_first": args.keep_first, "force_fa_decode": True}
    attn = "sdpa" if swaa is None or args.tiny else "flex_attention"  # flex has no CPU backward
    return {
        "model": str(model_dir), "swaa_config": swaa, "datasets": [str(data)], "output_dir": str(out),
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LORA_TARGETS},
        "data": {"max_length": row.tokens + 16, "min_length": 1, "packing": False, "chat_template": True},
        "training": {"learning_rate": 1e-4, "max_steps": row.steps, "per_device_train_batch_size": 1,
                     "gradient_accumulation_steps": accumulation, "warmup_ratio": 0.0,
                     "lr_scheduler_type": "constant", "logging_steps": 1, "save_steps": 10**6,
                     "gradient_checkpointing": row.layout != "fsdp",  # FSDP checkpoints activations itself
                     "checkpoint_every_n_layers": row.checkpoint_every,
                     "liger": "on" if row.variant.endswith("_liger") else "off"},
        "attn_implementation": attn, "dtype": "auto", "resume": False, "merge": False,
    }


def command_of(row: Row, settings_path: Path) -> list[str]:
    processes, _, config = LAYOUT_SETUP[row.layout]
    cli = ["-m", "swaa_patch.cli", "sft", str(settings_path), "--force"]
    if config is None:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config),
            "--num_processes", str(processes), *cli]


def served_by(variant: str) -> str | None:
    """The fused-training kernel a ``_cudnn`` / ``_fa4`` variant stands for, else None."""
    return next((kernel for marker, kernel in SERVED_BY.items() if marker in variant), None)


def fused_train_mode(args: SFTSpeedArgs, row: Row) -> str:
    """The row's SWAA_FUSED_TRAIN: its sliding layers' training calls on backends/triton_swa_train.py's
    Triton kernels for a ``_triton`` variant, on cuDNN's band + the Triton sinks for a ``_cudnn`` one
    (``auto``), on FA4 for a ``_fa4`` one (``fa4``; read_metrics fails either row if its kernel served
    no call), else the backend's own kernel (flex for SWAA rows) whatever the default."""
    kernel = served_by(row.variant)
    if kernel is not None:
        return "fa4" if kernel == "fa4" else "auto"
    if "_triton" not in row.variant:
        return "off"
    return "force" if args.tiny else "triton"


def kernel_missing(variant: str, calls: dict) -> str | None:
    """Why a ``_cudnn`` / ``_fa4`` row's numbers are not its kernel's, or None: SWAA_FUSED_TRAIN falls
    back to the Triton kernels without cudnn-frontend / flash-attn-4 or off Hopper, so ``calls`` (the
    attention calls by path) must count the kernel."""
    kernel = served_by(variant)
    if kernel is not None and not calls.get(kernel):
        return f"{kernel} served no attention call (its package missing or not Hopper): {calls}"
    return None


def run_row(args: SFTSpeedArgs, row: Row, model_dir: Path, data: Path, work: Path) -> Row:
    out = work / "runs" / row.name
    settings_path = work / "runs" / f"{row.name}.json"
    atomic_write_json(settings_path, row_settings(args, row, model_dir, data, out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if not args.warm_caches:  # compile caches as empty as a fresh machine's
        caches = work / "runs" / f"{row.name}-caches"
        shutil.rmtree(caches, ignore_errors=True)
        env.update(compile_cache_env(caches))
    env["SWAA_FUSED_TRAIN"] = fused_train_mode(args, row)
    if args.tiny and "_triton" in row.variant:
        env["TRITON_INTERPRET"] = "1"  # the kernels on Triton's CPU interpreter
    start = time.perf_counter()
    done = subprocess.run(command_of(row, settings_path), cwd=work, env=env, capture_output=True, text=True)
    (work / "runs" / f"{row.name}.log").write_text(done.stdout + done.stderr)
    log.info("%s: exit %d after %.0f s", row.name, done.returncode, time.perf_counter() - start)
    if done.returncode != 0:
        text = done.stdout + done.stderr
        row.ok = False
        if "OutOfMemoryError" in text or "CUDA out of memory" in text:
            row.ok, row.note = True, "does not fit: out of memory"
        else:
            tail = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
            row.note = f"ERROR exit {done.returncode}: {tail[0][:160]}"
        return row
    return read_metrics(row, out)


def read_metrics(row: Row, out: Path) -> Row:
    """s/step, tokens/s, MFU, peak and losses from the run's log history (one entry per step)."""
    saved = json.loads((out / "train_metrics.json").read_text())
    steps = [h for h in saved["log_history"] if "loss" in h and "tokens_per_s" in h]
    processes = saved["metrics"].get("num_processes", 1)
    accumulation = LAYOUT_SETUP[row.layout][1]
    tokens_per_step = row.tokens * processes * accumulation
    seconds = [tokens_per_step / h["tokens_per_s"] for h in steps]
    row.losses = [h["loss"] for h in steps]
    row.grad_norm = steps[0].get("grad_norm", math.nan) if steps else math.nan
    row.first_s = seconds[0] if seconds else math.nan
    row.start_s = steps[0].get("since_process_start_s", math.nan) if steps else math.nan
    timed = steps[1:] or steps  # a one-step row reports its first step
    if timed:
        row.step_s = sorted(seconds[1:] or seconds)[len(seconds[1:] or seconds) // 2]
        row.tokens_per_s = tokens_per_step / row.step_s
        mfus = [h["mfu"] for h in timed if "mfu" in h]
        row.mfu = sorted(mfus)[len(mfus) // 2] if mfus else math.nan
    row.peak_gib = max((h.get("peak_gib", math.nan) for h in steps), default=math.nan)
    if len(steps) < row.steps:
        row.ok, row.note = False, f"{len(steps)} of {row.steps} steps logged"
    missing = kernel_missing(row.variant, saved["metrics"].get("fused_train_calls", {}))
    if missing:
        row.ok, row.note = False, missing
    if not all(math.isfinite(x) for x in row.losses):
        row.ok, row.note = False, "non-finite loss"
    if row.steps == 1:
        row.note = "first step only (its s/step includes start-up)"
    return row


# -- checks -----------------------------------------------------------------------------------------
def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def cross_check(rows: list[Row]) -> None:
    """Liger vs not (first-step loss, grad norm), the Triton kernel vs the backend's, checkpointing 1 in
    k layers vs every layer, and 2 GPUs vs 1 GPU at the same global batch (losses). Rewrites every row's
    check (called after each new row)."""
    by_key = {r.key: r for r in rows if r.losses}
    for row in rows:
        if not row.losses:
            continue
        texts = []
        bases = [(row.variant.replace(marker, ""), row.checkpoint_every, what)
                 for marker, what in (("_liger", "no Liger"),
                                      *((m, "the backend's kernel") for m in ("_triton", *SERVED_BY)))
                 if marker in row.variant]  # fmt: skip
        if row.checkpoint_every > 1:
            bases.append((row.variant, 1, "checkpointing every layer"))
        for variant, every, what in bases:
            base = by_key.get((row.n, variant, row.layout, every))
            if base is not None:
                e_loss, e_grad = rel(row.losses[0], base.losses[0]), rel(row.grad_norm, base.grad_norm)
                texts.append(f"vs {what}: loss {e_loss:.1e}, grad norm {e_grad:.1e}")
                row.ok &= e_loss < LOSS_RTOL and e_grad < GRAD_NORM_RTOL
        if row.layout in ("ddp", "fsdp"):
            base = by_key.get((row.n, row.variant, "1gpu_accum2", row.checkpoint_every))
            if base is not None:
                common = min(len(row.losses), len(base.losses))
                worst = max(rel(a, b) for a, b in zip(row.losses[:common], base.losses[:common]))
                texts.append(f"vs 1 GPU (accumulation 2): losses {worst:.1e} over {common} steps")
                row.ok &= worst < LOSS_RTOL
        row.check = "; ".join(texts) or "-"


# -- plan, report, state ----------------------------------------------------------------------------
def estimate_s(args: SFTSpeedArgs, row: Row) -> float:
    if args.tiny:
        return 8.0
    x = row.n / 32768
    step = PLAN["stock_a"] * x + PLAN["stock_b"] * x * x if row.variant.startswith("stock") else row.n / PLAN["swaa_tps"]
    if row.variant.endswith("_liger"):
        step /= PLAN["liger_gain"]
    step *= LAYOUT_SETUP[row.layout][1]
    fused = "_triton" in row.variant or served_by(row.variant) is not None  # no flex compile
    compile_s = 0.0 if row.variant.startswith("stock") or fused else PLAN["compile_s"]
    return PLAN["start_s"] + compile_s + steps_of(args, row.n, row.variant) * step


def plan(args: SFTSpeedArgs, todo: list[Row], model_ready: bool) -> float:
    total = (0.0 if model_ready or args.tiny else PLAN["build_s"]) + sum(estimate_s(args, r) for r in todo)
    for row in todo:
        log.info("plan: n=%d %s %s: %d steps, ~%.0f s", row.n, row.variant, row.layout, row.steps, estimate_s(args, row))
    log.info("plan: %d rows, ~%.0f s (~%.1f min) in all", len(todo), total, total / 60)
    if total > args.budget_s:
        log.warning("plan: ~%.0f s exceeds the %.0f s budget of one device call: split it with --sizes / "
                    "--variants / --layouts and --resume (see benchmarks/README.md)", total, args.budget_s)
    return total


def fmt(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)


def row_label(args: SFTSpeedArgs, row: Row) -> str:
    attn = "sdpa" if args.tiny else "flex"
    label = LABELS[row.variant].format(W=args.window, k=args.keep_first, attn=attn)
    if row.checkpoint_every > 1:
        label += f", checkpointing 1 in {row.checkpoint_every} layers"
    return label


def format_row(args: SFTSpeedArgs, row: Row, rows: list[Row]) -> str:
    stocks = [r for r in rows if r.n == row.n and r.variant == "stock" and r.layout == row.layout
              and r.checkpoint_every == row.checkpoint_every]  # fmt: skip
    # the same run's stock row where there is one (measured beside this row), else the latest
    stock = max(stocks, key=lambda r: (r.run == row.run, r.run), default=None)
    ratio = "-"
    if stock is not None and row.tokens_per_s == row.tokens_per_s and stock.tokens_per_s == stock.tokens_per_s:
        ratio = f"{row.tokens_per_s / stock.tokens_per_s:.2f}x"
    label = row_label(args, row)
    verdict = ("ok" if row.ok else "FAIL") + (f" ({row.note})" if row.note else "")
    if row.note.startswith("skipped"):
        verdict = row.note
    mfu = "-" if row.mfu != row.mfu else f"{100 * row.mfu:.1f} %"
    first = fmt(row.first_s, ".1f") + ("" if row.start_s != row.start_s else f" ({row.start_s:.1f})")
    return (f"| {row.run} | {row.n} | {label} | {row.layout} | {row.tokens} | {row.steps} | {first} | "
            f"{fmt(row.step_s, '.2f')} | {fmt(row.tokens_per_s, ',.0f')} | {ratio} | {mfu} | {fmt(row.peak_gib, '.1f')} | "
            f"{' / '.join(f'{x:.4f}' for x in row.losses) or '-'} | {row.check} | {verdict} |")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    for name in ("trl", "peft", "accelerate", "liger-kernel", "triton"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts) + f", python {platform.python_version()}"


def device_name(args: SFTSpeedArgs) -> str:
    if args.tiny or not torch.cuda.is_available():
        return f"CPU ({os.cpu_count()} cores)"
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"


def report(args: SFTSpeedArgs, shape: dict, rows: list[Row], invocations: int) -> str:
    lines = [
        "# `swaa sft` speed: stock vs SWAA, with and without Liger, one and two GPUs",
        "",
        f"- date: {datetime.date.today()}; device: {device_name(args)}; rows from {invocations} invocation(s) "
        "(column run; --resume carries rows over)",
        f"- {versions()}",
        f"- model: Qwen3 {'tiny' if args.tiny else '4B'} shape ({shape['num_hidden_layers']} layers, hidden "
        f"{shape['hidden_size']}, {shape['num_attention_heads']} q / {shape['num_key_value_heads']} kv heads, head_dim "
        f"{shape['head_dim']}, MLP {shape['intermediate_size']}, vocab {shape['vocab_size']}), random weights saved as a "
        f"model folder, {'float32' if args.tiny else 'bf16'}",
        "- each row: `swaa sft` in a fresh process (2-GPU layouts under `accelerate launch` with sft/accelerate_ddp.yaml "
        "or accelerate_fsdp.yaml); one example of n tokens per step and process (prompt + a short answer, loss on the "
        "answer), batch 1, no packing; LoRA r 16 alpha 32 dropout 0 on q/k/v/o/gate/up/down; gradient checkpointing "
        "(FSDP: its own); constant lr 1e-4",
        "- first step s: train() start to the first step's log (compiles included; in brackets, where recorded: "
        "from the process's start, imports, data and model load included; compile caches: "
        f"{'shared between rows' if args.warm_caches else 'empty for every row, as on a fresh machine'}); s/step: median of the later steps; "
        "tok/s = tokens of all processes per step / s/step; MFU as `swaa sft` logs it (attention counted with "
        "min(p+1, W) keys plus sinks on sliding layers); peak GiB: largest per-GPU max allocated; ratio: tok/s / "
        "stock's at the same n and layout (the same run's stock row where there is one, else the latest)",
        f"- checks: Liger vs the same row without it (first-step loss < {LOSS_RTOL}, grad norm < {GRAD_NORM_RTOL} "
        f"relative); Triton fwd+bwd vs the same row on the backend's kernel (same tolerances); ddp / fsdp vs 1gpu_accum2 (same global batch, identical examples): every step's loss < {LOSS_RTOL}",
        "",
        "| run | n | variant | layout | tokens/step | steps | first step s (from start) | s/step | tok/s | ratio | MFU | peak GiB | "
        "losses | check | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {k: i for i, k in enumerate(VARIANTS)}
    ordered = sorted(rows, key=lambda r: (r.n, LAYOUTS.index(r.layout), order[r.variant], r.checkpoint_every))
    return "\n".join(lines + [format_row(args, r, rows) for r in ordered]) + "\n"


def state_path(args: SFTSpeedArgs) -> Path:
    return Path(os.path.splitext(args.out)[0] + ".json")


def load_state(args: SFTSpeedArgs) -> tuple[list[Row], int]:
    if not args.resume or not state_path(args).is_file():
        return [], 0
    state = json.loads(state_path(args).read_text())
    return [Row(**r) for r in state["rows"]], state["invocations"]


def save(args: SFTSpeedArgs, shape: dict, rows: list[Row], invocations: int) -> None:
    atomic_write_json(state_path(args), {"rows": [dataclasses.asdict(r) for r in rows], "invocations": invocations})
    atomic_write_text(args.out, report(args, shape, rows, invocations))


def wanted_rows(args: SFTSpeedArgs) -> list[Row]:
    if "fsdp" in args.layouts and max(args.checkpoint_every) > 1:
        log.info("fsdp rows: checkpointing every layer only (FSDP checkpoints with its own wrapper); "
                 "--checkpoint-every values above 1 plan no fsdp row")
    return [Row(n, variant, layout, steps=steps_of(args, n, variant), checkpoint_every=every)
            for n in args.sizes for layout in args.layouts for variant in args.variants for every in args.checkpoint_every
            if every == 1 or layout != "fsdp"]  # FSDP checkpoints with its own wrapper, every layer


def main(args: SFTSpeedArgs) -> int:
    if args.tiny:
        args = with_tiny_defaults(args, TINY_DEFAULTS)
        shape = TINY
    else:
        if not torch.cuda.is_available():
            raise SystemExit("sft_speed.py needs a CUDA device (or --tiny)")
        shape = QWEN3_4B
    bad = (set(args.variants) - set(VARIANTS)) | (set(args.layouts) - set(LAYOUTS))
    if bad:
        raise SystemExit(f"unknown variants / layouts {sorted(bad)}; choose from {VARIANTS} / {LAYOUTS}")
    gpus_needed = max(LAYOUT_SETUP[layout][0] for layout in args.layouts)
    if not args.tiny and torch.cuda.device_count() < gpus_needed:
        raise SystemExit(f"--layouts {','.join(args.layouts)} needs {gpus_needed} GPUs, found {torch.cuda.device_count()}")
    work = Path(args.work_dir).resolve()
    (work / "runs").mkdir(parents=True, exist_ok=True)
    rows, invocations = load_state(args)
    invocations += 1
    done = {r.key for r in rows}
    todo = [r for r in wanted_rows(args) if r.key not in done]
    for row in todo:
        row.run = invocations
    model_ready = (work / ("model-tiny" if args.tiny else "model-qwen3-4b-shape") / "config.json").is_file()
    plan(args, todo, model_ready)
    model_dir = build_model_folder(args, shape, work)
    data: dict[int, tuple[Path, int]] = {}
    examples = max(args.steps, 1) * 2  # enough for every layout: steps x accumulation x processes
    for row in todo:
        if row.n not in data:
            data[row.n] = write_data(args, model_dir, work, row.n, examples)
        row.tokens = data[row.n][1]
        if args.tiny and served_by(row.variant):
            row.note = FUSED_SKIP
        elif args.tiny and row.variant.endswith("_liger"):
            row.note = CPU_SKIP
        else:
            run_row(args, row, model_dir, data[row.n][0], work)
        rows.append(row)
        cross_check(rows)
        log.info("%s", format_row(args, row, rows))
        save(args, shape, rows, invocations)  # partial results survive a kill
    text = report(args, shape, rows, invocations)
    save(args, shape, rows, invocations)
    sys.stdout.write(text)
    return 0 if all(r.ok for r in rows) else 1


def parse_args(argv: list[str] | None = None) -> SFTSpeedArgs:
    d = SFTSpeedArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(map(str, d.sizes)), help="comma-separated tokens per example")
    p.add_argument("--variants", default=",".join(d.variants), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--layouts", default=",".join(d.layouts), help=f"comma-separated subset of {LAYOUTS}")
    p.add_argument("--steps", type=int, default=d.steps, help="steps per row (the first one compiles)")
    p.add_argument("--budget-s", type=float, default=d.budget_s, help="warn when the plan is longer")
    p.add_argument("--work-dir", default=d.work_dir, help="model folder, data, runs (kept between invocations)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--resume", action="store_true", help="keep the rows an earlier invocation wrote to --out's .json")
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, well under a minute")
    p.add_argument("--warm-caches", action="store_true",
                   help="share Triton / inductor compile caches between rows (default: each row starts empty)")
    p.add_argument("--checkpoint-every", default="1",
                   help="comma-separated training.checkpoint_every_n_layers values, one row each (1: every layer)")
    a = p.parse_args(argv)
    every = tuple(int(s) for s in a.checkpoint_every.split(","))
    if min(every) < 1:
        p.error(f"--checkpoint-every: each value must be an integer >= 1, got {a.checkpoint_every!r}")
    return SFTSpeedArgs(checkpoint_every=every, sizes=tuple(int(s) for s in a.sizes.split(",")), variants=tuple(a.variants.split(",")),
                        layouts=tuple(a.layouts.split(",")), steps=a.steps, budget_s=a.budget_s, work_dir=a.work_dir,
                        out=a.out, resume=a.resume, tiny=a.tiny, warm_caches=a.warm_caches,
                        given=given_options(p, argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main(parse_args()))
