"""Decode speed of a whole model: stock transformers vs SWAA, every path a user would pick, one run.

Rows, for each (batch, context): stock HF with its DynamicCache; stock HF with its StaticCache and
torch.compile (``cache_implementation="static"``, mode reduce-overhead, fullgraph); SWAA with its
bounded dynamic cache (``SWAACache``, the eager default); SWAA with ``StaticSWAACache`` and the same
compile switch. Every row is one ``model.generate`` call on random prompt tokens, greedy; a
stopping-criteria clock records each step (after a device sync), so a step is what a user waits
for, logits processing included. tok/s = batch / median step after the warm-up steps; compile s
= the warm-up steps' time beyond that many median steps. graphs = dynamo graphs added by the row
(the compiled SWAA step is one graph, compiled once per batch size;
later contexts must add none). KV GiB = bytes of the cache's tensors at the end; peak = max
allocated during the call. Correctness in the same run: the compiled SWAA row's tokens against
the eager bounded row's (same prompts), and a logits check on the first steps. A stock row whose
KV cache cannot fit says so instead of running. The eval table times ``generate`` the way
``swaa eval`` batches (left-padded prompts of mixed lengths) with ``generation.compile`` off / on.

    python benchmarks/decode_speed.py [--tiny]           # --tiny: a tiny model on the CPU, seconds
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
import statistics
import sys
import time
from dataclasses import dataclass, field, replace

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen3Config, StoppingCriteria

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_common import ModelBench, compiled_generate_kwargs, given_options, with_tiny_defaults  # noqa: E402
from stack_sampler import StackSampler  # noqa: E402

from swaa_patch import StaticSWAACache, apply_swaa, chunked_prefill, remove_swaa  # noqa: E402
from swaa_patch.backends import static_decode  # noqa: E402
from swaa_patch.cache import kv_bytes  # noqa: E402
from swaa_patch.compat import cache_kwargs, output_cache  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

from shapes import QWEN3_4B  # noqa: E402  (benchmarks/shapes.py: this folder is on sys.path)

log = logging.getLogger("decode_speed")

TINY = dict(QWEN3_4B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)  # fmt: skip
# SWAA rows first in each case: a stock static row resets dynamo (its CUDA graphs keep their StaticCache alive)
VARIANTS = ("swaa_bounded", "swaa_static_compile", "stock_dynamic", "stock_static_compile")
LABELS = {
    "stock_dynamic": "stock HF, DynamicCache",
    "stock_static_compile": "stock HF, StaticCache + compile",
    "swaa_bounded": "SWAA, bounded SWAACache (eager)",
    "swaa_static_compile": "SWAA, StaticSWAACache + compile",
}
COMPILED = {"stock_static_compile", "swaa_static_compile"}
CHECK_STEPS = 8
WEIGHTS_GIB = {True: 0.0, False: 8.1}  # tiny / 4B bf16 weights, for the fit estimate


@dataclass
class DecodeSpeedArgs:
    contexts: tuple[int, ...] = (8192, 32768, 131072)  # batch 1
    batches: tuple[int, ...] = (1, 8, 32)  # at batch_context
    batch_context: int = 32768
    reference_context: int = 2048  # a stock static row whose cache is SWAA's size (keep_first + W slots)
    prefill_tokens: int = 1 << 18  # larger batch x context prompts are prefilled in chunks first (memory)
    window: int = 2048
    keep_first: int = 100
    steps: int = 200  # decode steps of the compiled SWAA rows (the recompile check covers all of them)
    eager_steps: int = 64  # decode steps of the eager rows (stock dynamic, SWAA bounded)
    stock_steps: int = 32  # decode steps of the compiled stock rows
    warmup: int = 4
    variants: tuple[str, ...] = VARIANTS
    decode_kernels: tuple[str, ...] = static_decode.KERNELS  # one compiled SWAA row per static-decode kernel
    eval_prompts: int = 16
    eval_batch: int = 8
    eval_context: int = 8192
    eval_new_tokens: int = 64
    tiny: bool = False
    out: str = "benchmarks/results/decode_speed.md"
    resume: bool = False  # keep the rows (and eval table) of an earlier invocation with the same --out
    compile_metrics: str = ""  # write torch's compile-phase seconds (summed per phase) to this JSON file
    stack_samples: str = ""  # sample the main thread's stack (stack_sampler.py) and write its seconds to this JSON file
    seed: int = 0
    given: tuple[str, ...] = ()  # options the command line named (bench_common.given_options)


TINY_DEFAULTS = dict(contexts=(40, 90), batches=(1, 3), batch_context=40, reference_context=10, prefill_tokens=100, window=8,
                     keep_first=2, steps=24,
                     eager_steps=12, stock_steps=12, eval_prompts=4, eval_batch=2, eval_context=40, eval_new_tokens=8)  # fmt: skip


@dataclass
class Row:
    batch: int
    context: int
    variant: str
    step_ms: float = math.nan
    tps: float = math.nan
    compile_s: float = math.nan
    graphs: int = 0
    kv_gib: float = math.nan
    peak_gib: float = math.nan
    check: str = "-"
    ok: bool = True
    note: str = ""
    run: int = 1  # which invocation (--resume) measured the row
    kernel: str = ""  # the static-decode kernel of a compiled SWAA row (backends.static_decode)


@dataclass
class Bench(ModelBench):
    args: DecodeSpeedArgs
    model: torch.nn.Module | None = None
    tokens: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (batch, context) -> bounded tokens
    batches_compiled: set[tuple[int, str]] = field(default_factory=set)  # (batch, decode kernel)


class StepClock(StoppingCriteria):
    """Records the time after every generated token (never stops generation)."""

    def __init__(self, sync) -> None:
        self.sync, self.times = sync, []

    def __call__(self, input_ids, scores, **kwargs):
        self.sync()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def kv_gib_estimate(bench: Bench, variant: str, batch: int, tokens: int) -> float:
    s = bench.shape
    per_token = 2 * s["num_hidden_layers"] * s["num_key_value_heads"] * s["head_dim"] * bench.dtype.itemsize
    held = tokens if variant.startswith("stock") else bench.args.keep_first + bench.args.window
    return batch * held * per_token / 2**30


def skip_reason(bench: Bench, variant: str, batch: int, context: int) -> str:
    """Why a row cannot run; not fitting the GPU is said first (it holds however the prompt is prefilled)."""
    if bench.device.type == "cuda":
        need = kv_gib_estimate(bench, variant, batch, context + bench.args.steps) + WEIGHTS_GIB[bench.args.tiny]
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        if need > 0.9 * total:
            return f"does not fit: KV {need - WEIGHTS_GIB[False]:.0f} GiB + weights > 90% of {total:.0f} GiB"
    if variant.startswith("stock") and batch * context > bench.args.prefill_tokens:
        return f"not run: stock prompts of {batch} x {context} tokens are not prefilled in chunks here"
    return ""


def cache_gib(cache) -> float:
    return kv_bytes(cache) / 2**30


def graph_count() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def generate_kwargs(bench: Bench, variant: str) -> dict:
    return compiled_generate_kwargs(bench.device, stock=variant.startswith("stock")) if variant in COMPILED else {}


def prepare_model(bench: Bench, variant: str) -> torch.nn.Module:
    model = bench.model
    if variant.startswith("swaa"):
        apply_swaa(model, bench.swaa_config)
    else:
        remove_swaa(model)
    return model


def prefilled_kwargs(bench: Bench, variant: str, ids: torch.Tensor) -> dict:
    """generate() arguments for the row. A prompt batch too large for one forward's activations is
    prefilled first by ``chunked_prefill`` (all but its last token) into the row's cache, which
    generate() then continues: its first step feeds the last prompt token."""
    kwargs = generate_kwargs(bench, variant)
    if ids.numel() <= bench.args.prefill_tokens:
        return kwargs
    if variant.startswith("stock"):
        raise ValueError(f"prefill_tokens: a {tuple(ids.shape)} stock prompt is only run in one forward")
    cache = None
    if variant == "swaa_static_compile":
        cache = StaticSWAACache(bench.swaa_config, bench.shape["num_hidden_layers"])
        kwargs.pop("cache_implementation")
    chunk = max(1, bench.args.prefill_tokens // ids.shape[0])
    result = chunked_prefill(bench.model, ids[:, :-1], chunk_size=chunk, cache=cache)
    return {**kwargs, **cache_kwargs(bench.model, result.cache)}


def measure_row(bench: Bench, variant: str, batch: int, context: int, ids: torch.Tensor, kernel: str = "") -> Row:
    """One row, or why it did not run; an error fails the row, not the rest of the run's device time.
    ``kernel``: the static-decode kernel of a compiled SWAA row, set for the whole row (check included)."""
    args = bench.args
    if variant == "stock_static_compile":
        reset_compiled(bench)
    reason = skip_reason(bench, variant, batch, context)
    log.info("batch %d context %d %s %s", batch, context, variant, reason)
    try:
        if reason:
            return Row(batch, context, variant, note=reason, run=args_invocations(args), kernel=kernel)
        with static_decode.static_decode_kernel(kernel or static_decode.SETTING.get()):  # "": the setting's
            return replace(run_row(bench, variant, batch, context, ids), kernel=kernel)
    except torch.cuda.OutOfMemoryError as err:
        return Row(batch, context, variant, note=f"out of memory: {str(err).splitlines()[0][:80]}", kernel=kernel)
    except Exception as err:
        log.exception("row failed")
        return Row(batch, context, variant, ok=False, note=f"{type(err).__name__}: {str(err).splitlines()[0][:120]}",
                   kernel=kernel)  # fmt: skip
    finally:
        gc.collect()
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()


def reset_compiled(bench: Bench) -> None:
    """Drop every compiled graph: CUDA graph trees keep the static inputs of earlier shapes (a 128K
    StaticCache is 18 GiB) alive, so stock rows of new shapes would run out of memory. SWAA's next
    compiled row then compiles again, and is not counted as a recompile."""
    torch._dynamo.reset()
    bench.batches_compiled.clear()
    # generate() never shrinks a model's static cache length across calls (a private attribute in
    # 5.17-5.24): without this a 2K-context row after a 128K one would run on a 128K-slot cache
    bench.model.__dict__.pop("_previous_max_cache_length", None)
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()


def run_row(bench: Bench, variant: str, batch: int, context: int, ids: torch.Tensor) -> Row:
    args = bench.args
    model = prepare_model(bench, variant)
    steps = {"swaa_static_compile": args.steps, "stock_static_compile": args.stock_steps}.get(variant, args.eager_steps)
    clock = StepClock(bench.sync)
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = graph_count()
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
            do_sample=False, pad_token_id=0, stopping_criteria=[clock], return_dict_in_generate=True,
            **prefilled_kwargs(bench, variant, ids),
        )  # fmt: skip
    row = Row(batch, context, variant, graphs=graph_count() - before, run=args_invocations(args))
    durations = [b - a for a, b in zip(clock.times, clock.times[1:])]  # decode steps only
    timed = durations[args.warmup :]
    row.step_ms = statistics.median(timed) * 1e3
    row.tps = batch / (row.step_ms / 1e3)
    if variant in COMPILED:
        row.compile_s = max(0.0, sum(durations[: args.warmup]) - args.warmup * row.step_ms / 1e3)
    row.kv_gib = cache_gib(output_cache(out))
    if bench.device.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    new_tokens = out.sequences[:, ids.shape[1] :]
    if variant == "swaa_bounded":
        bench.tokens[(batch, context)] = new_tokens
    if variant == "swaa_static_compile":
        check_against_bounded(bench, row, new_tokens, ids)
    del out
    return row


def check_against_bounded(bench: Bench, row: Row, new_tokens: torch.Tensor, ids: torch.Tensor) -> None:
    """No recompile at a batch size already compiled; the tokens of every timed step against the eager
    bounded path's (informative: random bf16 weights give near-ties that either path may break
    differently); and the logits, teacher-forced: the first prompt through the compiled static path
    for CHECK_STEPS steps, then the same tokens through the eager bounded path, step by step."""
    compiled = (row.batch, static_decode.kernel_for(bench.device))
    if compiled in bench.batches_compiled and row.graphs:
        row.ok, row.note = False, f"recompiled: {row.graphs} graphs added at a batch size already compiled"
    bench.batches_compiled.add(compiled)
    reference = bench.tokens.get((row.batch, row.context))
    if reference is None:
        tokens = "no bounded row to compare tokens with"
    else:
        common = min(new_tokens.shape[1], reference.shape[1])
        same = (new_tokens[:, :common] == reference[:, :common]).all(dim=0)
        tokens = (f"tokens = bounded ({common} steps)" if bool(same.all())
                  else f"tokens = bounded up to step {int((~same).nonzero()[0])}")  # fmt: skip
    rel = teacher_forced_error(bench, ids[:1])
    # bf16: two exact implementations of this random 36-layer model differ by 4-5e-2 (model_speed.md:
    # 3.8-4.8e-2); a wrong rule gives ~1 (measured on the first, buggy version of this check)
    tol = 8e-2 if bench.dtype == torch.bfloat16 else 1e-4
    row.check = f"{tokens}; teacher-forced logits {rel:.1e} over {CHECK_STEPS} steps"
    if rel > tol or math.isnan(rel):
        row.ok, row.note = False, f"teacher-forced logits differ from the bounded path by {rel:.1e} > {tol}"


def teacher_forced_error(bench: Bench, prompt: torch.Tensor) -> float:
    model, n = bench.model, prompt.shape[1]
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=CHECK_STEPS, min_new_tokens=CHECK_STEPS,
            do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True,
            **generate_kwargs(bench, "swaa_static_compile"),
        )  # fmt: skip
        static = torch.stack(out.logits, 1).float()
        forced = out.sequences[:, n:]
        step = model(prompt, use_cache=True, logits_to_keep=1)
        bounded = [step.logits[:, -1].float()]
        for t in range(CHECK_STEPS - 1):
            mask = torch.ones(1, n + t + 1, dtype=torch.long, device=prompt.device)
            step = model(forced[:, t : t + 1], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                         use_cache=True, **cache_kwargs(model, output_cache(step)))  # fmt: skip
            bounded.append(step.logits[:, -1].float())
    bounded = torch.stack(bounded, 1)
    return float((static - bounded).norm() / bounded.norm())


def eval_throughput(bench: Bench, compile_decode: bool) -> tuple[float, float]:
    """Samples/s of ``swaa eval``'s batching on the SWAA model: left-padded prompts of mixed
    lengths (context/2 .. context), longest first, greedy, eval_new_tokens each. Returns
    (samples/s, seconds); a first call of the compiled path is a warm-up, not timed."""
    args = bench.args
    apply_swaa(bench.model, bench.swaa_config)
    g = torch.Generator().manual_seed(args.seed)
    lengths = sorted(torch.randint(args.eval_context // 2, args.eval_context + 1, (args.eval_prompts,), generator=g)
                     .tolist(), reverse=True)  # fmt: skip
    batches = [lengths[i : i + args.eval_batch] for i in range(0, len(lengths), args.eval_batch)]
    kwargs = generate_kwargs(bench, "swaa_static_compile") if compile_decode else {}

    def run_all() -> float:
        start = time.perf_counter()
        for batch in batches:
            width = max(batch)
            ids = torch.randint(3, bench.shape["vocab_size"], (len(batch), width), generator=g).to(bench.device)
            mask = torch.zeros_like(ids)
            for row, n in enumerate(batch):
                mask[row, width - n :] = 1
            with torch.no_grad():
                bench.model.generate(ids, attention_mask=mask, max_new_tokens=args.eval_new_tokens,
                                     min_new_tokens=args.eval_new_tokens, do_sample=False, pad_token_id=0, **kwargs)
        bench.sync()
        return time.perf_counter() - start

    if compile_decode:
        run_all()  # compile + graph capture for these shapes
    seconds = run_all()
    return args.eval_prompts / seconds, seconds


def fmt(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)


def label(row: Row) -> str:
    return LABELS[row.variant] + (f", {row.kernel} decode kernel" if row.kernel else "")


def format_row(bench: Bench, row: Row) -> str:
    verdict = ("ok" if row.ok else "FAIL") + (f" ({row.note})" if row.note and row.ok else "")
    if not row.ok:
        verdict = f"FAIL: {row.note}"
    return (
        f"| {row.run} | {row.batch} | {row.context} | {label(row)} | {fmt(row.step_ms, '.2f')} | {fmt(row.tps, '.1f')} | "
        f"{fmt(row.compile_s, '.1f')} | {row.graphs} | {fmt(row.kv_gib, '.2f')} | {fmt(row.peak_gib, '.1f')} | "
        f"{row.check} | {verdict} |"
    )


def report(bench: Bench, rows: list[Row], eval_lines: list[str]) -> str:
    args, shape = bench.args, bench.shape
    device = torch.cuda.get_device_name() if bench.device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [
        "# Decode speed: stock HF (dynamic, static + compile) vs SWAA (bounded, static + compile)",
        "",
        f"- date: {datetime.date.today()}; device: {device}; rows from {args_invocations(args)} invocation(s) of "
        "this script (column run; --resume carries rows over; compare rows of one run)",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        f"- model: Qwen3 {'tiny' if args.tiny else '4B'} shape ({shape['num_hidden_layers']} layers, hidden "
        f"{shape['hidden_size']}, {shape['num_attention_heads']} q / {shape['num_key_value_heads']} kv heads, "
        f"head_dim {shape['head_dim']}, vocab {shape['vocab_size']}), random {str(bench.dtype).removeprefix('torch.')} "
        f"weights, sdpa; SWAA W={args.window}, keep_first={args.keep_first}, every layer bounded",
        f"- each row: one generate() of greedy steps ({args.steps} compiled SWAA, {args.stock_steps} compiled stock, "
        f"{args.eager_steps} eager) after a prompt of `context` random tokens; step ms = median after {args.warmup} "
        "warm-up steps; tok/s = batch / step",
        "- compile: transformers' automatic compilation of the decode step (stock: CompileConfig(fullgraph=True, "
        "mode='reduce-overhead'); SWAA: static_cache.decode_compile_config, the same CUDA graphs plus a bound on "
        "inductor's fusion attempts); compile s = warm-up steps beyond the median; graphs = dynamo graphs the row added; "
        "dynamo is reset before each stock static row (its CUDA graphs hold earlier StaticCaches alive), so a SWAA "
        "compiled row after one compiles afresh",
        f"- the {args.reference_context}-token stock static row has a cache of SWAA's size (keep_first + W slots): "
        "what transformers' compiled path reaches at SWAA's cache size",
        "- check: tokens of the timed steps against the eager bounded row (random bf16 weights give near-ties "
        "either path may break); logits teacher-forced on row 0 against the eager bounded path, tolerance 8e-2 in "
        "bf16 (two exact implementations of this model differ by 4-5e-2), 1e-4 in float32",
        "",
        "| run | batch | context | path | step ms | tok/s | compile s | graphs | KV GiB | peak GiB | check | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {(b, c): i for i, (b, c, _) in enumerate(cases(args))}
    ranked = sorted(rows, key=lambda r: (order.get((r.batch, r.context), len(order)), VARIANTS.index(r.variant), r.kernel))
    lines += [format_row(bench, r) for r in ranked]
    return "\n".join(lines + [""] + eval_lines) + "\n"


def state_path(args: DecodeSpeedArgs) -> str:
    return os.path.splitext(args.out)[0] + ".json"


def save_state(args: DecodeSpeedArgs, rows: list[Row], eval_lines: list[str]) -> None:
    state = {"rows": [dataclasses.asdict(r) for r in rows], "eval": eval_lines, "invocations": args_invocations(args)}
    atomic_write_text(state_path(args), json.dumps(state, indent=1))


def args_invocations(args: DecodeSpeedArgs) -> int:
    return getattr(args, "_invocations", 1)


def load_state(args: DecodeSpeedArgs) -> tuple[list[Row], list[str], int]:
    """Rows an earlier invocation finished (--resume), so a run split over two device calls on one
    machine ends in one table."""
    if not args.resume or not os.path.exists(state_path(args)):
        return [], [], 0
    with open(state_path(args)) as f:
        state = json.load(f)
    return [Row(**r) for r in state["rows"]], state["eval"], state["invocations"]


def cases(args: DecodeSpeedArgs) -> list[tuple[int, int, tuple[str, ...]]]:
    """(batch, context, variants) in run order; the reference row is stock static at SWAA's cache size."""
    out = [(1, c, args.variants) for c in args.contexts]
    out += [(b, args.batch_context, args.variants) for b in args.batches if b != 1 or args.batch_context not in args.contexts]
    if "stock_static_compile" in args.variants and args.reference_context:
        out.append((1, args.reference_context, ("stock_static_compile",)))
    return out


def build_model(bench: Bench) -> None:
    torch.manual_seed(bench.args.seed)
    with bench.device:
        model = AutoModelForCausalLM.from_config(Qwen3Config(**bench.shape), attn_implementation="sdpa",
                                                 dtype=bench.dtype)  # fmt: skip
    bench.model = model.eval()


def main(args: DecodeSpeedArgs) -> int:
    if args.tiny:
        args = with_tiny_defaults(args, TINY_DEFAULTS)
        device, dtype, shape = torch.device("cpu"), torch.float32, TINY
    else:
        if not torch.cuda.is_available():
            raise SystemExit("decode_speed.py needs a CUDA device (or --tiny)")
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, QWEN3_4B
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    unknown = set(args.decode_kernels) - set(static_decode.KERNELS)
    if unknown or not args.decode_kernels:
        raise SystemExit(f"--decode-kernels: unknown {sorted(unknown)}; choose one or more of {static_decode.KERNELS}")
    bench = Bench(args, device, dtype, shape)
    build_model(bench)
    rows, eval_lines, invocations = load_state(args)
    object.__setattr__(args, "_invocations", invocations + 1)
    done = {(r.batch, r.context, r.variant, r.kernel) for r in rows}
    # Every SWAA row first, then the stock rows: a stock static row resets dynamo, so SWAA's compiled
    # rows run back to back and show that later contexts add no graph.
    for phase in ("swaa", "stock"):
        for batch, context, variants in cases(args):
            todo = [(v, k) for v in variants if v.startswith(phase) for k in row_kernels(args, v)
                    if (batch, context, v, k) not in done]  # fmt: skip
            if not todo:
                continue
            g = torch.Generator().manual_seed(args.seed + context + batch)
            ids = torch.randint(3, shape["vocab_size"], (batch, context), generator=g).to(device)
            for variant, kernel in todo:
                rows.append(measure_row(bench, variant, batch, context, ids, kernel))
                log.info("%s", format_row(bench, rows[-1]))
                atomic_write_text(args.out, report(bench, rows, eval_lines))  # partial results survive a kill
                save_state(args, rows, eval_lines)
    if args.eval_prompts and not eval_lines:
        eval_lines = eval_table(bench)
        save_state(args, rows, eval_lines)
    text = report(bench, rows, eval_lines)
    atomic_write_text(args.out, text)
    if args.compile_metrics:
        atomic_write_text(args.compile_metrics, json.dumps(compile_phase_seconds(), indent=1))
    sys.stdout.write(text)
    return 0 if all(r.ok for r in rows) else 1


def compile_phase_seconds() -> dict[str, float]:
    """Seconds this process spent in each compile phase torch times (dynamo tracing, AOT autograd,
    inductor lowering, waiting for Triton compiles, CUDA graph recording...), summed over frames."""
    from torch._dynamo.utils import compilation_time_metrics

    return {name: round(sum(values), 3) for name, values in compilation_time_metrics.items()}


def row_kernels(args: DecodeSpeedArgs, variant: str) -> tuple[str, ...]:
    """The compiled SWAA row runs once per static-decode kernel; other rows have none."""
    return args.decode_kernels if variant == "swaa_static_compile" else ("",)


def eval_table(bench: Bench) -> list[str]:
    args = bench.args
    off_sps, off_s = eval_throughput(bench, compile_decode=False)
    on_sps, on_s = eval_throughput(bench, compile_decode=True)
    return [
        f"## swaa eval batching: {args.eval_prompts} prompts of {args.eval_context // 2}-{args.eval_context} tokens, "
        f"batch {args.eval_batch}, {args.eval_new_tokens} new tokens each",
        "",
        "| generation.compile | samples/s | seconds | ratio |",
        "| --- | --- | --- | --- |",
        f"| off (bounded SWAACache, eager) | {off_sps:.2f} | {off_s:.1f} | 1.00x |",
        f"| on (StaticSWAACache + compile, {static_decode.kernel_for(bench.device)} decode kernel, after a warm-up call) "
        f"| {on_sps:.2f} | {on_s:.1f} | {on_sps / off_sps:.2f}x |",
    ]


def parse_args(argv: list[str] | None = None) -> DecodeSpeedArgs:
    d = DecodeSpeedArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", default=",".join(map(str, d.contexts)), help="batch-1 prompt lengths")
    p.add_argument("--batches", default=",".join(map(str, d.batches)), help="batch sizes at --batch-context")
    p.add_argument("--batch-context", type=int, default=d.batch_context)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--stock-steps", type=int, default=d.stock_steps)
    p.add_argument("--reference-context", type=int, default=d.reference_context,
                   help="prompt of the stock static row at SWAA's cache size (0: no such row)")
    p.add_argument("--variants", default=",".join(d.variants), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--decode-kernels", default=",".join(d.decode_kernels),
                   help=f"static-decode kernels of the compiled SWAA rows, a subset of {static_decode.KERNELS}")
    p.add_argument("--eval-prompts", type=int, default=d.eval_prompts, help="0 skips the eval table")
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (compile: dynamo only)")
    p.add_argument("--resume", action="store_true", help="keep the rows an earlier invocation wrote to --out")
    p.add_argument("--out", default=d.out)
    p.add_argument("--compile-metrics", default="",
                   help="write the seconds of each compile phase (torch's dynamo_timed metrics) to this JSON file")
    p.add_argument("--stack-samples", default="",
                   help="sample the main thread's stack every 10 ms; write each function's seconds to this JSON file")
    a = p.parse_args(argv)
    return DecodeSpeedArgs(
        contexts=tuple(int(s) for s in a.contexts.split(",")),
        batches=tuple(int(s) for s in a.batches.split(",")),
        batch_context=a.batch_context, steps=a.steps, stock_steps=a.stock_steps, reference_context=a.reference_context,
        variants=tuple(a.variants.split(",")), decode_kernels=tuple(a.decode_kernels.split(",")),
        eval_prompts=a.eval_prompts, tiny=a.tiny, out=a.out,
        resume=a.resume, compile_metrics=a.compile_metrics, stack_samples=a.stack_samples, given=given_options(p, argv),
    )  # fmt: skip


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parsed = parse_args()
    if not parsed.stack_samples:
        sys.exit(main(parsed))
    with StackSampler() as sampler:
        code = main(parsed)
    atomic_write_text(parsed.stack_samples, json.dumps(sampler.seconds()))
    sys.exit(code)
