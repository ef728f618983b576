"""Throughput of the user-level jobs, ``swaa eval`` and ``swaa distill``, with ``compile`` off and on.

Each row is the job's own command (``python -m swaa_patch.cli eval|distill SETTINGS``) in a new
process on a model folder of the Qwen3-4B shape (random bf16 weights, the built-in tokenizer; the
folder ``sft_speed.py`` builds), timed from start to exit: what a user waits for, model loading
included. ``compile: off`` decodes eagerly (eval: SWAA's bounded SWAACache; distill: the teacher's
DynamicCache), ``compile: on`` compiles the decode step into CUDA graphs (eval: StaticSWAACache;
distill: the full-attention teacher's stock StaticCache). ``on`` runs twice, each in a new process:
first with empty inductor and Triton caches (a user's first job), then with the caches the first
left on disk (every later job). Random weights never emit EOS, so every answer is
``max_new_tokens`` long in every row. Each job's output folder is new, so nothing resumes.

    python benchmarks/job_throughput.py             # the H200 run (about 6 min)
    python benchmarks/job_throughput.py --tiny      # a tiny model on the CPU (compile: dynamo only), a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_common import compile_cache_env  # noqa: E402  (this folder is on sys.path)
from sft_speed import SFTSpeedArgs, build_model_folder  # noqa: E402

from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

from shapes import QWEN3_4B  # noqa: E402

TINY_SHAPE = dict(QWEN3_4B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)  # fmt: skip
RUNS = (("off", "off"), ("on", "on, empty compile caches"), ("on", "on, compile caches of the run before"))


@dataclass
class Row:
    job: str
    compile: str
    label: str
    samples: int
    seconds: float
    ok: bool
    note: str = ""


def settings_for(job: str, args: argparse.Namespace, model: Path, out: Path, compile_mode: str) -> dict:
    datasets = [{"task": "passkey", "lengths": args.lengths, "depths": [0.5], "samples": args.samples_per_length,
                 "seed": 2}]  # fmt: skip
    common = {"datasets": datasets, "output_dir": str(out), "max_new_tokens": args.new_tokens,
              "batch_size": args.batch, "compile": compile_mode, "attn_implementation": "sdpa",
              "dtype": "float32" if args.tiny else "bfloat16", "device": "cpu" if args.tiny else "cuda",
              "chat_template": False, "seed": 0}  # fmt: skip
    if job == "distill":
        return {**common, "model": str(model)}
    swaa = {"sliding_window_size": args.window, "keep_first": args.keep_first}
    return {**common, "scoring": "auto", "settings": [{"swaa_config": swaa, "model_list": [str(model)]}]}


def run_job(job: str, compile_mode: str, label: str, fresh_caches: bool, args: argparse.Namespace,
            model: Path, work: Path) -> Row:
    name = f"{job}-{compile_mode}-{len(list(work.glob(f'{job}-{compile_mode}-*')))}"
    folder = work / name
    folder.mkdir()
    caches = work / "compile_caches"
    if fresh_caches:
        shutil.rmtree(caches, ignore_errors=True)
    env = {**os.environ, **compile_cache_env(caches), "TQDM_DISABLE": "1"}
    settings = folder / "settings.json"
    settings.write_text(json.dumps(settings_for(job, args, model, folder / "out", compile_mode), indent=1))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "swaa_patch.cli", job, str(settings)], env=env,
                          capture_output=True, text=True, cwd=HERE.parent)  # fmt: skip
    seconds = time.perf_counter() - start
    (folder / "job.log").write_text(proc.stdout + proc.stderr)
    samples = len(args.lengths) * args.samples_per_length
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Row(job, compile_mode, label, samples, seconds, False, f"exit {proc.returncode}: {tail[0][:120]}")
    return Row(job, compile_mode, label, samples, seconds, True)


def report(rows: list[Row], args: argparse.Namespace) -> str:
    import torch
    import transformers

    device = "CPU" if args.tiny else torch.cuda.get_device_name(0)
    lines = [
        "# Job throughput: `swaa eval` and `swaa distill` with `compile` off and on",
        "",
        f"- date: {datetime.date.today()}; device: {device}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, python {platform.python_version()}",
        f"- model: Qwen3 {'tiny' if args.tiny else '4B'} shape, random {'float32' if args.tiny else 'bf16'} weights, "
        f"built-in tokenizer; passkey prompts of {' and '.join(map(str, args.lengths))} tokens, "
        f"{args.samples_per_length} each ({len(args.lengths) * args.samples_per_length} samples), batch {args.batch}, "
        f"{args.new_tokens} new tokens each (random weights never stop early); eval: SWAA W {args.window}, "
        f"keep_first {args.keep_first}; distill: the full-attention teacher",
        "- seconds: the job's process from start to exit (model loading included); each row a new process and a "
        "new output folder",
        "",
        "| job | compile | samples | seconds | samples/s | vs off |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        off = next((o.seconds for o in rows if o.job == r.job and o.compile == "off" and o.ok), None)
        ratio = f"{off / r.seconds:.2f}x" if off and r.ok else "-"
        sps = f"{r.samples / r.seconds:.2f}" if r.ok else "-"
        lines.append(f"| swaa {r.job} | {r.label} | {r.samples} | {r.seconds:.1f} | {sps} | {ratio} |"
                     + (f" failed: {r.note}" if not r.ok else ""))  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", default="eval,distill", help="comma-separated subset of eval,distill")
    p.add_argument("--lengths", default="4096,8192", help="prompt lengths, tokens")
    p.add_argument("--samples-per-length", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--keep-first", type=int, default=100)
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    p.add_argument("--work", default="", help="model folder, job folders and compile caches (default: a temp dir)")
    p.add_argument("--out", default="benchmarks/results/job_throughput.md")
    args = p.parse_args(argv)
    args.lengths = [int(s) for s in args.lengths.split(",")]
    if args.tiny:
        args.lengths, args.samples_per_length, args.batch, args.new_tokens = [256, 384], 4, 3, 8
        args.window, args.keep_first = 32, 4
    jobs = args.jobs.split(",")
    if set(jobs) - {"eval", "distill"}:
        raise SystemExit(f"--jobs: choose from eval, distill; got {args.jobs!r}")
    work = Path(args.work or tempfile.mkdtemp(prefix="job_throughput_")).resolve()  # settings resolve paths from their folder
    work.mkdir(parents=True, exist_ok=True)
    shape = TINY_SHAPE if args.tiny else QWEN3_4B
    model = build_model_folder(SFTSpeedArgs(tiny=args.tiny), shape, work)
    rows: list[Row] = []
    for job in jobs:
        for i, (mode, label) in enumerate(RUNS):
            rows.append(run_job(job, mode, label, fresh_caches=i == 1, args=args, model=model, work=work))
            atomic_write_text(args.out, report(rows, args))  # finished rows survive a kill
            print(report(rows, args).splitlines()[-1], flush=True)
    sys.stdout.write(report(rows, args))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
