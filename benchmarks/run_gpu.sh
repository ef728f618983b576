#!/usr/bin/env bash
# One device call: GPU correctness checks and benchmarks, tables under $OUT.
# Usage on the lent GPU:  bash benchmarks/run_gpu.sh [kv_memory] [correctness] [speed] [model_speed] [tuning] [merge] [decode] [serve]
# (default: kv_memory correctness; see benchmarks/README.md for what each part measures and takes)
# OUT defaults to ./gpu_out; copy the .md tables into benchmarks/results/ with the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(kv_memory correctness)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
for part in "${parts[@]}"; do
  case "$part" in
    kv_memory) python3 benchmarks/kv_memory.py --out "$OUT/kv_memory.md" 2>&1 | tee "$OUT/kv_memory.log" ;;
    correctness) python3 benchmarks/gpu_correctness.py --out "$OUT/gpu_correctness.md" 2>&1 | tee "$OUT/gpu_correctness.log" ;;
    speed) python3 benchmarks/attention_speed.py --out "$OUT/attention_speed.md" 2>&1 | tee "$OUT/attention_speed.log" ;;
    model_speed) python3 benchmarks/model_speed.py --out "$OUT/model_speed.md" 2>&1 | tee "$OUT/model_speed.log" ;;
    tuning) python3 benchmarks/triton_tuning.py --out "$OUT/triton_tuning.md" 2>&1 | tee "$OUT/triton_tuning.log" ;;
    merge) python3 benchmarks/merge_tuning.py --out "$OUT/merge_tuning.md" 2>&1 | tee "$OUT/merge_tuning.log" ;;
    decode)
      python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_static_cache.py 2>&1 | tee "$OUT/decode_tests.log"
      python3 benchmarks/decode_speed.py --out "$OUT/decode_speed.md" 2>&1 | tee "$OUT/decode_speed.log" ;;
    serve)
      python3 -m pytest -q -p no:cacheprovider tests/test_continuous_batching.py 2>&1 | tee "$OUT/serve_tests.log"
      python3 benchmarks/serve_speed.py --resume --out "$OUT/serve_speed.md" 2>&1 | tee -a "$OUT/serve_speed.log" ;;
    *) echo "unknown part: $part" >&2; exit 2 ;;
  esac
done
