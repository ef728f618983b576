"""Fused SWA+sink prefill: sliding layers of plain inference prompts skip the masked paths.

:func:`dispatch_fused_prefill` is a dispatch candidate of the sdpa and flex implementations
(``backends/__init__.py``): it returns a fused kernel when the call is one the forward-only
kernels compute under the same rule, else the reason it is not. Two kernels serve it: cuDNN's
sliding window with the sinks merged in by Triton (``cudnn_swa.py``; Hopper with cudnn-frontend
installed, no softcap) and otherwise the single-pass Triton kernel of ``triton_swa.py``. A call
qualifies when:

- the setting allows it (below) and, in ``"auto"``, the tensors are CUDA bf16/fp16;
- nothing needs a gradient (q, k, v do not require grad: the kernel has no backward) and no
  attention dropout applies;
- more than one query (decode steps keep their gathered-keys path) on a *sliding* layer
  (full-attention layers keep SDPA's / flex's causal kernels, which are faster than ours);
- no answer-token rows (training labels under force_fa_decode);
- the key layout is index-aligned: after dropping leading empty key slots (the unfilled sink
  slots of a fresh bounded cache, or left padding of *cached* keys shared by every row), every key
  is a real token of the queries' single document, key positions are key indices except a constant
  jump after the ``keep_first`` sink slots (a bounded cache's window buffer), and query t is key
  ``offset + t``. Then the kernel's index rule (``j <= i`` and ``i - j < W`` or ``j < keep_first``)
  is the rule of ``swaa_patch.rule``. Padding queries, packed documents and partly filled bounded
  caches fail this check.

The layout check runs once per forward and key layout (memoised on the plan, one host sync).
Calls are counted in :data:`PATH_COUNTS` by outcome (``"triton"``, ``"cudnn"`` or the reason for
falling back), so tests and benchmarks can tell which path ran.

Setting: ``"auto"`` (default: CUDA bf16/fp16 calls that qualify, through cuDNN where it can serve
them), ``"triton"`` (the same calls, Triton kernel only), ``"off"``, or ``"force"`` (also CPU
tensors through Triton's interpreter and float32: for tests). The environment variable
``SWAA_TRITON_PREFILL`` sets the
process default; :func:`set_triton_prefill` / :func:`triton_prefill` change it. The patch reads it
once per forward into ``AttentionPlan.triton_prefill``, so backends see it as plan data; a plan
built by hand defaults to ``"off"``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from contextlib import AbstractContextManager
from functools import lru_cache

import torch
from torch import Tensor

from ..plan import AttentionPlan, KeyLayout, Memo
from . import cudnn_swa
from .call import AttentionCall, Kernel
from .setting import KernelSetting
from .triton_swa import SUPPORTED_HEAD_DIMS, swa_sink_attention

logger = logging.getLogger(__name__)

MODES = ("auto", "triton", "off", "force")
ENV_VAR = "SWAA_TRITON_PREFILL"
AUTO_DTYPES = (torch.bfloat16, torch.float16)
TAKEN = "triton"
CUDNN_TAKEN = "cudnn"

# outcome -> number of attention calls (one per layer per forward), for tests and benchmarks
PATH_COUNTS: Counter[str] = Counter()


SETTING = KernelSetting("triton_prefill", ENV_VAR, MODES, "auto")


def triton_prefill_setting() -> str:
    """The current setting, read by the patch once per forward."""
    return SETTING.get()


def set_triton_prefill(mode: str) -> str:
    """Set the prefill path to one of :data:`MODES`; returns the previous setting."""
    return SETTING.set(mode)


def triton_prefill(mode: str) -> AbstractContextManager[None]:
    """Run the forwards inside the block with the Triton prefill path set to ``mode``."""
    return SETTING.scoped(mode)


def gpu_supported(device: torch.device) -> bool:
    """``auto`` runs the kernel on Ampere (sm80) or newer: Triton's bf16 tensor-core dots need it,
    and the kernel was only ever tuned and checked on sm90. Older GPUs keep the backend's path."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


@lru_cache(maxsize=1)
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def aligned_layout(plan: AttentionPlan, keys: KeyLayout) -> tuple[int, str | None]:
    """``(skip, None)`` when the keys from index ``skip`` on are index-aligned (see the module
    docstring), else ``(0, reason)``."""
    valid, pos, doc = keys.valid, keys.pos, keys.doc
    length = valid.shape[1]
    real = valid.sum(-1)
    skip = length - real[:1]  # rows must agree; checked below with everything else, one sync
    idx = torch.arange(length, device=valid.device)
    kept = idx[None, :] >= skip[:, None]
    suffix = (valid == kept).all() & (real == real[:1]).all() & (skip[0] <= keys.offset)
    doc_ref = doc[:, -1:]
    one_doc = (~kept | (doc == doc_ref)).all() & (plan.q_doc == doc_ref).all()
    rank = idx[None, :] - skip[:, None]  # index after dropping the skipped slots
    delta = pos[:, -1:] - rank[:, -1:]
    keep_first = plan.config.keep_first
    expected = torch.where(rank < keep_first, rank, rank + delta)
    in_order = (~kept | (pos == expected)).all() & (delta >= 0).all()
    in_order &= (plan.q_pos == pos[:, keys.offset :]).all()
    flags = torch.stack([suffix.long(), one_doc.long(), in_order.long(), skip[0]]).tolist()
    if not flags[0]:
        return 0, "padding or empty slots"
    if not flags[1]:
        return 0, "packed documents"
    if not flags[2]:
        return 0, "positions"
    return int(flags[3]), None


def _reason(call: AttentionCall) -> str | None:
    """Why this call must not take a fused kernel, cheapest checks first; None when it may."""
    query, plan, layer = call.query, call.plan, call.layer_idx
    if query.requires_grad or call.key.requires_grad or call.value.requires_grad:
        return "grad"
    if call.active_dropout:
        return "dropout"
    if query.shape[2] == 1:
        return "decode"
    if plan.layer_window(layer) is None:
        return "full-attention layer"
    if plan.layer_answer_mask(layer) is not None:
        return "answer tokens"
    return tensor_reason(query, strict=plan.triton_prefill in ("auto", "triton")) or _layout(plan, layer)[1]


def tensor_reason(query: Tensor, strict: bool) -> str | None:
    """Why the Triton kernels cannot take these tensors, or None. ``strict`` (every mode but the
    tests' ``force``): CUDA bf16/fp16 on Ampere or newer only."""
    if strict:
        if query.device.type != "cuda":
            return "device"
        if query.dtype not in AUTO_DTYPES:
            return "dtype"
        if not gpu_supported(query.device):
            return "gpu older than Ampere"
    if query.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return "head_dim"
    if not _triton_available():
        return "no triton"
    return None


def _layout(plan: AttentionPlan, layer: int) -> tuple[int, str | None]:
    keys = plan.keys(layer)
    return plan.memo(Memo.FUSED_LAYOUT, lambda: aligned_layout(plan, keys), keys.name)


def dispatch_fused_prefill(call: AttentionCall) -> Kernel | str:
    """The fused kernel for this call (cuDNN band + sink merge where it can serve, else the Triton
    kernel), or why the call is not eligible; outcomes are counted in :data:`PATH_COUNTS`."""
    plan = call.plan
    if plan.triton_prefill == "off":
        return "fused prefill off"
    reason = _reason(call)
    if reason is not None:
        PATH_COUNTS[reason] += 1
        if PATH_COUNTS[reason] == 1:
            logger.debug("SWAA fused prefill: not taken (%s) on layer %d", reason, call.layer_idx)
        return reason
    skip, _ = _layout(plan, call.layer_idx)
    offset = plan.keys(call.layer_idx).offset - skip
    key = call.key[:, :, skip:]
    if plan.triton_prefill != "triton" and cudnn_swa.unusable_reason(call.query, key, call.softcap, offset) is None:
        return cudnn_prefill(skip, offset)
    return triton_prefill_kernel(skip, offset)


def cudnn_prefill(skip: int, offset: int) -> Kernel:
    def kernel(call: AttentionCall) -> tuple[Tensor, None]:
        PATH_COUNTS[CUDNN_TAKEN] += 1
        window, keep_first = call.plan.layer_window(call.layer_idx), call.plan.config.keep_first
        out, _ = cudnn_swa.swa_sink_attention_cudnn(
            call.query, call.key[:, :, skip:], call.value[:, :, skip:], window, keep_first, call.scaling, offset
        )
        return out.transpose(1, 2), None

    return kernel


def triton_prefill_kernel(skip: int, offset: int) -> Kernel:
    def kernel(call: AttentionCall) -> tuple[Tensor, None]:
        PATH_COUNTS[TAKEN] += 1
        query = call.query
        window, keep_first = call.plan.layer_window(call.layer_idx), call.plan.config.keep_first
        batch, heads, q_len, dim = query.shape
        out = query.new_empty(batch, q_len, heads, dim)
        swa_sink_attention(
            query, call.key[:, :, skip:], call.value[:, :, skip:], window, keep_first, call.scaling,
            call.softcap, offset, out=out.transpose(1, 2),
        )
        return out, None

    return kernel
