"""Cold compile time of the decode step: stock StaticCache + compile vs SWAA's StaticSWAACache + compile,
each in a process of its own with empty inductor and Triton caches, the way a user's first run meets it.

decode_speed.py times compiles inside one process, where a later row reuses the kernels an earlier row
put in the caches (the matmul, norm and RoPE kernels are the same), so its compile seconds depend on the
row order. Here every path starts from nothing: a fresh ``decode_speed.py`` process per path, given
fresh ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` folders, batch 1 at one context. Reported per
path: compile s (decode_speed's: the warm-up steps beyond the median step), the process's wall seconds,
where torch says the compile went (its timed phases, summed over frames), Triton kernels compiled (cubin
files in the fresh cache), dynamo graphs, and the row's correctness check (the compiled SWAA step's
logits against the eager bounded path's, in the same process).

    python benchmarks/decode_compile_time.py                 # the H200 run (about 5 min)
    python benchmarks/decode_compile_time.py --tiny          # a tiny model on the CPU (dynamo only), seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_common import compile_cache_env  # noqa: E402  (this folder is on sys.path)

from swaa_patch.backends.static_decode import KERNELS  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

# (label, decode_speed variant, static-decode kernel): stock, then SWAA with each static-decode kernel
PATHS = {
    "stock": ("stock HF, StaticCache + compile", "stock_static_compile", ""),
    **{f"swaa_{kernel}": (f"SWAA, StaticSWAACache + compile, {kernel} decode kernel", "swaa_static_compile", kernel)
       for kernel in KERNELS},
}
# torch's timed phases worth a column (names of torch._dynamo.utils.compilation_time_metrics, torch 2.11)
PHASES = {
    "dynamo": "_compile.compile_inner",  # the whole frame compile, backend included
    "backend": "OutputGraph.call_user_compiler",  # AOT autograd + inductor
    "inductor": "compile_fx_inner",
    "Triton wait": "async_compile.wait",
}


@dataclass
class Result:
    key: str
    compile_s: float | None
    step_ms: float | None
    wall_s: float
    phases: dict[str, float]
    triton_kernels: int
    graphs: int | None
    check: str
    verdict: str


def run_path(key: str, args: argparse.Namespace, work: Path) -> Result:
    _, variant, kernel = PATHS[key]
    caches = Path(tempfile.mkdtemp(prefix=f"cold_{key}_", dir=work))
    env = {**os.environ, **compile_cache_env(caches)}
    out, metrics = caches / "rows.md", caches / "metrics.json"
    cmd = [sys.executable, str(HERE / "decode_speed.py"), "--contexts", str(args.context), "--batches", "1",
           "--batch-context", str(args.context), "--variants", variant, "--reference-context", "0",
           "--eval-prompts", "0", "--steps", str(args.steps), "--stock-steps", str(args.steps),
           "--out", str(out), "--compile-metrics", str(metrics)]  # fmt: skip
    if kernel:
        cmd += ["--decode-kernels", kernel]
    if args.profile:
        cmd += ["--stack-samples", str(work / f"{key}.samples.json")]
    if args.tiny:
        cmd.append("--tiny")
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work / f"{key}.log").write_text(proc.stdout + proc.stderr)
    state = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    rows = [r for r in state.get("rows", []) if r["variant"] == variant]
    phases = json.loads(metrics.read_text()) if metrics.exists() else {}
    kernels = sum(1 for _ in Path(env["TRITON_CACHE_DIR"]).rglob("*.cubin"))
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Result(key, None, None, wall, phases, kernels, None, "-", f"failed (exit {proc.returncode}): {tail[0][:100]}")
    row = rows[0]
    return Result(key, row["compile_s"], row["step_ms"], wall, phases, kernels, row["graphs"], row["check"],
                  "ok" if row["ok"] else f"failed: {row['note']}")  # fmt: skip


def report(results: list[Result], args: argparse.Namespace) -> str:
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else "CPU"
    lines = [
        "# Cold compile of the decode step: stock StaticCache vs StaticSWAACache, one fresh process each",
        "",
        f"- date: {datetime.date.today()}; device: {device}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, python {platform.python_version()}",
        f"- model: decode_speed.py's ({'tiny' if args.tiny else 'Qwen3 4B shape, random bf16 weights'}); batch 1, "
        f"context {args.context}, {args.steps} greedy steps; SWAA W 2048, keep_first 100 (tiny: decode_speed's tiny sizes)",
        "- each path: `decode_speed.py` in a new process with empty TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR; "
        "compile s = the warm-up steps beyond the median step (what the user waits for); step ms = that median; wall s = the whole process "
        "(model build, prefill, compile, steps, the correctness check); phases = torch's timed compile phases, "
        "summed over frames (dynamo = the frame compile with its backend; backend = AOT autograd + inductor; "
        "Triton wait = waiting for the parallel kernel compiles); Triton kernels = cubin files written",
        "",
        "| path | compile s | vs stock | step ms | wall s | " + " | ".join(f"{p} s" for p in PHASES)
        + " | Triton kernels | graphs | check | verdict |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in PHASES) + " | --- | --- | --- | --- |",
    ]
    stock = next((r.compile_s for r in results if r.key == "stock" and r.compile_s), None)
    for r in results:
        ratio = f"{r.compile_s / stock:.2f}x" if stock and r.compile_s is not None else "-"
        compile_s = "-" if r.compile_s is None else f"{r.compile_s:.1f}"
        phases = " | ".join(f"{r.phases[name]:.1f}" if name in r.phases else "-" for name in PHASES.values())
        step = "-" if r.step_ms is None else f"{r.step_ms:.2f}"
        lines.append(f"| {PATHS[r.key][0]} | {compile_s} | {ratio} | {step} | {r.wall_s:.0f} | {phases} | {r.triton_kernels} | "
                     f"{'-' if r.graphs is None else r.graphs} | {r.check} | {r.verdict} |")  # fmt: skip
    lines += phase_table(results)
    if args.profile:
        lines += profile_tables(results, Path(args.work), args.profile)
    return "\n".join(lines) + "\n"


def phase_table(results: list[Result], top: int = 20) -> list[str]:
    """Every path's seconds in the phases that took longest on any path (torch's own names), so one
    results file says where a compile went without the per-path logs."""
    names = sorted({n for r in results for n in r.phases}, key=lambda n: -max(r.phases.get(n, 0.0) for r in results))
    if not names:
        return []
    head = " | ".join(r.key for r in results)
    lines = ["", f"Compile phases, seconds summed over frames (the {min(top, len(names))} longest):", "",
             f"| phase | {head} |", "| --- |" + " --- |" * len(results)]  # fmt: skip
    for name in names[:top]:
        lines.append(f"| {name} | " + " | ".join(f"{r.phases[name]:.2f}" if name in r.phases else "-" for r in results) + " |")
    return lines


def profile_tables(results: list[Result], work: Path, top: int) -> list[str]:
    """Where the paths' processes spent their seconds (stack_sampler.py: the main thread sampled every
    10 ms, each sample weighted by its wall time; cProfile made the compile 3.3x slower), per function: the ``top``
    functions whose cumulative and whose own (self) seconds exceed stock's most. Torch's timed phases
    name the stage that is slower; this names the functions inside it."""
    stats = {}
    for r in results:
        samples = work / f"{r.key}.samples.json"
        if samples.exists():
            stats[r.key] = json.loads(samples.read_text())
    if len(stats) < 2:
        return []
    keys = list(stats)
    base = "stock" if "stock" in stats else keys[0]
    lines = []
    for column in ("cumulative", "self"):
        names = {n for s in stats.values() for n in s[column]}

        def excess(name: str, column: str = column) -> float:
            return max(s[column].get(name, 0.0) for s in stats.values()) - stats[base][column].get(name, 0.0)

        lines += ["", f"Sampled {column} seconds per function: the {top} that exceed {base}'s most:", "",
                  "| function | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]  # fmt: skip
        for name in sorted(names, key=excess, reverse=True)[:top]:
            lines.append(f"| `{name}` | " + " | ".join(f"{stats[k][column].get(name, 0.0):.2f}" for k in keys) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {tuple(PATHS)}, run in this order")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--steps", type=int, default=24, help="decode steps per path (the first 4 are the warm-up)")
    p.add_argument("--tiny", action="store_true", help="decode_speed's tiny model on the CPU (dynamo only)")
    p.add_argument("--out", default="benchmarks/results/decode_compile_time.md")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="sample each path's stack and add tables of the N functions whose seconds exceed stock's most")
    p.add_argument("--work", default="", help="folder for the fresh caches and each path's log (default: a temp dir)")
    args = p.parse_args(argv)
    keys = args.paths.split(",")
    unknown = set(keys) - set(PATHS)
    if unknown:
        raise SystemExit(f"--paths: unknown {sorted(unknown)}; choose from {tuple(PATHS)}")
    if args.tiny and args.context == 8192:
        args.context = 40
    work = Path(args.work or tempfile.mkdtemp(prefix="decode_compile_time_"))
    args.work = str(work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for key in keys:
        results.append(run_path(key, args, work))
        atomic_write_text(args.out, report(results, args))  # a finished path survives a kill
        print(report(results, args).splitlines()[-1], flush=True)
    sys.stdout.write(report(results, args))
    return 0 if all(r.verdict == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
