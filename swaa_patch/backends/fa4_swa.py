"""Trainable SWA+sink attention in one pass through FlashAttention-4's Hopper kernels.

FlashAttention-4 (``flash-attn-4`` on PyPI, CuTe DSL, JIT-compiled; ``pip install swaa[fa4]``) runs a
*block-sparse* attention forward and backward on Hopper (``flash_fwd_sm90`` / ``flash_bwd_sm90``):
each 128-query block visits only the 128-key blocks a layout lists, the "full" ones unmasked and
the "partial" ones through a ``mask_mod``. With :func:`rule_block_layout` (the window's blocks and
the sinks' blocks) and :func:`rule_mask_mod` (the rule per element) that is the whole rule, sinks
included, in one pass each way: no sink merge after the forward and no sink tail after the
backward, as the cuDNN path needs (``cudnn_swa.py``).

Measured on an H200 (``benchmarks/results/fa4_attention.md``, the 4B shape's heads, W=2048,
keep_first=100): the fastest exact attention there is for training, fwd+bwd 8.90 ms at 32K and
36.66 ms at 128K (6.39x / 24.91x full-causal SDPA's fwd+bwd) against the cuDNN path's 9.55 / 38.87 ms
(5.95x / 23.49x), the forward alone 7.07x / 29.50x. In a whole `swaa sft` step of the 4B shape that is
0-1 % (attention is a small part of it) while FA4's JIT compile adds ~16 s to the first step of every
process (benchmarks/results/sft_speed.md, runs 10-11), so training takes it only under the setting
``SWAA_FUSED_TRAIN=fa4`` (``triton_swa_train.kernel_for``). Its kernels compile once per dtype /
head_dim / GQA ratio / rule, not per length (the layout is data); the first FA4 check here turns on
FA4's on-disk compile cache (``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1`` unless set), so a later
process loads them instead (0.0 s first calls at 128K in a second process: fa4_attention.md).

Calls it serves (``unusable_reason``): CUDA bf16/fp16 on Hopper, no softcap, no cache (query i is
key i), a head_dim checked against float64 on the H200 (:data:`TESTED_HEAD_DIMS`; FA4 4.0.0b36
computed head_dim 16 wrong and refused 256 with block sparsity), and flash-attn-4 at a version this
module was checked with (:data:`TESTED_VERSIONS`: its mask_mod calling convention changes between
betas, and a wrong one would not fail loudly). Everything else keeps the cuDNN or Triton path.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from .cudnn_swa import hopper_reason

BLOCK = 128  # the layout's block, queries and keys: FA4's Hopper forward tile (128 x 128); its backward's
# query tile (64) divides it and its key tile is 128
TESTED_VERSIONS = ("4.0.0b36",)
TESTED_HEAD_DIMS = (32, 64, 128)  # tests/test_fa4_swa.py's float64 cases, run on an H200

# FA4's JIT prints this for every compile of a mask_mod kernel (its aux data is a compile-time constant there)
warnings.filterwarnings("ignore", message=r"Argument aux_data .* cannot be converted to a JitArgument")


@lru_cache(maxsize=1)
def installed_version() -> str | None:
    """flash-attn-4's version when it and its CuTe DSL import, else None."""
    from importlib.metadata import PackageNotFoundError, version

    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")  # read once, at FA4's import
    try:
        found = version("flash-attn-4")
        import flash_attn.cute.interface  # noqa: F401  (imports cutlass: fails without nvidia-cutlass-dsl)
    except (PackageNotFoundError, ImportError, OSError):
        return None
    return found


def unusable_reason(q: Tensor, k: Tensor, softcap: float | None) -> str | None:
    """Why a (B, H, L, D) training call cannot take FA4; None when it can. Cheapest checks first."""
    reason = hopper_reason(q, softcap)
    if reason is not None:
        return reason
    if q.shape[2] != k.shape[2]:
        return "cached keys"
    if q.shape[-1] not in TESTED_HEAD_DIMS:
        return "head_dim"
    found = installed_version()
    if found is None:
        return "no flash-attn-4"
    if found not in TESTED_VERSIONS:
        return f"flash-attn-4 {found} not among the tested {TESTED_VERSIONS}"
    return None


@dataclass(frozen=True)
class BlockLayout:
    """The (query block, key block) tiles the rule touches, each (query blocks, key blocks) bool:
    ``full`` ones are visible throughout (no mask), ``partial`` ones hold both kinds of pair."""

    partial: Tensor
    full: Tensor


def rule_block_layout(
    n: int, block_q: int, block_k: int, window: int, keep_first: int, device=None
) -> BlockLayout:
    """The rule's tiles for one sequence of n tokens (query i is key i), from the tiles' corners.

    A tile of queries [q0, q1] and keys [k0, k1] holds a visible pair iff some key is not after some
    query (k0 <= q1) and either the closest such pair is inside the window (max(0, q0 - k1) < W) or
    the tile holds a sink (k0 < keep_first). All its pairs are visible iff every key precedes every
    query (k1 <= q0) and the tile is all sinks or its farthest non-sink pair is inside the window
    (q1 - max(k0, keep_first) < W). Tiles the sequence's end cuts are never full (FA4 masks the
    sequence's end on partial tiles)."""
    q_blocks = torch.arange(math.ceil(n / block_q), device=device)
    k_blocks = torch.arange(math.ceil(n / block_k), device=device)
    q0, k0 = (q_blocks * block_q)[:, None], (k_blocks * block_k)[None, :]
    q1 = ((q_blocks + 1) * block_q).clamp(max=n)[:, None] - 1
    k1 = ((k_blocks + 1) * block_k).clamp(max=n)[None, :] - 1
    touched = (k0 <= q1) & (((q0 - k1).clamp(min=0) < window) | (k0 < keep_first))
    full = (k1 <= q0) & ((k1 < keep_first) | (q1 - k0.clamp(min=keep_first) < window))
    full &= (q1 - q0 + 1 == block_q) & (k1 - k0 + 1 == block_k)
    return BlockLayout(partial=touched & ~full, full=full)


def packed(rows: Tensor) -> tuple[Tensor, Tensor]:
    """A (rows, cols) bool matrix as FA4 reads it: (1, 1, rows) int32 counts and (1, 1, rows, cols)
    int32 column indices, each row's set columns first, ascending (batch and heads broadcast)."""
    count = rows.sum(-1, dtype=torch.int32)
    order = torch.sort((~rows).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    return count[None, None].contiguous(), order[None, None].contiguous()


@lru_cache(maxsize=16)
def sparse_tensors(n: int, window: int, keep_first: int, device: torch.device):
    """FA4's (forward, backward) BlockSparseTensorsTorch for the rule at length n: the forward's
    lists per query block, the backward's per key block. Built once per length (milliseconds)."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    layout = rule_block_layout(n, BLOCK, BLOCK, window, keep_first, device)

    def tensors(partial: Tensor, full: Tensor):
        return BlockSparseTensorsTorch(*packed(partial), *packed(full), block_size=(BLOCK, BLOCK))

    return tensors(layout.partial, layout.full), tensors(layout.partial.T, layout.full.T)


@lru_cache(maxsize=16)
def rule_mask_mod(window: int, keep_first: int):
    """The rule as FA4's CuTe ``mask_mod`` (flash-attn-4 4.0.0b36's convention: batch, head, query,
    key, sequence info, aux tensors): key j visible to query i iff j <= i and (i - j < W or
    j < keep_first). One object per rule, so FA4's compile cache sees the same callable."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils

    @cute.jit
    def swa_sink_mask(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        w = utils.scalar_to_ssa(window, cutlass.Int32)
        sinks = utils.scalar_to_ssa(keep_first, cutlass.Int32)
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < w) | (kv_idx < sinks))

    return swa_sink_mask


def swa_sink_attention_fa4(
    q: Tensor, k: Tensor, v: Tensor, window: int, keep_first: int, scaling: float
) -> Tensor:
    """Differentiable (B, Hq, L, D) out of the rule from q (B, Hq, L, D), k and v (B, Hkv, L, D), one
    unpadded sequence per row; the caller checked :func:`unusable_reason`."""
    from flash_attn.cute.interface import flash_attn_func

    # window and keep_first as given (not capped at the length): they are the mask_mod's compile-time constants
    forward, backward = sparse_tensors(q.shape[2], window, keep_first, q.device)
    out, _ = flash_attn_func(  # (out, lse): lse None as not asked for
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scaling,
        mask_mod=rule_mask_mod(window, keep_first), block_sparse_tensors=forward, block_sparse_tensors_bwd=backward,
    )  # fmt: skip
    return out.transpose(1, 2)
