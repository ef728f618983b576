"""Decode attention over a StaticSWAACache's fixed buffers: one kernel per layer.

A decode step has one query per row, and the cache's validity mask (which slots hold real,
visible tokens) is the same for every head. Three kernels compute it:

- ``triton`` (the default on CUDA): SWAA's split-K Triton kernel (``triton_decode.py``), an opaque
  custom op. On an H200 with the 4B shape's heads, one layer over 2,148 slots took 8.3 µs at batch 1
  and 70.9 µs at batch 32, against flex's 12.2 / 478.8 µs (1.48x / 6.75x) and SDPA's 54.0 / 105.2 µs
  (benchmarks/results/decode_kernel_tuning.md); the whole step's cold compile took 42.9 s against
  stock's 42.1 s, where flex's took 60.8 s (benchmarks/results/decode_compile_time.md).
- ``flex``: flex_attention with every key block partial and a mask_mod that reads the validity
  mask; under inductor a one-token query takes PyTorch's flex-decoding kernel (split-K too).
- ``sdpa`` (the default off CUDA): the ``groups`` query heads of a kv head become that kv head's
  queries, so keys and values are read once and one masked SDPA call covers the layer. On an H200
  cuDNN runs it as one 64-row tile per kv head (8 thread blocks for the 4B shape). On the CPU flex
  is many times slower and Triton needs its interpreter, so SDPA is the CPU's kernel.

``auto`` (the default; ``SWAA_STATIC_DECODE`` or :func:`static_decode_kernel` override it) picks
by the query's device, and takes flex on CUDA where the Triton kernel does not apply (no triton
package, a head_dim outside 16-256); a kernel named explicitly refuses what it cannot compute.

Logit softcapping (Gemma2), which SDPA cannot apply, takes the same math written out under
``sdpa``, a score_mod under ``flex`` and the kernel's own tanh under ``triton``.
"""

from __future__ import annotations

import importlib.util
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from ..static_cache import StaticDecodePlan
from . import triton_decode
from .call import AttentionCall, Kernel
from .setting import KernelSetting

KERNELS = ("sdpa", "flex", "triton")
AUTO = "auto"  # triton on CUDA (flex where it does not apply), sdpa elsewhere
ENV_VAR = "SWAA_STATIC_DECODE"
FLEX_BLOCK = 128  # key slots per flex block (the decode kernel splits the key dimension by blocks)


def regions_reuse_traces() -> bool:
    """Whether dynamo traces a ``nested_compile_region`` once and reuses the trace for calls with the
    same inputs (``torch._dynamo.variables.invoke_subgraph``: in torch 2.13, not in 2.11). torch 2.11's
    dynamo traces the region again at every call and then compares the graphs, so there a region saves
    no tracing (benchmarks/results/decode_compile_time.md has the H200 runs)."""
    return importlib.util.find_spec("torch._dynamo.variables.invoke_subgraph") is not None


def compile_region(fn):
    """``torch.compiler.nested_compile_region`` where dynamo reuses its traces: every layer calls its
    decode attention with inputs of the same shapes, so dynamo, AOT autograd and inductor handle it
    once per compiled step instead of once per layer (on a CPU with torch 2.13 and inductor, 12 layers
    of the flex step compiled in 39.8 s instead of 53.2 s). Eager calls run the function unchanged;
    where dynamo retraces regions it is a plain call."""
    return torch.compiler.nested_compile_region(fn) if regions_reuse_traces() else fn


SETTING = KernelSetting("static_decode_kernel", ENV_VAR, (AUTO, *KERNELS), AUTO)


def set_static_decode_kernel(kernel: str) -> str:
    """Pick the static-decode kernel (``auto`` or one of :data:`KERNELS`); returns the previous one.
    A compiled decode step guards on it: switching recompiles once."""
    return SETTING.set(kernel)


def static_decode_kernel(kernel: str) -> AbstractContextManager[None]:
    """Run the decode steps inside the block with the static-decode kernel set to ``kernel``."""
    return SETTING.scoped(kernel)


def dispatch_static_decode(call: AttentionCall) -> Kernel | str:
    if not isinstance(call.plan, StaticDecodePlan):
        return "not a static-cache decode step"
    kernel = kernel_for(call.query.device)
    if kernel == "triton" and SETTING.get() == AUTO and not triton_decode.supports(call.query):
        kernel = "flex"
    return {"flex": flex_split_k_attention, "triton": triton_split_k_attention}.get(kernel, static_decode_attention)


def kernel_for(device: torch.device) -> str:
    """The kernel the setting picks for decode steps on ``device``; under ``auto`` a query the Triton
    kernel cannot take (``triton_decode.supports``) still goes to flex (``dispatch_static_decode``)."""
    kernel = SETTING.get()
    if kernel == AUTO:
        return "triton" if device.type == "cuda" else "sdpa"
    return kernel


def static_decode_attention(call: AttentionCall) -> tuple[Tensor, None]:
    """Masked SDPA over the grouped query heads; softcapped models take the written-out math."""
    return _grouped_attention(call, sdpa=call.softcap is None)


def grouped_math_attention(call: AttentionCall) -> tuple[Tensor, None]:
    """The written-out math (matmul, masked float32 softmax, matmul) that softcapped models run,
    for any model: benchmarks/decode_profile.py times it against the SDPA call."""
    return _grouped_attention(call, sdpa=False)


def _grouped_attention(call: AttentionCall, sdpa: bool) -> tuple[Tensor, None]:
    mask = call.plan.key_mask(call.layer_idx)  # (B, 1, 1, slots)
    if sdpa:
        return _grouped_sdpa(call.query, call.key, call.value, mask, call.scaling), None
    query, key, value = call.query, call.key, call.value
    grouped = _grouped_queries(query, key.shape[1])
    scores = torch.matmul(grouped, key.transpose(2, 3)) * call.scaling
    if call.softcap is not None:
        scores = torch.tanh(scores / call.softcap) * call.softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return _ungrouped(torch.matmul(weights, value), query), None


def _grouped_queries(query: Tensor, kv_heads: int) -> Tensor:
    """(B, H, 1, D) -> (B, Hkv, groups, D): a kv head's query heads become its queries."""
    batch, heads, _, dim = query.shape
    return query.reshape(batch, kv_heads, heads // kv_heads, dim)


def _ungrouped(out: Tensor, query: Tensor) -> Tensor:
    batch, heads, _, dim = query.shape
    return out.reshape(batch, heads, 1, dim).transpose(1, 2)


@compile_region
def _grouped_sdpa(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, scale: float) -> Tensor:
    """One masked SDPA call for the layer (a compile region: traced and lowered once per step's graph)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        _grouped_queries(query, key.shape[1]), key, value, attn_mask=mask, scale=scale
    )
    return _ungrouped(out, query)


def _block_mask(valid: Tensor, slots: int):
    """Every key block partial, the validity mask (B, slots) as mask_mod: one per step and layer kind."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = -(-slots // FLEX_BLOCK)
    count = torch.full((1, 1, 1), blocks, dtype=torch.int32, device=valid.device)
    indices = torch.arange(blocks, dtype=torch.int32, device=valid.device).view(1, 1, 1, blocks)

    def mask_mod(b, h, q_idx, kv_idx):
        return valid[b, kv_idx]

    return BlockMask.from_kv_blocks(
        count, indices, BLOCK_SIZE=(FLEX_BLOCK, FLEX_BLOCK), mask_mod=mask_mod, seq_lengths=(1, slots)
    )


def flex_split_k_attention(call: AttentionCall) -> tuple[Tensor, None]:
    """flex_attention over all key blocks, the cache's validity mask as mask_mod (a fixed-address
    buffer, so CUDA graphs replay it). Slots past the last full block are bounds-masked by flex."""
    plan = call.plan
    block_mask = plan.once(
        ("flex_block_mask", plan.layer_kind(call.layer_idx)),
        lambda: _block_mask(plan.key_mask(call.layer_idx)[:, 0, 0, :], call.key.shape[2]),
    )
    return _flex_decode(call.query, call.key, call.value, block_mask, call.scaling, call.softcap), None


@compile_region
def _flex_decode(query: Tensor, key: Tensor, value: Tensor, block_mask, scale: float, softcap: float | None) -> Tensor:
    """The layer's flex call (a compile region: one trace and one lowered template per step's graph);
    Gemma2's logit softcapping as score_mod."""
    from torch.nn.attention.flex_attention import flex_attention

    score_mod = None
    if softcap is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.tanh(score / softcap) * softcap

    out = flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale,
                         enable_gqa=key.shape[1] != query.shape[1])  # fmt: skip
    return out.transpose(1, 2)


def triton_split_k_attention(call: AttentionCall) -> tuple[Tensor, None]:
    """SWAA's Triton split-K kernel (``triton_decode.py``): one op per layer in the compiled step."""
    valid = call.plan.key_mask(call.layer_idx)[:, 0, 0, :]
    return triton_decode.decode_attention(call.query, call.key, call.value, valid, call.scaling, call.softcap), None
