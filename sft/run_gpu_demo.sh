#!/usr/bin/env bash
# Self-distillation + LoRA SFT demo on a small model the project builds and trains itself:
#   base     build a small random Qwen3 (our tiny tokenizer) and teach it the passkey task with
#            full attention (full-parameter `swaa sft`, swaa_config null) on short prompts
#   before   `swaa eval`: the base model with full attention and with SWA (window << prompt)
#   distill  `swaa distill`: the full-attention base answers fresh prompts; only correct answers kept
#   sft      `swaa sft`: LoRA on the SWA-patched base, trained on the distilled answers
#   after    `swaa eval`: the adapter with the same SWA config
#   report   before/after accuracy table -> benchmarks/results/sft_demo.md
# Every stage resumes / skips finished work, so the script can be rerun or split across calls:
#   bash sft/run_gpu_demo.sh                 # all stages (GPU: ~10-15 min on one H100, untimed)
#   bash sft/run_gpu_demo.sh data base       # only some stages, in order
#   SCALE=smoke bash sft/run_gpu_demo.sh     # CPU smoke test of every piece (tiny sizes, ~1-2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
SCALE="${SCALE:-gpu}"
OUT="$(mkdir -p "${OUT:-demo_out}" && cd "${OUT:-demo_out}" && pwd)"
RESULTS="${RESULTS:-benchmarks/results/sft_demo.md}"
if [ "$SCALE" = gpu ]; then
  HIDDEN=256; LAYERS=4; HEADS=4; HEAD_DIM=64; FFN=768
  TRAIN_LENGTHS="256 512"; TRAIN_SAMPLES=75; PRE_STEPS=3000; PRE_BATCH=8; PACK=2048
  EVAL_LENGTHS="[512]"; EVAL_SAMPLES=20; DISTILL_SAMPLES=40; SFT_STEPS=400; WINDOW=64
else
  HIDDEN=64; LAYERS=2; HEADS=4; HEAD_DIM=16; FFN=128
  TRAIN_LENGTHS="128"; TRAIN_SAMPLES=1; PRE_STEPS=4; PRE_BATCH=2; PACK=512
  EVAL_LENGTHS="[192]"; EVAL_SAMPLES=1; DISTILL_SAMPLES=1; SFT_STEPS=3; WINDOW=32
fi
DEPTHS="0.05 0.15 0.25 0.35 0.45 0.55 0.65 0.75 0.85 0.95"
DEPTHS_JSON="[0.05, 0.25, 0.5, 0.75, 0.95]"
SWAA="{\"sliding_window_size\": $WINDOW, \"keep_first\": 4, \"force_fa_decode\": true, \"non_sliding_layers\": []}"
swaa() { "$PY" -m swaa_patch.cli "$@"; }

stage_data() {  # the base model's random weights, its tokenizer, and the teaching data
  [ -f "$OUT/init/config.json" ] || "$PY" - "$OUT/init" "$HIDDEN" "$LAYERS" "$HEADS" "$HEAD_DIM" "$FFN" <<'PYEOF'
import sys
from swaa_patch.testing import TinySpec, build_tiny_model
out, hidden, layers, heads, head_dim, ffn = sys.argv[1], *map(int, sys.argv[2:])
build_tiny_model(out, TinySpec(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               num_key_value_heads=max(1, heads // 2), head_dim=head_dim, intermediate_size=ffn))
PYEOF
  [ -f "$OUT/teach/passkey.jsonl" ] || swaa make-data --tasks passkey --lengths $TRAIN_LENGTHS --depths $DEPTHS \
    --samples "$TRAIN_SAMPLES" --seed 1 --tokenizer "$OUT/init" --out-dir "$OUT/teach"
}

stage_base() {  # full-parameter training with full attention: the "original" model of the demo
  cat > "$OUT/base.json" <<JSON
{"model": "$OUT/init", "swaa_config": null, "datasets": ["$OUT/teach/passkey.jsonl"], "output_dir": "$OUT/base",
 "lora": null, "data": {"max_length": $PACK, "packing": true, "response_field": "answer"},
 "training": {"learning_rate": 1e-3, "max_steps": $PRE_STEPS, "per_device_train_batch_size": $PRE_BATCH,
              "gradient_accumulation_steps": 1, "warmup_ratio": 0.05, "lr_scheduler_type": "cosine",
              "weight_decay": 0.01, "logging_steps": 50, "save_steps": 500, "save_total_limit": 1,
              "gradient_checkpointing": false}}
JSON
  [ -f "$OUT/base/final/config.json" ] || swaa sft "$OUT/base.json"
}

eval_settings() {  # $1 name, $2 model, $3 runs JSON
  cat > "$OUT/$1.json" <<JSON
{"output_dir": "$OUT/eval_$1", "max_new_tokens": 8, "batch_size": 8, "seed": 7, "dtype": "auto",
 "datasets": [{"task": "passkey", "lengths": $EVAL_LENGTHS, "depths": $DEPTHS_JSON, "samples": $EVAL_SAMPLES}],
 "settings": $3}
JSON
}

stage_before() {
  eval_settings before "$OUT/base/final" "[{\"swaa_config\": null, \"model_list\": [\"$OUT/base/final\"]},
    {\"swaa_config\": $SWAA, \"model_list\": [\"$OUT/base/final\"]}]"
  swaa eval "$OUT/before.json" --no-report
}

stage_distill() {  # fresh prompts (another seed) answered by the full-attention base; correct ones kept
  cat > "$OUT/distill.json" <<JSON
{"model": "$OUT/base/final", "output_dir": "$OUT/distill", "max_new_tokens": 16, "batch_size": 16, "seed": 3,
 "datasets": [{"task": "passkey", "lengths": $EVAL_LENGTHS, "depths": [$(echo $DEPTHS | sed 's/ /, /g')],
               "samples": $DISTILL_SAMPLES, "seed": 3}],
 "filter": $([ "$SCALE" = gpu ] && echo '{"scoring": "numeric", "min_score": 1.0}' || echo null)}
JSON
  swaa distill "$OUT/distill.json"
}

stage_sft() {  # LoRA on the SWA-patched base, reference defaults (r 16, alpha 32, dropout 0.1, rsLoRA)
  cat > "$OUT/sft.json" <<JSON
{"model": "$OUT/base/final", "swaa_config": $SWAA, "datasets": ["$OUT/distill/dataset.jsonl"],
 "output_dir": "$OUT/sft", "data": {"max_length": $PACK, "packing": true},
 "training": {"learning_rate": 5e-4, "max_steps": $SFT_STEPS, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 1, "logging_steps": 20, "save_steps": 200}}
JSON
  [ -f "$OUT/sft/final/adapter_config.json" ] || swaa sft "$OUT/sft.json"
}

stage_after() {
  eval_settings after "$OUT/sft/final" "[{\"swaa_config\": $SWAA, \"model_list\": [\"$OUT/sft/final\"]}]"
  swaa eval "$OUT/after.json" --no-report
}

stage_report() {
  "$PY" sft/demo_report.py --before "$OUT/eval_before/metrics.jsonl" --after "$OUT/eval_after/metrics.jsonl" \
    --distill "$OUT/distill/summary.json" --sft "$OUT/sft/train_metrics.json" --scale "$SCALE" --out "$RESULTS"
  cat "$RESULTS"
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(data base before distill sft after report)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
for s in "${stages[@]}"; do
  echo "== stage $s ($SCALE) =="
  "stage_$s"
done
