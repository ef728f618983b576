"""Launch-parameter sweep of the Triton SWA+sink forward kernel on the GPU: pointer loads vs TMA
descriptors, plain vs warp-specialised interior loops (``KernelConfig.warp_spec``), over block
sizes / warps / pipeline stages, against
full causal SDPA measured in the same run. Every variant is checked against the float64
reference of ``attention_speed.py`` (same inputs, same sampled rows) before it is timed.

Its table is what ``AUTOTUNE_CONFIGS`` in ``swaa_patch/backends/triton_swa.py`` is chosen from.
Shapes are attention_speed's (B=1, 32 q / 8 kv heads, head_dim 128, bf16, W=2048, keep_first=100).
A variant that does not compile or does not fit in shared memory is an ERROR row, not a crash.
Writes a markdown report to --out (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attention_speed import (  # noqa: E402
    LSE_TOL,
    OUT_TOL,
    Case,
    SpeedArgs,
    bench_ms,
    environment_lines,
    fwd_flops,
    rel,
    sweep_args,
)

from swaa_patch.backends.triton_swa import KernelConfig, swa_sink_attention  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

log = logging.getLogger("triton_tuning")

# Block shapes (BLOCK_M, BLOCK_N, warps, stages): the current autotune candidates and neighbours.
BLOCKS = (
    (128, 64, 8, 3),
    (128, 64, 8, 4),
    (128, 64, 8, 2),
    (128, 128, 8, 2),
    (128, 128, 8, 3),
    (64, 64, 4, 3),
    (64, 128, 4, 3),
)
# Interior-loop kinds: plain, Triton's warp specialisation (TMA only). (A hand-pipelined loop and a
# lazy rescale were swept too and removed: results/triton_tuning.md, third table.)
LOOPS = {"plain": {}, "warp_spec": {"warp_spec": True}}
VARIANTS: tuple[tuple[str, str, KernelConfig], ...] = tuple(
    (loads, loop, KernelConfig(*b, **LOOPS[loop]))
    for loads in ("pointer", "tma")
    for loop in LOOPS
    for b in BLOCKS
    if not (loads == "pointer" and loop == "warp_spec")
)


@dataclass
class Row:
    n: int
    loads: str
    config: KernelConfig | None
    ms: float
    tflops: float
    errors: str
    ok: bool
    note: str = ""


def sdpa_row(case: Case) -> Row:
    ref_out, _, _ = case.reference(None, backward=False)
    err = rel(case.sdpa(case.q, case.k, case.v)[0][:, case.rows], ref_out)
    ms = bench_ms(lambda: case.sdpa(case.q, case.k, case.v))
    flops = fwd_flops(case.args, case.n, None)
    return Row(case.n, "sdpa full causal", None, ms, flops / ms / 1e9, f"out {err:.1e}", err < OUT_TOL)


def variant_row(case: Case, loads: str, config: KernelConfig) -> Row:
    args = case.args

    def call():
        return swa_sink_attention(
            case.q,
            case.k,
            case.v,
            args.window,
            args.keep_first,
            case.scaling,
            config=config,
            tma=loads == "tma",
        )

    try:
        out, lse = call()
        ref_out, ref_lse, _ = case.reference(args.window, backward=False)
        err_out, err_lse = rel(out[0][:, case.rows], ref_out), rel(lse[0][:, case.rows], ref_lse)
        del out, lse
        ms = bench_ms(call)
    except Exception as err:  # a variant that does not compile or fit: reported, the sweep goes on
        log.exception("n=%d %s %s failed", case.n, loads, config)
        return Row(case.n, loads, config, math.nan, math.nan, "-", False, f"ERROR {type(err).__name__}")
    ok = err_out < OUT_TOL and err_lse < LSE_TOL
    flops = fwd_flops(args, case.n, args.window)
    return Row(case.n, loads, config, ms, flops / ms / 1e9, f"out {err_out:.1e}, lse {err_lse:.1e}", ok)


def config_text(config: KernelConfig | None) -> str:
    if config is None:
        return "-"
    text = f"{config.block_m}x{config.block_n}, {config.num_warps} warps, {config.num_stages} stages"
    return text + (", warp-specialised" if config.warp_spec else "")


def format_row(row: Row, rows: list[Row]) -> str:
    base = next(r for r in rows if r.n == row.n and r.config is None)
    speedup = f"{base.ms / row.ms:.2f}x" if row.ms == row.ms else "-"
    cfg = config_text(row.config)
    ms = f"{row.ms:.3f}" if row.ms == row.ms else "-"
    tflops = f"{row.tflops:.0f}" if row.tflops == row.tflops else "-"
    verdict = ("ok" if row.ok else "FAIL") + (f" ({row.note})" if row.note else "")
    return f"| {row.n} | {row.loads} | {cfg} | {ms} | {tflops} | {speedup} | {row.errors} | {verdict} |"


def report(args: SpeedArgs, rows: list[Row]) -> str:
    best = {}
    for row in rows:
        if row.config is not None and row.ok and (row.n not in best or row.ms < best[row.n].ms):
            best[row.n] = row
    lines = [
        "# Triton SWA+sink kernel: launch-parameter sweep (pointer loads vs TMA; plain and warp-specialised "
        "interior loops)",
        "",
        *environment_lines(args),
        "- baseline: SDPA full causal forward, same run",
        "- time: median of triton.testing.do_bench (CUDA events, L2 flushed); TFLOP/s counts visible work "
        "(SWA+sink 4*n*(W+k)*d*h, full causal 2*n^2*d*h)",
        f"- correctness: {args.rows} random query rows vs float64, relative L2; tolerances out {OUT_TOL}, "
        f"lse {LSE_TOL}",
        "- fastest correct variant: "
        + "; ".join(f"n={n}: {r.loads}, {config_text(r.config)}: {r.ms:.3f} ms" for n, r in best.items()),
        "",
        "| n | loads | BLOCK_M x BLOCK_N, warps, stages | ms | TFLOP/s | speedup vs SDPA | rel. error | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(lines + [format_row(r, rows) for r in rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    def own_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--loads", default="pointer,tma", help="comma-separated subset of pointer,tma")
        p.add_argument("--loops", default=",".join(LOOPS), help=f"comma-separated subset of {','.join(LOOPS)}")

    args, a = sweep_args(__doc__, "benchmarks/results/triton_tuning.md", argv, own_options)
    rows: list[Row] = []
    for n in args.sizes:
        case = Case(args, n)
        rows.append(sdpa_row(case))
        log.info("%s", format_row(rows[-1], rows))
        wanted = [
            (lo, c) for lo, kind, c in VARIANTS if lo in a.loads.split(",") and kind in a.loops.split(",")
        ]
        for loads, config in wanted:
            rows.append(variant_row(case, loads, config))
            log.info("%s", format_row(rows[-1], rows))
            atomic_write_text(args.out, report(args, rows))
        del case
        torch.cuda.empty_cache()
    text = report(args, rows)
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if all(r.ok for r in rows if r.config is None) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
