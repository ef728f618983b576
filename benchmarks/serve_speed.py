"""Serving throughput and KV memory under continuous batching: stock transformers vs SWAA.

Throughput rows: for each concurrency N, N requests of ``--prompt-tokens`` random tokens are handed
to transformers' continuous-batching engine at once (``model.generate_batch``, greedy,
``--new-tokens`` each); requests/s and tokens/s come from the wall time of the whole batch, and
generated tok/s counts new tokens only. Variants: ``stock`` (the engine's defaults: CUDA graphs
when it picks them, its own paged cache), ``swaa_bounded`` (W, keep_first, every layer a sink +
ring cache) and ``swaa_fad`` (``force_fa_decode``: every layer keeps its keys, decode steps attend
fully, the accuracy recipe). SWAA turns CUDA graphs and compiled steps off (its plan is built per
forward). Per row: KV held per request (the most pages a request held, over all layers), the
most requests holding pages at once (the engine admits what its cache can hold), peak memory
(the engine preallocates its cache from free memory, so this is mostly that), and a correctness
check: the first request's tokens equal ``model.generate`` of its prompt alone (SWAA rows).

Memory table: KV bytes the paged cache holds for one request at several prompt lengths: flat for
``swaa_bounded`` (keep_first + W slots per layer, rounded up to pages), growing for the others.

    python benchmarks/serve_speed.py [--tiny]       # --tiny: a tiny model on the CPU, seconds
    python benchmarks/serve_speed.py --resume ...   # continue a run split over device calls
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import transformers
from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig, Qwen3Config
from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_common import ModelBench, device_and_shape, given_options  # noqa: E402

from swaa_patch import SWAAConfig, apply_swaa, hack_hf_swaa, remove_swaa  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402
from swaa_patch.serving.paged_cache import cached_request_ids, request_cache_bytes  # noqa: E402

from shapes import QWEN3_4B  # noqa: E402  (benchmarks/shapes.py: this folder is on sys.path)

log = logging.getLogger("serve_speed")

TINY = dict(QWEN3_4B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192)  # fmt: skip
VARIANTS = ("swaa_bounded", "swaa_fad", "stock")
LABELS = {
    "stock": "stock continuous batching",
    "swaa_bounded": "SWAA, sinks + ring on every layer",
    "swaa_fad": "SWAA + force_fa_decode (full caches)",
}


@dataclass
class ServeSpeedArgs:
    prompt_tokens: int = 32768
    concurrency: tuple[int, ...] = (4, 16, 64)
    new_tokens: int = 64
    memory_lengths: tuple[int, ...] = (8192, 32768, 131072)  # one request each, for the memory table
    memory_new_tokens: int = 4
    window: int = 2048
    keep_first: int = 100
    page_size: int = 256
    max_batch_tokens: int = 8192
    max_memory_percent: float = 0.9
    num_blocks: int | None = None  # None: the engine sizes its cache from free memory
    variants: tuple[str, ...] = VARIANTS
    tiny: bool = False
    out: str = "benchmarks/results/serve_speed.md"
    resume: bool = False
    seed: int = 0
    command: str = "python benchmarks/serve_speed.py"  # as invoked, for the report
    given: tuple[str, ...] = ()  # options the command line named (bench_common.given_options)


TINY_DEFAULTS = dict(prompt_tokens=256, concurrency=(2, 8), new_tokens=16, memory_lengths=(64, 256, 1024, 4096),
                     window=32, keep_first=4, page_size=16, max_batch_tokens=256, num_blocks=1024,
                     out="benchmarks/results/serve_cpu_tiny.md")  # fmt: skip


@dataclass
class Row:
    table: str  # "throughput" or "memory"
    variant: str
    requests: int
    prompt_tokens: int
    seconds: float = math.nan
    requests_per_s: float = math.nan
    generated_tps: float = math.nan
    total_tps: float = math.nan
    kv_per_request: int = 0
    peak_requests: int = 0
    peak_gib: float = math.nan
    check: str = "-"
    ok: bool = True
    note: str = ""
    run: int = 1


@dataclass
class Watch:
    """What the engine's cache held, seen after every batch it prepared."""

    held: dict[str, int] = field(default_factory=dict)  # request -> most bytes it held
    peak_requests: int = 0


@contextmanager
def watch_cache() -> Iterator[Watch]:
    watch = Watch()
    original = ContinuousBatchingIOs.prepare_batch_tensors

    def prepare_batch_tensors(io, requests_in_batch, *args, **kwargs):
        result = original(io, requests_in_batch, *args, **kwargs)
        for future in requests_in_batch:
            rid = future.state.request_id
            watch.held[rid] = max(watch.held.get(rid, 0), request_cache_bytes(io.cache, rid))
        watch.peak_requests = max(watch.peak_requests, len(cached_request_ids(io.cache)))
        return result

    ContinuousBatchingIOs.prepare_batch_tensors = prepare_batch_tensors
    try:
        yield watch
    finally:
        ContinuousBatchingIOs.prepare_batch_tensors = original


@dataclass
class Bench(ModelBench):
    model: torch.nn.Module | None = None

    def variant_config(self, variant: str) -> SWAAConfig | None:
        if variant == "stock":
            return None
        return replace(self.swaa_config, force_fa_decode=variant == "swaa_fad")

    def cb_config(self) -> ContinuousBatchingConfig:
        a = self.args
        return cb_config(a.page_size, max_batch_tokens=a.max_batch_tokens, max_memory_percent=a.max_memory_percent,
                         num_blocks=a.num_blocks)  # fmt: skip


def cb_config(page_size: int, **fields) -> ContinuousBatchingConfig:
    """The engine's config with pages of ``page_size`` tokens (``block_size`` up to 5.17, ``page_size`` later)."""
    known = ContinuousBatchingConfig.__dataclass_fields__
    return ContinuousBatchingConfig(**fields, **{"page_size" if "page_size" in known else "block_size": page_size})


def prompts(bench: Bench, count: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(bench.args.seed + count * 7919 + length)
    return torch.randint(3, bench.shape["vocab_size"], (count, length), generator=g).tolist()


def greedy(new_tokens: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)


def run_batch(bench: Bench, variant: str, inputs: list[list[int]], new_tokens: int) -> tuple[Row, dict, Watch]:
    """One generate_batch call; returns the row (timings, cache), the outputs and what the cache held."""
    model = bench.model
    remove_swaa(model)
    config = bench.variant_config(variant)
    if config is not None:
        apply_swaa(model, config)
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with watch_cache() as watch:
        bench.sync()
        start = time.perf_counter()
        outputs = model.generate_batch(inputs, generation_config=greedy(new_tokens),
                                       continuous_batching_config=bench.cb_config())  # fmt: skip
        bench.sync()
        seconds = time.perf_counter() - start
    failed = [o.error for o in outputs.values() if o.error is not None]
    generated = sum(len(o.generated_tokens) for o in outputs.values())
    row = Row("throughput", variant, len(inputs), len(inputs[0]), seconds=seconds,
              requests_per_s=len(inputs) / seconds, generated_tps=generated / seconds,
              total_tps=(generated + sum(map(len, inputs))) / seconds,
              kv_per_request=max(watch.held.values(), default=0), peak_requests=watch.peak_requests,
              peak_gib=torch.cuda.max_memory_allocated() / 2**30 if bench.device.type == "cuda" else math.nan,
              ok=not failed, note=f"{len(failed)} failed: {failed[0][:100]}" if failed else "")  # fmt: skip
    return row, outputs, watch


def check_first(bench: Bench, row: Row, inputs: list[list[int]], outputs: dict, new_tokens: int) -> None:
    """SWAA rows: the first request's tokens equal model.generate of its prompt alone (same config)."""
    if row.variant == "stock" or not row.ok:
        return
    first = min(outputs.values(), key=lambda o: int(o.request_id.split("_")[-1]))
    ids = torch.tensor([inputs[0]], device=bench.device)
    with torch.no_grad():
        alone = bench.model.generate(ids, generation_config=greedy(new_tokens))[0, ids.shape[1] :].tolist()
    got = list(first.generated_tokens)
    if got == alone:
        row.check = "tokens = generate"
        return
    agree = next(i for i, (a, b) in enumerate(zip(got + [None], alone + [None])) if a != b)
    row.check = f"first {agree} of {len(alone)} tokens = generate"
    # float32 must match exactly; in bf16 a packed chunked prefill and generate's one-shot prefill round
    # differently and random weights' near-ties then split the greedy tokens (serve_exactness_cpu.py
    # shows float32 equality at this benchmark's window, sinks, pages and chunking)
    row.ok = row.ok and bench.dtype != torch.float32


def run_row(bench: Bench, table: str, variant: str, requests: int, length: int) -> Row:
    new_tokens = bench.args.new_tokens if table == "throughput" else bench.args.memory_new_tokens
    inputs = prompts(bench, requests, length)
    row, outputs, _ = run_batch(bench, variant, inputs, new_tokens)
    row.table = table
    check_first(bench, row, inputs, outputs, new_tokens)
    return row


def fmt(x: float, spec: str) -> str:
    return "-" if isinstance(x, float) and math.isnan(x) else format(x, spec)


def mib(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def report(bench: Bench, rows: list[Row]) -> str:
    a = bench.args
    device = torch.cuda.get_device_name(0) if bench.device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    shape = "tiny Qwen3 (4 layers, hidden 64, 2 kv heads x 16)" if a.tiny else "Qwen3-4B shape (36 layers, 8 kv heads x 128), random weights"
    lines = [
        "# Serving under continuous batching: stock vs SWAA",
        "",
        f"- date: {datetime.date.today().isoformat()}; device: {device}; {platform.platform()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}; {bench.dtype}, sdpa; model: {shape}",
        f"- SWAA: W={a.window}, keep_first={a.keep_first}; engine: page {a.page_size} tokens, max_batch_tokens "
        f"{a.max_batch_tokens}, cache of " + (f"{a.num_blocks} pages" if a.num_blocks else f"{a.max_memory_percent:.0%} of free memory")
        + "; SWAA turns CUDA graphs off",
        f"- command: `{a.command}` (column run: which invocation measured the row; --resume carries rows over)",
        "",
    ]
    throughput = [r for r in rows if r.table == "throughput"]
    if throughput:
        lines += [
            f"## Throughput: N requests of {a.prompt_tokens} prompt tokens at once, {a.new_tokens} new tokens each",
            "",
            "| N | path | requests/s | generated tok/s | total tok/s | seconds | KV per request | most requests cached | peak memory | check | note | run |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in throughput:
            lines.append(
                f"| {r.requests} | {LABELS[r.variant]} | {fmt(r.requests_per_s, '.3f')} | {fmt(r.generated_tps, '.1f')} | "
                f"{fmt(r.total_tps, '.0f')} | {fmt(r.seconds, '.1f')} | {mib(r.kv_per_request)} | {r.peak_requests} | "
                f"{fmt(r.peak_gib, '.1f')}{' GiB' if not math.isnan(r.peak_gib) else ''} | {r.check} | {r.note} | {r.run} |"
            )
        lines.append("")
    memory = [r for r in rows if r.table == "memory"]
    measured = [v for v in VARIANTS if any(r.variant == v for r in memory)]  # this invocation's and resumed rows
    if memory:
        lines += [
            f"## KV bytes the paged cache holds for one request ({a.memory_new_tokens} new tokens)",
            "",
            "| prompt tokens | " + " | ".join(LABELS[v] for v in measured) + " |",
            "| --- |" + " --- |" * len(measured),
        ]
        for length in a.memory_lengths:
            cells = []
            for variant in measured:
                found = [r for r in memory if r.variant == variant and r.prompt_tokens == length]
                cells.append(mib(found[0].kv_per_request) + ("" if found[0].ok else f" ({found[0].note or found[0].check})")
                             if found else "-")  # fmt: skip
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
        bounded = [r.kv_per_request for r in memory if r.variant == "swaa_bounded"]
        if len(bounded) > 1:
            lines += ["", f"SWAA bounded: KV per request at {a.memory_lengths[-1]} / at {a.memory_lengths[0]} tokens "
                          f"= {bounded[-1] / bounded[0]:.3f} (flat = 1.000)"]  # fmt: skip
    return "\n".join(lines) + "\n"


def state_path(args: ServeSpeedArgs) -> str:
    return os.path.splitext(args.out)[0] + ".json"


def load_state(args: ServeSpeedArgs) -> tuple[list[Row], int]:
    if not args.resume or not os.path.exists(state_path(args)):
        return [], 0
    with open(state_path(args)) as f:
        state = json.load(f)
    return [Row(**r) for r in state["rows"]], state["invocations"]


def cases(args: ServeSpeedArgs) -> list[tuple[str, str, int, int]]:
    out = [("memory", v, 1, n) for n in args.memory_lengths for v in args.variants]
    out += [("throughput", v, c, args.prompt_tokens) for c in args.concurrency for v in args.variants]
    return out


def main(args: ServeSpeedArgs) -> int:
    args, device, dtype, shape = device_and_shape(args, TINY_DEFAULTS, TINY, "serve_speed.py")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    hack_hf_swaa()
    torch.manual_seed(args.seed)
    with device:
        model = AutoModelForCausalLM.from_config(Qwen3Config(**shape), attn_implementation="sdpa", dtype=dtype)
    bench = Bench(args, device, dtype, shape, model.eval())
    rows, invocations = load_state(args)
    done = {(r.table, r.variant, r.requests, r.prompt_tokens) for r in rows}
    for case in cases(args):
        if case in done:
            continue
        table, variant, requests, length = case
        log.info("%s %s: %d x %d tokens", table, variant, requests, length)
        try:
            row = run_row(bench, table, variant, requests, length)
        except torch.cuda.OutOfMemoryError as err:
            row = Row(table, variant, requests, length, ok=False, note=f"does not fit: {str(err).splitlines()[0][:80]}")
        except Exception as err:  # one failing row must not cost the rest of the run's device time
            log.exception("row failed")
            row = Row(table, variant, requests, length, ok=False, note=f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")
        row.run = invocations + 1
        rows.append(row)
        atomic_write_text(args.out, report(bench, rows))  # partial results survive a kill
        atomic_write_text(state_path(args), json.dumps({"rows": [dataclasses.asdict(r) for r in rows],
                                                        "invocations": invocations + 1}, indent=1))  # fmt: skip
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    text = report(bench, rows)
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if all(r.ok for r in rows) else 1


def parse_args(argv: list[str] | None = None) -> ServeSpeedArgs:
    d = ServeSpeedArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens)
    p.add_argument("--concurrency", default=",".join(map(str, d.concurrency)), help="requests handed over at once")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens)
    p.add_argument("--memory-lengths", default=",".join(map(str, d.memory_lengths)), help="prompt lengths, one request each")
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--keep-first", type=int, default=d.keep_first)
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens)
    p.add_argument("--variants", default=",".join(d.variants), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    p.add_argument("--resume", action="store_true", help="keep the rows an earlier invocation wrote to --out")
    p.add_argument("--out", default=d.out)
    a = p.parse_args(argv)
    return ServeSpeedArgs(
        prompt_tokens=a.prompt_tokens, concurrency=tuple(int(s) for s in a.concurrency.split(",")),
        new_tokens=a.new_tokens, memory_lengths=tuple(int(s) for s in a.memory_lengths.split(",")),
        window=a.window, keep_first=a.keep_first, max_batch_tokens=a.max_batch_tokens,
        variants=tuple(a.variants.split(",")), tiny=a.tiny, out=a.out, resume=a.resume, given=given_options(p, argv),
        command=" ".join(["python benchmarks/serve_speed.py", *(sys.argv[1:] if argv is None else argv)]),
    )  # fmt: skip


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main(parse_args()))
