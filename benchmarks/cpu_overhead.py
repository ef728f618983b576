"""CPU cost of the patch when the window covers the whole sequence (W >= n): the patched model
must cost at most 3% more than the stock model (the per-forward plan is the only extra work).

Stock and patched forwards of the same weights alternate in one process; the median of many
repetitions is compared, and the outputs are checked to match. Writes a markdown table to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen3Config

from swaa_patch import SWAAConfig, apply_swaa, hack_hf_swaa, remove_swaa
from swaa_patch.jobs.io import atomic_write_text

SHAPE = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    max_position_embeddings=4096,
)


@torch.no_grad()
def timed(model, ids) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    logits = model(input_ids=ids, use_cache=False).logits
    return time.perf_counter() - start, logits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="256,1024")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/cpu_overhead.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    hack_hf_swaa()
    rows = []
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**SHAPE), attn_implementation=attn).eval()
        for n in (int(x) for x in args.lengths.split(",")):
            ids = torch.randint(0, SHAPE["vocab_size"], (1, n))
            stock, patched = [], []
            for _ in range(3):  # warm-up
                timed(model, ids)
            for rep in range(args.repeats):
                # ABBA order, so neither variant always runs right after the other
                for use_swaa in (False, True) if rep % 2 == 0 else (True, False):
                    if use_swaa:
                        apply_swaa(model, SWAAConfig(sliding_window_size=n, keep_first=4))
                        t, out = timed(model, ids)
                        patched.append(t)
                    else:
                        remove_swaa(model)
                        t, ref = timed(model, ids)
                        stock.append(t)
            remove_swaa(model)
            err = float((out - ref).norm() / ref.norm())
            ratio = statistics.median(patched) / statistics.median(stock)
            rows.append(
                (attn, n, statistics.median(stock) * 1e3, statistics.median(patched) * 1e3, ratio, err)
            )
    write(args.out, rows, args.repeats)


def write(path, rows, repeats) -> None:
    lines = [
        "# CPU overhead of the patch at W >= n (goal: patched / stock <= 1.03)",
        "",
        f"- date: {datetime.date.today()}; device: CPU ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        f"- torch {torch.__version__}, transformers {transformers.__version__}",
        f"- model: Qwen3 architecture, {SHAPE['num_hidden_layers']} layers, hidden {SHAPE['hidden_size']}, "
        f"random fp32 weights; batch 1; median of {repeats} forwards each, in ABBA order, after warm-up",
        "",
        "| backend | tokens | stock ms | patched ms | patched / stock | rel. error vs stock |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {n} | {s:.1f} | {p:.1f} | {r:.3f} | {e:.1e} |" for a, n, s, p, r, e in rows]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    print(text)


if __name__ == "__main__":
    main()
