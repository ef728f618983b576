#!/usr/bin/env bash
# Rebuild the demo's LoRA adapters from the shipped full-attention model (demo/model):
#   1. `swaa distill settings/demo_distill.json`   the full-attention model answers fresh prompts
#                                                   (task seed 2); only correct answers are kept
#   2. `swaa sft settings/demo_sft_RECIPE.json`     LoRA on the SWA-patched model, per recipe:
#        interleaved  window 64, 4 sinks, layers 1 and 3 full, no force_fa_decode
#        fad          window 64, 4 sinks, every layer sliding, force_fa_decode
#   3. ship           demo/sft-RECIPE/: adapter weights, adapter_config.json (base "../model"),
#                     swaa_config.json, train_metrics.json
#   4. (with OUT set) `swaa eval settings/demo.json` into $OUT/demo_eval, and the before/after
#                     table of benchmarks/results/sft_demo.md into $OUT/sft_demo.md
# Every step resumes or skips finished work. One GPU call of a few minutes; on a 2-core CPU about
# 15 minutes per recipe. Usage:  bash demo/adapt.sh            (steps 1-3)
#                                OUT=/some/dir bash demo/adapt.sh   (steps 1-4)
# Knobs: RECIPES (default "interleaved fad"), SFT_ARGS (extra `swaa sft` flags, e.g. "--max-steps 2"
# for a smoke test), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
RECIPES="${RECIPES:-interleaved fad}"
swaa() { "$PY" -m swaa_patch.cli "$@"; }

ship() {  # $1: an `swaa sft` output folder, $2: the adapter folder to write beside demo/model
  local staging="$2.staging"
  rm -rf "$staging" && mkdir -p "$staging"
  cp "$1/final/adapter_model.safetensors" "$1/final/swaa_config.json" "$1/train_metrics.json" "$staging/"
  "$PY" - "$1/final/adapter_config.json" "$staging/adapter_config.json" <<'PYEOF'
import json, sys
config = json.load(open(sys.argv[1]))
config["base_model_name_or_path"] = "../model"  # read relative to the adapter folder
json.dump(config, open(sys.argv[2], "w"), indent=2, sort_keys=True)
PYEOF
  chmod 644 "$staging"/*
  rm -rf "$2" && mv "$staging" "$2"
  echo "shipped $2 ($(du -sh "$2" | cut -f1))"
}

swaa distill settings/demo_distill.json
for recipe in $RECIPES; do
  swaa sft "settings/demo_sft_$recipe.json" ${SFT_ARGS:-}
  ship "sft_output/demo_$recipe" "demo/sft-$recipe"
done

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  swaa eval settings/demo.json --output-dir "$OUT/demo_eval"
  "$PY" sft/demo_report.py --metrics "$OUT/demo_eval/metrics.jsonl" --distill distill_output/demo/summary.json \
    --adapters demo/sft-* --out "$OUT/sft_demo.md"
fi
