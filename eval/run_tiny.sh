#!/usr/bin/env bash
# CI smoke run: the shipped settings on the built-in tiny model (no download), then the report.
# Usage: bash eval/run_tiny.sh [OUTPUT_DIR]   (default: eval_output/eval_tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-eval_output/eval_tiny}"
PYTHON="${PYTHON:-python}"
"$PYTHON" -m swaa_patch.cli eval settings/eval_tiny.json --output-dir "$OUT"
"$PYTHON" -m swaa_patch.cli report "$OUT"
test -s "$OUT/report.md"
