"""Trainable SWA+sink attention at band cost, one autograd Function over two kernel pairs (and
FlashAttention-4's one-pass kernels where installed), and the dispatch candidate that routes
training calls to them:

- ``"fa4"`` (the setting ``"fa4"``; Hopper with flash-attn-4, no softcap: ``fa4_swa.py``): the whole
  rule, sinks included, in one block-sparse forward and backward; attention 6-7 % faster than the
  cuDNN pair (fwd+bwd 6.39x / 24.91x full-causal SDPA's at 32K / 128K on an H200, against 5.95x /
  23.49x), but a `swaa sft` step of the 4B shape only 0-1 % faster and its first step ~16 s longer
  (FA4's JIT compile; benchmarks/results/sft_speed.md, runs 10-11), so it is opt-in;
- ``"cudnn"`` (Hopper with cudnn-frontend, no softcap): cuDNN's sliding-window forward and backward
  for the band, the sinks by Triton (``triton_swa.merge_sinks`` in the forward;
  :func:`add_sink_tail_gradients` in the backward, from the merged output and lse: see
  ``cudnn_swa.window_attention_backward`` for why the band's gradients then come out right);
- ``"triton"``: the Triton forward of ``triton_swa.py`` and the Triton backward here.

Why: training calls (q, k, v need gradients) otherwise take flex_attention (the flex backend) or
masked SDPA (the sdpa backend). flex compiles a kernel per sequence length before the first step
(31-38 s on a fresh H200, benchmarks/results/sft_speed.md) and its backward reached a quarter of
the FLOP-ideal speedup over full causal attention; masked SDPA is O(n^2). This backward visits
only the band ``j <= i < j + W`` plus the sink columns (``_triton_swa_bwd_kernel.py``), and
Triton compiles each kernel once per dtype / head_dim / block config, not per length.

Calls it serves: the same index-aligned layout as the fused prefill (one unpadded document per
row, ``fused_prefill.aligned_layout``) with no cache (query i is key i), no dropout, head_dim in
``SUPPORTED_HEAD_DIMS``. Answer-token rows (labels under ``force_fa_decode``, which attend to every
earlier key) are allowed when they are each row's suffix, as one prompt + answer per row makes
them: the kernel computes every row under the window rule, and the answer rows are recomputed over
all earlier keys by SDPA (a few rows x n keys) and replace the kernel's, so the kernel's rows there
get no gradient (the flash backend splits them the same way).
Full-attention layers (``non_sliding_layers``) of that layout are plain causal attention and go to
SDPA's ``is_causal`` kernels (the Triton kernel with no window when logits are softcapped), so a
training step compiles no flex kernel at all. Everything else keeps the backend's own exact path.

Setting ``fused_train`` (``SWAA_FUSED_TRAIN``): ``"auto"`` (the default: CUDA bf16/fp16 calls that
qualify, through cuDNN where it can serve them, else Triton), ``"fa4"`` (the same calls through FA4
where it can serve them, else as ``"auto"``), ``"triton"`` (the same calls, Triton
kernels only; on an H200 `swaa sft` ran 1.22x flex's tokens/s at 32K and 1.24x at 128K,
benchmarks/results/sft_speed.md), ``"off"`` (the backend's own path: flex or masked SDPA) or
``"force"`` (also CPU tensors through Triton's interpreter and float32: for tests). Calls are counted
in :data:`PATH_COUNTS` by kernel (``"fa4"``, ``"cudnn"``, ``"triton"``) or the reason they kept the
backend's.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from types import SimpleNamespace

import torch
from torch import Tensor

from ..plan import Memo
from . import cudnn_swa, fa4_swa
from .call import AttentionCall, Kernel
from .fused_prefill import _layout, tensor_reason
from .setting import KernelSetting
from .triton_swa import (
    INSTALL_HINT,
    KernelConfig,
    _check_inputs,
    _dot_precision,
    _fixed_config,
    swa_sink_attention,
)

MODES = ("auto", "fa4", "triton", "off", "force")
ENV_VAR = "SWAA_FUSED_TRAIN"
TAKEN = "triton"
CUDNN_TAKEN = "cudnn"
FA4_TAKEN = "fa4"
KERNELS = (TAKEN, CUDNN_TAKEN, FA4_TAKEN)
CAUSAL_TAKEN = "sdpa causal (full-attention layer)"
SETTING = KernelSetting("fused_train", ENV_VAR, MODES, "auto")
logger = logging.getLogger(__name__)

# outcome -> number of attention calls (one per layer per forward), for tests and benchmarks
PATH_COUNTS: Counter[str] = Counter()


def fused_train(mode: str) -> AbstractContextManager[None]:
    """Run the forwards inside the block with the fused training path set to ``mode``."""
    return SETTING.scoped(mode)


def set_fused_train(mode: str) -> str:
    """Set the fused training path to one of :data:`MODES`; returns the previous setting."""
    return SETTING.set(mode)


@dataclass(frozen=True)
class Launch:
    """One backward kernel's tiles and pipeline: ``block_m`` query rows and ``block_n`` key rows per
    step (the sink-tail kernel: ``block_n`` sink rows per program, a power of two >= 16)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def pipeline(self) -> dict[str, int]:
        """The launch options Triton takes beside the grid."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


@dataclass(frozen=True)
class BackwardConfig:
    """Launch parameters of the three backward kernels, each its own: dQ walks keys for a block of
    queries (wide in queries), dK/dV walks queries for a block of keys (wide in keys), so their best
    tiles differ. ``chunk_blocks``: q blocks per program of the sink-tail kernel. ``tail_dq``: the dQ
    kernel's launch in its sink-tail mode (the cuDNN path, :func:`add_sink_tail_gradients`: a few
    sink keys per query instead of the window; None: ``dq``'s). ``pair_sinks``: the sink-tail
    kernel runs a chunk's sink blocks side by side (its ``PAIR_SINKS`` grid), so they share their
    q / dO reads through L2."""

    dq: Launch
    dkdv: Launch
    tail: Launch
    chunk_blocks: int = 16
    tail_dq: Launch | None = None
    pair_sinks: bool = True

    @classmethod
    def uniform(cls, block_m: int, block_n: int, num_warps: int, num_stages: int, chunk_blocks: int,
                sink_block: int) -> BackwardConfig:  # fmt: skip
        """The same tiles for every kernel (``sink_block`` sink rows per sink-tail program)."""
        same = Launch(block_m, block_n, num_warps, num_stages)
        return cls(same, same, Launch(block_m, sink_block, num_warps, num_stages), chunk_blocks)


# bf16/fp16 on a GPU: chosen from benchmarks/train_kernel_tuning.py's sweep (results/train_kernel_tuning.md)
GPU_CONFIG = BackwardConfig(
    dq=Launch(128, 64, 8, 3), dkdv=Launch(32, 64, 4, 3), tail=Launch(128, 64, 8, 2), chunk_blocks=16,
    tail_dq=Launch(128, 32, 4, 3),
)
FLOAT32_CONFIG = BackwardConfig.uniform(32, 32, 4, 1, 16, 32)
INTERPRETER_CONFIG = BackwardConfig.uniform(16, 16, 1, 1, 2, 16)
# The forward's launch in training: the config the autotuner chose on the H200 (head_dim 128, bf16) at 32K
# and 128K in every run (benchmarks/results/attention_speed.md), fixed as the backward's is, so a training
# run compiles one forward variant instead of tuning AUTOTUNE_CONFIGS' four before its first step.
TRAIN_FORWARD_CONFIG = KernelConfig(64, 64, 4, 3)
DELTA_ROWS = 64  # rows per program of the delta kernel (memory-bound: any size does)


def _forward_config(q: Tensor) -> KernelConfig:
    """The forward's own fixed config where the device or dtype imposes one (the interpreter's,
    float32's), else TRAIN_FORWARD_CONFIG instead of autotuning."""
    return _fixed_config(q) or TRAIN_FORWARD_CONFIG


def _config_for(q: Tensor) -> BackwardConfig:
    if q.device.type != "cuda":
        return INTERPRETER_CONFIG
    return FLOAT32_CONFIG if q.dtype == torch.float32 else GPU_CONFIG


@lru_cache(maxsize=1)
def load_backward_kernels() -> SimpleNamespace:
    try:
        from . import _triton_swa_bwd_kernel as kernels
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return SimpleNamespace(
        delta=kernels.swa_sink_bwd_delta,
        dq=kernels.swa_sink_bwd_dq,
        tail=kernels.swa_sink_bwd_sink_tail,
        dkdv=kernels.swa_sink_bwd_dkdv,
    )


def _check_backward_inputs(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor,
                           window: int | None, keep_first: int) -> None:  # fmt: skip
    _check_inputs(q, k, v, window, keep_first, 0)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"the backward has no cache: q length {q.shape[2]} must equal k length {k.shape[2]}")
    for name, t in (("out", out), ("grad_out", grad_out)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}; got {tuple(t.shape)}")
    if lse.shape != q.shape[:3] or lse.dtype != torch.float32:
        raise ValueError(f"lse must be float32 {tuple(q.shape[:3])}; got {tuple(lse.shape)} {lse.dtype}")


class _Backward:
    """One backward call's shared launch arguments and the delta every kernel reads
    (``delta_i = sum_d dO_i O_i``, float32 (B, Hq, L): computed by its own pass on first use, or
    assigned by :func:`add_sink_tail_gradients`, whose dQ pass writes it); ``config`` defaults to
    the device's and dtype's."""

    def __init__(self, q, k, v, out, lse, grad_out, window, keep_first, scaling, softcap, config):
        self.q, self.k, self.v, self.out, self.grad_out = q, k, v, out, grad_out
        self.lse = lse.contiguous()
        self.batch, self.heads, self.seq, self.dim = q.shape
        self.kv_heads = k.shape[1]
        self.groups = self.heads // self.kv_heads
        self.window = self.seq + 1 if window is None else min(window, self.seq + 1)
        self.keep_first = min(keep_first, self.seq)
        self.scaling, self.config = scaling, config or _config_for(q)
        self.kernels = load_backward_kernels()
        self.flags = dict(HEAD_DIM=self.dim, SOFTCAP=softcap is not None, DOT_PRECISION=_dot_precision(q.dtype))
        self.softcap = 1.0 if softcap is None else softcap
        self.common = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
        # the rule's scalars, in the order every kernel takes them
        self.rule = (self.kv_heads, self.groups, self.seq, self.window, self.keep_first, scaling, self.softcap)

    @cached_property
    def delta(self) -> Tensor:
        out, grad_out = self.out, self.grad_out
        delta = torch.empty(self.batch, self.heads, self.seq, dtype=torch.float32, device=out.device)
        self.kernels.delta[(math.ceil(self.seq / DELTA_ROWS), self.batch * self.heads)](
            out, grad_out, delta, *out.stride(), *grad_out.stride(), self.heads, self.seq, HEAD_DIM=self.dim,
            BLOCK_M=DELTA_ROWS,
        )  # fmt: skip
        return delta

    def dq_launch(self, dq: Tensor, first_block: int, run: Launch, sink_tail: bool) -> None:
        """The dQ kernel over the q blocks from ``first_block`` on (``sink_tail``: its SINK_TAIL mode,
        which writes delta instead of reading it)."""
        blocks = math.ceil(self.seq / run.block_m) - first_block
        self.kernels.dq[(blocks * self.groups, self.batch * self.kv_heads)](
            self.q, self.k, self.v, self.grad_out, self.out, self.lse, self.delta, dq, *self.common, *self.out.stride(),
            *dq.stride(), *self.rule, first_block, **self.flags, BLOCK_M=run.block_m, BLOCK_N=run.block_n,
            SINK_TAIL=sink_tail, **run.pipeline(),
        )  # fmt: skip

    @property
    def has_sink_tail(self) -> bool:
        """Some query sees a sink from beyond the window."""
        return self.keep_first > 0 and self.seq > self.window

    def sink_tail_dkdv(self) -> tuple[Tensor, Tensor, int]:
        """The sink rows' dK/dV from the queries beyond the window: float32 (B * Hkv, sink_rows, D)
        each (partial sums per chunk of queries, summed here), and sink_rows (>= keep_first)."""
        run, config = self.config.tail, self.config
        sink_blocks = math.ceil(self.keep_first / run.block_n)
        sink_rows = sink_blocks * run.block_n
        first = self.window // run.block_m
        chunks = math.ceil((math.ceil(self.seq / run.block_m) - first) / config.chunk_blocks)
        part_dk = torch.empty(chunks, self.batch * self.kv_heads, sink_rows, self.dim, dtype=torch.float32,
                              device=self.q.device)  # fmt: skip
        part_dv = torch.empty_like(part_dk)
        grid = (chunks, self.batch * self.kv_heads, sink_blocks)
        self.kernels.tail[(grid[2], *grid[:2]) if config.pair_sinks else grid](
            self.q, self.k, self.v, self.grad_out, self.lse, self.delta, part_dk, part_dv, *self.common, *self.rule,
            config.chunk_blocks, sink_rows, **self.flags, BLOCK_M=run.block_m, SINKS=run.block_n,
            PAIR_SINKS=config.pair_sinks, **run.pipeline(),
        )  # fmt: skip
        return part_dk.sum(0), part_dv.sum(0), sink_rows


def swa_sink_attention_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    window: int | None,
    keep_first: int,
    scaling: float,
    softcap: float | None = None,
    *,
    config: BackwardConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of ``swa_sink_attention(q, k, v, window, keep_first, scaling, softcap)``
    (no cache: q and k have the same length, query i is key i) from its ``out`` and ``lse`` and
    the output's gradient. Shapes as the forward's; any strides."""
    _check_backward_inputs(q, k, v, out, lse, grad_out, window, keep_first)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk, dv
    bwd = _Backward(q, k, v, out, lse, grad_out, window, keep_first, scaling, softcap, config)
    kernels, seq, config, lse = bwd.kernels, bwd.seq, bwd.config, bwd.lse
    # sinks seen from beyond the window: partial dK/dV per chunk of queries, summed, added by dK/dV
    tail = bwd.has_sink_tail
    sink_dk = sink_dv = torch.zeros(1, dtype=torch.float32, device=q.device)
    sink_rows = 0
    if tail:
        sink_dk, sink_dv, sink_rows = bwd.sink_tail_dkdv()
    run = config.dkdv
    kernels.dkdv[(math.ceil(seq / run.block_n), bwd.batch * bwd.kv_heads)](
        q, k, v, grad_out, lse, bwd.delta, dk, dv, sink_dk, sink_dv, *bwd.common, *dk.stride(), *dv.stride(),
        *bwd.rule, sink_rows, **bwd.flags, HAS_SINK_TAIL=tail, BLOCK_M=run.block_m, BLOCK_N=run.block_n,
        **run.pipeline(),
    )  # fmt: skip
    bwd.dq_launch(dq, 0, config.dq, sink_tail=False)
    return dq, dk, dv


def add_sink_tail_gradients(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    window: int,
    keep_first: int,
    scaling: float,
    *,
    config: BackwardConfig | None = None,
) -> None:
    """Complete, in place, the gradients of a *window-only* backward into the rule's.

    ``dq, dk, dv`` must hold the backward of attention over the band ``0 <= i - j < window`` run
    with the rule's final ``out`` and ``lse`` (cuDNN's sliding-window backward given the merged
    output, ``cudnn_swa.window_attention_backward``). With the final lse and ``delta = rowsum(dO *
    O)``, each visible score's gradient is exactly its own part, ``dS = P * (dP - delta)``, so the
    band's gradients are already the rule's for its pairs and only the pairs ``i - j >= window, j <
    keep_first`` (sinks seen from beyond the window) are missing: the dQ kernel's sink-tail mode adds
    their dQ to the query rows (computing delta on the way), the sink-tail kernel their dK/dV to the
    sink rows."""
    _check_backward_inputs(q, k, v, out, lse, grad_out, window, keep_first)
    if q.numel() == 0 or window is None:
        return
    bwd = _Backward(q, k, v, out, lse, grad_out, window, keep_first, scaling, None, config)
    if not bwd.has_sink_tail:
        return
    # the dQ kernel's sink-tail pass first: it adds the tail's dQ and writes delta (rows from the window's
    # block on; the rows before it, zeros here, see no sink from beyond the window) for the dK/dV pass
    run = bwd.config.tail_dq or bwd.config.dq
    bwd.delta = torch.zeros(bwd.batch, bwd.heads, bwd.seq, dtype=torch.float32, device=q.device)
    bwd.dq_launch(dq, bwd.window // run.block_m, run, sink_tail=True)
    sink_dk, sink_dv, _ = bwd.sink_tail_dkdv()
    sinks = bwd.keep_first
    for grad, part in ((dk, sink_dk), (dv, sink_dv)):
        rows = part.view(bwd.batch, bwd.kv_heads, -1, bwd.dim)[:, :, :sinks]
        grad[:, :, :sinks] = (grad[:, :, :sinks].float() + rows).to(grad.dtype)


class SWASinkAttention(torch.autograd.Function):
    """``out = swa_sink_attention(...)`` with a band-cost backward; saves q, k, v, out and lse.

    ``kernel`` (:func:`kernel_for`): ``"cudnn"`` computes the band with cuDNN's sliding-window
    attention forward and backward and the sinks with Triton (the merge, then
    :func:`add_sink_tail_gradients`); ``"triton"`` runs the Triton forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, window, keep_first, scaling, softcap, kernel):
        if kernel == CUDNN_TAKEN:
            out, lse = cudnn_swa.swa_sink_attention_cudnn(q, k, v, window, keep_first, scaling)
        else:
            out, lse = swa_sink_attention(
                q, k, v, window, keep_first, scaling, softcap, config=_forward_config(q)
            )
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.rule = (window, keep_first, scaling, softcap)
        ctx.kernel = kernel
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        window, keep_first, scaling, softcap = ctx.rule
        if ctx.kernel == CUDNN_TAKEN:
            dq, dk, dv = cudnn_swa.window_attention_backward(q, k, v, out, lse, grad_out, window, scaling)
            add_sink_tail_gradients(q, k, v, out, lse, grad_out, dq, dk, dv, window, keep_first, scaling)
        else:
            dq, dk, dv = swa_sink_attention_backward(q, k, v, out, lse, grad_out, *ctx.rule)
        return dq, dk, dv, None, None, None, None, None


def kernel_for(q: Tensor, k: Tensor, window: int | None, softcap: float | None) -> str:
    """Where the layer has a window (full attention has no band): under the setting ``"fa4"``,
    ``"fa4"`` where FlashAttention-4 can serve the call (``fa4_swa.unusable_reason``: Hopper,
    flash-attn-4 installed at a tested version, a tested head_dim, no softcap); under it and
    ``"auto"``, else ``"cudnn"`` where cuDNN's sliding window can (``cudnn_swa.unusable_reason``:
    Hopper, cudnn-frontend installed, no softcap). Else ``"triton"``."""
    mode = SETTING.get()
    if mode in ("auto", "fa4") and window is not None:
        if mode == "fa4":
            reason = fa4_swa.unusable_reason(q, k, softcap)
            if reason is None:
                return FA4_TAKEN
            _warn_fa4_not_taken(reason)
        if cudnn_swa.unusable_reason(q, k, softcap, 0) is None:
            return CUDNN_TAKEN
    return TAKEN


@lru_cache(maxsize=64)
def _warn_fa4_not_taken(reason: str) -> None:
    """The ``fa4`` setting asked for FA4 and a call cannot take it: said once per reason (the call still
    runs exactly, through cuDNN or Triton, and PATH_COUNTS counts the kernel it took)."""
    logger.warning("SWAA_FUSED_TRAIN=fa4: FlashAttention-4 cannot serve this call (%s); it takes the cuDNN or "
                   "Triton kernels", reason)  # fmt: skip


def trainable_swa_sink_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    keep_first: int,
    scaling: float,
    softcap: float | None = None,
    kernel: str | None = None,
) -> Tensor:
    """Differentiable SWA+sink attention over one unpadded sequence per row (query i is key i):
    (B, Hq, L, D) out from q (B, Hq, L, D), k and v (B, Hkv, L, D). ``kernel``: one of
    :data:`KERNELS` (the caller checked it can serve the call), default :func:`kernel_for`'s choice."""
    kernel = kernel or kernel_for(q, k, window, softcap)
    if kernel not in KERNELS:
        raise ValueError(f"kernel: must be one of {KERNELS}, got {kernel!r}")
    if kernel == FA4_TAKEN:
        return fa4_swa.swa_sink_attention_fa4(q, k, v, window, keep_first, scaling)
    return SWASinkAttention.apply(q, k, v, window, keep_first, scaling, softcap, kernel)


def _reason(call: AttentionCall) -> str | None:
    """Why this training call must not take the fused kernel, cheapest checks first; None when it may."""
    query, plan, layer = call.query, call.plan, call.layer_idx
    if not (query.requires_grad or call.key.requires_grad or call.value.requires_grad):
        return "no grad"
    if call.active_dropout:
        return "dropout"
    reason = tensor_reason(query, strict=SETTING.get() != "force")
    if reason is not None:
        return reason
    if plan.keys(layer).offset or call.key.shape[2] != query.shape[2]:
        return "cached keys"
    skip, reason = _layout(plan, layer)
    if reason is None and skip:
        return "padding or empty slots"
    if reason is None and plan.layer_answer_mask(layer) is not None and answer_starts(plan) is None:
        return "answer tokens not a suffix of each row"  # one host sync per forward, after the cheaper checks
    return reason


def dispatch_fused_train(call: AttentionCall) -> Kernel | str:
    """The trainable Triton kernel for this call, or why the call is not eligible (counted in
    :data:`PATH_COUNTS`)."""
    if SETTING.get() == "off":
        return "fused training off"
    reason = _reason(call)
    if reason is not None:
        PATH_COUNTS[reason] += 1
        return reason
    return fused_train_kernel


def fused_train_kernel(call: AttentionCall) -> tuple[Tensor, None]:
    plan, layer = call.plan, call.layer_idx
    if plan.layer_window(layer) is None and call.softcap is None:
        # a full-attention layer of the same layout is plain causal attention: SDPA's fused kernels
        # (no compile, unlike flex's per-length one; the Triton kernel keeps softcapped models)
        PATH_COUNTS[CAUSAL_TAKEN] += 1
        out = torch.nn.functional.scaled_dot_product_attention(
            call.query, call.key, call.value, is_causal=True, scale=call.scaling,
            enable_gqa=call.key.shape[1] != call.query.shape[1],
        )  # fmt: skip
        return out.transpose(1, 2), None
    window = plan.layer_window(layer)
    kernel = kernel_for(call.query, call.key, window, call.softcap)
    PATH_COUNTS[kernel] += 1
    out = trainable_swa_sink_attention(
        call.query, call.key, call.value, window, plan.config.keep_first, call.scaling, call.softcap, kernel
    )
    if plan.layer_answer_mask(layer) is not None:
        return with_full_answer_rows(call, out, answer_starts(plan)), None
    return out.transpose(1, 2), None


def answer_starts(plan) -> list[int] | None:
    """Each row's first answer token (the row's length when it has none) if every row's answer
    tokens are a suffix of the row, else None (one host sync per forward, memoised)."""

    def build() -> list[int] | None:
        answer = plan.q_answer
        length = answer.shape[1]
        starts = length - answer.sum(-1)
        suffix = torch.arange(length, device=answer.device)[None, :] >= starts[:, None]
        if not bool((answer == suffix).all()):
            return None
        return starts.tolist()

    return plan.memo(Memo.ANSWER_SUFFIX, build)


def with_full_answer_rows(call: AttentionCall, out: Tensor, starts: list[int]) -> Tensor:
    """``out`` (B, Hq, L, D) with each row's answer queries (from ``starts[b]`` on) attending to
    every earlier key, returned in transformers' (B, L, Hq, D) layout, contiguous: SDPA over the
    answer rows, or the written-out math when logits are softcapped.

    One copy of the attention output: the rows are written into a contiguous clone, whose
    reshape to (B, L, Hq * D) before the output projection is then free (a per-row cat, a stack
    and that reshape copied it three times; the cat alone took 195 of 8,615 ms of kernel time in
    a 128K training step on an H200, benchmarks/results/sft_profile.md)."""
    length = out.shape[2]
    merged = out.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    for b, start in enumerate(starts):
        if start >= length:
            continue
        q = call.query[b : b + 1, :, start:]
        k, v = call.key[b : b + 1], call.value[b : b + 1]
        visible = (
            torch.arange(length, device=q.device)[None, :]
            <= torch.arange(start, length, device=q.device)[:, None]
        )
        groups = q.shape[1] // k.shape[1]
        if call.softcap is None:
            full = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=visible, scale=call.scaling, enable_gqa=groups > 1
            )
        else:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            scores = torch.tanh(q @ k.transpose(2, 3) * (call.scaling / call.softcap)) * call.softcap
            weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1, dtype=torch.float32)
            full = weights.to(v.dtype) @ v
        merged[b, start:] = full[0].transpose(0, 1)
    return merged
