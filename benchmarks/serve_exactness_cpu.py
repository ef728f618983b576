"""Continuous batching equals generate() exactly, in float32, at the serving benchmark's layout.

serve_speed.py checks its SWAA rows token for token against ``model.generate`` on the GPU, in
bf16, where a packed, chunked prefill (``max_batch_tokens`` per forward) and generate's one-shot
prefill round differently and a random model's near-ties can split greedy tokens. This script
takes bf16 out of the question: a small random Qwen3 in float32 on the CPU, with the benchmark's
window, sinks, page size and prefill chunk (W 2048, 100 sinks, pages of 256 tokens, 8192 tokens
per forward), requests long enough to wrap the ring and span several chunks, served together by
``generate_batch`` and compared with ``generate`` of each prompt alone, bounded and
force_fa_decode. The tests check the same property on tiny shapes; this is the benchmark's shape.

    python benchmarks/serve_exactness_cpu.py --out benchmarks/results/serve_exactness_cpu.md   # ~1 min, 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen3Config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from serve_speed import TINY, cb_config, greedy  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

from swaa_patch import SWAAConfig, apply_swaa, hack_hf_swaa  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402


def serve_and_compare(model, config: SWAAConfig, prompts: list[list[int]], args) -> list[tuple[int, int, bool]]:
    """(prompt length, tokens, equal to generate alone) per request, served together."""
    apply_swaa(model, config)
    generation = greedy(args.new_tokens)
    cb = cb_config(args.page_size, max_batch_tokens=args.max_batch_tokens, num_blocks=args.num_blocks)
    outputs = model.generate_batch(prompts, generation_config=generation, continuous_batching_config=cb)
    served = sorted(outputs.values(), key=lambda o: int(o.request_id.split("_")[-1]))
    rows = []
    for prompt, out in zip(prompts, served):
        with torch.no_grad():
            alone = model.generate(torch.tensor([prompt]), generation_config=generation)[0, len(prompt) :].tolist()
        rows.append((len(prompt), len(alone), list(out.generated_tokens) == alone))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="20000,13000,20000", help="prompt tokens per request")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--keep-first", type=int, default=100)
    p.add_argument("--page-size", type=int, default=256)
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--num-blocks", type=int, default=320)
    p.add_argument("--new-tokens", type=int, default=12)
    p.add_argument("--out", default="benchmarks/results/serve_exactness_cpu.md")
    args = p.parse_args()
    hack_hf_swaa()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen3Config(**dict(TINY, max_position_embeddings=65536)),
                                             attn_implementation="sdpa", dtype=torch.float32).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, TINY["vocab_size"], (n,), generator=g).tolist() for n in map(int, args.lengths.split(","))]
    lines = [
        "# Continuous batching vs generate(), float32, the serving benchmark's layout (CPU)",
        "",
        f"- date: {datetime.date.today()}; {platform.machine()} CPU, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        f"- model: tiny random Qwen3 ({TINY['num_hidden_layers']} layers, hidden {TINY['hidden_size']}), float32, sdpa; "
        f"W={args.window}, keep_first={args.keep_first}; engine: pages of {args.page_size} tokens, "
        f"{args.max_batch_tokens} tokens per forward, {args.num_blocks} pages",
        f"- command: `python benchmarks/serve_exactness_cpu.py` ({len(prompts)} requests served together, "
        f"{args.new_tokens} greedy tokens each, each compared with generate() of its prompt alone)",
        "",
        "| recipe | prompt tokens | new tokens | equal to generate | seconds (all requests) |",
        "| --- | --- | --- | --- | --- |",
    ]
    ok = True
    for name, fad in (("SWAA bounded (sinks + ring)", False), ("SWAA + force_fa_decode", True)):
        start = time.perf_counter()
        rows = serve_and_compare(model, SWAAConfig(sliding_window_size=args.window, keep_first=args.keep_first,
                                                   force_fa_decode=fad), prompts, args)  # fmt: skip
        seconds = time.perf_counter() - start
        for length, new, equal in rows:
            lines.append(f"| {name} | {length} | {new} | {'yes' if equal else 'NO'} | {seconds:.1f} |")
            ok &= equal
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
