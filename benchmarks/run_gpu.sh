#!/usr/bin/env bash
# One device call: GPU correctness checks (and, as they land, benchmarks), tables under $OUT.
# Usage on the lent GPU:  bash benchmarks/run_gpu.sh   (OUT defaults to ./gpu_out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 benchmarks/gpu_correctness.py --out "$OUT/gpu_correctness.md" 2>&1 | tee "$OUT/gpu_correctness.log"
