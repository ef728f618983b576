"""Launch-parameter sweep of the Triton SWA+sink *backward* (``SWAA_FUSED_TRAIN``) on the GPU.

The backward is three kernels (dQ, dK/dV over the band, the sink tail) with tiles of their own
(``BackwardConfig``). The sweep varies one kernel's launch at a time, the other two held at the
shipped ``GPU_CONFIG``, then times the combination of each kernel's fastest correct launch. Every
variant's dq, dk and dv are checked against attention_speed.py's float64 references (sampled query
rows for dq; sampled key rows, sinks among them, for dk/dv) before it is timed; the forward (Triton,
its lse kept) and full causal SDPA's backward (the baseline: fwd+bwd minus fwd, same run) are timed
alongside. Its table is what ``GPU_CONFIG`` in ``swaa_patch/backends/triton_swa_train.py`` is chosen
from. A launch that does not compile or fit is an ERROR row, not a crash. Writes markdown to --out
(atomically) and prints it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attention_speed import DQ_TOL, Case, SpeedArgs, bench_ms, environment_lines, fwd_flops, rel, sweep_args  # noqa: E402

from swaa_patch.backends.triton_swa import swa_sink_attention  # noqa: E402
from swaa_patch.backends.triton_swa_train import (  # noqa: E402
    GPU_CONFIG,
    BackwardConfig,
    Launch,
    swa_sink_attention_backward,
)
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

log = logging.getLogger("train_kernel_tuning")

# (block_m, block_n, warps, stages) per kernel: the shipped launch, FlashAttention-2's Triton tutorial
# shapes (dK/dV 32 x 128, dQ 128 x 32) and neighbours
SWEEP: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "dkdv": (
        (64, 64, 4, 3),
        (64, 64, 8, 3),
        (32, 64, 4, 3),
        (32, 128, 4, 3),
        (32, 128, 4, 4),
        (32, 128, 8, 3),
        (64, 128, 8, 2),
        (64, 128, 8, 3),
        (16, 128, 4, 4),
    ),
    "dq": (
        (64, 64, 4, 3),
        (64, 32, 4, 3),
        (128, 32, 4, 3),
        (128, 32, 8, 3),
        (128, 64, 8, 2),
        (128, 64, 8, 3),
        (128, 128, 8, 2),
    ),
    # block_n: sink rows per program
    "tail": ((64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 8, 2), (32, 128, 4, 3), (128, 128, 8, 2)),
}


@dataclass
class Row:
    n: int
    kernel: str  # which kernel's launch differs from GPU_CONFIG ("-" for the shipped one, "best" combined)
    config: BackwardConfig | None
    ms: float
    errors: str
    ok: bool
    note: str = ""


def variants(sweep: dict[str, tuple] = SWEEP) -> list[tuple[str, BackwardConfig]]:
    """``("shipped", GPU_CONFIG)``, then ``(field, GPU_CONFIG with that field replaced)`` for each value
    of each ``sweep`` field (a tuple value is a Launch's (block_m, block_n, warps, stages))."""
    out = [("shipped", GPU_CONFIG)]
    for field, values in sweep.items():
        for value in values:
            config = dataclasses.replace(GPU_CONFIG, **{field: Launch(*value) if isinstance(value, tuple) else value})
            if config != GPU_CONFIG:
                out.append((field, config))
    return out


class Backward:
    """One length's inputs, forward result and float64 references."""

    def __init__(self, args: SpeedArgs, n: int):
        self.case = Case(args, n)
        c = self.case
        self.out, self.lse = swa_sink_attention(c.q, c.k, c.v, args.window, args.keep_first, c.scaling)
        _, _, self.ref_dq = c.reference(args.window, backward=True)
        self.ref_dk, self.ref_dv = c.key_reference(args.window)

    def run(self, config: BackwardConfig):
        c, a = self.case, self.case.args
        return swa_sink_attention_backward(
            c.q, c.k, c.v, self.out, self.lse, c.dout, a.window, a.keep_first, c.scaling, config=config
        )

    def row(self, kernel: str, config: BackwardConfig) -> Row:
        c = self.case
        try:
            dq, dk, dv = self.run(config)
            errors = {
                "dq": rel(dq[0][:, c.rows], self.ref_dq),
                "dk": rel(dk[0][:, c.key_rows], self.ref_dk),
                "dv": rel(dv[0][:, c.key_rows], self.ref_dv),
            }
            del dq, dk, dv
            ms = bench_ms(lambda: self.run(config))
        except Exception as err:  # a launch that does not compile or fit: reported, the sweep goes on
            log.exception("n=%d %s %s failed", c.n, kernel, config)
            return Row(c.n, kernel, config, math.nan, "-", False, f"ERROR {type(err).__name__}")
        text = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        return Row(c.n, kernel, config, ms, text, all(e < DQ_TOL for e in errors.values()))

    def fixed_rows(self) -> list[Row]:
        """The Triton forward and full causal SDPA's backward alone (fwd+bwd minus fwd), for scale."""
        c, a = self.case, self.case.args
        fwd = bench_ms(lambda: swa_sink_attention(c.q, c.k, c.v, a.window, a.keep_first, c.scaling))
        q, k, v = (t.detach().clone().requires_grad_(True) for t in (c.q, c.k, c.v))
        sdpa_fwd = bench_ms(lambda: c.sdpa(c.q, c.k, c.v))
        sdpa_all = bench_ms(lambda: c.sdpa(q, k, v).backward(c.dout), grad_to_none=[q, k, v])
        return [
            Row(c.n, "triton SWA+sink forward", None, fwd, "-", True),
            Row(c.n, "sdpa full causal backward (fwd+bwd - fwd)", None, sdpa_all - sdpa_fwd, "-", True),
        ]


def launch_text(launch: Launch) -> str:
    return f"{launch.block_m}x{launch.block_n} {launch.num_warps}w {launch.num_stages}s"


def config_text(config: BackwardConfig | None) -> str:
    if config is None:
        return "-"
    return " / ".join(launch_text(x) for x in (config.dq, config.dkdv, config.tail))


def best_config(rows: list, n: int, sweep: dict[str, tuple] = SWEEP,
                varied: Callable[[Any], str] = lambda r: r.kernel) -> BackwardConfig:  # fmt: skip
    """Each ``sweep`` field's fastest correct value at length n (rows whose ``varied`` names the field
    or ``shipped``), the others' from GPU_CONFIG."""
    picked = {}
    for field in sweep:
        mine = [r for r in rows if r.n == n and r.ok and varied(r) in (field, "shipped")]
        picked[field] = getattr(min(mine, key=lambda r: r.ms).config, field)
    return dataclasses.replace(GPU_CONFIG, **picked)


def sweep_sizes(args: SpeedArgs, bench_for: Callable[[SpeedArgs, int], Any], sweep: dict[str, tuple],
                show: Callable[[list], None], varied: Callable[[Any], str] = lambda r: r.kernel) -> list:  # fmt: skip
    """Per length: the bench's ``fixed_rows()``, its ``row(field, config)`` for each of ``variants(sweep)``
    (``show(rows)`` after each, which logs and writes the partial table), then the ``best_config``
    combination's row. The GPU's cache is emptied between lengths."""
    rows: list = []
    for n in args.sizes:
        bench = bench_for(args, n)
        rows += bench.fixed_rows()
        for field, config in variants(sweep):
            rows.append(bench.row(field, config))
            show(rows)
        rows.append(bench.row("best", best_config(rows, n, sweep, varied)))
        show(rows)
        del bench
        torch.cuda.empty_cache()
    return rows


def format_row(row: Row, rows: list[Row], args: SpeedArgs) -> str:
    shipped = next((r for r in rows if r.n == row.n and r.kernel == "shipped"), None)
    timed = row.ms == row.ms
    vs = f"{shipped.ms / row.ms:.2f}x" if shipped is not None and timed and row.config is not None else "-"
    tflops = "-"
    if timed and row.config is not None:
        tflops = f"{2.5 * fwd_flops(args, row.n, args.window) / row.ms / 1e9:.0f}"
    verdict = ("ok" if row.ok else "FAIL") + (f" ({row.note})" if row.note else "")
    ms = f"{row.ms:.3f}" if timed else "-"
    return f"| {row.n} | {row.kernel} | {config_text(row.config)} | {ms} | {tflops} | {vs} | {row.errors} | {verdict} |"


def report(args: SpeedArgs, rows: list[Row]) -> str:
    lines = [
        "# Triton SWA+sink backward: launch-parameter sweep (dQ / dK-dV / sink tail)",
        "",
        *environment_lines(args),
        f"- shipped GPU_CONFIG (dq / dkdv / tail, BLOCK_M x BLOCK_N warps stages): {config_text(GPU_CONFIG)}, "
        f"chunk_blocks {GPU_CONFIG.chunk_blocks}",
        "- a row varies the named kernel's launch, the others as shipped; `best`: each kernel's fastest "
        "correct launch together",
        "- time: backward alone (delta + the three kernels), median of triton.testing.do_bench; TFLOP/s counts "
        "2.5x the SWA+sink forward's 4*n*(W+k)*d*h",
        f"- correctness: {args.rows} query rows (dq) and {args.rows} key rows with 3 sinks (dk, dv) vs "
        f"float64; relative L2; tolerance {DQ_TOL}",
        "",
        "| n | kernel varied | dq / dkdv / tail | ms | TFLOP/s | vs shipped | rel. error | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(lines + [format_row(r, rows, args) for r in rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, _ = sweep_args(__doc__, "benchmarks/results/train_kernel_tuning.md", argv)

    def show(rows: list[Row]) -> None:
        log.info("%s", format_row(rows[-1], rows, args))
        atomic_write_text(args.out, report(args, rows))  # partial results survive a kill

    rows = sweep_sizes(args, Backward, SWEEP, show)
    text = report(args, rows)
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if all(r.ok for r in rows if r.kernel in ("shipped", "best")) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
