"""Launch-config sweep of the Triton sink merge (``triton_swa.merge_sinks``) on the GPU, with a copy
of the output tensor as the memory-traffic baseline measured in the same run.

The merge reads q and the window-only output, adds the sinks outside each window and rewrites the
output: memory-bound, so the baseline is ``out.clone()`` (one read + one write of the output); the
merge moves ~1.5x that (q is read too). The window-only input is the Triton kernel's with no sinks;
each config's result is checked against the Triton kernel's own SWA+sink output (relative L2,
bf16) before it is timed. ``MERGE_CONFIG`` in ``swaa_patch/backends/triton_swa.py`` is chosen from
this table. Shapes are attention_speed's. Writes a markdown report to --out (atomically).
"""

from __future__ import annotations

import logging
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attention_speed import OUT_TOL, SpeedArgs, bench_ms, environment_lines, rel, sweep_args  # noqa: E402

from swaa_patch.backends.triton_swa import MERGE_CONFIG, KernelConfig, merge_sinks, swa_sink_attention  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

log = logging.getLogger("merge_tuning")
CONFIGS = ((64, 64, 4, 2), (64, 32, 4, 3), (64, 32, 4, 2), (32, 32, 4, 3), (128, 64, 4, 2), (64, 128, 4, 1))


def sweep(args: SpeedArgs, n: int) -> list[str]:
    g = torch.Generator(device="cuda").manual_seed(args.seed + n)
    q = torch.randn(1, args.heads, n, args.dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (
        torch.randn(1, args.kv_heads, n, args.dim, device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in "kv"
    )
    scaling, window, keep = args.dim**-0.5, args.window, args.keep_first
    band, band_lse = swa_sink_attention(q, k, v, window, 0, scaling)
    ref, _ = swa_sink_attention(q, k, v, window, keep, scaling)
    copy_ms = bench_ms(lambda: band.clone())
    rows = [f"| {n} | out.clone() (baseline: one read + one write of out) | {copy_ms:.3f} | 1.00x | - | ok |"]
    for config in (KernelConfig(*c) for c in CONFIGS):
        out, lse = merge_sinks(q, k, v, band.clone(), band_lse.clone(), window, keep, scaling, config=config)
        err = rel(out.double(), ref.double())
        out, lse = band.clone(), band_lse.clone()
        ms = bench_ms(lambda: merge_sinks(q, k, v, out, lse, window, keep, scaling, config=config))  # noqa: B023
        mark = " (MERGE_CONFIG)" if config == MERGE_CONFIG else ""
        text = (
            f"{config.block_m}x{config.block_n}, {config.num_warps} warps, {config.num_stages} stages{mark}"
        )
        rows.append(
            f"| {n} | {text} | {ms:.3f} | {ms / copy_ms:.2f}x | {err:.1e} | {'ok' if err < OUT_TOL else 'FAIL'} |"
        )
        log.info("%s", rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    args, _ = sweep_args(__doc__, "benchmarks/results/merge_tuning.md", argv)
    rows = [row for n in args.sizes for row in sweep(args, n)]
    text = "\n".join(
        [
            "# Triton sink merge: launch-config sweep (memory-bound; baseline = a copy of the output)",
            "",
            *environment_lines(args),
            "- time: median of triton.testing.do_bench (CUDA events, L2 flushed)",
            f"- check: merged output vs the Triton kernel's SWA+sink output, relative L2, tolerance {OUT_TOL}",
            "",
            "| n | config | ms | time / copy | rel. error | verdict |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    atomic_write_text(args.out, text + "\n")
    sys.stdout.write(text + "\n")
    return 0 if all(row.endswith("| ok |") for row in rows) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
