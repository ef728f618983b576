"""FlashAttention-4's Hopper kernels for the rule, against the shipped training path, in one run.

Issue 17's attention target (fwd+bwd >= 6x / 24x full-causal SDPA at 32K / 128K) is missed by the
shipped Hopper path (cuDNN's band + the Triton sink merge and sink tail) by 2-3 %, and cuDNN 9.19 has
no faster plan (results/cudnn_plans.md). FlashAttention-4 (``flash-attn-4`` on PyPI: CuTe DSL,
JIT-compiled, needs ``nvidia-cutlass-dsl``) ships Hopper forward and backward kernels
(``flash_fwd_sm90`` / ``flash_bwd_sm90``) with a native sliding window and with block sparsity plus
a ``mask_mod``. This script times, next to SDPA and the shipped path, on attention_speed.py's shapes
and checks (float64 rows for out / lse / dq, key rows for dk / dv):

- **fa4 rule**: the whole rule in one pass, the training path of ``swaa_patch/backends/fa4_swa.py``: a
  block-sparse layout (per 128-query block the window's and the sinks' 128-key blocks, full blocks
  apart from the partial ones its ``mask_mod`` masks) forward and backward;
- **cudnn fwd + fa4 band bwd + sink tail**: the shipped forward, FA4's native sliding-window
  backward fed the merged output and lse (the band's gradient is its own part of the rule's, as with
  cuDNN's backward), then the Triton sink tail;
- **fa4 band alone** (no sinks: not the rule), forward and fwd+bwd: FA4's own window speed.

Each FA4 row also records its first call's seconds (JIT compile included).
Writes a markdown report to --out (atomically) and prints it.
"""

from __future__ import annotations

import logging
import sys
import time

import torch
from attention_speed import (  # noqa: E402  (benchmarks/ is on sys.path for a script)
    CUDNN_SWA,
    CUDNN_TRAIN,
    DQ_TOL,
    LSE_TOL,
    OUT_TOL,
    Case,
    Row,
    backward_row,
    cudnn_line,
    environment_lines,
    forward_row,
    run_plans,
    run_sizes,
    sweep_args,
    with_table,
)

from swaa_patch.backends import cudnn_swa, fa4_swa  # noqa: E402
from swaa_patch.backends.triton_swa_train import add_sink_tail_gradients  # noqa: E402

log = logging.getLogger("fa4_attention")
FA4_RULE = "fa4 rule (block-sparse + mask_mod)"
HYBRID = "cudnn fwd + fa4 band bwd + triton sink tail fwd+bwd"
FA4_BAND = "fa4 band alone (no sinks: not the rule)"


def bshd(t: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) -> FA4's (B, S, H, D), a view."""
    return t.transpose(1, 2)


class Fa4Case:
    """FA4 callables for one Case: (B, H, n, D) in and out like attention_speed's kernels."""

    def __init__(self, case: Case):
        import flash_attn.cute.interface  # noqa: F401  (its import, ~4 s, is not the layout's time)

        self.case = case
        args = case.args
        start = time.perf_counter()
        self.fwd_tensors, self.bwd_tensors = fa4_swa.sparse_tensors(
            case.n, args.window, args.keep_first, case.q.device
        )
        torch.cuda.synchronize()
        self.layout_s = time.perf_counter() - start
        self.tiles = (int(self.fwd_tensors.mask_block_cnt.sum()), int(self.fwd_tensors.full_block_cnt.sum()))
        self.mask_mod = fa4_swa.rule_mask_mod(args.window, args.keep_first)

    def rule_fwd(self, q, k, v):
        from flash_attn.cute.interface import _flash_attn_fwd

        out, lse, *_ = _flash_attn_fwd(
            bshd(q), bshd(k), bshd(v), softmax_scale=self.case.scaling, mask_mod=self.mask_mod,
            block_sparse_tensors=self.fwd_tensors, return_lse=True,
        )  # fmt: skip
        return bshd(out), lse

    def rule(self, q, k, v):
        args = self.case.args
        return fa4_swa.swa_sink_attention_fa4(q, k, v, args.window, args.keep_first, self.case.scaling)

    def band_fwd(self, q, k, v):
        from flash_attn.cute.interface import _flash_attn_fwd

        out, lse, *_ = _flash_attn_fwd(
            bshd(q), bshd(k), bshd(v), softmax_scale=self.case.scaling,
            window_size_left=self.case.args.window - 1, window_size_right=0, return_lse=True,
        )  # fmt: skip
        return bshd(out), lse

    def band(self, q, k, v):
        from flash_attn.cute.interface import flash_attn_func

        out, _ = flash_attn_func(
            bshd(q),
            bshd(k),
            bshd(v),
            softmax_scale=self.case.scaling,
            window_size=(self.case.args.window - 1, 0),
        )
        return bshd(out)

    def hybrid(self, q, k, v):
        args = self.case.args
        return CudnnFa4Band.apply(q, k, v, args.window, args.keep_first, self.case.scaling)


class CudnnFa4Band(torch.autograd.Function):
    """The shipped forward (cuDNN band + sink merge); backward: FA4's sliding-window backward of the
    band from the merged out / lse, then the Triton sink tail (as the shipped path does after cuDNN's)."""

    @staticmethod
    def forward(ctx, q, k, v, window, keep_first, scaling):
        out, lse = cudnn_swa.swa_sink_attention_cudnn(q, k, v, window, keep_first, scaling)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.rule = (window, keep_first, scaling)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from flash_attn.cute.interface import _flash_attn_bwd

        q, k, v, out, lse = ctx.saved_tensors
        window, keep_first, scaling = ctx.rule
        dq, dk, dv = _flash_attn_bwd(
            bshd(q), bshd(k), bshd(v), bshd(out), bshd(grad_out), lse, scaling,
            window_size_left=window - 1, window_size_right=0,
        )  # fmt: skip
        dq, dk, dv = bshd(dq), bshd(dk), bshd(dv)
        add_sink_tail_gradients(q, k, v, out, lse, grad_out, dq, dk, dv, window, keep_first, scaling)
        return dq, dk, dv, None, None, None


def timed_first_call(fn, *inputs) -> float:
    """Seconds of a first call (FA4 compiles its kernel on it), synchronised."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*inputs)
    if isinstance(result, torch.Tensor) and result.requires_grad:
        result.backward(torch.randn_like(result))
    torch.cuda.synchronize()
    return time.perf_counter() - start


def with_first_call(row_fn, first_fn, inputs, grad: bool):
    """A Row from ``row_fn()`` whose note says ``first_fn``'s first call's seconds (JIT included)."""
    if grad:
        inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    first = timed_first_call(first_fn, *inputs)
    row = row_fn()
    row.note = (row.note + "; " if row.note else "") + f"first call {first:.1f} s"
    return row


def run_size(args, n: int) -> tuple[list[Row], str]:
    case = Case(args, n)
    W = args.window
    fa4 = Fa4Case(case)
    qkv = (case.q, case.k, case.v)
    plans = [
        ("sdpa full causal fwd", lambda: forward_row(case, "sdpa full causal fwd", case.sdpa, None)),
        (CUDNN_SWA, lambda: forward_row(case, CUDNN_SWA, case.cudnn_swa, W, True)),
        (
            f"{FA4_RULE} fwd",
            lambda: with_first_call(
                lambda: forward_row(case, f"{FA4_RULE} fwd", fa4.rule_fwd, W, True), fa4.rule_fwd, qkv, False
            ),
        ),
        (
            f"{FA4_BAND} fwd",
            lambda: with_first_call(
                lambda: forward_row(case, f"{FA4_BAND} fwd", fa4.band_fwd, W, True, keep_first=0),
                fa4.band_fwd,
                qkv,
                False,
            ),
        ),  # fmt: skip
        ("sdpa full causal fwd+bwd", lambda: backward_row(case, "sdpa full causal fwd+bwd", case.sdpa, None)),
        (CUDNN_TRAIN, lambda: backward_row(case, CUDNN_TRAIN, case.cudnn_trainable, W)),
        (
            f"{FA4_RULE} fwd+bwd",
            lambda: with_first_call(
                lambda: backward_row(case, f"{FA4_RULE} fwd+bwd", fa4.rule, W), fa4.rule, qkv, True
            ),
        ),
        (
            HYBRID,
            lambda: with_first_call(lambda: backward_row(case, HYBRID, fa4.hybrid, W), fa4.hybrid, qkv, True),
        ),
        (
            f"{FA4_BAND} fwd+bwd",
            lambda: with_first_call(
                lambda: backward_row(case, f"{FA4_BAND} fwd+bwd", fa4.band, W, keep_first=0),
                fa4.band,
                qkv,
                True,
            ),
        ),
    ]
    rows = run_plans(n, plans)
    partial, full = fa4.tiles
    return rows, f"n={n}: {partial} partial + {full} full 128x128 tiles, built in {fa4.layout_s * 1e3:.1f} ms"


def fa4_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ("flash-attn-4", "nvidia-cutlass-dsl-libs-base", "quack-kernels", "apache-tvm-ffi")
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (no metadata)")
    return ", ".join(parts)


def report(args, rows: list[Row], layouts: list[str]) -> str:
    lines = [
        "# FlashAttention-4 on Hopper for the rule, against the shipped path (cuDNN band + Triton sinks)",
        "",
        *environment_lines(args),
        f"- FA4: {fa4_versions()}",
        f"- cuDNN: {cudnn_line()}",
        "- baseline: full-causal SDPA of the same pass, this run; time: median of triton.testing.do_bench",
        "- TFLOP/s: full causal fwd 2*n^2*d*h; SWA+sink fwd 4*n*(W+k)*d*h (band alone: k=0); fwd+bwd 3.5x fwd",
        f"- correctness: as attention_speed.py (float64; out {OUT_TOL}, lse {LSE_TOL}, dq/dk/dv {DQ_TOL})",
        "- block layouts: " + "; ".join(layouts),
    ]
    return with_table(lines, rows)


def main(argv: list[str] | None = None) -> int:
    args, _ = sweep_args(__doc__, "benchmarks/results/fa4_attention.md", argv)
    return run_sizes(args, run_size, report)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
