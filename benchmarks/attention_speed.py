"""Attention speed on the GPU: full causal SDPA (the baseline) vs SWA+sink attention through our
Triton kernel, cuDNN's sliding window + our Triton sink merge (when cudnn-frontend is installed) and
our flex backend, with every timed kernel checked for correctness in the run.

Shapes (issue 7): B=1, 32 q heads / 8 kv heads, head_dim 128, bf16, W=2048, keep_first=100, for
n in {32768, 131072}. Times are medians of ``triton.testing.do_bench`` (CUDA events, L2 flushed
between runs). FLOPs: full causal forward 2*n^2*d*h; SWA+sink forward 4*n*(W+k)*d*h (the usual
approximation: it counts W+k keys for every query); forward+backward = 3.5x forward (backward
2.5x forward, the FlashAttention convention). Speedups are against SDPA for the same pass.

Correctness: for 256 random query rows, a float64 reference on the GPU (the rule written here
again, independently of swaa_patch.rule) gives out, log-sum-exp and, for the forward+backward
rows, dq (dq_i depends on row i alone); dk and dv of 256 key rows (three sinks among them) from
every query that sees them, with float64 log-sum-exp and delta of all queries. Compilations:
torch._dynamo's unique-graph counter is read after warm-up and again after 3 fresh-plan "steps"
of 4 flex "layers", which must add none.

Writes a markdown report to --out (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from swaa_patch import SWAAConfig  # noqa: E402
from swaa_patch.backends import (
    AttentionCall,  # noqa: E402
    cudnn_swa,  # noqa: E402
)
from swaa_patch.backends.flex import build_block_mask, flex_swaa_attention  # noqa: E402
from swaa_patch.backends.triton_swa import chosen_config, swa_sink_attention  # noqa: E402
from swaa_patch.backends.triton_swa_train import trainable_swa_sink_attention  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402
from swaa_patch.plan import build_plan  # noqa: E402

log = logging.getLogger("attention_speed")
CUDNN_SWA = "cudnn window + triton sink merge, SWA+sink fwd"
CUDNN_BAND = "cudnn window alone (no sinks: not the rule) fwd"
TRITON_TRAIN = "triton SWA+sink (band-cost backward) fwd+bwd"
CUDNN_TRAIN = "cudnn window fwd+bwd + triton sinks (training default on Hopper) fwd+bwd"
OUT_TOL = 2e-2  # bf16 operands: 1e-3..1e-2 expected
LSE_TOL = 1e-3
DQ_TOL = 5e-2


@dataclass
class SpeedArgs:
    sizes: tuple[int, ...] = (32768, 131072)
    heads: int = 32
    kv_heads: int = 8
    dim: int = 128
    window: int = 2048
    keep_first: int = 100
    rows: int = 256
    backward: bool = True
    out: str = "benchmarks/results/attention_speed.md"
    seed: int = 0


@dataclass
class Row:
    name: str
    n: int
    ms: float
    flops: float
    errors: dict[str, float]
    ok: bool
    note: str = ""


def fwd_flops(args: SpeedArgs, n: int, window: int | None, keep_first: int | None = None) -> float:
    if window is None:
        return 2.0 * n * n * args.dim * args.heads
    keep_first = args.keep_first if keep_first is None else keep_first
    return 4.0 * n * (window + keep_first) * args.dim * args.heads


def bench_ms(fn: Callable[[], object], grad_to_none=None) -> float:
    """Median ms over enough repeats (at least ~5) after a warm-up call, L2 flushed by do_bench."""
    from triton.testing import do_bench

    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    estimate = start.elapsed_time(end)
    return float(
        do_bench(
            fn,
            warmup=max(25.0, estimate),
            rep=max(200.0, 6 * estimate),
            grad_to_none=grad_to_none,
            return_mode="median",
        )
    )


def visible_pairs(i: torch.Tensor, j: torch.Tensor, window, keep_first) -> torch.Tensor:
    """The rule on (queries, keys) index grids, written here independently of swaa_patch.rule."""
    visible = j <= i
    if window is not None:
        visible &= (i - j < window) | (j < keep_first)
    return visible


def reference_rows(q, k, v, rows, window, keep_first, scaling, dout=None):
    """float64 out, lse (and dq when dout is given) of the sampled query rows, head by head.

    The rule, written independently: key j is visible to query i iff j <= i and
    (window is None or i - j < window or j < keep_first)."""
    heads, groups = q.shape[1], q.shape[1] // k.shape[1]
    visible = visible_pairs(
        rows[:, None], torch.arange(k.shape[2], device=q.device)[None, :], window, keep_first
    )
    outs, lses, dqs = [], [], []
    for h in range(heads):
        qh = q[0, h, rows].double()
        kh, vh = k[0, h // groups].double(), v[0, h // groups].double()
        scores = (qh @ kh.T * scaling).masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(scores, -1)
        probs = torch.exp(scores - lse[:, None])
        out = probs @ vh
        outs.append(out)
        lses.append(lse)
        if dout is not None:
            do = dout[0, h, rows].double()
            dscores = probs * (do @ vh.T - (do * out).sum(-1, keepdim=True))
            dqs.append(dscores @ kh * scaling)
    return torch.stack(outs), torch.stack(lses), torch.stack(dqs) if dqs else None


def reference_key_grads(q, k, v, dout, key_rows, window, keep_first, scaling, chunk: int = 2048):
    """float64 dk and dv of the sampled key rows, (kv heads, len(key_rows), D), GQA summed.

    dk_j and dv_j need every query that sees key j (all of them for a sink), with each query's
    float64 log-sum-exp and delta_i = dO_i . O_i: those come from a chunked float64 forward over the
    keys each chunk of queries can see (its sinks and its window)."""
    heads, n, groups = q.shape[1], q.shape[2], q.shape[1] // k.shape[1]
    dk = torch.zeros(k.shape[1], len(key_rows), k.shape[3], dtype=torch.float64, device=q.device)
    dv = torch.zeros_like(dk)
    queries = torch.arange(n, device=q.device)
    for h in range(heads):
        qh, do = q[0, h].double(), dout[0, h].double()
        kh, vh = k[0, h // groups].double(), v[0, h // groups].double()
        lse = torch.empty(n, dtype=torch.float64, device=q.device)
        delta = torch.empty_like(lse)
        for start in range(0, n, chunk):
            i = queries[start : start + chunk]
            lo = 0 if window is None else max(0, start - window + 1)
            keys = torch.cat([queries[: min(keep_first, lo)], queries[lo : int(i[-1]) + 1]])
            scores = (qh[i] @ kh[keys].T * scaling).masked_fill(
                ~visible_pairs(i[:, None], keys[None, :], window, keep_first), float("-inf")
            )
            lse[i] = torch.logsumexp(scores, -1)
            out = torch.exp(scores - lse[i][:, None]) @ vh[keys]
            delta[i] = (do[i] * out).sum(-1)
        kj, vj = kh[key_rows], vh[key_rows]
        seen = visible_pairs(queries[:, None], key_rows[None, :], window, keep_first)
        probs = torch.exp(qh @ kj.T * scaling - lse[:, None]).masked_fill(~seen, 0.0)  # (n, keys)
        dscores = probs * (do @ vj.T - delta[:, None])
        dk[h // groups] += dscores.T @ qh * scaling
        dv[h // groups] += probs.T @ do
    return dk, dv


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got = got.double()
    if not torch.isfinite(got).all():
        return math.nan
    return float((got - ref).norm() / ref.norm())


class Case:
    """Inputs, reference and timed kernels for one sequence length."""

    def __init__(self, args: SpeedArgs, n: int):
        self.args, self.n = args, n
        device = torch.device("cuda")
        g = torch.Generator(device=device).manual_seed(args.seed + n)
        shape_q, shape_kv = (1, args.heads, n, args.dim), (1, args.kv_heads, n, args.dim)
        self.q = torch.randn(shape_q, device=device, dtype=torch.bfloat16, generator=g)
        self.k = torch.randn(shape_kv, device=device, dtype=torch.bfloat16, generator=g)
        self.v = torch.randn(shape_kv, device=device, dtype=torch.bfloat16, generator=g)
        self.dout = torch.randn(shape_q, device=device, dtype=torch.bfloat16, generator=g)
        self.scaling = args.dim**-0.5
        self.rows = torch.randperm(n, device=device, generator=g)[: args.rows].sort().values
        # key rows for dk/dv: the first, middle and last sink, then random keys
        sinks = torch.tensor([0, args.keep_first // 2, args.keep_first - 1], device=device)
        picked = torch.randperm(n, device=device, generator=g)[: args.rows - 3]
        self.key_rows = torch.cat([sinks, picked]).unique()
        self.config = SWAAConfig(sliding_window_size=args.window, keep_first=args.keep_first)
        self.plan = self.new_plan()
        self.refs: dict[tuple, tuple] = {}

    def new_plan(self):
        return build_plan(self.config, batch_size=1, q_len=self.n, device=self.q.device)

    def key_reference(self, window, keep_first: int | None = None):
        """float64 (dk, dv) of the sampled key rows (cached per window and keep_first)."""
        keep_first = self.args.keep_first if keep_first is None else keep_first
        key = ("keys", window, keep_first)
        if key not in self.refs:
            self.refs[key] = reference_key_grads(
                self.q, self.k, self.v, self.dout, self.key_rows, window, keep_first, self.scaling
            )
        return self.refs[key]

    def reference(self, window, backward: bool, keep_first: int | None = None):
        keep_first = self.args.keep_first if keep_first is None else keep_first
        key = (window, backward, keep_first)
        if key not in self.refs:
            dout = self.dout if backward else None
            self.refs[key] = reference_rows(
                self.q, self.k, self.v, self.rows, window, keep_first, self.scaling, dout
            )
        return self.refs[key]

    # kernels: each returns out in (B, H, n, D)
    def sdpa(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling, enable_gqa=True)

    def triton_swa(self, q, k, v):
        return swa_sink_attention(q, k, v, self.args.window, self.args.keep_first, self.scaling)

    def cudnn_swa(self, q, k, v):
        return cudnn_swa.swa_sink_attention_cudnn(
            q, k, v, self.args.window, self.args.keep_first, self.scaling
        )

    def cudnn_band(self, q, k, v):
        return cudnn_swa.window_attention(q, k, v, self.args.window, self.scaling)

    def triton_trainable(self, q, k, v):
        return trainable_swa_sink_attention(
            q, k, v, self.args.window, self.args.keep_first, self.scaling, kernel="triton"
        )

    def cudnn_trainable(self, q, k, v):
        return trainable_swa_sink_attention(
            q, k, v, self.args.window, self.args.keep_first, self.scaling, kernel="cudnn"
        )

    def triton_full(self, q, k, v):
        return swa_sink_attention(q, k, v, None, 0, self.scaling)

    def flex(self, q, k, v, layer_idx: int = 0, plan=None):
        module = SimpleNamespace(layer_idx=layer_idx, training=False)
        out, _ = flex_swaa_attention(AttentionCall(module, q, k, v, plan or self.plan, self.scaling))
        return out.transpose(1, 2)  # the backend returns transformers' (B, n, H, D)


def forward_row(
    case: Case, name: str, fn, window, with_lse: bool = False, keep_first: int | None = None
) -> Row:
    result = fn(case.q, case.k, case.v)
    out, lse = result if with_lse else (result, None)
    ref_out, ref_lse, _ = case.reference(window, backward=False, keep_first=keep_first)
    errors = {"out": rel(out[0][:, case.rows], ref_out)}
    if lse is not None:
        errors["lse"] = rel(lse[0][:, case.rows], ref_lse)
    del out, lse, result
    ok = errors["out"] < OUT_TOL and errors.get("lse", 0.0) < LSE_TOL
    ms = bench_ms(lambda: fn(case.q, case.k, case.v))
    return Row(name, case.n, ms, fwd_flops(case.args, case.n, window, keep_first), errors, ok)


def backward_row(case: Case, name: str, fn, window, keep_first: int | None = None) -> Row:
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    out = fn(q, k, v)
    out.backward(case.dout)
    ref_out, _, ref_dq = case.reference(window, backward=True, keep_first=keep_first)
    ref_dk, ref_dv = case.key_reference(window, keep_first)
    errors = {
        "out": rel(out.detach()[0][:, case.rows], ref_out),
        "dq": rel(q.grad[0][:, case.rows], ref_dq),
        "dk": rel(k.grad[0][:, case.key_rows], ref_dk),
        "dv": rel(v.grad[0][:, case.key_rows], ref_dv),
    }
    del out
    ok = errors["out"] < OUT_TOL and max(errors["dq"], errors["dk"], errors["dv"]) < DQ_TOL
    ms = bench_ms(lambda: fn(q, k, v).backward(case.dout), grad_to_none=[q, k, v])
    return Row(name, case.n, ms, 3.5 * fwd_flops(case.args, case.n, window, keep_first), errors, ok)


def mask_build_row(case: Case) -> Row:
    keys = case.plan.keys(0)

    def build():
        return build_block_mask(case.plan, keys, case.args.window, None, case.q.device)

    return Row("flex BlockMask build (compiled)", case.n, bench_ms(build), 0.0, {}, True, "once per forward")


def compile_check(case: Case) -> str:
    """Unique dynamo graphs added by fresh steps (a new plan and BlockMask each) of 4 flex layers.

    One step runs first under ``torch.no_grad()``: the timed rows ran with grad mode on, and
    dynamo guards on grad mode, so that step may compile once more (a mode change, not a step).
    The 3 steps after it must add nothing: no recompilation per layer or per step.
    """
    from torch._dynamo.utils import counters

    def steps(count: int) -> int:
        before = counters["stats"]["unique_graphs"]
        with torch.no_grad():
            for _ in range(count):
                plan = case.new_plan()
                for layer in range(4):
                    case.flex(case.q, case.k, case.v, layer, plan)
        torch.cuda.synchronize()
        return counters["stats"]["unique_graphs"] - before

    warm = counters["stats"]["unique_graphs"]
    first = steps(1)
    later = steps(3)
    verdict = "ok" if later == 0 else "RECOMPILES"
    return (
        f"n={case.n}: {warm} unique graphs after the timed rows, +{first} on the first no-grad step, "
        f"+{later} over 3 more steps x 4 layers ({verdict})"
    )


def run_plans(n: int, plans: list[tuple[str, Callable[[], Row]]]) -> list[Row]:
    """Each plan's Row, in order, logged as it comes; a plan that raises becomes an ERROR row (one failing
    kernel must not hide the others' numbers)."""
    rows = []
    for name, run in plans:
        log.info("n=%d %s", n, name)
        try:
            rows.append(run())
        except Exception as err:
            log.exception("n=%d %s failed", n, name)
            rows.append(
                Row(name, n, math.nan, 0.0, {}, False, f"ERROR {type(err).__name__}: {str(err)[:160]}")
            )
        torch.cuda.empty_cache()
        log.info("%s", format_row(rows[-1], rows))
    return rows


def run_size(args: SpeedArgs, n: int) -> tuple[list[Row], str]:
    case = Case(args, n)
    W = args.window
    plans: list[tuple[str, Callable[[], Row]]] = [
        ("sdpa full causal fwd", lambda: forward_row(case, "sdpa full causal fwd", case.sdpa, None)),
        ("triton SWA+sink fwd", lambda: forward_row(case, "triton SWA+sink fwd", case.triton_swa, W, True)),
        (
            "triton full causal fwd",
            lambda: forward_row(case, "triton full causal fwd", case.triton_full, None, True),
        ),
        ("flex SWA+sink fwd", lambda: forward_row(case, "flex SWA+sink fwd", case.flex, W)),
        ("flex BlockMask build", lambda: mask_build_row(case)),
    ]
    if cudnn_swa.frontend_available():
        plans[2:2] = [
            (CUDNN_SWA, lambda: forward_row(case, CUDNN_SWA, case.cudnn_swa, W, True)),
            (CUDNN_BAND, lambda: forward_row(case, CUDNN_BAND, case.cudnn_band, W, True, keep_first=0)),
        ]
    if args.backward:
        plans += [
            (
                "sdpa full causal fwd+bwd",
                lambda: backward_row(case, "sdpa full causal fwd+bwd", case.sdpa, None),
            ),
            ("flex SWA+sink fwd+bwd", lambda: backward_row(case, "flex SWA+sink fwd+bwd", case.flex, W)),
            (TRITON_TRAIN, lambda: backward_row(case, TRITON_TRAIN, case.triton_trainable, W)),
        ]
        if cudnn_swa.frontend_available():
            plans.append((CUDNN_TRAIN, lambda: backward_row(case, CUDNN_TRAIN, case.cudnn_trainable, W)))
    rows = run_plans(n, plans)
    compiles = compile_check(case)
    log.info("%s", compiles)
    return rows, compiles


def baseline(row: Row, rows: list[Row]) -> Row | None:
    kind = "fwd+bwd" if row.name.endswith("fwd+bwd") else "fwd"
    name = f"sdpa full causal {kind}"
    return next((r for r in rows if r.n == row.n and r.name == name), None)


def format_row(row: Row, rows: list[Row]) -> str:
    tflops = f"{row.flops / row.ms / 1e9:.0f}" if row.flops and row.ms == row.ms else "-"
    base = baseline(row, rows)
    speedup = f"{base.ms / row.ms:.2f}x" if base is not None and row.flops and row.ms == row.ms else "-"
    errors = ", ".join(f"{k} {v:.1e}" for k, v in row.errors.items()) or "-"
    verdict = ("ok" if row.ok else "FAIL") + (f" ({row.note})" if row.note else "")
    return f"| {row.name} | {row.n} | {row.ms:.3f} | {tflops} | {speedup} | {errors} | {verdict} |"


def environment_lines(args: SpeedArgs) -> list[str]:
    """Date, device, versions and shapes: the opening lines of every attention-level GPU report."""
    import triton

    return [
        f"- date: {datetime.date.today()}",
        f"- device: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs)",
        f"- torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}",
        f"- shapes: B=1, {args.heads} q heads / {args.kv_heads} kv heads, head_dim {args.dim}, bf16, "
        f"W={args.window}, keep_first={args.keep_first}",
    ]


def cudnn_line() -> str:
    """cuDNN library and frontend versions, or why the cuDNN rows are missing."""
    if not cudnn_swa.frontend_available():
        return "cudnn-frontend not installed: no cuDNN rows"
    from importlib.metadata import version

    return (
        f"library {torch.backends.cudnn.version()}, nvidia-cudnn-frontend {version('nvidia-cudnn-frontend')}"
    )


def report(args: SpeedArgs, rows: list[Row], compiles: list[str]) -> str:
    lines = [
        "# Attention speed: full causal SDPA vs SWA+sink (Triton kernel, cuDNN window + Triton sinks, flex)",
        "",
        *environment_lines(args),
        "- baseline: `F.scaled_dot_product_attention(is_causal=True, enable_gqa=True)` (full causal)",
        "- time: median of triton.testing.do_bench (CUDA events, L2 flushed)",
        "- TFLOP/s: full causal fwd 2*n^2*d*h; SWA+sink fwd 4*n*(W+k)*d*h; fwd+bwd 3.5x fwd",
        "- FLOP-ideal speedup of SWA+sink over full causal: "
        + ", ".join(f"n={n}: {n / (2 * (args.window + args.keep_first)):.1f}x" for n in args.sizes),
        f"- correctness: {args.rows} random query rows vs a float64 reference of the rule; relative L2 "
        f"error; {args.rows} key rows (3 sinks) for dk/dv; tolerances out {OUT_TOL}, lse {LSE_TOL}, "
        f"dq/dk/dv {DQ_TOL}; NaN fails",
        f"- Triton config chosen by the autotuner: {chosen_config()}",
        f"- cuDNN: {cudnn_line()}",
        "- torch.compile: " + "; ".join(compiles),
    ]
    return with_table(lines, rows)


def with_table(lines: list[str], rows: list[Row]) -> str:
    """A report: its opening ``lines``, then the rows' table (speedups against SDPA of the same pass)."""
    table = ["| kernel | n | ms | TFLOP/s | speedup vs SDPA | rel. error | verdict |", "| --- | --- | --- | --- | --- | --- | --- |"]
    return "\n".join([*lines, "", *table, *(format_row(r, rows) for r in rows)]) + "\n"


def run_sizes(args: SpeedArgs, run_size, report) -> int:
    """``run_size(args, n)`` -> (rows, a note) for each length in turn, ``report(args, rows, notes)``
    rewritten (atomically) after each, so finished lengths survive a kill; the report printed at the
    end. Exit status 1 when a row failed its check."""
    rows, notes, text = [], [], ""
    for n in args.sizes:
        size_rows, note = run_size(args, n)
        rows += size_rows
        notes.append(note)
        text = report(args, rows, notes)
        atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if all(r.ok for r in rows) else 1


def main(args: SpeedArgs) -> int:
    if not torch.cuda.is_available():
        raise SystemExit("attention_speed.py needs a CUDA device")
    return run_sizes(args, run_size, report)


def sweep_args(doc: str, out: str, argv: list[str] | None = None, extra=None) -> tuple[SpeedArgs, argparse.Namespace]:
    """The options every launch-sweep script shares (--sizes, --out; ``extra(parser)`` adds its own)
    as SpeedArgs and the parsed namespace; a machine without CUDA is refused before any work."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--sizes", default="32768,131072")
    p.add_argument("--out", default=out)
    if extra is not None:
        extra(p)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(f"{os.path.basename(sys.argv[0])} needs a CUDA device")
    return SpeedArgs(sizes=tuple(int(s) for s in a.sizes.split(",")), backward=False, out=a.out), a


def parse_args(argv: list[str] | None = None) -> SpeedArgs:
    d = SpeedArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(map(str, d.sizes)), help="comma-separated sequence lengths")
    p.add_argument("--rows", type=int, default=d.rows, help="query rows checked against float64")
    p.add_argument("--no-backward", dest="backward", action="store_false", help="skip the fwd+bwd rows")
    p.add_argument("--out", default=d.out)
    a = p.parse_args(argv)
    return SpeedArgs(
        sizes=tuple(int(s) for s in a.sizes.split(",")), rows=a.rows, backward=a.backward, out=a.out
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main(parse_args()))
