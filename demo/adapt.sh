#!/usr/bin/env bash
# Rebuild the demo's LoRA adapters from the shipped full-attention model (demo/model):
#   1. `swaa distill settings/demo_distill.json`   the full-attention model answers fresh prompts
#                                                   (task seed 2); only correct answers are kept
#   2. `swaa sft settings/demo_sft_RECIPE.json`     LoRA on the SWA-patched model, per recipe:
#        interleaved  window 64, 4 sinks, layers 1, 3, 5, 7 full (a hand pick), no force_fa_decode
#        calibrated   window 64, 4 sinks, layers 1, 5, 6, 7 full (`swaa calibrate`'s pick), no force_fa_decode
#        fad          window 64, 4 sinks, every layer sliding, force_fa_decode
#   3. ship           demo/sft-RECIPE/: adapter weights, adapter_config.json (base "../model"),
#                     swaa_config.json, train_metrics.json
#   4. (with OUT set) `swaa eval settings/demo.json` into $OUT/demo_eval, and the before/after
#                     table of benchmarks/results/sft_demo.md into $OUT/sft_demo.md
# Every step resumes or skips finished work. One GPU call of a few minutes; on a 2-core CPU about
# 15 minutes per recipe. Usage:  bash demo/adapt.sh            (steps 1-3)
#                                OUT=/some/dir bash demo/adapt.sh   (steps 1-4)
# Knobs: RECIPES (default "interleaved calibrated fad"; empty: distill only), PARALLEL=1 (the recipes at once, one log
# each in sft_output/demo_RECIPE.log), SFT_ARGS (extra `swaa sft` flags, e.g. "--max-steps 2"
# for a smoke test), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
RECIPES="${RECIPES-interleaved calibrated fad}"
swaa() { "$PY" -m swaa_patch.cli "$@"; }

ship() {  # $1: an `swaa sft` output folder, $2: the adapter folder to write beside demo/model
  local staging="$2.staging"
  rm -rf "$staging" && mkdir -p "$staging"
  cp "$1/final/swaa_config.json" "$1/train_metrics.json" "$staging/"
  "$PY" - "$1/final" "$staging" <<'PYEOF'
import json, sys
import torch
from safetensors.torch import load_file, save_file
source, target = sys.argv[1:]
config = json.load(open(f"{source}/adapter_config.json"))
config["base_model_name_or_path"] = "../model"  # read relative to the adapter folder
json.dump(config, open(f"{target}/adapter_config.json", "w"), indent=2, sort_keys=True)
# bfloat16 halves each adapter (three of the 8-layer model's fit beside it in demo/'s 20 MiB); peft casts them
# to the float32 base when it loads them, and the demo table is measured on these shipped files
weights = load_file(f"{source}/adapter_model.safetensors")
save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, f"{target}/adapter_model.safetensors",
          metadata={"format": "pt"})
PYEOF
  chmod 644 "$staging"/*
  rm -rf "$2" && mv "$staging" "$2"
  echo "shipped $2 ($(du -sh "$2" | cut -f1))"
}

adapt() {  # $1: a recipe
  swaa sft "settings/demo_sft_$1.json" ${SFT_ARGS:-}
  ship "sft_output/demo_$1" "demo/sft-$1"
}

swaa distill settings/demo_distill.json
pids=()
for recipe in $RECIPES; do
  if [ "${PARALLEL:-0}" = 1 ]; then  # a tiny model leaves a GPU idle: every recipe at once, one log each
    mkdir -p sft_output
    adapt "$recipe" > "sft_output/demo_$recipe.log" 2>&1 &
    pids+=($!)
  else
    adapt "$recipe"
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a failed recipe fails the script

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  swaa eval settings/demo.json --output-dir "$OUT/demo_eval"
  "$PY" sft/demo_report.py --metrics "$OUT/demo_eval/metrics.jsonl" --distill distill_output/demo/summary.json \
    --adapters demo/sft-* --out "$OUT/sft_demo.md"
fi
