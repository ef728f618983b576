"""Whole-model prefill and decode speed: stock SDPA full attention vs HF's native sliding window vs
SWAA through the flex, sdpa and Triton prefill paths, with correctness and torch.compile
recompilations checked in the same run.

Model: the Qwen3-4B shape (36 layers, hidden 2560, 32 q / 8 kv heads, head_dim 128, MLP 9728,
vocab 151936, tied embeddings), random bf16 weights, batch 1. Prefill = one forward of the whole
prompt with ``use_cache=True`` and ``logits_to_keep=1`` (no n x vocab logits tensor); its time is
the median of ``--repeats`` runs after a warm-up (the warm-up compiles flex kernels and autotunes the
Triton kernel; variants with nothing to compile warm up at the first size only). Decode = greedy
steps on the cache the prefill left (SWAA: the bounded sink+window cache), 1 / median step time.

Variants (same weights, same process):
- ``stock``: transformers' sdpa, full causal attention: the baseline of every ratio;
- ``floor``: attention replaced by a copy of the queries (``floor_attention``): the time of
  everything else, so its speedup is the ceiling of any attention kernel's (Amdahl's law);
- ``native_sdpa`` / ``native_flex``: transformers' own sliding window (``layer_types`` all
  ``sliding_attention``, ``sliding_window=W``): a *different rule*, no sink tokens; its sdpa path
  builds a dense n x n mask, so it is skipped where that mask would exceed ``--max-dense-mask-gib``;
- ``swaa_flex`` / ``swaa_sdpa``: SWAA W=2048, keep_first=100 through our flex (BlockMask) and sdpa
  (query-chunked masks) backends, Triton prefill path off;
- ``swaa_triton``: the same model through the sdpa backend with the prefill fast path on, Triton
  kernel only (setting ``"triton"``); every layer of every timed prefill must have taken it
  (``PATH_COUNTS``), else the row fails;
- ``swaa_cudnn``: the same with the default setting ``"auto"``, which sends the sliding layers to
  cuDNN's window + the Triton sink merge (``cudnn_swa.py``); skipped without cudnn-frontend.

Checks: last-token logits (and every 16th final hidden state) of the SWAA variants against
``swaa_sdpa`` (the path the CPU tests check against a float64 reference), NaN-free, bf16
tolerance; and a shallower model of the same widths at ``--check-n`` tokens (``float_check``),
Triton path against the sdpa path in float32 (forced) and in the benchmark's dtype. Compilations:
dynamo's unique-graph counter and its guard-failure (recompile) log, read before and after each
variant's warm-up and timed runs.

``--tiny`` runs the same code on a tiny model on the CPU (Triton through its interpreter) in seconds.
Writes a markdown report to --out (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen3Config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_common import ModelBench, given_options, with_tiny_defaults  # noqa: E402

from swaa_patch import apply_swaa, remove_swaa  # noqa: E402
from swaa_patch.backends import cudnn_swa  # noqa: E402
from swaa_patch.backends.fused_prefill import CUDNN_TAKEN, PATH_COUNTS, TAKEN, triton_prefill  # noqa: E402
from swaa_patch.compat import cache_kwargs, output_cache  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402

from shapes import QWEN3_4B  # noqa: E402  (benchmarks/shapes.py: this folder is on sys.path)

log = logging.getLogger("model_speed")

TINY = dict(QWEN3_4B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096)  # fmt: skip

VARIANTS = (
    "stock",
    "floor",
    "native_sdpa",
    "native_flex",
    "swaa_flex",
    "swaa_sdpa",
    "swaa_triton",
    "swaa_cudnn",
)
LABELS = {
    "stock": "stock HF sdpa, full causal (baseline)",
    "floor": "no attention at all (floor: the rest of the model; its speedup bounds every other)",
    "native_sdpa": "HF native SWA W={W}, no sinks (sdpa)",
    "native_flex": "HF native SWA W={W}, no sinks (flex_attention)",
    "swaa_flex": "SWAA W={W} k={k}, flex backend",
    "swaa_sdpa": "SWAA W={W} k={k}, sdpa backend",
    "swaa_triton": "SWAA W={W} k={k}, prefill path: Triton kernel",
    "swaa_cudnn": "SWAA W={W} k={k}, prefill path: cuDNN window + Triton sinks",
}
# variant -> (model, attn_implementation, Triton prefill setting)
SETUP = {
    "stock": ("base", "sdpa", "off"),
    "floor": ("base", "swaa_bench_floor", "off"),
    "native_sdpa": ("native", "sdpa", "off"),
    "native_flex": ("native", "flex_attention", "off"),
    "swaa_flex": ("swaa", "flex_attention", "off"),
    "swaa_sdpa": ("swaa", "sdpa", "off"),
    "swaa_triton": ("swaa", "sdpa", "triton"),
    "swaa_cudnn": ("swaa", "sdpa", "auto"),
}
# the prefill path each fast-path variant must take on every layer
EXPECTED_PATH = {"swaa_triton": TAKEN, "swaa_cudnn": CUDNN_TAKEN}
COMPILED = {"native_flex", "swaa_flex", "swaa_triton", "swaa_cudnn"}  # need a warm-up at every size
# transformers' flex path would compile its kernel and BlockMask builder for decode shapes too: kept
# out of the time budget (SWAA's flex backend decodes through the gathered-keys sdpa path instead)
NO_DECODE = {"native_flex", "floor"}
CHECK_BASE = "swaa_sdpa"
BF16_TOL = 5e-2  # 36 bf16 layers of a random model; two exact implementations differ by rounding only
FP32_TOL = 1e-4
HIDDEN_STRIDE = 16


@dataclass
class ModelSpeedArgs:
    sizes: tuple[int, ...] = (32768, 131072)
    window: int = 2048
    keep_first: int = 100
    repeats: int = 2
    decode_steps: int = 12
    check_n: int = 8192
    check_layers: int = 4
    variants: tuple[str, ...] = VARIANTS
    max_dense_mask_gib: float = 4.0
    tiny: bool = False
    out: str = "benchmarks/results/model_speed.md"
    seed: int = 0
    given: tuple[str, ...] = ()  # options the command line named (bench_common.given_options)


# --tiny replaces the full-size defaults (fields set explicitly are kept); native flex would compile on the CPU
TINY_DEFAULTS = dict(
    sizes=(48, 96), window=8, keep_first=2, repeats=1, decode_steps=4, check_n=40, check_layers=2,
    variants=tuple(v for v in VARIANTS if v != "native_flex"),
)  # fmt: skip


def tiny_args(args: ModelSpeedArgs) -> ModelSpeedArgs:
    """CPU smoke-run sizes: the same code paths in seconds."""
    return with_tiny_defaults(args, TINY_DEFAULTS)


@dataclass
class Row:
    n: int
    variant: str
    ms: float = math.nan
    peak_gib: float = math.nan
    decode_tps: float = math.nan
    graphs: str = "-"
    check: str = "-"
    ok: bool = True
    note: str = ""


@dataclass
class Bench(ModelBench):
    args: ModelSpeedArgs
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    outputs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def label(self, variant: str) -> str:
        return LABELS[variant].format(W=self.args.window, k=self.args.keep_first)


# -- models ---------------------------------------------------------------------------------------
def floor_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention replaced by a copy of the queries, in transformers' (B, L, H, D) output layout.

    Not a usable model: it times everything *but* attention (projections, RoPE, norms, MLP,
    cache writes), so stock / floor is the largest prefill speedup any attention kernel can give
    this model (Amdahl's law), measured in the same run as the others."""
    return query.transpose(1, 2).contiguous(), None


def register_floor() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(SETUP["floor"][1], floor_attention)
    AttentionMaskInterface.register(SETUP["floor"][1], lambda *args, **kwargs: None)  # no mask needed


def build_models(bench: Bench) -> None:
    """The base model and a native-sliding-window twin sharing its weights (no second copy)."""
    torch.manual_seed(bench.args.seed)
    with bench.device:
        base = AutoModelForCausalLM.from_config(
            Qwen3Config(**bench.shape), attn_implementation="sdpa", dtype=bench.dtype
        )
        bench.models["base"] = base.eval()
        if any(SETUP[v][0] == "native" for v in bench.args.variants):
            native_config = Qwen3Config(
                **bench.shape,
                use_sliding_window=True,  # without it Qwen3Config drops sliding_window to None
                sliding_window=bench.args.window,
                layer_types=["sliding_attention"] * bench.shape["num_hidden_layers"],
            )
            native = AutoModelForCausalLM.from_config(
                native_config, attn_implementation="sdpa", dtype=bench.dtype
            )
            params = dict(base.named_parameters())
            for name, param in native.named_parameters():
                param.data = params[name].data
            bench.models["native"] = native.eval()
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()


def model_for(bench: Bench, variant: str) -> torch.nn.Module:
    which, attn, _ = SETUP[variant]
    model = bench.models["native" if which == "native" else "base"]
    if which == "swaa":
        apply_swaa(model, bench.swaa_config)
    else:
        remove_swaa(model)
    if model.config._attn_implementation != attn:
        model.set_attn_implementation(attn)
    return model


# -- measurements ---------------------------------------------------------------------------------
class FinalHidden:
    """Keeps every HIDDEN_STRIDE-th final hidden state of the last forward (a forward hook)."""

    def __init__(self, model: torch.nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = model.model.norm.register_forward_hook(self.keep)

    def keep(self, module, inputs, output) -> None:
        if output.shape[1] > 1:  # prefill, not a decode step
            self.value = output[:, ::HIDDEN_STRIDE].detach().clone()


def prefill(bench: Bench, model, ids) -> tuple[float, float, torch.Tensor, object]:
    """(seconds, peak GiB above the pre-call allocation, last-token logits, cache)."""
    bench.sync()
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    bench.sync()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if bench.device.type == "cuda" else math.nan
    return seconds, peak, out.logits[:, -1].float(), output_cache(out)


def decode_tps(bench: Bench, model, logits, cache, n: int, steps: int) -> float:
    """Greedy decode on the prefill's cache; 1 / median step time after 2 warm-up steps."""
    token = logits.argmax(-1, keepdim=True)
    mask = torch.ones(1, n + 1, dtype=torch.long, device=bench.device)
    times = []
    for _ in range(steps):
        bench.sync()
        start = time.perf_counter()
        out = model(input_ids=token, attention_mask=mask, use_cache=True, **cache_kwargs(model, cache))
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        bench.sync()
        times.append(time.perf_counter() - start)
        mask = torch.cat([mask, mask[:, :1]], dim=1)
    timed = times[2:] or times
    return 1.0 / statistics.median(timed)


def compile_state() -> tuple[int, int, str]:
    """(unique dynamo graphs, guard failures = recompiles, the last recompile reason) so far."""
    from torch._dynamo.utils import counters, guard_failures

    reasons = [r for failures in guard_failures.values() for r in failures]
    return counters["stats"]["unique_graphs"], len(reasons), (reasons[-1] if reasons else "")


def graphs_note(before, warm, after) -> tuple[str, bool]:
    """Compilation summary of one variant at one size; ok when the timed runs compiled nothing."""
    added_graphs, added_recompiles = after[0] - warm[0], after[1] - warm[1]
    text = f"warm-up +{warm[0] - before[0]} graphs / +{warm[1] - before[1]} recompiles; timed +{added_graphs} / +{added_recompiles}"
    if added_recompiles:
        text += f" (last: {after[2].splitlines()[0][:100]})"
    return text, added_graphs == 0 and added_recompiles == 0


def skip_reason(bench: Bench, variant: str, n: int) -> str | None:
    if variant == "swaa_cudnn" and (bench.device.type != "cuda" or not cudnn_swa.frontend_available()):
        return "skipped: needs a CUDA GPU with cudnn-frontend installed"
    if variant == "native_sdpa":
        mask_gib = n * n / 2**30  # transformers' sdpa sliding mask: a dense (1, 1, n, n) bool tensor
        if mask_gib > bench.args.max_dense_mask_gib:
            return f"skipped: HF's sdpa path would build a dense {mask_gib:.0f} GiB n x n mask and run O(n^2)"
    return None


def run_variant(bench: Bench, variant: str, n: int, ids: torch.Tensor, first_size: bool) -> Row:
    row = Row(n, variant)
    model = model_for(bench, variant)
    layers = model.config.num_hidden_layers
    setting = SETUP[variant][2]
    if setting in ("auto", "triton") and bench.device.type != "cuda":
        setting = "force"  # the CPU smoke run: Triton's interpreter, float32
    hidden = FinalHidden(model)
    try:
        with torch.no_grad(), triton_prefill(setting):
            before = compile_state()
            if first_size or variant in COMPILED:
                PATH_COUNTS.clear()
                _, _, logits, cache = prefill(bench, model, ids)
                del logits, cache
            warm = compile_state()
            times, paths = [], []
            for _ in range(bench.args.repeats):
                PATH_COUNTS.clear()
                seconds, peak, logits, cache = prefill(bench, model, ids)
                times.append(seconds)
                paths.append({path: PATH_COUNTS[path] for path in (TAKEN, CUDNN_TAKEN) if PATH_COUNTS[path]})
                row.peak_gib = peak if math.isnan(row.peak_gib) else max(row.peak_gib, peak)
                if len(times) < bench.args.repeats:
                    del logits, cache
            row.ms = 1000 * statistics.median(times)
            if variant not in NO_DECODE:
                row.decode_tps = decode_tps(bench, model, logits, cache, n, bench.args.decode_steps)
            row.graphs, clean = graphs_note(before, warm, compile_state())
            row.ok = clean or SETUP[variant][0] != "swaa"  # transformers' own paths are reported, not judged
        bench.outputs[(n, variant)] = (logits, hidden.value)
        if variant in EXPECTED_PATH and paths != [{EXPECTED_PATH[variant]: layers}] * len(paths):
            row.ok, row.note = (
                False,
                f"prefill paths {paths} per prefill, expected {EXPECTED_PATH[variant]} on {layers}",
            )
        elif SETUP[variant][2] == "off" and any(paths):
            row.ok, row.note = False, "prefill fast path taken although switched off"
        if not torch.isfinite(logits).all():
            row.ok, row.note = False, "NaN/inf logits"
    except torch.OutOfMemoryError:
        row.ok, row.note = False, "OOM"
    except Exception as err:  # one failing variant must not hide the others' numbers; reported as ERROR
        log.exception("n=%d %s failed", n, variant)
        row.ok, row.note = False, f"ERROR {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    finally:
        hidden.handle.remove()
        cache = logits = None
        gc.collect()
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double()
    if not torch.isfinite(got).all():
        return math.nan
    return float((got - ref).norm() / ref.norm())


def cross_check(bench: Bench, rows: list[Row]) -> None:
    """Each SWAA variant's logits and hidden states against the sdpa backend's, per size."""
    for row in rows:
        base = bench.outputs.get((row.n, CHECK_BASE))
        mine = bench.outputs.get((row.n, row.variant))
        if not row.variant.startswith("swaa") or row.variant == CHECK_BASE or base is None or mine is None:
            continue
        err_logits, err_hidden = rel(mine[0], base[0]), rel(mine[1], base[1])
        row.check = f"vs {CHECK_BASE}: logits {err_logits:.1e}, hidden {err_hidden:.1e}"
        if not (err_logits < BF16_TOL and err_hidden < BF16_TOL):
            row.ok = False


@torch.no_grad()
def float_check(bench: Bench) -> tuple[str, bool]:
    """A shallower model of the same widths at ``check_n`` tokens: every position's final hidden
    state and the last logits of the Triton path against the sdpa path *in the same dtype*.

    float32 (Triton forced): same arithmetic up to summation order, tight tolerance. The
    benchmark's dtype (bf16): both paths round the same way, so they must agree to BF16_TOL. A
    bf16 run is not compared with the float32 one: on a random model every query attends almost
    uniformly to ~W keys, the output is a mean with heavy cancellation, and bf16 rounding alone moves
    it by tens of percent (the report gives that number, sdpa bf16 vs sdpa float32, for scale)."""
    args = bench.args
    shape = dict(bench.shape, num_hidden_layers=args.check_layers)
    torch.manual_seed(args.seed + 1)
    with bench.device:
        model = AutoModelForCausalLM.from_config(
            Qwen3Config(**shape), attn_implementation="sdpa", dtype=torch.float32
        )
    model = apply_swaa(model.eval(), bench.swaa_config)
    ids = torch.randint(0, shape["vocab_size"], (1, args.check_n), device=bench.device)

    def run(
        model: torch.nn.Module, setting: str, path: str = TAKEN
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        PATH_COUNTS.clear()
        with triton_prefill(setting):
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
            return hidden.float(), model.lm_head(hidden[:, -1]).float(), PATH_COUNTS[path]

    parts, ok = [], True
    cases = [("float32", torch.float32, "force", TAKEN, FP32_TOL)]
    if bench.dtype != torch.float32:
        low = str(bench.dtype).removeprefix("torch.")
        cases.append((low, bench.dtype, "triton", TAKEN, BF16_TOL))
        if "swaa_cudnn" in args.variants and skip_reason(bench, "swaa_cudnn", args.check_n) is None:
            cases.append((low, bench.dtype, "auto", CUDNN_TAKEN, BF16_TOL))
    fp32_ref = None
    for name, dtype, setting, path, tol in cases:
        try:
            model.to(dtype)
            hidden_ref, logits_ref, _ = run(model, "off")
            hidden, logits, taken = run(model, setting, path)
            err_h, err_l = rel(hidden, hidden_ref), rel(logits, logits_ref)
            good = taken == args.check_layers and err_h < tol and err_l < tol
            scale = ""
            if fp32_ref is None:
                fp32_ref = hidden_ref
            elif setting == "triton":  # once: the rounding scale of the benchmark's dtype
                scale = f"; sdpa {name} vs sdpa float32 (rounding alone, for scale): hidden {rel(hidden_ref, fp32_ref):.1e}"
            parts.append(
                f"{name}: {path} path ({taken}/{args.check_layers} layers) vs sdpa path: hidden {err_h:.1e}, "
                f"logits {err_l:.1e} (tol {tol}) {'ok' if good else 'FAIL'}{scale}"
            )
        except Exception as err:  # reported in the table, like a failing variant
            log.exception("float check %s failed", name)
            good = False
            parts.append(f"{name}: ERROR {type(err).__name__}: {str(err).splitlines()[0][:120]}")
        ok &= good
    del model
    gc.collect()
    header = f"float check ({args.check_layers} layers, n={args.check_n}, all positions): "
    return header + "; ".join(parts), ok


# -- report ---------------------------------------------------------------------------------------
def device_name(bench: Bench) -> str:
    if bench.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{torch.cuda.get_device_name()} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def format_row(bench: Bench, row: Row, rows: list[Row]) -> str:
    base = next((r for r in rows if r.n == row.n and r.variant == "stock"), None)
    speedup = "-"
    if base is not None and row.ms == row.ms and base.ms == base.ms:
        speedup = f"{base.ms / row.ms:.2f}x"

    def num(x: float, fmt: str) -> str:
        return "-" if x != x else format(x, fmt)

    verdict = ("ok" if row.ok else "FAIL") + (f" ({row.note})" if row.note else "")
    if row.note.startswith("skipped"):
        verdict = row.note
    return (
        f"| {row.n} | {bench.label(row.variant)} | {num(row.ms, '.1f')} | {speedup} | {num(row.peak_gib, '.2f')} | "
        f"{num(row.decode_tps, '.1f')} | {row.check} | {row.graphs} | {verdict} |"
    )


def report(bench: Bench, rows: list[Row], fp32: str) -> str:
    import triton

    args, shape = bench.args, bench.shape
    lines = [
        "# Model prefill and decode: stock full attention vs native SWA vs SWAA (flex, sdpa, Triton, cuDNN)",
        "",
        f"- date: {datetime.date.today()}",
        f"- device: {device_name(bench)}",
        f"- torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}",
        f"- model: Qwen3 {'tiny' if args.tiny else '4B'} shape ({shape['num_hidden_layers']} layers, hidden "
        f"{shape['hidden_size']}, {shape['num_attention_heads']} q / {shape['num_key_value_heads']} kv heads, "
        f"head_dim {shape['head_dim']}, MLP {shape['intermediate_size']}, vocab {shape['vocab_size']}), random "
        f"{str(bench.dtype).removeprefix('torch.')} weights, batch 1",
        f"- prefill: one forward, use_cache=True, logits_to_keep=1; ms = median of {args.repeats} after a warm-up; "
        "speedup = stock ms / ms at the same n; peak = max allocated during prefill minus allocated before",
        f"- decode: {args.decode_steps} greedy steps on the prefill's cache (SWAA: bounded sink+window cache; "
        "native SWA: transformers' sliding-window cache), tok/s = 1 / median step time after 2 steps; not "
        "measured for native flex (transformers would compile its flex kernel for the decode shapes)",
        "- native SWA is transformers' own sliding window: no sink tokens, so a different rule from SWAA's",
        f"- correctness: SWAA variants vs {CHECK_BASE} (last-token logits, every {HIDDEN_STRIDE}th final hidden "
        f"state), relative L2, tolerance {BF16_TOL}, NaN fails; {fp32}",
        "- compile: dynamo unique graphs / guard failures (recompiles) added by the warm-up and by the timed "
        "prefills + decode steps (timed must add none)",
        "",
        "| n | variant | prefill ms | speedup vs stock | peak GiB | decode tok/s | check | torch.compile | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(lines + [format_row(bench, r, rows) for r in rows]) + "\n"


def main(args: ModelSpeedArgs) -> int:
    if args.tiny:
        args = tiny_args(args)
        device, dtype, shape = torch.device("cpu"), torch.float32, TINY
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit(
                "--tiny runs Triton on the CPU interpreter: set TRITON_INTERPRET=1 before starting"
            )
    else:
        if not torch.cuda.is_available():
            raise SystemExit("model_speed.py needs a CUDA device (or --tiny with TRITON_INTERPRET=1)")
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, QWEN3_4B
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or "stock" not in args.variants:
        raise SystemExit(
            f"--variants: need 'stock' (the baseline) and names from {VARIANTS}; got {args.variants}"
        )
    bench = Bench(args, device, dtype, shape)
    register_floor()
    build_models(bench)
    rows: list[Row] = []
    fp32 = "float check pending"
    for index, n in enumerate(args.sizes):
        ids = torch.randint(
            0, shape["vocab_size"], (1, n), device=device, generator=torch.Generator(device).manual_seed(n)
        )
        for variant in args.variants:
            reason = skip_reason(bench, variant, n)
            log.info("n=%d %s%s", n, variant, f" ({reason})" if reason else "")
            row = Row(n, variant, note=reason) if reason else run_variant(bench, variant, n, ids, index == 0)
            rows.append(row)
            log.info("%s", format_row(bench, row, rows))
            atomic_write_text(args.out, report(bench, rows, fp32))  # partial results survive a kill
        cross_check(bench, rows)
        atomic_write_text(args.out, report(bench, rows, fp32))
        bench.outputs.clear()
    bench.models.clear()
    gc.collect()
    log.info("float check: %d layers, n=%d", args.check_layers, args.check_n)
    fp32, fp32_ok = float_check(bench)
    text = report(bench, rows, fp32)
    atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if fp32_ok and all(r.ok for r in rows) else 1


def parse_args(argv: list[str] | None = None) -> ModelSpeedArgs:
    d = ModelSpeedArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(map(str, d.sizes)), help="comma-separated prompt lengths")
    p.add_argument("--variants", default=",".join(d.variants), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--decode-steps", type=int, default=d.decode_steps)
    p.add_argument("--check-n", type=int, default=d.check_n, help="tokens of the float check")
    p.add_argument("--max-dense-mask-gib", type=float, default=d.max_dense_mask_gib)
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU (needs TRITON_INTERPRET=1)")
    p.add_argument("--out", default=d.out)
    a = p.parse_args(argv)
    return ModelSpeedArgs(
        sizes=tuple(int(s) for s in a.sizes.split(",")),
        variants=tuple(a.variants.split(",")),
        repeats=a.repeats,
        decode_steps=a.decode_steps,
        check_n=a.check_n,
        max_dense_mask_gib=a.max_dense_mask_gib,
        tiny=a.tiny,
        out=a.out,
        given=given_options(p, argv),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main(parse_args()))
