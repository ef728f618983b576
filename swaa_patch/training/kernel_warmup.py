"""Compile a training run's Triton kernels all at once, in parallel, before its model loads.

Why: on a fresh GPU machine the first `swaa sft` step compiles every Triton kernel it meets (SWAA's
sink merge and sink-tail backward, Liger's RMSNorm / SwiGLU / RoPE) and builds each one's launcher,
one after the other, while the GPU waits: 8.9 of a 14.2 s first step at 32K on an H200, 26 compiles
and launcher builds (benchmarks/results/sft_first_step.md). Each waits for the previous one only
because the step meets them in order.

How: :func:`warm_up_kernels` runs one forward and backward of a *one-layer* model of the run's
architecture (the config's hidden size, heads, head_dim, vocabulary; random weights; SWAA's plan and
Liger as the run applies them; bf16 autocast as the run trains) with every Triton launch turned into a
compile-only call under Triton's ``AsyncCompileMode``: the kernels compile in a thread pool, side by
side (Triton's compiler passes, ptxas and the launcher's C compiler release the GIL), then their
launchers load in parallel too. The results of that pass are garbage (no kernel ran) and are thrown
away; what stays is each kernel in its JIT function's in-memory cache (and Triton's on-disk cache), so
the run's first step launches them at once. Its two sequences have one length that is a multiple of 16
and one that is not (Triton specialises integer arguments on divisibility by 16), both beyond the window
plus a few blocks so that the sink-tail kernels run. Also initialised on the way: cuDNN's library and
cuBLAS.

A warm-up that fails costs nothing but its time: the run logs why and compiles as it would have without
it (the kernels, and so the numbers, are the same either way). A first attempt ran the same two steps in
a helper *process* while the model loaded; its imports and serial compiles made it finish 21-31 s after
the model was loaded, so the first step came later than without it (results/sft_first_step.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

from .settings import WARMUP_MODES, SFTSettings

__all__ = ["WARMUP_MODES", "compile_only_launches", "warm_up_kernels", "warmup_blocker", "warmup_lengths"]

logger = logging.getLogger(__name__)

BLOCK = 128  # the largest block of the sink-tail kernels: the warm-up lengths reach a few blocks past the window
DIVISIBILITY = 16  # Triton specialises integer arguments divisible by 16
WORKERS = 16  # compile threads (each compile mostly waits on a GIL-free pass or a subprocess)


def warmup_blocker(mode: str, on_cuda: bool) -> str | None:
    """Why the warm-up does not run, or None when it does."""
    if mode == "off":
        return "training.kernel_warmup is off"
    if not on_cuda:
        return "no CUDA device: nothing is compiled"
    try:
        from triton.runtime import _async_compile  # noqa: F401  (Triton >= 3.5)
    except ImportError:
        return "this Triton has no AsyncCompileMode (Triton >= 3.5): the first step compiles its kernels in turn"
    return None


def warmup_lengths(settings: SFTSettings, max_positions: int | None) -> tuple[int, ...]:
    """The warm-up's two sequence lengths: one a multiple of 16 and one not, a few blocks past the window
    (the sink tail runs only beyond it), within ``data.max_length`` and the model's positions."""
    swaa = settings.swaa_config
    reach = 0 if swaa is None else swaa.sliding_window_size + swaa.keep_first
    longest = settings.data.max_length if max_positions is None else min(settings.data.max_length, max_positions)
    base = min(reach + 4 * BLOCK, longest)
    base -= base % DIVISIBILITY
    return tuple(n for n in (base, base - 2) if n >= 4)


def one_layer_config(path: str) -> Any:
    """The model's config cut to one decoder layer (per-layer lists cut to match)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    config.num_hidden_layers = 1
    for name in ("layer_types", "mlp_only_layers"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            setattr(config, name, value[:1])
    return config


@contextmanager
def compile_only_launches(workers: int = WORKERS) -> Iterator[list[Any]]:
    """Inside the block every Triton launch compiles its kernel in a thread pool instead of running
    (an autotuned kernel compiles each of its configs; no timing, so no tuning result is stored).
    On exit the compiles are awaited and the kernels' launchers built, in parallel as well. Yields the
    list the compiled kernels are appended to."""
    from triton.runtime import _async_compile
    from triton.runtime._async_compile import AsyncCompileMode
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    submitted: list[Any] = []

    class RecordingMode(AsyncCompileMode):
        def submit(self, key, *args, **kwargs):
            future = super().submit(key, *args, **kwargs)
            if not any(future is f for f in submitted):
                submitted.append(future)
            return future

    jit_run, tuner_run = JITFunction.run, Autotuner.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        # the mode is a context variable, which the autograd engine's thread (where the backward's kernels
        # launch) does not inherit: set it for the call wherever it runs
        token = _async_compile.active_mode.set(mode) if _async_compile.active_mode.get() is None else None
        try:
            return jit_run(self, *args, grid=grid, warmup=True, **kwargs)
        finally:
            if token is not None:
                _async_compile.active_mode.reset(token)

    def compile_every_config(self, *args, **kwargs):
        kwargs.pop("warmup", None)
        return self.warmup(*args, **kwargs)

    kernels: list[Any] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="swaa-compile") as pool:
        JITFunction.run, Autotuner.run = compile_only, compile_every_config
        mode = RecordingMode(pool)
        try:
            with mode:
                yield kernels
        finally:
            JITFunction.run, Autotuner.run = jit_run, tuner_run
            _async_compile.active_mode.set(None)  # Triton 3.6's exit leaves it set when a compile raised
        kernels.extend(future.result() for future in submitted)
        # the launcher (a small C module per signature) and the module load, at first launch otherwise
        list(pool.map(_load, kernels))


def _load(kernel: Any) -> None:
    try:
        kernel._init_handles()
    except Exception:  # e.g. too much shared memory: the real launch raises it with Triton's own message
        pass


def warm_up_kernels(settings: SFTSettings, path: str, max_positions: int | None) -> dict[str, Any] | None:
    """Compile the Triton kernels a training run of ``settings`` on the model at ``path`` will launch,
    in parallel (see the module docstring); its statistics, or None when :func:`warmup_blocker` says
    why not (logged) or the warm-up failed (logged; the first step then compiles as usual)."""
    import torch

    reason = warmup_blocker(settings.training.kernel_warmup, torch.cuda.is_available())
    if reason is not None:
        logger.debug("kernel warm-up off: %s", reason)
        return None
    start = time.perf_counter()
    try:
        with compile_only_launches() as kernels:
            warm_pass(settings, path, max_positions)
    except Exception as err:  # an optimisation only: the run itself is unaffected
        logger.warning("kernel warm-up failed (%s: %s); the first step compiles its kernels itself",
                       type(err).__name__, err)  # fmt: skip
        return None
    stats = {"kernels": len(kernels), "seconds": time.perf_counter() - start}
    logger.info("kernel warm-up: %d Triton kernels compiled in parallel in %.1f s", stats["kernels"], stats["seconds"])
    return stats


def warm_pass(settings: SFTSettings, path: str, max_positions: int | None, device: str = "cuda") -> list[float]:
    """One forward and backward per warm-up length through a one-layer model of the run's architecture
    and kernels (layer 0 sliding, so SWAA's kernels run; labels on a short suffix, as an answer); the
    losses (garbage under :func:`compile_only_launches`). The attention calls it makes are not counted
    in ``triton_swa_train.PATH_COUNTS`` (the run's record of its own calls), and the GPU's peak-memory
    statistics are reset after it."""
    import torch

    with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
        # the run's random draws (LoRA's initialisation, dropout) come out as without the warm-up
        return _warm_pass(settings, path, max_positions, torch.device(device))


def _warm_pass(settings: SFTSettings, path: str, max_positions: int | None, device: Any) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    from ..backends import triton_swa_train
    from ..jobs.liger import apply_liger
    from ..patch import apply_swaa
    from .sft import liger_wanted, training_dtype

    config = one_layer_config(path)
    swaa = settings.swaa_config
    if swaa is not None:
        swaa = dataclasses.replace(swaa, non_sliding_layers=())
    counts = dict(triton_swa_train.PATH_COUNTS)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=training_dtype(settings),
                                                 attn_implementation=settings.attn_implementation)  # fmt: skip
    model.config.use_cache = False
    model.requires_grad_(False)  # the activations carry the gradient (LoRA's weights do in the run)
    apply_swaa(model, swaa)
    liger = apply_liger(model) if liger_wanted(path, settings) else None
    fused = add_trl_lm_head(model)
    # sft_config's autocast: bf16 (dtype auto / bfloat16) or fp16 (float16) on a GPU
    amp = {"auto": torch.bfloat16, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(settings.dtype)
    mixed = torch.autocast("cuda", dtype=amp) if device.type == "cuda" and amp else nullcontext()
    losses = []
    try:
        for n in warmup_lengths(settings, max_positions):
            ids = torch.randint(0, config.vocab_size, (1, n), device=device)
            labels = torch.full_like(ids, -100)
            labels[:, -min(8, n - 1):] = ids[:, -min(8, n - 1):]
            with mixed:
                hidden = model.get_input_embeddings()(ids).requires_grad_()
                out = model(inputs_embeds=hidden, labels=labels, **({"fused_lm_head": True} if fused else {}))
            out.loss.backward()
            losses.append(float(out.loss))
    finally:
        if liger is not None:
            liger.restore()
        triton_swa_train.PATH_COUNTS.clear()
        triton_swa_train.PATH_COUNTS.update(counts)
        del model
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    return losses


def add_trl_lm_head(model: Any) -> bool:
    """trl's fused LM head (its own Triton kernels) on ``model`` as trl's SFTTrainer adds it (the same
    per-token outputs, so the same kernel specialisations); False when this trl has none."""
    try:
        from trl.trainer.utils import add_fused_lm_head
    except ImportError:
        return False
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # trl 1.16's SFTTrainer.__init__
    return True
