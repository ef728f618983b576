#!/usr/bin/env bash
# Wheels carried to the GPU machine (bash benchmarks/sft_wheels.sh makes them here), sourced by run_gpu.sh.
# A device call carries at most 64 MiB with the working tree, so sft_wheels.sh packs them in two halves for two
# back-to-back calls: `stash_wheels` keeps .whl/carry1 in $STASH (kept while the machine stays warm), and the
# next call's install_wheels joins it with .whl/carry2 (sha256 checked) into .whl/sft and .whl/cudnn.
# (tests/test_carried_wheels.py runs these functions on the CPU.)
STASH="${STASH:-/tmp/swaa_wheels}"
SITE="${SITE:-/tmp/site}"  # where the wheels are installed (put on PYTHONPATH)

stash_wheels() {  # call 1 of two: the first half, out of the repository (a later carry replaces .whl)
  mkdir -p "$STASH" && cp .whl/carry1/* "$STASH/" && ls -la "$STASH"
}

assemble_wheels() {  # .whl/carry2 + the stashed first half -> .whl/sft and .whl/cudnn
  [ -d .whl/carry2 ] || return 0
  [ -d "$STASH" ] || { echo "carried_wheels.sh: .whl/carry2 without the stashed first half: run 'stash_wheels' with carry1 just before" >&2; exit 3; }
  mkdir -p .whl/sft .whl/cudnn
  for sum in .whl/carry2/*.sha256; do
    wheel=$(basename "$sum" .sha256)
    cat "$STASH/$wheel.part.aa" ".whl/carry2/$wheel.part.ab" > ".whl/sft/$wheel"
    (cd .whl/sft && sha256sum -c --quiet "../../$sum") || { echo "carried_wheels.sh: $wheel: sha256 mismatch" >&2; exit 3; }
  done
  find .whl/carry2 -name '*.whl' -exec cp {} .whl/sft/ \;
  find "$STASH" -maxdepth 1 -name '*.whl' -exec cp {} .whl/cudnn/ \;
}

install_wheels() {  # install_wheels DIR...: the carried wheels into $SITE, on PYTHONPATH
  assemble_wheels
  for dir in "$@"; do
    if [ -d "$dir" ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$dir"/*.whl
      case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    fi
  done
}
install_cudnn_wheel() { install_wheels .whl/cudnn; }  # cudnn-frontend: cuDNN's sliding window (prefill and training)
# trl, datasets, liger-kernel (.whl/sft) for `swaa sft` and train-demo's Liger, and cudnn-frontend for the training path
install_sft_wheels() { install_wheels .whl/sft .whl/cudnn; }

# FlashAttention-4 (bash benchmarks/fa4_wheels.sh): the CuTe DSL library as an xz tarball in two parts, and its wheels.
# Each call may stash what it carries (.whl/fa4a, .whl/fa4b) in $STASH/fa4, so the parts can come in separate calls
# beside other carries; install_fa4_wheels takes .whl/fa4b from the call itself or from the stash.
stash_fa4() {
  mkdir -p "$STASH/fa4"
  for dir in .whl/fa4a .whl/fa4b; do [ -d "$dir" ] && cp "$dir"/* "$STASH/fa4/"; done
  ls -la "$STASH/fa4"
}
install_fa4_wheels() {  # reassemble (sha256 checked), install the wheels, unpack the tarball into $SITE
  stash_fa4 > /dev/null
  local src="$STASH/fa4"
  [ -f "$src/cutlass_dsl_cu13.tar.xz.part.aa" ] && [ -f "$src/cutlass_dsl_cu13.tar.xz.part.ab" ] \
    || { echo "carried_wheels.sh: carry .whl/fa4a and .whl/fa4b (one per call, 'stash_fa4' for the first)" >&2; exit 3; }
  cat "$src/cutlass_dsl_cu13.tar.xz.part.aa" "$src/cutlass_dsl_cu13.tar.xz.part.ab" > "$src/cutlass_dsl_cu13.tar.xz"
  (cd "$src" && sha256sum -c --quiet cutlass_dsl_cu13.tar.xz.sha256) \
    || { echo "carried_wheels.sh: cutlass_dsl_cu13.tar.xz: sha256 mismatch" >&2; exit 3; }
  install_wheels "$src"  # first: pip --upgrade --target replaces a package folder it finds, and the tarball's files
  xz -dc "$src/cutlass_dsl_cu13.tar.xz" | tar -C "$SITE" -xf -  # share nvidia_cutlass_dsl/ with the wheels'
  # the libs' .pth file is not read from a PYTHONPATH folder: put its folder on the path by hand
  export PYTHONPATH="$SITE/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH"
}
