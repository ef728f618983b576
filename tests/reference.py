"""An independent float64 reference of the SWAA visibility rule, written from background.md.

Nothing here imports swaa_patch's rule, plan or backends: positions, documents and masks are
recomputed with plain Python loops, and attention is a dense float64 softmax. The reference
model is the same HF model in float64 with a test-only attention function registered under its
own name, fed the per-layer masks computed here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import AttentionInterface

from swaa_patch.compat import output_cache

REF_IMPL = "swaa_test_reference"


@dataclass
class RefRule:
    window: int | None
    keep_first: int = 0
    force_fa_decode: bool | list[int] = False
    non_sliding_layers: tuple[int, ...] = ()

    def fad(self, layer: int) -> bool:
        f = self.force_fa_decode
        return f if isinstance(f, bool) else layer in f


def token_positions(valid: list[bool], pos_ids: list[int] | None) -> tuple[list[int], list[int]]:
    """Per-token (position, document) by walking the row: positions start at 0 at the first real
    token and at every packed-document restart (position_ids not continuing by +1)."""
    pos, doc = [], []
    cur_pos, cur_doc, seen_real = -1, 0, False
    for t, ok in enumerate(valid):
        if not ok:
            pos.append(-1)
            doc.append(-1)
            continue
        restart = not seen_real
        if pos_ids is not None and seen_real and t > 0 and valid[t - 1] and pos_ids[t] != pos_ids[t - 1] + 1:
            restart = True
        if restart:
            if seen_real:
                cur_doc += 1
            cur_pos = -1
        seen_real = True
        cur_pos += 1
        pos.append(cur_pos)
        doc.append(cur_doc)
    return pos, doc


def reference_masks(
    rule: RefRule,
    n_layers: int,
    valid: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    decode_from: int | None = None,
    labels: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Boolean (B, n, n) masks, one per layer, for a cache-free forward over n tokens.

    ``decode_from``: tokens at index >= it were produced as decode steps (one token on a
    non-empty cache). ``labels``: answer tokens (from the first label != -100 of a document on)
    attend fully on force_fa_decode layers, as in training."""
    b, n = valid.shape
    masks = [torch.zeros(b, n, n, dtype=torch.bool) for _ in range(n_layers)]
    for row in range(b):
        ok = valid[row].tolist()
        pids = None if position_ids is None else position_ids[row].tolist()
        pos, doc = token_positions(ok, pids)
        answer = [False] * n
        if labels is not None:
            seen = {}
            for t in range(n):
                if ok[t] and (labels[row, t] != -100 or seen.get(doc[t], False)):
                    seen[doc[t]] = True
                    answer[t] = True
        for layer in range(n_layers):
            for i in range(n):
                if not ok[i]:
                    masks[layer][row, i, i] = True  # padding query: itself only (output unused)
                    continue
                is_decode = decode_from is not None and i >= decode_from
                full = (
                    rule.window is None
                    or layer in rule.non_sliding_layers
                    or (is_decode and rule.fad(layer))
                    or (answer[i] and rule.fad(layer))
                )
                for j in range(i + 1):
                    if not ok[j] or doc[j] != doc[i]:
                        continue
                    if full or pos[i] - pos[j] < rule.window or pos[j] < rule.keep_first:
                        masks[layer][row, i, j] = True
    return masks


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    masks = module.config._swaa_ref_masks
    mask = masks[module.layer_idx][:, None].to(query.device)
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (
        scaling if scaling is not None else query.shape[-1] ** -0.5
    )
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register(REF_IMPL, _reference_attention)


def reference_model(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model`` whose attention follows masks set by :func:`reference_logits`."""
    ref = copy.deepcopy(model).double()
    ref.config.swaa_config = None
    ref.config._attn_implementation = REF_IMPL
    if hasattr(ref.config, "_experts_implementation"):
        ref.config._experts_implementation = "eager"  # grouped_mm has no float64 kernel
    for module in ref.modules():
        handle = getattr(module, "_swaa_hook", None)
        if handle is not None:
            handle.remove()
            module._swaa_hook = None
    return ref


def reference_logits(
    ref: torch.nn.Module,
    rule: RefRule,
    input_ids: torch.Tensor,
    valid: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    decode_from: int | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    valid = torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid.bool()
    if position_ids is None:
        position_ids = (valid.long().cumsum(-1) - 1).clamp_min(0)
        ref_pids = None
    else:
        ref_pids = position_ids
    ref.config._swaa_ref_masks = reference_masks(
        rule, ref.config.num_hidden_layers, valid, ref_pids, decode_from, labels
    )
    out = ref(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    return out.logits


def rel_error(out: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    out, ref = out.double(), ref.double()
    if valid is not None:
        out, ref = out[valid.bool()], ref[valid.bool()]
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


@torch.no_grad()
def generate_with_reference(model, ref, rule: RefRule, input_ids, valid, new_tokens: int, with_cache=False, **extra):
    """Greedy-generate ``new_tokens`` with ``model`` and recompute each step's logits with the
    float64 reference (generated tokens processed as decode steps).

    Returns (logits the model used for each step, reference logits for the same steps, sequences),
    and the cache generation ended with if ``with_cache``."""
    out = model.generate(
        input_ids=input_ids,
        attention_mask=valid.long(),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=0,
        **extra,
    )
    prompt = input_ids.shape[1]
    extra = torch.ones(valid.shape[0], new_tokens, dtype=torch.bool, device=valid.device)
    full_valid = torch.cat([valid.bool(), extra], dim=1)
    expected = reference_logits(ref, rule, out.sequences, full_valid, None, decode_from=prompt)
    result = torch.stack(out.logits, dim=1), expected[:, prompt - 1 : -1], out.sequences
    return (*result, output_cache(out)) if with_cache else result
