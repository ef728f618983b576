"""Peer rows: kvpress's presses on the demo's held-out samples, at one of two KV budgets.

Runs in kvpress's own venv (``run_peers.sh`` makes it); never imports ``swaa_patch``. The same KV
budget as SWAA's bounded rows in settings/demo.json: 4 sink tokens + the 64 most recent tokens
per layer, kept after a full-attention prefill (kvpress compresses the prefill's cache and does
not evict during decoding, so decode adds up to 15 more tokens per layer). The full-attention row
is repeated here as the check that this environment reproduces the SWAA environment's baseline.

``--budget half`` instead gives StreamingLLM, SnapKV, TOVA and Knorm the KV of SWAA's calibrated layer
set (half the layers full): ``half_budget_kept`` keys per layer.

    python benchmarks/peers/kvpress_rows.py --out OUT.json [--limit N] [--budget same|half]
"""

from __future__ import annotations

import logging
import math

import torch
from kvpress import DuoAttentionPress, KnormPress, SnapKVPress, StreamingLLMPress, TOVAPress
from transformers import AutoModelForCausalLM, AutoTokenizer

from measure import REPO, failed_row, load_samples, prompt_ids, row_options, run_row, summarise, write_rows

SINKS, RECENT = 4, 64  # settings/demo.json's bounded rows: keep_first 4, window 64
MODEL = REPO / "demo" / "model"
logger = logging.getLogger("kvpress_rows")


def streaming_press(prompt_tokens: int) -> StreamingLLMPress:
    """A StreamingLLM press keeping exactly SINKS + RECENT of ``prompt_tokens`` keys: kvpress keeps
    ``int(n * (1 - ratio))`` of n, so the ratio is set per prompt length."""
    kept = SINKS + RECENT
    ratio = (prompt_tokens - kept - 0.5) / prompt_tokens  # the 0.5 keeps int() from rounding to kept - 1
    assert math.floor(prompt_tokens * (1 - ratio)) == kept
    return StreamingLLMPress(compression_ratio=ratio, n_sink=SINKS)


def streaming_llm_row(model, tokenizer, samples) -> dict:
    lengths = iter([len(prompt_ids(tokenizer, s["prompt"])) for s in samples])
    results = run_row(model, tokenizer, samples, lambda: streaming_press(next(lengths))(model))
    return summarise(f"StreamingLLMPress (n_sink {SINKS}, {RECENT} recent)", "peer", results,
                     note="full-attention prefill, then sinks + recent kept; decode tokens are added")


def half_budget_kept(prompt_tokens: int) -> int:
    """Keys per layer that give a press the calibrated SWAA row's total KV: half the layers (4 of 8) keep
    every prompt key and half keep SINKS + RECENT - 1 (both add the decoded tokens), so each layer may keep
    n / 2 + (SINKS + RECENT - 1) / 2 prompt keys (rounded up: the peers get the odd key)."""
    return math.ceil(prompt_tokens / 2 + (SINKS + RECENT - 1) / 2)


def half_budget_press(make, prompt_tokens: int):
    """``make(compression_ratio)`` at the ratio that keeps ``half_budget_kept`` keys per layer."""
    kept = half_budget_kept(prompt_tokens)
    ratio = (prompt_tokens - kept - 0.5) / prompt_tokens
    assert math.floor(prompt_tokens * (1 - ratio)) == kept
    return make(ratio)


HALF_BUDGET_PRESSES = (  # (row, compression_ratio -> press): scorer-based presses and StreamingLLM
    (f"StreamingLLMPress (n_sink {SINKS}, half budget)", lambda r: StreamingLLMPress(compression_ratio=r, n_sink=SINKS)),
    ("SnapKVPress (half budget)", lambda r: SnapKVPress(compression_ratio=r)),
    ("TOVAPress (half budget)", lambda r: TOVAPress(compression_ratio=r)),
    ("KnormPress (half budget)", lambda r: KnormPress(compression_ratio=r)),
)


def half_budget_rows(model, tokenizer, samples) -> list[dict]:
    rows = []
    for name, make in HALF_BUDGET_PRESSES:
        lengths = iter([len(prompt_ids(tokenizer, s["prompt"])) for s in samples])
        try:
            results = run_row(model, tokenizer, samples,
                              lambda m=make, it=lengths: half_budget_press(m, next(it))(model))  # fmt: skip
            rows.append(summarise(name, "peer", results, note="full-attention prefill, then half the keys kept"))
        except Exception as err:  # noqa: BLE001 - the table reports exactly why a peer did not run
            logger.warning("%s did not run: %s", name, err)
            rows.append(failed_row(name, "peer", err))
        logger.info("%s: %s", name, rows[-1].get("mean", rows[-1].get("error")))
    return rows


def duo_attention_row(model, tokenizer, samples) -> list[dict]:
    """DuoAttention needs per-head patterns: published ones are fetched from GitHub for 6 listed
    checkpoints; ``on_the_fly_scoring`` computes them from BookSum, fetched from the HF hub."""
    rows = []
    for name, press in (("DuoAttentionPress (published patterns)", DuoAttentionPress(head_compression_ratio=0.5)),
                        ("DuoAttentionPress (on-the-fly patterns)",
                         DuoAttentionPress(head_compression_ratio=0.5, on_the_fly_scoring=True))):
        try:
            results = run_row(model, tokenizer, samples, lambda p=press: p(model))
            rows.append(summarise(name, "peer", results))
        except Exception as err:  # noqa: BLE001 - the table reports exactly why a peer did not run
            logger.warning("%s did not run: %s", name, err)
            rows.append(failed_row(name, "peer", err))
    return rows


def main() -> None:
    args = row_options(__doc__)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    samples = load_samples(args.limit)
    rows = [summarise("full attention (kvpress env)", "peer-env baseline", run_row(model, tokenizer, samples))]
    logger.info("full attention: mean %.3f", rows[-1]["mean"])
    if args.budget == "half":
        rows.extend(half_budget_rows(model, tokenizer, samples))
    else:
        rows.append(streaming_llm_row(model, tokenizer, samples))
        logger.info("StreamingLLM: mean %.3f", rows[-1]["mean"])
        rows.extend(duo_attention_row(model, tokenizer, samples))
    write_rows(args.out, rows)


if __name__ == "__main__":
    main()
