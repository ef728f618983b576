#!/usr/bin/env bash
# Wheels the GPU machine lacks for `swaa sft` (trl, datasets and their pins) and Liger, downloaded here into
# .whl/sft, and cudnn-frontend (cuDNN's sliding window: the Hopper prefill and training path) into .whl/cudnn
# (both ignored by git). On the GPU machine run_gpu.sh installs them into /tmp/site (install_wheels).
#
# A device call carries at most 64 MiB with the working tree (~20 MB): pyarrow alone (datasets 5.2's floor, 24.0.0:
# the smallest release it accepts, 49 MB) does not fit beside the rest, so this script also packs everything into two
# halves, each under the limit, for two back-to-back calls (the second must come while the machine is still warm,
# within its idle release):
#   1. carry [".whl/carry1"]:  bash benchmarks/run_gpu.sh stash_wheels      (keeps the first half in /tmp)
#   2. carry [".whl/carry2", ...]:  bash benchmarks/run_gpu.sh sft_cudnn     (or any sft part: reassembled first)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl/sft .whl/cudnn .whl/carry1 .whl/carry2
mkdir -p .whl/sft .whl/cudnn .whl/carry1 .whl/carry2

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl/sft trl==1.16.0 datasets==5.2.0 liger-kernel==0.8.5 dill==0.4.1 multiprocess==0.70.19 pyarrow==24.0.0
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl/cudnn nvidia-cudnn-frontend==1.32.0

# the halves: carry1 = cudnn-frontend + pyarrow's first 25 MB, carry2 = the rest of pyarrow (with its sha256) + the rest
pyarrow=$(basename .whl/sft/pyarrow-*.whl)
cp .whl/cudnn/*.whl .whl/carry1/
split -b 25000000 ".whl/sft/$pyarrow" ".whl/carry1/$pyarrow.part."
mv ".whl/carry1/$pyarrow.part.ab" .whl/carry2/
(cd .whl/sft && sha256sum "$pyarrow") > ".whl/carry2/$pyarrow.sha256"
find .whl/sft -name '*.whl' ! -name 'pyarrow-*' -exec cp {} .whl/carry2/ \;
du -sh .whl/sft .whl/cudnn .whl/carry1 .whl/carry2
