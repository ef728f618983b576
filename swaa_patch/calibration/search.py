"""Which layers keep full attention: per-layer sensitivity, then a greedy choice under a budget.

Both stages only ask a scorer for the damage of a set of full layers (lower is better; every
other layer slides), so they are pure and testable without a model. The greedy stage re-scores
after every pick: layers interact (two layers may carry the same long-range path, so the second
adds little once the first is full), and a ranking of single layers cannot see that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

Layers = frozenset[int]
Scorer = Callable[[Layers], float]


@dataclass(frozen=True)
class GreedyStep:
    """One pick: the score of adding each candidate to the layers chosen before it."""

    before: tuple[int, ...]
    candidates: dict[int, float]
    chosen: int

    @property
    def score(self) -> float:
        return self.candidates[self.chosen]


def layers_key(layers: Iterable[int]) -> str:
    """``"0,2"`` for layers {0, 2}; ``"-"`` for no full layer (the key of a scored set)."""
    return ",".join(map(str, sorted(layers))) or "-"


def sensitivity_sets(num_layers: int) -> dict[int, Layers]:
    """Per layer, the full set in which that layer alone slides (every other layer full)."""
    every = frozenset(range(num_layers))
    return {layer: every - {layer} for layer in range(num_layers)}


def greedy_sets(num_layers: int, budget: int) -> int:
    """How many sets the greedy stage scores: num_layers + (num_layers - 1) + ... (budget terms)."""
    return sum(num_layers - step for step in range(budget))


def greedy_select(num_layers: int, budget: int, score: Scorer) -> list[GreedyStep]:
    """Add full layers one at a time, each time the one whose addition leaves the lowest score
    (ties: the lower layer index), until ``budget`` layers are full."""
    chosen: list[int] = []
    steps = []
    for _ in range(budget):
        remaining = [layer for layer in range(num_layers) if layer not in chosen]
        candidates = {layer: score(frozenset([*chosen, layer])) for layer in remaining}
        best = min(candidates, key=lambda layer: (candidates[layer], layer))
        steps.append(GreedyStep(tuple(sorted(chosen)), candidates, best))
        chosen.append(best)
    return steps


def chosen_layers(steps: Iterable[GreedyStep]) -> tuple[int, ...]:
    return tuple(sorted(step.chosen for step in steps))
