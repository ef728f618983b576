"""Which kernel computes a SWAA attention call, decided in one place.

Each file of this package holds kernels for one path; this module holds the policy. For each
``attn_implementation`` :data:`DISPATCH` lists candidates in order (peft's ``dispatch_*``
pattern): a candidate looks at the call and returns a kernel, or a string saying why it does not
apply; the first kernel wins, and the last candidate of every list always applies. A kernel takes
the call and returns transformers' layout ``(batch, length, heads, head_dim)`` plus optional
attention weights.
"""

from __future__ import annotations

from torch import Tensor

from .call import AttentionCall, Candidate, Kernel
from .eager import eager_swaa_attention
from .flash import flash_swaa_attention
from .flex import flex_swaa_attention
from .fused_prefill import dispatch_fused_prefill
from .packed import dispatch_packed, eager_chunks, flash_chunks, sdpa_chunks
from .sdpa import sdpa_swaa_attention
from .static_decode import dispatch_static_decode
from .triton_swa_train import dispatch_fused_train

__all__ = ["BACKENDS", "DISPATCH", "PAGED_BACKENDS", "AttentionCall", "Kernel", "run_attention", "select_kernel"]


def dispatch_gathered_decode(call: AttentionCall) -> Kernel | str:
    """Decode steps of flex models: one query row gains nothing from block sparsity, and a static
    flex kernel would recompile at every cache length; the gathered-keys SDPA path (eager when
    logits are softcapped, which SDPA cannot do) computes the same rule."""
    if call.query.shape[2] != 1:
        return "not a decode step"
    return sdpa_swaa_attention if call.softcap is None else eager_swaa_attention


def refuse_softcap(call: AttentionCall) -> str:
    """sdpa's contract, as in stock transformers: SDPA cannot softcap logits, so no path of the
    sdpa implementation may quietly compute a softcapped model."""
    if call.softcap is not None:
        raise ValueError(
            "`sdpa` attention does not support `softcap` (attn_logit_softcapping); load the model with "
            "attn_implementation='eager' or 'flex_attention'"
        )
    return "no softcap"


def always(kernel: Kernel) -> Candidate:
    """The last candidate of a list: the implementation's own general path."""

    def dispatch(call: AttentionCall) -> Kernel:
        return kernel

    dispatch.__name__ = f"dispatch_{kernel.__name__}"
    return dispatch


# A continuous-batching forward (its plan a PackedPlan) and a static-cache decode step come first
# everywhere: their plans are not AttentionPlans, and they are the serving and compiled hot paths.
# Continuous batching calls the `paged|` names (`paged|sdpa` etc. up to 5.17-era releases, only
# `paged|eager` later); outside it they compute what the plain name does.
_EAGER = (dispatch_packed(eager_chunks), dispatch_static_decode, always(eager_swaa_attention))
_SDPA = (
    refuse_softcap,
    dispatch_packed(sdpa_chunks),
    dispatch_static_decode,
    dispatch_fused_prefill,
    dispatch_fused_train,
    always(sdpa_swaa_attention),
)
_FLASH = (dispatch_packed(flash_chunks), dispatch_static_decode, always(flash_swaa_attention))
DISPATCH: dict[str, tuple[Candidate, ...]] = {
    "eager": _EAGER,
    "sdpa": _SDPA,
    "flex_attention": (
        dispatch_static_decode,
        dispatch_fused_prefill,
        dispatch_fused_train,
        dispatch_gathered_decode,
        always(flex_swaa_attention),
    ),
    "flash_attention_2": _FLASH,
    "paged|eager": _EAGER,
    "paged|sdpa": _SDPA,
    "paged|flash_attention_2": _FLASH,
}
# Continuous batching's own names: wrapped only where the installed transformers registers them
# (hack_hf_swaa never adds a name), never an implementation to load a model with.
PAGED_BACKENDS = tuple(name for name in DISPATCH if name.startswith("paged|"))
BACKENDS = tuple(name for name in DISPATCH if name not in PAGED_BACKENDS)  # attn_implementation names SWAA serves


def select_kernel(implementation: str, call: AttentionCall) -> Kernel:
    for candidate in DISPATCH[implementation]:
        choice = candidate(call)
        if not isinstance(choice, str):
            return choice
    raise AssertionError(f"no candidate applied for {implementation}: the last one must always apply")


def run_attention(implementation: str, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
    """The layer's attention under the SWAA rule, by the first kernel that applies."""
    return select_kernel(implementation, call)(call)
