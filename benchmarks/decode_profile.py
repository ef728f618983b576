"""Where a compiled decode step's time goes: SWAA's StaticSWAACache vs stock HF's StaticCache at the
same cache size, back to back in one process, each timed and then traced with torch.profiler.

decode_speed.py measures tok/s across contexts; this script answers why two compiled paths of
nearly the same cache size differ. Rows alternate (SWAA, stock, SWAA, stock, ...) so clock drift
hits both alike. Per row: median wall step (a stopping-criteria clock after a device sync), GPU
kernel time per step and kernels per step (from the profiler's device events over ``--active``
steps), the gap between them (host time the GPU waits for), and the kernels that take the most
time per step. Variants of SWAA's decode attention (``--attention``) replace only the
static-decode kernel, so a faster formulation shows up as a row, checked against the default one
on teacher-forced logits in the same run.

    python benchmarks/decode_profile.py --out benchmarks/results/decode_profile.md   # CUDA only
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
import transformers
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_common import compiled_generate_kwargs, kernel_table  # noqa: E402
from decode_speed import TINY, Bench, StepClock, build_model, prepare_model, reset_compiled  # noqa: E402

from swaa_patch.backends import static_decode  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

from shapes import QWEN3_4B  # noqa: E402  (benchmarks/shapes.py: this folder is on sys.path)

log = logging.getLogger("decode_profile")
DEFAULT_ATTENTION = static_decode.static_decode_attention


# Candidates for SWAA's static-decode kernel: the shipped ones, chosen through the shipped setting
# (what a user's generate() runs), and the written-out math, which only a benchmark picks.
SHIPPED = static_decode.KERNELS
ATTENTION = (*SHIPPED, "math")


@contextmanager
def decode_kernel(name: str) -> Iterator[None]:
    if name in SHIPPED:
        with static_decode.static_decode_kernel(name):
            yield
        return
    static_decode.static_decode_attention = static_decode.grouped_math_attention
    try:
        yield
    finally:
        static_decode.static_decode_attention = DEFAULT_ATTENTION


@dataclass
class ProfileArgs:
    swaa_context: int = 8192
    stock_context: int = 2048  # stock StaticCache of context + steps slots ~ SWAA's keep_first + W (+ spare)
    steps: int = 64
    skip: int = 24  # steps before the trace (compile, CUDA-graph recording, warm-up)
    active: int = 32
    repeats: int = 1
    attention: tuple[str, ...] = ("triton", "flex")
    window: int = 2048
    keep_first: int = 100
    top: int = 12
    out: str = "benchmarks/results/decode_profile.md"
    seed: int = 0
    tiny: bool = False


class Clock(StepClock):
    """decode_speed's step clock, advancing the profiler's schedule at every step too."""

    def __init__(self, sync, prof=None) -> None:
        super().__init__(sync)
        self.prof = prof

    def __call__(self, input_ids, scores, **kwargs):
        stop = super().__call__(input_ids, scores, **kwargs)
        if self.prof is not None:
            self.prof.step()
        return stop


def generate(bench: Bench, variant: str, ids: torch.Tensor, clock: Clock) -> torch.Tensor:
    model = prepare_model(bench, "swaa" if variant != "stock" else "stock")
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=bench.args.steps, min_new_tokens=bench.args.steps,
            do_sample=False, pad_token_id=0, stopping_criteria=[clock], return_dict_in_generate=True, output_logits=True,
            **compiled_generate_kwargs(bench.device, stock=variant == "stock"),
        )  # fmt: skip
    return torch.stack(out.logits, 1)


def run_variant(bench: Bench, variant: str, logits_ref: dict) -> dict:
    args = bench.args
    context = args.stock_context if variant == "stock" else args.swaa_context
    ids = torch.randint(3, bench.shape["vocab_size"], (1, context), generator=torch.Generator().manual_seed(args.seed))
    ids = ids.to(bench.device)
    with decode_kernel(variant.removeprefix("swaa_")) if variant != "stock" else nullcontext():
        return measure(bench, variant, context, ids, logits_ref)


def measure(bench: Bench, variant: str, context: int, ids: torch.Tensor, logits_ref: dict) -> dict:
    args = bench.args
    reset_compiled(bench)
    clock = Clock(bench.sync)
    logits = generate(bench, variant, ids, clock)  # compiles, then timed steps
    durations = [b - a for a, b in zip(clock.times, clock.times[1:])][args.skip :]
    wall_ms = statistics.median(durations) * 1e3
    check = "-"
    if variant != "stock":
        first_decode = logits[:, 1].float()  # logits[:, 0] come from the prefill, not the static decode kernel
        ref = logits_ref.setdefault("ref", first_decode)
        check = f"{(first_decode - ref).abs().max().item():.1e}"
    sched = schedule(wait=args.skip, warmup=2, active=args.active, repeat=1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    with profile(activities=activities, schedule=sched) as prof:
        clock = Clock(bench.sync, prof)
        generate(bench, variant, ids, clock)
    gpu_us, kernels, top = kernel_table(prof, args.active)
    log.info("%s: wall %.3f ms, GPU %.3f ms, %d kernels", variant, wall_ms, gpu_us / 1e3, kernels)
    return dict(variant=variant, context=context, wall_ms=wall_ms, gpu_ms=gpu_us / 1e3, kernels=kernels, top=top, check=check)


def report(bench: Bench, rows: list[dict]) -> str:
    args = bench.args
    dev = torch.cuda.get_device_name(0) if bench.device.type == "cuda" else platform.processor() or "cpu"
    lines = [
        "# Decode step profile: SWAA StaticSWAACache + compile vs stock StaticCache + compile, same cache size",
        "",
        f"- date: {datetime.date.today()}; device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}",
        f"- model: Qwen3 4B shape, random bf16 weights, batch 1, greedy; SWAA W={args.window}, keep_first={args.keep_first}, "
        f"prompt {args.swaa_context} tokens ({args.keep_first + 1 + args.window} cache slots); stock: prompt {args.stock_context} "
        f"+ {args.steps} new tokens ({args.stock_context + args.steps} slots)",
        f"- per row: wall = median step of {args.steps - args.skip} timed steps; GPU = device kernel time per step over "
        f"{args.active} traced steps; host gap = wall - GPU; rows alternate, dynamo reset before each",
        "- check (SWAA rows): max |logits - the first SWAA row's| at the first decode step (bf16; later steps feed each row's own greedy tokens, which random weights' near-ties can split)",
        "- command: `python benchmarks/decode_profile.py`",
        "",
        "| # | path | wall ms | tok/s | GPU ms | host gap ms | kernels/step | check |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"| {i} | {r['variant']} | {r['wall_ms']:.3f} | {1e3 / r['wall_ms']:.1f} | {r['gpu_ms']:.3f} | "
            f"{r['wall_ms'] - r['gpu_ms']:.3f} | {r['kernels']} | {r['check']} |"
        )
    seen = set()
    for r in rows:
        if r["variant"] in seen:
            continue
        seen.add(r["variant"])
        lines += ["", f"## {r['variant']}: top kernels per step", "", "| kernel | µs/step | launches/step |", "| --- | --- | --- |"]
        lines += [f"| `{n[:90]}` | {us:.1f} | {c:.1f} |" for n, us, c in r["top"][: args.top]]
    return "\n".join(lines) + "\n"


def main(args: ProfileArgs) -> int:
    unknown = set(args.attention) - set(ATTENTION)
    if unknown:
        raise SystemExit(f"--attention: unknown {sorted(unknown)}; choose from {ATTENTION}")
    if args.tiny:  # a smoke run of the script on the CPU: dynamo only, no device events, timings meaningless
        args = replace(args, swaa_context=40, stock_context=10, steps=12, skip=4, active=4, window=8, keep_first=2)
        bench = Bench(args, torch.device("cpu"), torch.float32, TINY)
    elif torch.cuda.is_available():
        bench = Bench(args, torch.device("cuda"), torch.bfloat16, QWEN3_4B)
    else:
        raise SystemExit("decode_profile.py needs a CUDA device (or --tiny)")
    build_model(bench)
    rows, ref = [], {}
    # the default kernel, stock, then the other variants: the default and stock are adjacent in time
    order = [f"swaa_{args.attention[0]}", "stock"] + [f"swaa_{a}" for a in args.attention[1:]]
    for _ in range(args.repeats):
        for variant in order:
            rows.append(run_variant(bench, variant, ref))
            atomic_write_text(args.out, report(bench, rows))
    sys.stdout.write(report(bench, rows))
    return 0


def parse_args(argv: list[str] | None = None) -> ProfileArgs:
    d = ProfileArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attention", default=",".join(d.attention), help=f"SWAA decode-attention variants: {ATTENTION}")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks the script, not speed")
    p.add_argument("--out", default=d.out)
    a = p.parse_args(argv)
    return ProfileArgs(attention=tuple(a.attention.split(",")), repeats=a.repeats, steps=a.steps, out=a.out, tiny=a.tiny)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main(parse_args()))
