#!/usr/bin/env bash
# FlashAttention-4 (flash-attn-4, CuTe DSL) and what it needs that the GPU machine lacks, downloaded here and packed
# into .whl/fa4a and .whl/fa4b (ignored by git) for device calls (benchmarks/fa4_attention.py, fa4_swa's tests, `swaa sft`).
#
# The CUDA 13 CuTe DSL library (nvidia-cutlass-dsl-libs-cu13) is a 92 MB wheel; beside the ~20 MB working tree a
# call carries ~46 MB, so it is repacked as an xz tarball (64 MB; its files go straight into the site folder there) and
# split. Back-to-back calls on a warm machine (carried_wheels.sh keeps each stashed part in /tmp):
#   1. carry [".whl/fa4a"]:  bash benchmarks/run_gpu.sh stash_fa4
#   2. carry [".whl/fa4b", ".whl/cudnn"]:  bash benchmarks/run_gpu.sh fa4_tests fa4   (reassembled, sha256 checked)
# With sft_wheels.sh's halves too (`swaa sft` rows): fa4a, then fa4b, then carry1, each with stash_fa4 / stash_wheels,
# then carry2 with `bash benchmarks/run_gpu.sh sft_fa4`.
# The machine has cuda-bindings, cuda-pathfinder, einops, protobuf and typing-extensions already.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl/fa4 .whl/fa4a .whl/fa4b
mkdir -p .whl/fa4 .whl/fa4a .whl/fa4b
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d .whl/fa4 \
    flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 \
    torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
libs=$(ls .whl/fa4/nvidia_cutlass_dsl_libs_cu13-*.whl)
tree=$(mktemp -d)
unzip -q "$libs" -d "$tree"
tar -C "$tree" -cf - . | xz -9 -T0 > .whl/fa4/cutlass_dsl_cu13.tar.xz
rm -rf "$tree" "$libs"
(cd .whl/fa4 && sha256sum cutlass_dsl_cu13.tar.xz) > .whl/fa4b/cutlass_dsl_cu13.tar.xz.sha256
split -b 44000000 .whl/fa4/cutlass_dsl_cu13.tar.xz .whl/fa4a/cutlass_dsl_cu13.tar.xz.part.
mv .whl/fa4a/cutlass_dsl_cu13.tar.xz.part.ab .whl/fa4b/
cp .whl/fa4/*.whl .whl/fa4b/
du -sh .whl/fa4a .whl/fa4b
