"""How far a SWAA config moves a model's answers from full attention, teacher-forced.

One forward over prompt + answer gives every answer position's next-token distribution under a
config. With ``force_fa_decode`` the answer tokens are passed as labels, which is how SWAA knows
they are decode-time tokens (they attend fully on those layers, prompt tokens slide): the single
forward then computes exactly what greedy decoding with that answer computes, token by token.
Without it no labels are needed, and only the answer positions' logits are materialised.

Per example the scores are means over its answer tokens; a config's score is the mean over
examples, so a long answer does not outweigh a short one:

* ``kl``  = mean_t KL(p_full(. | t) || p_config(. | t))
* ``nll`` = mean_t -log p_config(answer_t | t)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import SWAAConfig
from ..patch import apply_swaa
from ..plan import IGNORE_INDEX


@dataclass(frozen=True)
class Example:
    """A calibration prompt with the answer tokens that are scored after it."""

    id: str
    dataset: str
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


@dataclass(frozen=True)
class ExampleScore:
    kl: float
    nll: float


def left_padded(examples: Sequence[Example], pad_id: int) -> tuple[Any, Any, Any]:
    """input_ids, attention_mask and labels (-100 except on answer tokens), left-padded."""
    import torch

    rows = [list(e.prompt_ids) + list(e.answer_ids) for e in examples]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, example) in enumerate(zip(rows, examples)):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
        labels[i, width - len(example.answer_ids) :] = torch.tensor(example.answer_ids)
    return ids, mask, labels


def answer_log_probs(model: Any, examples: Sequence[Example], swaa: SWAAConfig | None, pad_id: int) -> list[Any]:
    """Per example, the (answer tokens, vocab) float32 log-probabilities on the CPU of the
    positions that predict its answer tokens, with ``swaa`` applied (None: stock full attention)."""
    import torch

    apply_swaa(model, swaa)
    ids, mask, labels = left_padded(examples, pad_id)
    keep = max(len(e.answer_ids) for e in examples) + 1
    # Labels tell SWAA which tokens are decode-time ones; with them transformers computes the loss
    # on full-length logits (it cannot slice them), so they are passed only where they matter.
    uses_labels = swaa is not None and swaa.enabled and bool(swaa.force_fa_decode)
    extra = {"labels": labels.to(model.device)} if uses_labels else {"logits_to_keep": keep}
    with torch.inference_mode():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                       use_cache=False, **extra).logits[:, -keep:]
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
    # Position -1 predicts past the answer; the answer's n tokens are predicted by the n before it.
    return [log_probs[i, keep - 1 - len(e.answer_ids) : keep - 1] for i, e in enumerate(examples)]


def example_score(reference: Any, candidate: Any, answer_ids: Sequence[int]) -> ExampleScore:
    """KL(reference || candidate) and the candidate's NLL of the answer, each averaged over tokens."""
    import torch

    ref, cand = reference.double(), candidate.double()
    kl = (ref.exp() * (ref - cand)).sum(-1).mean()
    targets = torch.tensor(list(answer_ids), dtype=torch.long)
    nll = -cand.gather(-1, targets[:, None]).mean()
    return ExampleScore(float(kl), float(nll))


def aggregate(scores: list[tuple[Example, ExampleScore]], reference_nll: dict[str, float]) -> dict[str, Any]:
    """Means over examples, overall and per dataset. ``delta_nll`` subtracts full attention's NLL,
    ``reference_nll[dataset]`` (``""``: overall); without it, it is 0 (the reference itself)."""
    groups: dict[str, list[ExampleScore]] = defaultdict(list)
    for example, score in scores:
        groups[example.dataset].append(score)
        groups[""].append(score)

    def summary(name: str) -> dict[str, float]:
        items = groups[name]
        kl = sum(s.kl for s in items) / len(items)
        nll = sum(s.nll for s in items) / len(items)
        return {"kl": kl, "nll": nll, "delta_nll": nll - reference_nll.get(name, nll)}

    return {**summary(""), "examples": len(scores),
            "by_dataset": {name: summary(name) for name in groups if name}}
