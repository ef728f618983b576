"""Decode attention over a StaticSWAACache layer's slots on the GPU: SWAA's Triton split-K kernel at a
sweep of launch parameters, against the two other static-decode kernels (flex_attention compiled, the
grouped masked SDPA call) timed in the same run.

Shapes: the 4B shape's heads (32 q / 8 kv, head_dim 128, bf16); a bounded layer's 2,148 slots
(keep_first 100 + W 2048, all visible) at batch 1, 8 and 32, and full layers (force_fa_decode /
non_sliding_layers) of 32K and 128K slots at batch 1 with the first 3/4 visible. Every kernel runs
inside a CUDA graph (``triton.testing.do_bench_cudagraph``), as in a compiled decode step, so launch
overhead is not counted. GB/s counts the K and V bytes of the slots once; each result is checked
against float64 in the same run. ``triton_decode.LAUNCH`` is chosen from this table.

    python benchmarks/decode_kernel_tuning.py --out benchmarks/results/decode_kernel_tuning.md   # CUDA only
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import logging
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attention_speed import rel  # noqa: E402  (relative L2; nan for a non-finite result)

from swaa_patch.backends import static_decode, triton_decode  # noqa: E402
from swaa_patch.backends.triton_decode import DecodeLaunch, decode_attention  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

log = logging.getLogger("decode_kernel_tuning")
HEADS, KV_HEADS, DIM = 32, 8, 128
# (slots, batch, visible slots): a bounded layer at three batches, full layers at two lengths
SHAPES = ((2148, 1, 2148), (2148, 8, 2148), (2148, 32, 2148), (32768, 1, 24576), (131072, 1, 98304))
SWEEP = dict(block_n=(32, 64, 128), num_warps=(4, 8), num_stages=(2, 3), programs_per_sm=(1, 2, 4))
TOL = 2e-2  # relative L2 against float64, bf16 inputs and output


def launches() -> list[DecodeLaunch]:
    return [DecodeLaunch(*values) for values in itertools.product(*SWEEP.values())]


def bench_us(fn) -> float:
    from triton.testing import do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    return 1000 * float(do_bench_cudagraph(fn, rep=50))


def reference(q, k, v, valid, scaling):
    groups = q.shape[1] // k.shape[1]
    out = []
    for row in range(q.shape[0]):  # one row at a time: 128K slots x 32 heads in float64 is 4 GiB a row
        kr, vr = (t[row : row + 1].double().repeat_interleave(groups, 1) for t in (k, v))
        scores = (q[row : row + 1].double() @ kr.transpose(2, 3)) * scaling
        scores = scores.masked_fill(~valid[row, None, None, None, :], float("-inf"))
        out.append((torch.softmax(scores, -1) @ vr).transpose(1, 2))
    return torch.cat(out)


def sweep_shape(slots: int, batch: int, visible: int, seed: int) -> list[str]:
    g = torch.Generator(device="cuda").manual_seed(seed + slots + batch)
    q = torch.randn(batch, HEADS, 1, DIM, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(batch, KV_HEADS, slots, DIM, device="cuda", dtype=torch.bfloat16, generator=g) for _ in "kv")
    valid = torch.zeros(batch, slots, dtype=torch.bool, device="cuda")
    valid[:, :visible] = True
    scaling = DIM**-0.5
    ref = reference(q, k, v, valid, scaling)
    gb = 2 * batch * KV_HEADS * slots * DIM * 2 / 1e9
    mask = valid[:, None, None, :]
    block_mask = static_decode._block_mask(valid, slots)
    flex = torch.compile(static_decode._flex_decode, fullgraph=True)
    baselines = {
        "flex (compiled)": lambda: flex(q, k, v, block_mask, scaling, None),
        "sdpa (grouped, masked)": lambda: static_decode._grouped_sdpa(q, k, v, mask, scaling),
    }
    rows, flex_us = [], None
    for name, fn in baselines.items():
        err = rel(fn(), ref)
        us = bench_us(fn)
        flex_us = flex_us or us
        rows.append(row(slots, batch, name, "-", us, gb, flex_us, err))
    shipped = triton_decode.LAUNCH
    best = None
    for launch in launches():
        err = rel(decode_attention(q, k, v, valid, scaling, launch=launch), ref)
        us = bench_us(lambda launch=launch: decode_attention(q, k, v, valid, scaling, launch=launch))
        splits, _ = triton_decode.split_plan(batch, KV_HEADS, slots, launch, q.device)
        text = f"{launch_text(launch)}, {splits} splits" + (" (LAUNCH)" if launch == shipped else "")
        rows.append(row(slots, batch, "triton split-K", text, us, gb, flex_us, err))
        if err < TOL and (best is None or us < best[0]):
            best = (us, text)
        log.info("%s", rows[-1])
    if best:
        rows.append(row(slots, batch, "triton split-K, best", best[1], best[0], gb, flex_us, 0.0).replace("| 0.0e+00 |", "| - |"))
    return rows


def launch_text(launch: DecodeLaunch) -> str:
    return f"block_n {launch.block_n}, {launch.num_warps}w {launch.num_stages}s, {launch.programs_per_sm}/SM"


def row(slots, batch, kernel, launch, us, gb, flex_us, err) -> str:
    verdict = "ok" if err < TOL else "FAIL"
    return (f"| {slots} | {batch} | {kernel} | {launch} | {us:.1f} | {gb / (us / 1e6):.0f} | {flex_us / us:.2f}x | "
            f"{err:.1e} | {verdict} |")  # fmt: skip


def report(rows: list[str]) -> str:
    import transformers
    import triton

    props = torch.cuda.get_device_properties(0)
    lines = [
        "# Static-cache decode attention: SWAA's Triton split-K kernel vs flex and SDPA (one layer)",
        "",
        f"- date: {datetime.date.today()}; device: {torch.cuda.get_device_name()} ({props.multi_processor_count} SMs)",
        f"- torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}",
        f"- shapes: {HEADS} q heads / {KV_HEADS} kv heads, head_dim {DIM}, bf16; slots = a layer's cache buffer "
        "(2148 = keep_first 100 + W 2048, all visible; 32K / 128K = full layers, 3/4 visible)",
        "- time: one layer's attention in a CUDA graph (do_bench_cudagraph), median us; GB/s = K+V bytes of the "
        "slots / time; vs flex = flex's time / this row's; rel. error = relative L2 vs float64",
        "",
        "| slots | batch | kernel | launch | us | GB/s | vs flex | rel. error | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(lines + rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/decode_kernel_tuning.md")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("decode_kernel_tuning.py times CUDA kernels: run it on a GPU (benchmarks/run_gpu.sh decode_kernel)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows: list[str] = []
    for slots, batch, visible in SHAPES:
        rows += sweep_shape(slots, batch, visible, args.seed)
        atomic_write_text(args.out, report(rows))  # a finished shape survives a kill
    sys.stdout.write(report(rows))
    return 0 if all("FAIL" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
