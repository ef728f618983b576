"""A split-K Triton decode kernel over a StaticSWAACache layer's slots, registered as one PyTorch op.

Why its own kernel: a compiled decode step calls attention once per layer (36 times in the 4B
shape). Through flex_attention, torch 2.11's dynamo traces each call's mask and score functions
again (15-16 s of the H200's cold compile went there) and inductor lowers a flex template per layer;
through masked SDPA, cuDNN runs one 64-row tile per kv head (8 thread blocks on a 132-SM GPU) and
the step is ~30 % slower. As an opaque ``torch.library.custom_op`` this kernel is one op per layer that
dynamo records from its shape function, AOT autograd and inductor pass through as an external call,
and CUDA graphs capture. (As a ``triton_op``, which inductor sees into, the 4B shape's cold compile
took 60.4 s on an H200 against flex's 60.8 s: AOT autograd and lowering analysed the Triton kernels of
every layer.)

Design: each (batch row, kv head, split) program holds the kv head's query heads (GQA: keys and
values are read once for the group) and streams its share of the slots with the online softmax,
writing an unnormalised output, max and exponential sum; a merge program per (row, query head)
combines the splits. The split count fills the GPU (``LAUNCH.programs_per_sm`` programs per SM)
for any batch and key count: on an H200, 17 splits of 128 slots per kv head for a layer of 2,148
slots at batch 1, two splits at batch 32.
The rule is in the validity mask the cache builds per step (sinks, window, empty slots), so this
kernel serves bounded and full layers alike; Gemma2's logit softcap is applied before the mask.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

import torch
from torch import Tensor

from .triton_swa import INSTALL_HINT, _dot_precision, _score_scales

OP_NAME = "swaa::static_decode_attention"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_SPLITS = 64  # the merge program holds every split's partial output of one head at once
MIN_HEAD_DIM = 16  # tl.dot's smallest inner dimension
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class DecodeLaunch:
    """Launch parameters: slots per loop step, warps and pipeline stages of the split program, and
    the programs per SM that the split count aims at (``None``: a fixed ``splits`` per row and kv
    head, for the CPU interpreter, where nothing can be timed and every program costs)."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int | None = 2
    splits: int = 1


LAUNCH = DecodeLaunch()
INTERPRETER_LAUNCH = DecodeLaunch(block_n=16, num_warps=1, num_stages=1, programs_per_sm=None, splits=2)


@lru_cache(maxsize=1)
def load_kernels() -> SimpleNamespace:
    try:
        from . import _triton_decode_kernel as kernels
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return SimpleNamespace(split=kernels.decode_split_fwd, merge=kernels.decode_merge)


def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def launch_for(device: torch.device) -> DecodeLaunch:
    return LAUNCH if device.type == "cuda" else INTERPRETER_LAUNCH


def split_plan(batch: int, kv_heads: int, slots: int, launch: DecodeLaunch, device: torch.device) -> tuple[int, int]:
    """``(splits, split_slots)``: how many programs share one (row, kv head)'s slots, and how many
    slots (a multiple of ``block_n``) each takes. Python ints from shapes: a compiled step is
    specialised to them like to its shapes."""
    blocks = math.ceil(slots / launch.block_n)
    if launch.programs_per_sm is None:
        wanted = launch.splits
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        wanted = math.ceil(launch.programs_per_sm * _sm_count(index) / (batch * kv_heads))
    splits = max(1, min(wanted, blocks, MAX_SPLITS))
    split_slots = math.ceil(blocks / splits) * launch.block_n
    return math.ceil(slots / split_slots), split_slots


def supports(query: Tensor) -> bool:
    """Whether the kernel can compute these queries' decode step (triton installed, head_dim and dtype
    in range): what ``static_decode``'s ``auto`` asks before it picks this kernel over flex."""
    return (
        importlib.util.find_spec("triton") is not None
        and MIN_HEAD_DIM <= query.shape[-1] <= MAX_HEAD_DIM
        and query.dtype in SUPPORTED_DTYPES
    )


def check_inputs(query: Tensor, key: Tensor, value: Tensor, valid: Tensor) -> None:
    """Refuse what the kernel cannot compute, naming the field and what is allowed."""
    if query.ndim != 4 or query.shape[2] != 1:
        raise ValueError(f"query must be (batch, heads, 1, head_dim) for a decode step; got {tuple(query.shape)}")
    if key.shape != value.shape or key.ndim != 4:
        raise ValueError(f"key and value must be one (batch, kv_heads, slots, head_dim) shape; got "
                         f"{tuple(key.shape)} and {tuple(value.shape)}")  # fmt: skip
    batch, heads, _, dim = query.shape
    if key.shape[0] != batch or key.shape[3] != dim or heads % key.shape[1]:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)}: batch and head_dim must match "
                         "and query heads be a multiple of kv heads")  # fmt: skip
    if valid.shape != (batch, key.shape[2]) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool (batch, slots) = {(batch, key.shape[2])} mask; got "
                         f"{valid.dtype} {tuple(valid.shape)}")  # fmt: skip
    if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}] for the Triton decode kernel; got {dim}")
    if query.dtype not in SUPPORTED_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"query, key, value must share one dtype among {SUPPORTED_DTYPES}; got "
                         f"{query.dtype}, {key.dtype}, {value.dtype}")  # fmt: skip
    if not query.device == key.device == value.device == valid.device:
        raise ValueError(f"query, key, value, valid must be on one device; got {query.device}, {key.device}, "
                         f"{value.device}, {valid.device}")  # fmt: skip
    if query.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the Triton decode kernel runs on CUDA tensors (got {query.device}; a CPU needs "
                         "TRITON_INTERPRET=1 set before triton is imported)")  # fmt: skip


def decode_attention(query: Tensor, key: Tensor, value: Tensor, valid: Tensor, scaling: float,
                     softcap: float | None = None, launch: DecodeLaunch | None = None) -> Tensor:  # fmt: skip
    """Attention of one query row per (batch, head) over the slots where ``valid`` (B, slots) is True.

    query (B, H, 1, D); key, value (B, Hkv, slots, D) with H a multiple of Hkv. Returns transformers'
    layout (B, 1, H, D). ``softcap``: Gemma2's ``softcap * tanh(score / softcap)``. ``launch`` fixes
    the launch parameters (else ``LAUNCH`` on CUDA, ``INTERPRETER_LAUNCH`` on the CPU interpreter)."""
    check_inputs(query, key, value, valid)
    launch = launch or launch_for(query.device)
    splits, split_slots = split_plan(query.shape[0], key.shape[1], key.shape[2], launch, query.device)
    return static_decode_attention_op(
        query, key, value, valid, float(scaling), float(softcap or 0.0), splits, split_slots,
        launch.block_n, launch.num_warps, launch.num_stages,
    )  # fmt: skip


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op(OP_NAME, mutates_args=())
def static_decode_attention_op(
    query: Tensor, key: Tensor, value: Tensor, valid: Tensor, scaling: float, softcap: float,
    splits: int, split_slots: int, block_n: int, num_warps: int, num_stages: int,
) -> Tensor:  # fmt: skip
    """The op: split programs then merge programs (``softcap`` 0.0: none). Its arguments are checked
    by ``decode_attention``, the function to call."""
    kernels = load_kernels()
    query, key, value = _unit_last(query), _unit_last(key), _unit_last(value)
    batch, heads, _, dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    acc = torch.empty(batch * kv_heads * splits * groups, dim, dtype=torch.float32, device=query.device)
    stats = torch.empty(batch * kv_heads * splits * groups, 2, dtype=torch.float32, device=query.device)
    out = torch.empty(batch, 1, heads, dim, dtype=query.dtype, device=query.device)
    score_scale, post_scale = _score_scales(scaling, softcap or None)
    block_d = max(16, _next_power_of_2(dim))
    kernels.split[(batch * kv_heads, splits)](
        query, key, value, valid, acc, stats,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), valid.stride(0), valid.stride(1),
        kv_heads, slots, split_slots, score_scale, post_scale,
        GROUPS=groups, BLOCK_G=max(16, _next_power_of_2(groups)), HEAD_DIM=dim, BLOCK_D=block_d,
        BLOCK_N=block_n, SOFTCAP=softcap != 0.0, DOT_PRECISION=_dot_precision(query.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    kernels.merge[(batch * heads,)](
        acc, stats, out, out.stride(0), out.stride(2), kv_heads, splits,
        GROUPS=groups, HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_S=max(2, _next_power_of_2(splits)),
        num_warps=4 if query.device.type == "cuda" else 1,
    )  # fmt: skip
    return out


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


@static_decode_attention_op.register_fake
def _output_like(query: Tensor, key: Tensor, *args) -> Tensor:
    """What a compiled step needs of the op: its output's shape, dtype and device."""
    batch, heads, _, dim = query.shape
    return query.new_empty(batch, 1, heads, dim)
