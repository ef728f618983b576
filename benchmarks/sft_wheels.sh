#!/usr/bin/env bash
# Wheels the GPU machine lacks for `swaa sft` (trl, datasets and their pins) and Liger, downloaded here into
# .whl/sft (ignored by git) for a device call that names `.whl` in carry. On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/sft/*.whl && export PYTHONPATH=/tmp/site
# (run_gpu.sh's sft parts do this when .whl/sft exists). pyarrow >= 24 is datasets 5.2's floor: carried too
# (~45 MiB; the 64 MiB carry limit holds all of them).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl/sft

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl/sft trl==1.16.0 datasets==5.2.0 liger-kernel==0.8.5 dill==0.4.1 multiprocess==0.70.19 pyarrow==26.0.1
ls -la .whl/sft
