"""SWA+sink attention through cuDNN's sliding-window attention, sinks folded in by Triton.

cuDNN's fused attention (NVIDIA's ``cudnn-frontend`` package: ``pip install
nvidia-cudnn-frontend``, or ``pip install swaa[cudnn]``) has a sliding-window band
(``diagonal_band_left_bound``) whose kernel skips the tiles outside the band and runs near its
full-attention efficiency on Hopper. It has no sink *tokens* (its "sinks" are per-head logits, the
gpt-oss kind), so the rule is computed in two steps:

1. cuDNN: attention of query t (key ``offset + t``) over the keys j with ``0 <= offset + t - j <
   W``, plus its log-sum-exp;
2. ``triton_swa.merge_sinks``: the keys ``j < keep_first`` outside that window, folded into the
   same online softmax in place (one more read and write of the output; rows whose window holds
   every sink are skipped).

``unusable_reason`` says when a call cannot take this path; ``fused_prefill.py`` prefers it in its
``"auto"`` setting and falls back to the Triton kernel otherwise (measured comparison:
``benchmarks/results/attention_speed.md``).

Training (``triton_swa_train.py``, setting ``"auto"``) runs the same forward and cuDNN's
sliding-window *backward* (``window_attention_backward``), fed the merged output and log-sum-exp:
with the rule's final lse, each key set's gradient is exactly its own part, so the band's gradients
come out right and the Triton sink tail adds the sinks' (``triton_swa_train.add_sink_tail_gradients``).
"""

from __future__ import annotations

import importlib
from functools import lru_cache

import torch
from torch import Tensor

from .triton_swa import merge_sinks

DTYPES = (torch.bfloat16, torch.float16)


@lru_cache(maxsize=1)
def frontend_available() -> bool:
    """cudnn-frontend with its PyTorch SDPA op is importable (the op registers on import)."""
    try:
        importlib.import_module("cudnn.sdpa.fwd.torch_op")
    except Exception:  # not installed, or installed without a usable cuDNN library: the path is off
        return False
    return True


def hopper_reason(q: Tensor, softcap: float | None) -> str | None:
    """The checks the Hopper-only paths share (this one, and FlashAttention-4's in ``fa4_swa.py``):
    CUDA bf16/fp16 on an sm90 GPU (where they were measured and checked), no logit softcap."""
    if q.device.type != "cuda" or q.dtype not in DTYPES:
        return "device or dtype"
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        return "not Hopper"
    if softcap is not None:
        return "softcap"
    return None


def unusable_reason(q: Tensor, k: Tensor, softcap: float | None, offset: int) -> str | None:
    """Why a (B, H, Lq, D) call cannot take the cuDNN path; None when it can.

    Measured and checked only on Hopper (sm90), so other GPUs keep the Triton kernel. cuDNN aligns
    the band at the bottom-right corner, so the queries must be the last keys (``offset + Lq ==
    Lk``: a plain prompt or a chunk after its cache); it has no logit softcap."""
    reason = hopper_reason(q, softcap)
    if reason is not None:
        return reason
    if offset + q.shape[2] != k.shape[2]:
        return "keys after the queries"
    if q.shape[-1] % 8:
        return "head_dim"
    if not frontend_available():
        return "no cudnn-frontend"
    return None


def window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, scaling: float) -> tuple[Tensor, Tensor]:
    """cuDNN attention over the band ``0 <= i - j < window`` (queries = the last ``Lq`` keys):
    ``(out, lse)``, out in q's memory layout, lse (B, H, Lq) float32 (natural log)."""
    from cudnn.sdpa.fwd.torch_op import sdpa

    out, lse = sdpa(
        q,
        k,
        v,
        scale=scaling,
        is_causal=True,
        causal_bottom_right=q.shape[2] != k.shape[2],
        window_left=min(window, k.shape[2]),  # a band wider than the keys changes nothing
        return_lse=True,
    )
    return out, lse.squeeze(-1)


def swa_sink_attention_cudnn(
    q: Tensor, k: Tensor, v: Tensor, window: int, keep_first: int, scaling: float, offset: int = 0
) -> tuple[Tensor, Tensor]:
    """The rule's SWA+sink attention (``triton_swa.swa_sink_attention``'s result) through cuDNN's
    band and the sink merge. The caller checks ``unusable_reason`` first."""
    out, lse = window_attention(q, k, v, window, scaling)
    return merge_sinks(q, k, v, out, lse, window, keep_first, scaling, None, offset)


def window_attention_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor, window: int, scaling: float
) -> tuple[Tensor, Tensor, Tensor]:
    """cuDNN's backward of attention over the band ``0 <= i - j < window`` (queries = keys, no
    cache): ``(dq, dk, dv)`` in q's, k's and v's memory layouts. ``out`` and ``lse`` (float32
    (B, H, L)) may be the band's own or those of any attention that includes the band, such as the rule's
    merged result: cuDNN recomputes each band score's probability from ``lse`` and takes ``delta =
    rowsum(grad_out * out)`` from ``out``, so the band's pairs get exactly their share of the
    gradient of whatever attention produced ``out``."""
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"the backward has no cache: q length {q.shape[2]} must equal k length {k.shape[2]}")
    from cudnn.sdpa.fwd.torch_op import sdpa  # noqa: F401  (importing registers torch.ops.cudnn.sdpa_bwd)

    return torch.ops.cudnn.sdpa_bwd(
        grad_out, q, k, v, out, lse, scaling, is_causal=True, window_left=min(window, k.shape[2])
    )
