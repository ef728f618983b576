#!/usr/bin/env bash
# SWAA rows and kvpress peer rows (StreamingLLM, DuoAttention) on the demo's held-out samples, then
# benchmarks/results/peers_demo.md. Makes kvpress's own venv on first use (kvpress 0.5.5 pins
# transformers < 5.3; SWAA needs >= 5.17, so the two cannot share one). CPU only, offline.
#
#   bash benchmarks/peers/run_peers.sh [--limit N]     # N samples per task (default: all 48)
#   BUDGET=half bash benchmarks/peers/run_peers.sh     # at half of full attention's KV: peers_demo_half_kv.md
#   env: PYTHON (the swaa environment's interpreter, default python), KVPRESS_VENV, OUT, BUDGET (same | half)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python}"
KVPRESS_VENV="${KVPRESS_VENV:-$ROOT/.venv-kvpress}"
BUDGET="${BUDGET:-same}"
OUT="${OUT:-$ROOT/eval_output/peers-$BUDGET}"
RESULT="$ROOT/benchmarks/results/peers_demo$([ "$BUDGET" = half ] && echo _half_kv || true).md"  # "|| true": set -e would exit on a false test

if ! "$KVPRESS_VENV/bin/python" -c "import kvpress" 2>/dev/null; then
    python3 -m venv "$KVPRESS_VENV"
    "$KVPRESS_VENV/bin/python" -m pip install -q --upgrade pip
    "$KVPRESS_VENV/bin/python" -m pip install -q torch==2.13.0   # CPU torch first: nothing pulls CUDA
    "$KVPRESS_VENV/bin/python" -m pip install -q kvpress==0.5.5 transformers==5.2.0
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
start=$(date +%s)
"$KVPRESS_VENV/bin/python" "$HERE/kvpress_rows.py" --out "$OUT/kvpress.json" --budget "$BUDGET" "$@"
"$PYTHON" "$HERE/swaa_rows.py" --out "$OUT/swaa.json" --budget "$BUDGET" "$@"
command="bash benchmarks/peers/run_peers.sh${*:+ $*}"
[ "$BUDGET" = same ] || command="BUDGET=$BUDGET $command"
"$PYTHON" "$HERE/report.py" "$OUT/swaa.json" "$OUT/kvpress.json" --out "$RESULT" --budget "$BUDGET" \
    --seconds $(( $(date +%s) - start )) --command "$command"
echo "wrote $RESULT"
