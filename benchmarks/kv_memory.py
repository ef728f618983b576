"""KV-cache bytes, peak prefill memory and decode speed: stock full attention vs SWAA with the
bounded sink+window cache and chunked prefill, on a Qwen3-4B-shape model with random bf16 weights.

Both runs use the sdpa backend in the same process. Stock: one-shot prefill, DynamicCache. SWAA:
W=2048, keep_first=100, force_fa_decode off (so every layer's cache is bounded), prefill in chunks
of 4W. Correctness is checked in the same run: SWAA's greedy tokens equal those of the same SWAA
model with the unbounded cache and one-shot prefill, at the smallest length.

Writes a markdown table to --out.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen3Config

from swaa_patch import SWAAConfig, apply_swaa, chunked_prefill, default_prefill_chunk, remove_swaa
from swaa_patch.compat import cache_kwargs, output_cache
from swaa_patch.jobs.io import atomic_write_text

from shapes import QWEN3_4B  # benchmarks/shapes.py (a script's folder is on sys.path)

SHAPE = QWEN3_4B


def cache_bytes(cache) -> int:
    return sum(
        layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers if layer.keys is not None
    )


def prefill(model, ids, swaa: bool):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    if swaa:
        result = chunked_prefill(model, ids, chunk_size=default_prefill_chunk(model.config.swaa_config))
        logits, cache = result.logits, result.cache
    else:
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        logits, cache = out.logits, output_cache(out)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base
    return logits, cache, seconds, peak


WARMUP_STEPS = 3


@torch.no_grad()
def decode(model, logits, cache, length: int, steps: int, forced: torch.Tensor | None = None):
    """Greedy decode (or feed ``forced`` tokens); returns tok/s from the median step time after a
    short warm-up (robust to host hiccups), the tokens fed, and the logits of every step."""
    token = logits[:, -1].argmax(-1, keepdim=True) if forced is None else forced[:, :1]
    tokens, step_logits, times = [token], [logits[:, -1].float()], []
    mask = torch.ones(1, length + 1, dtype=torch.long, device=token.device)
    for step in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(input_ids=token, attention_mask=mask, use_cache=True, **cache_kwargs(model, cache))
        token = (
            out.logits[:, -1].argmax(-1, keepdim=True) if forced is None else forced[:, step + 1 : step + 2]
        )
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        step_logits.append(out.logits[:, -1].float())
        tokens.append(token)
        mask = torch.cat([mask, mask[:, :1]], dim=1)
    median = (
        sorted(times[WARMUP_STEPS:])[(steps - WARMUP_STEPS) // 2] if steps > WARMUP_STEPS else float("nan")
    )
    return 1.0 / median, torch.cat(tokens, 1), torch.stack(step_logits, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="8192,32768,131072")
    parser.add_argument("--decode-steps", type=int, default=48)
    parser.add_argument("--out", default="benchmarks/results/kv_memory.md")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: seconds instead of minutes on the CPU
        model = AutoModelForCausalLM.from_config(
            Qwen3Config(**SHAPE), attn_implementation="sdpa", dtype=torch.bfloat16
        )
    model = model.eval()
    config = SWAAConfig(sliding_window_size=2048, keep_first=100)
    rows, check = [], ""
    for n in lengths:
        ids = torch.randint(0, SHAPE["vocab_size"], (1, n), device="cuda")
        for label, swaa in (("stock full attention", False), ("SWAA W=2048 k=100, bounded", True)):
            apply_swaa(model, config) if swaa else remove_swaa(model)
            with torch.no_grad():
                logits, cache, seconds, peak = prefill(model, ids, swaa)
            kv = cache_bytes(cache)
            tps, tokens, step_logits = decode(model, logits, cache, n, args.decode_steps)
            rows.append((n, label, kv, peak, seconds, tps))
            if swaa and n == lengths[0]:
                check = verify_against_unbounded(model, config, ids, tokens, step_logits)
            del cache, logits
            gc.collect()
            torch.cuda.empty_cache()
    del model
    gc.collect()
    torch.cuda.empty_cache()
    check += "; " + verify_in_float32(config, lengths[0])
    write(args.out, rows, check, lengths, args.decode_steps)


@torch.no_grad()
def verify_in_float32(config, n: int, layers: int = 6) -> str:
    """The same teacher-forced check in float32 on a shallower model of the same widths: separates
    real differences from bf16 rounding."""
    torch.manual_seed(1)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            Qwen3Config(**{**SHAPE, "num_hidden_layers": layers}),
            attn_implementation="sdpa",
            dtype=torch.float32,
        ).eval()
    apply_swaa(model, config)
    ids = torch.randint(0, SHAPE["vocab_size"], (1, n), device="cuda")
    result = chunked_prefill(model, ids, chunk_size=default_prefill_chunk(config))
    _, tokens, logits = decode(model, result.logits, result.cache, n, 16)
    return "float32, " + verify_against_unbounded(model, config, ids, tokens, logits)


@torch.no_grad()
def verify_against_unbounded(model, config, ids, bounded_tokens, bounded_logits) -> str:
    """Teacher-forced: the unbounded one-shot path is fed the bounded path's tokens and every
    step's logits are compared (greedy tokens alone flip on near-ties of a random model in bf16)."""
    apply_swaa(model, SWAAConfig(**{**config.to_dict(), "bounded_cache": False}))
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    steps = bounded_tokens.shape[1] - 1
    _, _, logits = decode(model, out.logits, output_cache(out), ids.shape[1], steps, forced=bounded_tokens)
    apply_swaa(model, config)
    rel = float((logits - bounded_logits).norm() / logits.norm())
    agree = float((logits.argmax(-1) == bounded_logits.argmax(-1)).float().mean())
    return (
        f"teacher-forced logits of bounded+chunked vs unbounded+one-shot at n={ids.shape[1]} over "
        f"{steps + 1} steps: rel. error {rel:.2e}, argmax agreement {agree:.0%}"
    )


def write(path, rows, check, lengths, steps) -> None:
    gib = 1024**3
    lines = [
        "# KV cache, peak prefill memory and decode speed: stock vs SWAA bounded cache",
        "",
        f"- date: {datetime.date.today()}; device: {torch.cuda.get_device_name()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}; sdpa backend, bf16, batch 1",
        "- model: Qwen3-4B shape (36 layers, 32 q heads, 8 kv heads, head_dim 128), random weights",
        "- SWAA: W=2048, keep_first=100, force_fa_decode off, chunked prefill of 4W=8192 tokens",
        f"- peak = max allocated during prefill minus allocated before (weights excluded); decode tok/s = 1 / median "
        f"step time over {steps - WARMUP_STEPS} greedy steps after {WARMUP_STEPS} warm-up steps",
        f"- correctness: {check}",
        "",
        "| prompt tokens | run | KV cache | peak prefill memory | prefill s | decode tok/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, label, kv, peak, seconds, tps in rows:
        lines.append(
            f"| {n} | {label} | {kv / gib:.3f} GiB | {peak / gib:.2f} GiB | {seconds:.2f} | {tps:.1f} |"
        )
    swaa = {n: r for n, label, *r in rows if label.startswith("SWAA")}
    stock = {n: r for n, label, *r in rows if label.startswith("stock")}
    lo, hi = lengths[0], lengths[-1]
    lines += [
        "",
        "Ratios measured in this run:",
        f"- SWAA KV bytes at {hi} / at {lo}: {swaa[hi][0] / swaa[lo][0]:.3f} (flat = 1.0)",
        f"- SWAA peak prefill memory at {hi} / at {lo}: {swaa[hi][1] / swaa[lo][1]:.2f} (goal <= 1.3)",
        f"- SWAA decode tok/s at {hi} / at {lo}: {swaa[hi][3] / swaa[lo][3]:.2f} (goal >= 0.9)",
        f"- stock / SWAA KV bytes at {hi}: {stock[hi][0] / swaa[hi][0]:.1f}x; "
        f"decode speed SWAA / stock at {hi}: {swaa[hi][3] / stock[hi][3]:.2f}x",
    ]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    print(text)


if __name__ == "__main__":
    main()
