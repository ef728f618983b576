"""The one argument every SWAA kernel takes, and the kernel / dispatch-candidate types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ..plan import AttentionPlan


@dataclass(frozen=True)
class AttentionCall:
    """One layer's attention in one forward: q/k/v as (batch, heads, length, head_dim)."""

    module: nn.Module
    query: Tensor
    key: Tensor
    value: Tensor
    plan: AttentionPlan
    scaling: float
    dropout: float = 0.0
    softcap: float | None = None

    @property
    def layer_idx(self) -> int:
        return self.module.layer_idx

    @property
    def active_dropout(self) -> float:
        """The dropout that applies: transformers passes the config's value in eval mode too."""
        return self.dropout if self.module.training else 0.0


# A kernel returns transformers' layout (batch, length, heads, head_dim) and optional weights.
Kernel = Callable[[AttentionCall], tuple[Tensor, Tensor | None]]
# A dispatch candidate returns the kernel for a call, or why it does not apply.
Candidate = Callable[[AttentionCall], "Kernel | str"]
