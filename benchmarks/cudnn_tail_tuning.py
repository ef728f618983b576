"""The cuDNN training backward split in two and its Triton sink tail's launch swept, on the GPU.

On Hopper the training default (``SWAA_FUSED_TRAIN=auto``) computes the backward as cuDNN's
sliding-window backward over the band, fed the rule's merged output and lse, plus the Triton sink
tail (``add_sink_tail_gradients``: the dQ kernel's sink-tail pass, which also computes delta, then
the dK/dV of the sink rows). This script times the two parts apart (the band alone, the tail alone)
and the whole backward, beside full causal SDPA's backward (fwd+bwd minus fwd, same run), then
sweeps the tail's launches one field at a time (``BackwardConfig.tail_dq``: the dQ pass; ``tail``
and ``chunk_blocks``: the dK/dV sink-tail kernel). Every variant's whole backward (band + that
tail) is checked against attention_speed.py's float64 references (sampled query rows for dq;
sampled key rows, sinks among them, for dk/dv) before its tail is timed. The table is what
``GPU_CONFIG.tail_dq`` in ``swaa_patch/backends/triton_swa_train.py`` is chosen from (``tail`` and
``chunk_blocks`` serve the Triton path too: train_kernel_tuning.py). A launch that does not compile or fit is
an ERROR row, not a crash. Writes markdown to --out (atomically) and prints it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attention_speed import DQ_TOL, Case, SpeedArgs, bench_ms, cudnn_line, environment_lines, rel, sweep_args  # noqa: E402
from train_kernel_tuning import launch_text, sweep_sizes  # noqa: E402

from swaa_patch.backends import cudnn_swa  # noqa: E402
from swaa_patch.backends.triton_swa_train import GPU_CONFIG, BackwardConfig, add_sink_tail_gradients  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

log = logging.getLogger("cudnn_tail_tuning")

# (block_m, block_n, warps, stages) of the dQ kernel's sink-tail pass (block_n: sink keys per step) and of the
# dK/dV sink-tail kernel (block_n: sink rows per program; 128 holds keep_first 100 in one block, so each q and dO
# tile is read once instead of once per 64-row sink block, but its two 128 x 128 float32 accumulators spill on 8
# warps, and on 16 it measured 1.6-2.8x slower than 64 rows on 8, results/cudnn_tail_tuning.md); q blocks per dK/dV
# program; whether a chunk's sink-block programs run side by side (sharing q / dO reads through L2)
SWEEP: dict[str, tuple] = {
    "tail_dq": ((128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3), (64, 128, 8, 2),
                (128, 32, 8, 3)),
    "tail": ((128, 64, 8, 2), (64, 64, 4, 3), (64, 128, 8, 2), (128, 128, 8, 2), (32, 128, 4, 3), (128, 128, 16, 2),
             (64, 128, 16, 2)),
    "chunk_blocks": (16, 8, 32),
    "pair_sinks": (True, False),  # False: the grid before the fourteenth session (sink blocks the slowest axis)
}


@dataclass
class Row:
    n: int
    part: str
    config: BackwardConfig | None
    ms: float
    errors: str = "-"
    ok: bool = True
    note: str = ""


class CudnnBackward:
    """One length's inputs, the cuDNN forward's merged out and lse, and the float64 references."""

    def __init__(self, args: SpeedArgs, n: int):
        self.case = c = Case(args, n)
        self.out, self.lse = cudnn_swa.swa_sink_attention_cudnn(c.q, c.k, c.v, args.window, args.keep_first, c.scaling)
        _, _, self.ref_dq = c.reference(args.window, backward=True)
        self.ref_dk, self.ref_dv = c.key_reference(args.window)

    def band(self):
        c = self.case
        return cudnn_swa.window_attention_backward(c.q, c.k, c.v, self.out, self.lse, c.dout, c.args.window, c.scaling)

    def tail(self, grads, config: BackwardConfig) -> None:
        c, a = self.case, self.case.args
        add_sink_tail_gradients(c.q, c.k, c.v, self.out, self.lse, c.dout, *grads, a.window, a.keep_first, c.scaling,
                                config=config)  # fmt: skip

    def whole(self, config: BackwardConfig):
        grads = self.band()
        self.tail(grads, config)
        return grads

    def errors(self, config: BackwardConfig) -> tuple[str, bool]:
        return self.grad_errors(*self.whole(config))

    def grad_errors(self, dq, dk, dv) -> tuple[str, bool]:
        """The sampled rows of (dq, dk, dv) against float64: the text and whether all are within DQ_TOL."""
        c = self.case
        errors = {
            "dq": rel(dq[0][:, c.rows], self.ref_dq),
            "dk": rel(dk[0][:, c.key_rows], self.ref_dk),
            "dv": rel(dv[0][:, c.key_rows], self.ref_dv),
        }
        return ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), all(e < DQ_TOL for e in errors.values())

    def fixed_rows(self) -> list[Row]:
        """Full causal SDPA's backward (fwd+bwd - fwd), the band alone, and the shipped whole backward."""
        c = self.case
        q, k, v = (t.detach().clone().requires_grad_(True) for t in (c.q, c.k, c.v))
        sdpa_fwd = bench_ms(lambda: c.sdpa(c.q, c.k, c.v))
        sdpa_all = bench_ms(lambda: c.sdpa(q, k, v).backward(c.dout), grad_to_none=[q, k, v])
        errors, ok = self.errors(GPU_CONFIG)
        return [
            Row(c.n, "sdpa full causal backward (fwd+bwd - fwd)", None, sdpa_all - sdpa_fwd),
            Row(c.n, "cudnn band backward alone (not the rule)", None, bench_ms(self.band)),
            Row(c.n, "whole backward: band + tail", GPU_CONFIG, bench_ms(lambda: self.whole(GPU_CONFIG)), errors, ok),
        ]

    def row(self, varied: str, config: BackwardConfig) -> Row:
        n = self.case.n
        try:
            errors, ok = self.errors(config)
            grads = self.band()
            ms = bench_ms(lambda: self.tail(grads, config))  # in place: the values drift, the work does not
        except Exception as err:  # a launch that does not compile or fit: reported, the sweep goes on
            log.exception("n=%d %s failed", n, config)
            return Row(n, f"tail: {varied}", config, math.nan, "-", False, f"ERROR {type(err).__name__}")
        return Row(n, f"tail: {varied}", config, ms, errors, ok)


def config_text(config: BackwardConfig | None) -> str:
    if config is None:
        return "-"
    paired = "" if config.pair_sinks else " (sink blocks unpaired)"
    return f"{launch_text(config.tail_dq)} / {launch_text(config.tail)} / {config.chunk_blocks}{paired}"


def format_row(row: Row, rows: list[Row]) -> str:
    sdpa = next((r for r in rows if r.n == row.n and r.part.startswith("sdpa")), None)
    band = next((r for r in rows if r.n == row.n and r.part.startswith("cudnn band")), None)
    timed = row.ms == row.ms
    ms = f"{row.ms:.3f}" if timed else "-"
    whole = row.ms + band.ms if row.part.startswith("tail") and band is not None and timed else row.ms
    vs = f"{sdpa.ms / whole:.2f}x" if sdpa is not None and timed and row.config is not None else "-"
    verdict = ("ok" if row.ok else "FAIL") + (f" ({row.note})" if row.note else "")
    return f"| {row.n} | {row.part} | {config_text(row.config)} | {ms} | {vs} | {row.errors} | {verdict} |"


def report(args: SpeedArgs, rows: list[Row]) -> str:
    lines = [
        "# cuDNN training backward: the band and the Triton sink tail apart, the tail's launch swept",
        "",
        *environment_lines(args),
        f"- cuDNN: {cudnn_line()}",
        "- the tail: the dQ kernel's sink-tail pass (dQ of the sinks seen from beyond the window, delta on the way), "
        "then the dK/dV sink-tail kernel (partial sums per chunk of q blocks), then the sums added to the sink rows",
        f"- shipped (GPU_CONFIG: tail_dq / tail as BLOCK_M x BLOCK_N warps stages / chunk_blocks): "
        f"{config_text(GPU_CONFIG)}",
        "- time: median of triton.testing.do_bench; a `tail` row times the tail alone with one field varied from "
        "the shipped config (`best`: each field's fastest correct value together); its `backward vs SDPA` is "
        "SDPA's backward over (the band's time + that tail's)",
        f"- correctness: the whole backward (band + that row's tail) vs float64, {args.rows} query rows (dq) and "
        f"{args.rows} key rows with 3 sinks (dk, dv); relative L2; tolerance {DQ_TOL}",
        "",
        "| n | part | tail_dq / tail / chunk_blocks | ms | backward vs SDPA | rel. error | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(lines + [format_row(r, rows) for r in rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, _ = sweep_args(__doc__, "benchmarks/results/cudnn_tail_tuning.md", argv)
    if not cudnn_swa.frontend_available():
        raise SystemExit("cudnn_tail_tuning.py needs cudnn-frontend (pip install nvidia-cudnn-frontend)")

    def show(rows: list[Row]) -> None:
        log.info("%s", format_row(rows[-1], rows))
        atomic_write_text(args.out, report(args, rows))  # partial results survive a kill

    rows = sweep_sizes(args, CudnnBackward, SWEEP, show, varied=lambda r: r.part.removeprefix("tail: "))
    text = report(args, rows)
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if all(r.ok for r in rows if r.config == GPU_CONFIG or r.part == "tail: best") else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
