"""SWAA rows for the peer comparison, measured exactly as the peers are (``measure.run_row``).

Runs in the swaa environment (transformers 5.17-5.24). The configs are settings/demo.json's rows
that bound or recover the cache: keep_first 4 + window 64 is the same KV budget the StreamingLLM
peer gets; the interleaved row bounds layers 0, 2, 4 and 6 only; force_fa_decode keeps every key (decode
attends fully) and is what recovers accuracy; the LoRA row is demo/sft-fad under its recipe.

    python benchmarks/peers/swaa_rows.py --out OUT.json [--limit N] [--budget same|half]
"""

from __future__ import annotations

import logging

from swaa_patch import SWAAConfig, hack_hf_swaa, swaa_enabled
from swaa_patch.jobs.loading import load_model, load_tokenizer

from measure import REPO, load_samples, row_options, run_row, summarise, write_rows

logger = logging.getLogger("swaa_rows")
BASE = SWAAConfig(sliding_window_size=64, keep_first=4)
ROWS = (  # (row, model folder, config)
    ("full attention", "demo/model", None),
    ("SWAA W 64, 4 sinks (bounded cache)", "demo/model", BASE),
    ("SWAA W 64, 4 sinks, full layers 1, 3, 5, 7 (0, 2, 4, 6 bounded)", "demo/model",
     SWAAConfig(sliding_window_size=64, keep_first=4, non_sliding_layers=[1, 3, 5, 7])),
    ("SWAA W 64, 4 sinks, force_fa_decode", "demo/model",
     SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=True)),
    ("SWAA LoRA SFT (demo/sft-fad), W 64, 4 sinks, force_fa_decode", "demo/sft-fad",
     SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=True)),
)


# --budget half: layer sets with half the layers full (no force_fa_decode): the one `swaa calibrate
# settings/demo_calibrate.json` picks and the hand pick, before and after LoRA SFT (demo/sft-*)
CALIBRATED = SWAAConfig(sliding_window_size=64, keep_first=4, non_sliding_layers=[1, 5, 6, 7])
HAND_PICKED = SWAAConfig(sliding_window_size=64, keep_first=4, non_sliding_layers=[1, 3, 5, 7])
HALF_ROWS = (
    ("full attention", "demo/model", None),
    ("SWAA W 64, 4 sinks, full layers 1, 5, 6, 7 (calibrated; 0, 2, 3, 4 bounded)", "demo/model", CALIBRATED),
    ("SWAA LoRA SFT (demo/sft-calibrated), full layers 1, 5, 6, 7", "demo/sft-calibrated", CALIBRATED),
    ("SWAA W 64, 4 sinks, full layers 1, 3, 5, 7 (hand pick; 0, 2, 4, 6 bounded)", "demo/model", HAND_PICKED),
    ("SWAA LoRA SFT (demo/sft-interleaved), full layers 1, 3, 5, 7", "demo/sft-interleaved", HAND_PICKED),
)


def main() -> None:
    args = row_options(__doc__)
    hack_hf_swaa()
    samples = load_samples(args.limit)
    rows, models = [], {}
    for name, folder, config in HALF_ROWS if args.budget == "half" else ROWS:
        if folder not in models:
            models[folder] = load_model(str(REPO / folder), "float32", "sdpa", "cpu")
        model, tokenizer = models[folder], load_tokenizer(str(REPO / folder))
        results = run_row(model, tokenizer, samples, lambda m=model, c=config: swaa_enabled(m, c))
        rows.append(summarise(name, "swaa" if config is not None else "baseline", results))
        logger.info("%s: mean %.3f", name, rows[-1]["mean"])
    write_rows(args.out, rows)


if __name__ == "__main__":
    main()
