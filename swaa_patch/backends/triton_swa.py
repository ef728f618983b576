"""Triton forward kernel for causal sliding-window + sink attention, sinks in the same pass.

``swa_sink_attention(q, k, v, window, keep_first, scaling)`` returns ``(out, lse)`` for the common
prefill layout: one unpadded sequence per batch row, query ``t`` is key ``offset + t`` (keys may
extend a cache), and key j is visible to query i iff ``j <= i`` and (``i - j < W`` or
``j < keep_first``) -- the rule of ``swaa_patch.rule`` with position == index. ``window=None`` is
full causal attention. The model backends call it through ``fused_prefill.py`` for plain prefill
(padding, packed documents, answer tokens and anything needing gradients go through the others).

``merge_sinks(q, k, v, out, lse, window, keep_first, scaling)`` completes a *window-only* result
(another kernel's, e.g. cuDNN's sliding window in ``cudnn_swa.py``) with the sinks outside each
window, in place: the same online-softmax step continued from that result's log-sum-exp.

Kernel design, launch configurations and the (unbuilt) backward's design: ``docs/kernels.md``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

import torch
from torch import Tensor

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INSTALL_HINT = "the Triton SWA kernel needs the triton package (pip install triton; it ships with CUDA torch)"
LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of one kernel variant (``warp_spec``: Triton's automatic warp
    specialisation of the interior loop, TMA path only)."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    warp_spec: bool = False

    def meta(self) -> dict:
        """The kernel's compile-time block parameters."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "WARP_SPEC": self.warp_spec}


# Candidates for the H100 (head_dim 128, bf16); the autotuner picks one per (head_dim, dtype,
# softcap, TMA or pointer loads). The four fastest of benchmarks/results/triton_tuning.md's sweep
# (TMA loads; 64x64/4 warps won at 32K, 128x128/8 warps/2 stages at 128K). BLOCK_N=128 with 3
# stages needs most of the H100's 227 KB of shared memory; a config that does not fit is skipped.
# Warp specialisation measured no faster (within 1%) and is left out.
AUTOTUNE_CONFIGS: tuple[KernelConfig, ...] = (
    KernelConfig(64, 64, 4, 3),
    KernelConfig(128, 128, 8, 2),
    KernelConfig(128, 128, 8, 3),
    KernelConfig(128, 64, 8, 3),
)
# float32 (IEEE dots on the CUDA cores) is a correctness path, not a speed path: one fixed config
# with small blocks, no autotuning: IEEE dots are unrolled FMAs, and large fp32 blocks take minutes
# to compile (the likely cause of a model_speed float check that never finished on the H100).
FLOAT32_CONFIG = KernelConfig(32, 32, 4, 2)
# Without a GPU (Triton's CPU interpreter) nothing can be timed, so there is no autotuning. The
# interpreter's cost is per program and per KV block, so blocks of 32 suit the tiny shapes it is
# used for (block boundaries are exercised by tests/test_triton_swa.py's explicit configs).
INTERPRETER_CONFIG = KernelConfig(32, 32, 1, 1)


@dataclass(frozen=True)
class RowView:
    """A (B, H, L, D) tensor seen as a 2-D (rows, row_len) matrix with unit column stride, the shape
    a TMA descriptor needs: element (b, h, l, d) is at row ``b * row_b + h * row_h + l``, column
    ``b * col_b + h * col_h + d``. transformers' (B, L, H, D)-transposed tensors have ``row_len =
    H * D`` and heads side by side in a row; contiguous (B, H, L, D) tensors have ``row_len = D``."""

    rows: int
    row_len: int
    row_b: int
    row_h: int
    col_b: int
    col_h: int


def row_view(t: Tensor) -> RowView | None:
    """The tensor's RowView, or None when it has none (then the kernel uses pointer loads).

    Needs a dense, non-overlapping tensor (rows past one sequence's end are then another
    sequence's real rows, or past the tensor's end, where TMA reads zeros), unit stride over
    head_dim, and 16-byte aligned base and row length (TMA's rules)."""
    batch, heads, length, dim = t.shape
    row_len = t.stride(2)
    size = t.element_size()
    if t.stride(3) != 1 or row_len < dim or (row_len * size) % 16 or t.data_ptr() % 16:
        return None
    if not _dense(t):
        return None
    offsets = []
    for count, stride in ((batch, t.stride(0)), (heads, t.stride(1))):
        if count == 1:
            offsets.append((0, 0))
        elif stride % row_len == 0:
            offsets.append((stride // row_len, 0))
        elif stride < row_len and (stride * size) % 16 == 0:
            offsets.append((0, stride))
        else:
            return None
    (row_b, col_b), (row_h, col_h) = offsets
    return RowView(t.numel() // row_len, row_len, row_b, row_h, col_b, col_h)


def _dense(t: Tensor) -> bool:
    """Every element of the storage span is an element of ``t``, once (strides of a permuted
    contiguous tensor)."""
    expected = 1
    dims = sorted((stride, size) for stride, size in zip(t.stride(), t.shape) if size > 1)
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def tma_supported(device: torch.device) -> bool:
    """TMA descriptors: Hopper or newer GPUs, and Triton's CPU interpreter (for the tests)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return os.environ.get("TRITON_INTERPRET") == "1"


def _set_block_shapes(nargs: dict) -> None:
    """Autotuner pre-hook: a TMA descriptor's box must match the config's block sizes."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    dim = nargs["HEAD_DIM"]
    for name, block in (("Q", nargs["BLOCK_M"]), ("K", nargs["BLOCK_N"]), ("V", nargs["BLOCK_N"])):
        if isinstance(nargs[name], TensorDescriptor):
            nargs[name].block_shape = [block, dim]


@lru_cache(maxsize=1)
def load_kernels() -> SimpleNamespace:
    """The JIT kernel and its autotuned wrapper, built on first use (triton imported lazily)."""
    try:
        import triton

        from . import _triton_swa_kernel as kernels
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    configs = [
        triton.Config(
            c.meta(),
            num_warps=c.num_warps,
            num_stages=c.num_stages,
            pre_hook=_set_block_shapes,
        )
        for c in AUTOTUNE_CONFIGS
    ]
    tuned = triton.autotune(configs=configs, key=["HEAD_DIM", "SOFTCAP", "DOT_PRECISION", "USE_TMA"])(
        kernels.swa_sink_fwd
    )
    return SimpleNamespace(jit=kernels.swa_sink_fwd, tuned=tuned, merge=kernels.sink_merge_fwd)


def _fixed_config(q: Tensor) -> KernelConfig | None:
    """The launch config imposed by where the kernel runs (the CPU interpreter, float32's IEEE
    dots), or None where the caller chooses (autotuning, or a kernel's own fixed config)."""
    if q.device.type != "cuda":
        return INTERPRETER_CONFIG
    if q.dtype == torch.float32:
        return FLOAT32_CONFIG
    return None


def _score_scales(scaling: float, softcap: float | None) -> tuple[float, float]:
    """``(score_scale, post_scale)`` of the kernels: scores end in log2 units (exp2), and with a
    softcap ``post_scale * tanh(s * score_scale)`` is ``softcap * tanh(s * scaling / softcap)``."""
    if softcap is None:
        return scaling * LOG2E, 1.0
    return scaling / softcap, softcap * LOG2E


def _dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs use exact IEEE dots; 16-bit inputs the tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, window, keep_first: int, offset: int) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be (batch, heads, length, head_dim); got {q.ndim}D, {k.ndim}D, {v.ndim}D"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    (batch, heads, q_len, dim), (k_batch, kv_heads, k_len, k_dim) = q.shape, k.shape
    if k_batch != batch or k_dim != dim:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head_dim")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"head_dim {dim} is not supported by the Triton SWA kernel (supported: {SUPPORTED_HEAD_DIMS})"
        )
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v must share one dtype among {SUPPORTED_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"the Triton SWA kernel runs on CUDA tensors (got {q.device}; CPU needs TRITON_INTERPRET=1)"
        )
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None (full causal); got {window}")
    if keep_first < 0 or offset < 0:
        raise ValueError(f"keep_first and offset must be >= 0; got {keep_first}, {offset}")
    if offset + q_len > k_len:
        raise ValueError(f"query t is key offset + t: offset {offset} + q_len {q_len} exceeds k_len {k_len}")


def swa_sink_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    keep_first: int,
    scaling: float,
    softcap: float | None = None,
    offset: int = 0,
    *,
    config: KernelConfig | None = None,
    out: Tensor | None = None,
    tma: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Sliding-window + sink attention; returns ``out`` (B, Hq, Lq, D) and ``lse`` (B, Hq, Lq) float32.

    q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) with Hq a multiple of Hkv (GQA), any strides. Query t
    is key ``offset + t``. ``window=None`` is full causal attention. ``config`` fixes the launch
    parameters (else they are autotuned from ``AUTOTUNE_CONFIGS`` on CUDA for 16-bit inputs,
    ``FLOAT32_CONFIG`` for float32, ``INTERPRETER_CONFIG`` on the CPU interpreter). ``out``, if
    given, is written in place (any strides, e.g. a (B, Lq, Hq, D) buffer transposed, which saves
    the model a layout copy). ``tma``: read Q/K/V through TMA descriptors (None = wherever
    supported: Hopper+ GPUs, 16-bit inputs with a ``row_view``; True insists, ValueError if it
    cannot; False = pointer loads)."""
    _check_inputs(q, k, v, window, keep_first, offset)
    batch, heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"out must match q's shape, dtype and device; got {tuple(out.shape)} {out.dtype} {out.device}"
        )
    if config is None:
        config = _fixed_config(q)
    lse = torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return out, lse
    views = _tma_views(q, k, v, tma)
    if config is not None and config.warp_spec and views is None:
        raise ValueError("KernelConfig(warp_spec=True) needs the TMA path (tma=True and row views)")
    # A window or sink range beyond the keys changes nothing; clamping keeps the kernel's int32 math safe.
    window = k_len + 1 if window is None else min(window, k_len + 1)
    keep_first = min(keep_first, k_len)
    groups = heads // kv_heads
    score_scale, post_scale = _score_scales(scaling, softcap)
    kernels = load_kernels()
    sources, view_args = (q, k, v), (0,) * 12
    if views is not None:
        from triton.tools.tensor_descriptor import TensorDescriptor

        block_m, block_n = (config.block_m, config.block_n) if config else (1, 1)  # pre-hook sets them
        sources = tuple(
            TensorDescriptor(t, [view.rows, view.row_len], [view.row_len, 1], [block, dim])
            for t, view, block in zip((q, k, v), views, (block_m, block_n, block_n))
        )
        view_args = tuple(x for view in views for x in (view.row_b, view.row_h, view.col_b, view.col_h))
    args = (
        *sources, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *view_args,
        kv_heads, groups, q_len, k_len, offset, window, keep_first, score_scale, post_scale,
    )  # fmt: skip
    flags = dict(
        HEAD_DIM=dim,
        SOFTCAP=softcap is not None,
        DOT_PRECISION=_dot_precision(q.dtype),
        USE_TMA=views is not None,
    )

    def grid(meta):
        return (math.ceil(q_len / meta["BLOCK_M"]) * groups, batch * kv_heads)

    if config is None:
        kernels.tuned[grid](*args, **flags)
    else:
        kernels.jit[grid](
            *args,
            **flags,
            **config.meta(),
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    return out, lse


# The sink merge reads q and the output and rewrites the output (memory-bound; its few sink blocks
# sit in L2): one fixed config, no autotuning; the fastest of benchmarks/results/merge_tuning.md.
MERGE_CONFIG = KernelConfig(64, 32, 4, 3)


def merge_sinks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    window: int,
    keep_first: int,
    scaling: float,
    softcap: float | None = None,
    offset: int = 0,
    *,
    config: KernelConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """Turn a window-only attention result into the rule's SWA+sink result, in place.

    ``out`` (B, Hq, Lq, D) and ``lse`` (B, Hq, Lq) float32 (any strides) must hold attention of
    query t (key ``offset + t``) over the keys j with ``0 <= offset + t - j < window`` -- what a
    sliding-window kernel without sinks computes (cuDNN's, see ``cudnn_swa.py``). This adds the
    sink keys ``j < keep_first`` outside that window; the result is ``swa_sink_attention``'s.
    Queries whose window holds every sink are not touched. ``config`` fixes the launch parameters
    (else ``MERGE_CONFIG``, or the float32 / interpreter config). Returns ``(out, lse)``."""
    _check_inputs(q, k, v, window, keep_first, offset)
    if out.shape != q.shape or out.dtype != q.dtype or lse.shape != q.shape[:3] or lse.dtype != torch.float32:
        raise ValueError(
            f"out must match q {tuple(q.shape)} {q.dtype} and lse be float32 {tuple(q.shape[:3])}; got "
            f"{tuple(out.shape)} {out.dtype} and {tuple(lse.shape)} {lse.dtype}"
        )
    if window is None:
        raise ValueError("merge_sinks needs a window (full causal attention has no keys outside it)")
    batch, heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    keep_first = min(keep_first, k_len)
    config = config or _fixed_config(q) or MERGE_CONFIG
    first_block = max(window - offset, 0) // config.block_m
    n_blocks = math.ceil(q_len / config.block_m) - first_block
    if keep_first == 0 or n_blocks <= 0 or q.numel() == 0:
        return out, lse
    groups = heads // kv_heads
    score_scale, post_scale = _score_scales(scaling, softcap)
    load_kernels().merge[(n_blocks * groups, batch * kv_heads)](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
        kv_heads, groups, q_len, k_len, offset, first_block, window, keep_first, score_scale, post_scale,
        HEAD_DIM=dim,
        SOFTCAP=softcap is not None,
        DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip
    return out, lse


def _tma_views(q: Tensor, k: Tensor, v: Tensor, tma: bool | None) -> tuple[RowView, ...] | None:
    """Row views of q, k, v when the TMA path is wanted and possible (see ``swa_sink_attention``)."""
    if tma is False:
        return None
    if tma is None and (q.dtype == torch.float32 or q.device.type != "cuda"):
        return None
    views = tuple(row_view(t) for t in (q, k, v))
    if not tma_supported(q.device) or any(view is None for view in views):
        if tma:
            raise ValueError(
                "tma=True: TMA needs a Hopper+ GPU (or TRITON_INTERPRET=1) and dense q, k, v with unit "
                "head_dim stride and 16-byte aligned rows"
            )
        return None
    return views


def chosen_config() -> KernelConfig | None:
    """The autotuner's last choice (for benchmark reports), or None before the first tuned call."""
    best = getattr(load_kernels().tuned, "best_config", None)
    if best is None:
        return None
    return KernelConfig(
        best.kwargs["BLOCK_M"],
        best.kwargs["BLOCK_N"],
        best.num_warps,
        best.num_stages,
        best.kwargs["WARP_SPEC"],
    )
