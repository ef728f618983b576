"""cuDNN's execution plans for the band's forward and backward, each checked and timed, on the GPU.

The training default on Hopper runs the band (``0 <= i - j < W``) through cudnn-frontend's PyTorch ops
(``cudnn_swa.window_attention`` / ``window_attention_backward``), which build each graph with heuristics A
then FALLBACK and run the first plan that builds. Whether another plan of the same graph is faster decides
whether the band (25 of the 39 ms of a 128K fwd+bwd, results/cudnn_tail_tuning.md) has anything left to
give without a kernel of our own. This script builds the same graphs (BHSD, float32 stats, the band as
cudnn_swa passes it) with heuristics A, B and FALLBACK, lists every plan they offer (name, engine id,
knobs) plus the heuristics' first engine at every other ``KERNEL_CFG`` of ``--kernel-cfgs``, and times
each beside the shipped op. Every plan is checked before it is timed: a forward plan's
output, merged with the sinks (``merge_sinks``), against float64 rows of the rule; a backward plan's
gradients, completed by the sink tail (``add_sink_tail_gradients``), against float64 dq / dk / dv rows.
A plan that does not build or run is an ERROR row, not a crash. Writes markdown to --out (atomically).
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

from attention_speed import DQ_TOL, LSE_TOL, OUT_TOL, bench_ms, cudnn_line, environment_lines, rel, sweep_args  # noqa: E402
from cudnn_tail_tuning import CudnnBackward  # noqa: E402

from swaa_patch.backends import cudnn_swa  # noqa: E402
from swaa_patch.backends.triton_swa import merge_sinks  # noqa: E402
from swaa_patch.backends.triton_swa_train import GPU_CONFIG  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

log = logging.getLogger("cudnn_plans")

UID = {"q": 1, "k": 2, "v": 3, "o": 100, "stats": 101, "do": 200, "dq": 201, "dk": 202, "dv": 203}


@dataclass
class Row:
    n: int
    direction: str  # "fwd" or "bwd"
    plan: str
    ms: float
    errors: str = "-"
    ok: bool = True
    note: str = ""


def _handle():
    import cudnn

    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    return handle


def band_graph(handle, q, k, v, window: int, scaling: float, backward: bool):
    """The band's forward or backward graph as cudnn-frontend's torch op builds it, with plans from
    heuristics A, B and FALLBACK (unbuilt)."""
    import cudnn

    io, fp32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT
    batch, heads, seq, _ = q.shape
    g = cudnn.pygraph(handle=handle, io_data_type=io, intermediate_data_type=fp32, compute_data_type=fp32)

    def tensor(name, like, dtype=io):
        return g.tensor(
            name=name, dim=list(like.shape), stride=list(like.stride()), data_type=dtype, uid=UID[name]
        )

    q_t, k_t, v_t = tensor("q", q), tensor("k", k), tensor("v", v)
    stats_dim, stats_stride = [batch, heads, seq, 1], [heads * seq, seq, 1, 1]
    band = dict(
        attn_scale=scaling,
        diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT,
        diagonal_band_left_bound=min(window, seq),
        diagonal_band_right_bound=0,
    )
    if backward:
        o_t, do_t = tensor("o", q), tensor("do", q)
        stats = g.tensor(name="stats", dim=stats_dim, stride=stats_stride, data_type=fp32, uid=UID["stats"])
        grads = g.sdpa_backward(name="bwd", q=q_t, k=k_t, v=v_t, o=o_t, dO=do_t, stats=stats, **band)
        for name, grad, like in zip(("dq", "dk", "dv"), grads, (q, k, v)):
            grad.set_uid(UID[name]).set_output(True).set_dim(list(like.shape)).set_stride(list(like.stride()))
            grad.set_data_type(io)
    else:
        o_t, stats = g.sdpa(name="fwd", q=q_t, k=k_t, v=v_t, generate_stats=True, **band)
        o_t.set_uid(UID["o"]).set_output(True).set_dim(list(q.shape)).set_stride(
            list(q.stride())
        ).set_data_type(io)
        stats.set_uid(UID["stats"]).set_output(True).set_dim(stats_dim).set_stride(
            stats_stride
        ).set_data_type(fp32)
    g.validate()
    g.build_operation_graph()
    try:
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.B, cudnn.heur_mode.FALLBACK])
    except Exception:  # a mode with no engine for this graph: the shipped op's two modes
        log.exception("heuristics A, B, FALLBACK failed; trying A, FALLBACK")
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    return g


def plan_label(g, index: int) -> str:
    parts = []
    for what, get in (("name", g.get_plan_name_at_index), ("engine, knobs", g.get_engine_and_knobs_at_index)):
        try:
            parts.append(f"{get(index)}")
        except Exception as err:  # a field this build cannot report
            parts.append(f"{what}: {type(err).__name__}")
    return f"#{index} " + " ".join(parts).replace("|", "/")


class Plans(CudnnBackward):
    """One length's inputs, the shipped forward's merged out / lse and the float64 references
    (cudnn_tail_tuning's), and the forward's reference rows."""

    def __init__(self, args, n: int, kernel_cfgs: range, show):
        super().__init__(args, n)
        self.kernel_cfgs = kernel_cfgs
        # called with this pass's rows after each plan's row (partial results survive a kill)
        self.show = show
        self.ref_out, self.ref_lse, _ = self.case.reference(args.window, backward=True)
        self.handle = _handle()

    def check_forward(self, out, lse) -> tuple[str, bool]:
        c, a = self.case, self.case.args
        merge_sinks(c.q, c.k, c.v, out, lse, a.window, a.keep_first, c.scaling)
        errors = {"out": rel(out[0][:, c.rows], self.ref_out), "lse": rel(lse[0][:, c.rows], self.ref_lse)}
        text = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        return text, errors["out"] < OUT_TOL and errors["lse"] < LSE_TOL

    def check_backward(self, dq, dk, dv) -> tuple[str, bool]:
        self.tail((dq, dk, dv), GPU_CONFIG)
        return self.grad_errors(dq, dk, dv)

    def shipped_rows(self) -> list[Row]:
        c, a = self.case, self.case.args
        out, lse = cudnn_swa.window_attention(c.q, c.k, c.v, a.window, c.scaling)
        fwd_errors, fwd_ok = self.check_forward(out, lse)
        fwd_ms = bench_ms(lambda: cudnn_swa.window_attention(c.q, c.k, c.v, a.window, c.scaling))

        bwd_errors, bwd_ok = self.check_backward(*self.band())
        return [
            Row(c.n, "fwd", "shipped: torch.ops.cudnn.sdpa_fwd (heuristics A, FALLBACK)", fwd_ms, fwd_errors, fwd_ok),
            Row(c.n, "bwd", "shipped: torch.ops.cudnn.sdpa_bwd (heuristics A, FALLBACK)", bench_ms(self.band),
                bwd_errors, bwd_ok),
        ]  # fmt: skip

    def plan_rows(self, backward: bool) -> list[Row]:
        c, a = self.case, self.case.args
        direction = "bwd" if backward else "fwd"
        try:
            g = band_graph(self.handle, c.q, c.k, c.v, a.window, c.scaling, backward)
            count = g.get_execution_plan_count()
        except Exception as err:
            log.exception("n=%d %s graph failed", c.n, direction)
            return [
                Row(c.n, direction, "graph", math.nan, "-", False, f"ERROR {type(err).__name__}: {err}"[:200])
            ]
        count, declined = self.append_kernel_cfgs(g, count)
        rows, unbuilt = [], []
        for index in range(count):
            label = plan_label(g, index)
            try:
                g.build_plan_at_index(index)
            except Exception as err:  # a knob value this engine does not take for this graph
                log.info("n=%d %s %s does not build: %s", c.n, direction, label, type(err).__name__)
                unbuilt.append(label.split(" ", 1)[1])
                continue
            try:
                workspace = torch.empty(max(g.get_workspace_size_plan_at_index(index), 1), dtype=torch.uint8,
                                        device=c.q.device)  # fmt: skip
                if backward:
                    grads = [torch.empty_like(t) for t in (c.q, c.k, c.v)]
                    pack = {UID["q"]: c.q, UID["k"]: c.k, UID["v"]: c.v, UID["o"]: self.out, UID["do"]: c.dout,
                            UID["stats"]: self.lse.unsqueeze(-1).contiguous(), UID["dq"]: grads[0],
                            UID["dk"]: grads[1], UID["dv"]: grads[2]}  # fmt: skip
                else:
                    out = torch.empty_like(c.q)
                    stats = torch.empty(*c.q.shape[:3], 1, dtype=torch.float32, device=c.q.device)
                    pack = {UID["q"]: c.q, UID["k"]: c.k, UID["v"]: c.v, UID["o"]: out, UID["stats"]: stats}

                def run(pack=pack, workspace=workspace, index=index):
                    g.execute_plan_at_index(pack, workspace, index, handle=self.handle)

                run()
                if backward:
                    errors, ok = self.check_backward(*grads)
                else:
                    errors, ok = self.check_forward(out, stats.squeeze(-1))
                ms = bench_ms(run)
            except Exception as err:  # a plan that does not build or run: reported, the probe goes on
                log.exception("n=%d %s plan %d failed", c.n, direction, index)
                rows.append(Row(c.n, direction, label, math.nan, "-", False, f"ERROR {type(err).__name__}"))
                continue
            rows.append(Row(c.n, direction, label, ms, errors, ok))
            self.show(rows)
        if unbuilt:
            rows.append(
                Row(c.n, direction, f"did not build: {'; '.join(unbuilt)}", math.nan, "-", True, "not run")
            )
        if declined:
            rows.append(
                Row(c.n, direction, f"refused at plan creation: {declined}", math.nan, "-", True, "not run")
            )
        return rows

    def append_kernel_cfgs(self, g, count: int) -> tuple[int, str]:
        """Append a plan for every other ``KERNEL_CFG`` value in ``--kernel-cfgs`` of the heuristics'
        first choice's engine when it has that knob (the other engines measured 2x slower on the H200);
        returns the new plan count and the values cuDNN refused to make a plan of, as ranges."""
        import cudnn

        try:
            engine, knobs = g.get_engine_and_knobs_at_index(0) if count else (None, None)
        except Exception:  # a plan without a backend engine id (a python engine): nothing to vary
            return count, ""
        knob = cudnn.knob_type.KERNEL_CFG
        if knob not in (knobs or {}):
            return count, ""
        refused = []
        for value in self.kernel_cfgs:
            if value == knobs[knob]:
                continue
            try:
                g.create_execution_plan(engine, {knob: value})
            except Exception as err:
                log.info("engine %d KERNEL_CFG %d refused: %s", engine, value, type(err).__name__)
                refused.append(value)
        declined = f"engine {engine} KERNEL_CFG {value_ranges(refused)}" if refused else ""
        return g.get_execution_plan_count(), declined


def kernel_cfg_range(text: str) -> range:
    """``--kernel-cfgs``' "LOW-HIGH" (inclusive, 0 <= LOW <= HIGH)."""
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit() and int(low) <= int(high)):
        raise argparse.ArgumentTypeError(f"must be LOW-HIGH with 0 <= LOW <= HIGH (e.g. 0-63), got {text!r}")
    return range(int(low), int(high) + 1)


def value_ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    spans: list[list[int]] = []
    for value in sorted(values):
        if spans and value == spans[-1][1] + 1:
            spans[-1][1] = value
        else:
            spans.append([value, value])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def format_row(row: Row, rows: list[Row]) -> str:
    shipped = next((r for r in rows if r.n == row.n and r.direction == row.direction and r.plan.startswith("shipped")),
                   None)  # fmt: skip
    timed = row.ms == row.ms
    vs = f"{shipped.ms / row.ms:.3f}x" if shipped is not None and timed else "-"
    verdict = ("ok" if row.ok else "FAIL") + (f" ({row.note})" if row.note else "")
    ms = f"{row.ms:.3f}" if timed else "-"
    return f"| {row.n} | {row.direction} | {row.plan} | {ms} | {vs} | {row.errors} | {verdict} |"


def report(args, rows: list[Row], kernel_cfgs: range) -> str:
    lines = [
        "# cuDNN's plans for the band (0 <= i - j < W): forward and backward, each checked and timed",
        "",
        *environment_lines(args),
        f"- cuDNN: {cudnn_line()}",
        "- plans: every plan heuristics A, B and FALLBACK offer for the graph cudnn_swa builds (BHSD, the band, "
        "float32 stats), then their first choice's engine at every other KERNEL_CFG value of "
        f"{kernel_cfgs.start}-{kernel_cfgs.stop - 1}; `shipped` is cudnn-frontend's torch op, which builds the first plan "
        "of A then FALLBACK",
        "- time: median of triton.testing.do_bench; `vs shipped` = the shipped op's time over the plan's",
        f"- correctness: fwd plans' output merged with the sinks vs float64 ({args.rows} query rows; out {OUT_TOL}, "
        f"lse {LSE_TOL}); bwd plans' gradients completed by the sink tail vs float64 ({args.rows} query rows for "
        f"dq, {args.rows} key rows with 3 sinks for dk / dv; {DQ_TOL})",
        "",
        "| n | pass | plan | ms | vs shipped | rel. error | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(lines + [format_row(r, rows) for r in rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, extra = sweep_args(
        __doc__,
        "benchmarks/results/cudnn_plans.md",
        argv,
        lambda p: p.add_argument(
            "--kernel-cfgs",
            type=kernel_cfg_range,
            default="0-63",
            help="KERNEL_CFG values to try on the heuristics' first engine, when it has that knob (LOW-HIGH, inclusive)",
        ),
    )
    kernel_cfgs = extra.kernel_cfgs
    if not cudnn_swa.frontend_available():
        raise SystemExit("cudnn_plans.py needs cudnn-frontend (pip install nvidia-cudnn-frontend)")
    rows: list[Row] = []

    def show(more: list[Row]) -> None:  # rows grows in place (+=): this sees every finished pass
        atomic_write_text(args.out, report(args, rows + more, kernel_cfgs))

    for n in args.sizes:
        plans = Plans(args, n, kernel_cfgs, show)
        rows += plans.shipped_rows()
        for backward in (True, False):  # the backward first: the larger part of a training step's attention
            rows += plans.plan_rows(backward)
            atomic_write_text(args.out, report(args, rows, kernel_cfgs))
        del plans
        torch.cuda.empty_cache()
    text = report(args, rows, kernel_cfgs)
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if all(r.ok for r in rows if r.plan.startswith("shipped")) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
