"""Triton forward kernel for causal sliding-window + sink attention, sinks in the same pass.

``swa_sink_attention(q, k, v, window, keep_first, scaling)`` returns ``(out, lse)`` for the common
prefill layout: one unpadded sequence per batch row, query ``t`` is key ``offset + t`` (keys may
extend a cache), and key j is visible to query i iff ``j <= i`` and (``i - j < W`` or
``j < keep_first``) -- the rule of ``swaa_patch.rule`` with position == index. ``window=None`` is
full causal attention. The model backends call it through ``triton_prefill.py`` for plain prefill
(padding, packed documents, answer tokens and anything needing gradients go through the others).

Kernel design (``_triton_swa_kernel.py``), FlashAttention-2 style:

- one program per (BLOCK_M queries, q head); grid ``(q blocks * groups, batch * kv heads)``. The
  ``groups`` q heads of one kv head are adjacent programs (GQA without repeating K/V: they share
  K/V tiles through L2), and q blocks run last-first.
- per q block, only the KV blocks that can hold a visible key are visited, in five ranges:
  full sink blocks (unmasked), the partial sink block (masked), the window's lower-edge blocks
  (masked), interior blocks (unmasked: every key visible to every query of the block), and the
  diagonal blocks (causal mask, bounds-checked loads). The sink ranges stop where the window's
  first block begins, so a sink inside the window is counted once. With W=2048, keep_first=100,
  BLOCK_M=128, BLOCK_N=64 a q block visits 2 sink + 34 window blocks, 5 of them masked: 2304 keys
  per query for 2148 visible ones (93% useful work).
- online softmax with fp32 accumulators; scores prescaled by ``scaling * log2(e)`` so the
  exponentials are ``exp2``; the log-sum-exp (natural log) is returned per query for merging with
  other partial results and for a backward pass. Float32 inputs use IEEE dots (exact), bf16/fp16
  the tensor cores.
- optional Gemma2 logit softcap ``softcap * tanh(score / softcap)`` as a compile-time flag.
- block sizes, ``num_warps`` and ``num_stages`` come from ``AUTOTUNE_CONFIGS`` (a short explicit
  list, autotuned once per head_dim / dtype / softcap) or from an explicit ``KernelConfig``.

Backward (not implemented; design notes for the next step): the FA2 backward maps onto the same
block ranges. (1) a preprocess kernel computes ``delta_i = sum_d dO_i * O_i``; (2) a dK/dV kernel
runs one program per KV block and loops over the q blocks that can see it -- the transposed
ranges: q blocks in ``[key_block_start, key_block_end + W - 1]`` (diagonal and window edge masked,
interior unmasked) plus, for KV blocks holding sinks, *every* later q block (an O(n * k) tail per
sink block; split it across programs or use atomics so the sink blocks do not serialise the grid);
P is recomputed from the saved ``lse`` as ``exp2(s * log2e - lse * log2e)``; GQA sums the
``groups`` q heads inside the program (no atomics); (3) a dQ kernel reuses this forward's loop
structure with ``dS = P * (dO V^T - delta)``. The softcap backward multiplies dS by
``1 - tanh^2``.
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
    """Launch parameters of one kernel variant."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3


# Candidates for the H100 (head_dim 128, bf16); the autotuner picks one per (head_dim, dtype,
# softcap). Compiled ahead of time for sm_90 with triton 3.9 on a CPU machine (not yet timed):
# all use wgmma and cp.async pipelining; BLOCK_N=64 with 8 warps has no register spills, 4 warps
# spill ~1.5 KB, BLOCK_N=128 spills ~250 B; (128, 128, 8, 3) needs 224 KB of shared memory, at the
# H100's 227 KB limit (the autotuner skips a config that does not fit).
AUTOTUNE_CONFIGS: tuple[KernelConfig, ...] = (
    KernelConfig(128, 64, 8, 3),
    KernelConfig(128, 64, 8, 4),
    KernelConfig(128, 64, 8, 2),
    KernelConfig(128, 128, 8, 2),
    KernelConfig(128, 128, 8, 3),
    KernelConfig(128, 32, 4, 4),
)
# Without a GPU (Triton's CPU interpreter) nothing can be timed, so there is no autotuning. The
# interpreter's cost is per program and per KV block, so blocks of 32 suit the tiny shapes it is
# used for (block boundaries are exercised by tests/test_triton_swa.py's explicit configs).
INTERPRETER_CONFIG = KernelConfig(32, 32, 1, 1)


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
            {"BLOCK_M": c.block_m, "BLOCK_N": c.block_n}, num_warps=c.num_warps, num_stages=c.num_stages
        )
        for c in AUTOTUNE_CONFIGS
    ]
    tuned = triton.autotune(configs=configs, key=["HEAD_DIM", "SOFTCAP", "DOT_PRECISION"])(
        kernels.swa_sink_fwd
    )
    return SimpleNamespace(jit=kernels.swa_sink_fwd, tuned=tuned)


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
) -> tuple[Tensor, Tensor]:
    """Sliding-window + sink attention; returns ``out`` (B, Hq, Lq, D) and ``lse`` (B, Hq, Lq) float32.

    q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) with Hq a multiple of Hkv (GQA), any strides. Query t
    is key ``offset + t``. ``window=None`` is full causal attention. ``config`` fixes the launch
    parameters (else they are autotuned from ``AUTOTUNE_CONFIGS`` on CUDA, ``INTERPRETER_CONFIG``
    on the CPU interpreter). ``out``, if given, is written in place (any strides, e.g. a
    (B, Lq, Hq, D) buffer transposed, which saves the model a layout copy)."""
    _check_inputs(q, k, v, window, keep_first, offset)
    batch, heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"out must match q's shape, dtype and device; got {tuple(out.shape)} {out.dtype} {out.device}"
        )
    if config is None and q.device.type != "cuda":
        config = INTERPRETER_CONFIG
    lse = torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return out, lse
    # A window or sink range beyond the keys changes nothing; clamping keeps the kernel's int32 math safe.
    window = k_len + 1 if window is None else min(window, k_len + 1)
    keep_first = min(keep_first, k_len)
    groups = heads // kv_heads
    if softcap is None:
        score_scale, post_scale = scaling * LOG2E, 1.0
    else:
        score_scale, post_scale = scaling / softcap, softcap * LOG2E
    kernels = load_kernels()
    args = (
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        kv_heads, groups, q_len, k_len, offset, window, keep_first, score_scale, post_scale,
    )  # fmt: skip
    flags = dict(
        HEAD_DIM=dim,
        SOFTCAP=softcap is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )

    def grid(meta):
        return (math.ceil(q_len / meta["BLOCK_M"]) * groups, batch * kv_heads)

    if config is None:
        kernels.tuned[grid](*args, **flags)
    else:
        kernels.jit[grid](
            *args,
            **flags,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    return out, lse


def chosen_config() -> KernelConfig | None:
    """The autotuner's last choice (for benchmark reports), or None before the first tuned call."""
    best = getattr(load_kernels().tuned, "best_config", None)
    if best is None:
        return None
    return KernelConfig(best.kwargs["BLOCK_M"], best.kwargs["BLOCK_N"], best.num_warps, best.num_stages)
