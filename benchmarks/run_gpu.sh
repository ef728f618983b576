#!/usr/bin/env bash
# One device call: GPU correctness checks and benchmarks, tables under $OUT.
# Usage on the lent GPU:  bash benchmarks/run_gpu.sh [stash_wheels] [kv_memory] [correctness] [speed] [model_speed] [tuning] [merge] [decode] [decode_speed] [decode_profile]
#                                                  [decode_cold] [jobs] [train_kernel] [cudnn_tail] [cudnn_plans] [stash_fa4] [fa4_tests] [fa4] [sft_fa4] [train_tuning] [serve] [sft] [sft_triton] [sft_cudnn] [sft_long]
#                                                  [sft_stock_long] [sft_profile] [first_step] [sft_2gpu] [demo_sweep] [demo_adapt] [calibration_demo]
#                                                  [eval_rows] [decode_kernel]
# (default: kv_memory correctness; see benchmarks/README.md for what each part measures and takes)
# OUT defaults to ./gpu_out; copy the .md tables into benchmarks/results/ with the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
parts=("$@")
# `swaa sft` rows accumulate in .sft_speed/ (kept between calls on a warm machine; on a fresh one, carry the
# sft_speed.json an earlier call returned as .sft_speed/sft_speed.json); trl, datasets and Liger come as wheels
# (bash benchmarks/sft_wheels.sh here, then carry .whl). sft_speed prints its time plan first.
source benchmarks/carried_wheels.sh  # install_wheels, install_cudnn_wheel, install_sft_wheels, stash_wheels
sft_speed() {
  install_sft_wheels
  python3 benchmarks/sft_speed.py --resume --out .sft_speed/sft_speed.md "$@" 2>&1 | tee -a "$OUT/sft_speed.log"
  cp .sft_speed/sft_speed.md .sft_speed/sft_speed.json "$OUT/"
}
# decode_speed rows accumulate in .decode_speed/ the same way; DECODE_ARGS picks rows (decode_speed.py --help);
# PROFILE_ARGS passes options to decode_profile.py (e.g. --attention flex,sdpa)
decode_speed() {
  mkdir -p .decode_speed
  python3 benchmarks/decode_speed.py --resume --out .decode_speed/decode_speed.md ${DECODE_ARGS:-} 2>&1 | tee -a "$OUT/decode_speed.log"
  cp .decode_speed/decode_speed.md .decode_speed/decode_speed.json "$OUT/"
}
[ ${#parts[@]} -eq 0 ] && parts=(kv_memory correctness)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
for part in "${parts[@]}"; do
  case "$part" in
    stash_wheels) stash_wheels ;;  # call 1 of sft_wheels.sh's two
    kv_memory) python3 benchmarks/kv_memory.py --out "$OUT/kv_memory.md" 2>&1 | tee "$OUT/kv_memory.log" ;;
    correctness) python3 benchmarks/gpu_correctness.py --out "$OUT/gpu_correctness.md" 2>&1 | tee "$OUT/gpu_correctness.log" ;;
    speed) install_cudnn_wheel; python3 benchmarks/attention_speed.py --out "$OUT/attention_speed.md" 2>&1 | tee "$OUT/attention_speed.log" ;;
    # the trainable kernels (SWAA_FUSED_TRAIN, Triton and cuDNN): their float64 tests on the GPU (~5 min; a failure
    # stops the part), then every attention row (fwd+bwd against flex's and full-causal SDPA's, dq/dk/dv checked): ~8 min
    train_kernel)
      install_cudnn_wheel
      python3 -m pytest -q -p no:cacheprovider tests/test_triton_swa_train.py tests/test_cudnn_swa.py 2>&1 | tee "$OUT/train_kernel_tests.log"
      python3 benchmarks/attention_speed.py --out "$OUT/attention_speed.md" 2>&1 | tee "$OUT/attention_speed.log" ;;
    # the cuDNN training backward: its float64 tests on the GPU (real cuDNN, and the sink tail on compiled kernels),
    # then the band and the sink tail timed apart with the tail's launch swept (GPU_CONFIG.tail_dq): ~3 min
    cudnn_tail)
      install_cudnn_wheel
      python3 -m pytest -q -p no:cacheprovider tests/test_cudnn_swa.py tests/test_triton_swa_train.py \
        -k "cudnn or sink_tail" 2>&1 | tee "$OUT/cudnn_tail_tests.log"
      python3 benchmarks/cudnn_tail_tuning.py --out "$OUT/cudnn_tail_tuning.md" 2>&1 | tee "$OUT/cudnn_tail_tuning.log" ;;
    # every plan cuDNN's heuristics A, B and FALLBACK offer for the band's forward and backward, each checked against
    # float64 (sinks merged / sink tail added) and timed beside the shipped op: ~2 min
    stash_fa4) stash_fa4 ;;  # keeps the carried .whl/fa4a (or fa4b) for a later call (fa4_wheels.sh)
    # FA4's float64 tests on the GPU (its one-pass path, the default's dispatch to it) and the cuDNN path's: ~3 min
    fa4_tests)
      install_cudnn_wheel; install_fa4_wheels
      python3 -m pytest -q -p no:cacheprovider tests/test_fa4_swa.py tests/test_cudnn_swa.py \
        tests/test_triton_swa_train.py::test_default_takes_cuda_bf16_training_calls_only 2>&1 | tee "$OUT/fa4_tests.log" ;;
    # `swaa sft` through FA4 (32K-256K) and through the cuDNN path (the same run's baseline): ~7 min
    sft_fa4)
      install_fa4_wheels
      sft_speed --sizes 32768,131072,262144 --variants swaa_fa4_liger
      sft_speed --sizes 32768,131072 --variants swaa_cudnn_liger ;;
    # FlashAttention-4's Hopper kernels for the rule (block-sparse + mask_mod, and its band backward under the shipped
    # forward and sink tail) against the shipped path and SDPA, float64-checked; first calls JIT-compile: ~6 min
    fa4)
      install_cudnn_wheel; install_fa4_wheels
      # FA4's compiled kernels kept on disk (.fa4_cache, kept on a warm machine): a second call (FA4_ARGS="--sizes N")
      # does not compile them again
      export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR="$PWD/.fa4_cache"
      python3 benchmarks/fa4_attention.py ${FA4_ARGS:-} --out "$OUT/fa4_attention.md" 2>&1 | tee "$OUT/fa4_attention.log" ;;
    cudnn_plans)
      install_cudnn_wheel
      python3 benchmarks/cudnn_plans.py --out "$OUT/cudnn_plans.md" 2>&1 | tee "$OUT/cudnn_plans.log" ;;
    # the backward's launch sweep (each kernel's tiles; GPU_CONFIG is chosen from it): ~5 min
    train_tuning)
      python3 benchmarks/train_kernel_tuning.py --out "$OUT/train_kernel_tuning.md" 2>&1 | tee "$OUT/train_kernel_tuning.log" ;;
    model_speed) install_cudnn_wheel; python3 benchmarks/model_speed.py --out "$OUT/model_speed.md" 2>&1 | tee "$OUT/model_speed.log" ;;
    tuning) python3 benchmarks/triton_tuning.py --out "$OUT/triton_tuning.md" 2>&1 | tee "$OUT/triton_tuning.log" ;;
    merge) python3 benchmarks/merge_tuning.py --out "$OUT/merge_tuning.md" 2>&1 | tee "$OUT/merge_tuning.log" ;;
    decode_profile) python3 benchmarks/decode_profile.py ${PROFILE_ARGS:-} --out "$OUT/decode_profile.md" 2>&1 | tee "$OUT/decode_profile.log" ;;
    decode)
      python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_static_cache.py 2>&1 | tee "$OUT/decode_tests.log"
      decode_speed ;;
    # swaa eval with compiled decode through the demo's 10 rows (a fullgraph compile failed at the 9th row before
    # static_cache.CompiledConfigs): 4 samples per task and length, generation compile "on"; ~2 min
    eval_rows)
      install_sft_wheels
      python3 - <<'PY'
import json
settings = json.load(open("settings/demo.json"))
settings.update(output_dir="../eval_output/demo_gpu_compiled", compile="on", limit=4)
json.dump(settings, open("settings/demo_gpu_compiled.json", "w"), indent=1)
PY
      { time python3 -m swaa_patch eval settings/demo_gpu_compiled.json ; } > "$OUT/eval_rows.log" 2>&1 || echo "eval_rows failed" | tee -a "$OUT/eval_rows.log"
      cp eval_output/demo_gpu_compiled/report.md "$OUT/eval_rows_report.md" || true ;;
    # issue 16: the Triton split-K decode kernel's float64 tests on the GPU (kernel and compiled generation), then its
    # launch sweep against flex and SDPA at the 4B shape's heads (triton_decode.LAUNCH is chosen from it): ~3 min
    decode_kernel)
      python3 -m pytest -q -p no:cacheprovider tests/test_triton_decode.py 2>&1 | tee "$OUT/decode_kernel_tests.log"
      python3 -m pytest -q -p no:cacheprovider -m gpu -k triton tests/test_static_cache.py 2>&1 | tee -a "$OUT/decode_kernel_tests.log"
      python3 benchmarks/decode_kernel_tuning.py --out "$OUT/decode_kernel_tuning.md" 2>&1 | tail -n 5 | tee "$OUT/decode_kernel_tuning.log" ;;
    decode_speed) decode_speed ;;  # the table only (e.g. a second call on a warm machine)
    # cold compile of the decode step, stock vs SWAA (sdpa, flex, triton kernels), one fresh process and empty caches each: ~6 min
    decode_cold)
      # (the table holds every path's compile phases; the per-path logs stay in /tmp/decode_cold: a call returns 8 files)
      # (COLD_ARGS="--profile N": each path's stack samples come back in one tar)
      python3 benchmarks/decode_compile_time.py --work /tmp/decode_cold ${COLD_ARGS:-} --out "$OUT/decode_compile_time.md" 2>&1 \
        | tee "$OUT/decode_compile_time.log"
      if ls /tmp/decode_cold/*.samples.json > /dev/null 2>&1; then tar -cf "$OUT/decode_cold_samples.tar" -C /tmp/decode_cold $(cd /tmp/decode_cold && ls *.samples.json); fi ;;
    # `swaa eval` / `swaa distill` with compile off / on (4B shape; the model folder is kept in .job_throughput/): ~10 min
    # (JOBS_ARGS="--jobs distill": one job's three rows, ~6 min with the model build)
    jobs)
      python3 benchmarks/job_throughput.py --work .job_throughput ${JOBS_ARGS:-} --out "$OUT/job_throughput.md" 2>&1 | tee "$OUT/job_throughput.log" ;;
    sft) sft_speed --sizes 32768,131072 --variants stock,swaa,swaa_liger ;;          # ~9 min (model build included)
    sft_triton) sft_speed --sizes 32768,131072 --variants swaa_liger,swaa_triton_liger ;;  # ~5 min: flex vs Triton
    # the training default on Hopper (cuDNN's window fwd+bwd + Triton sinks) at every length, then stock at 32K and
    # 128K in the same run (rows already in the state are kept: drop stock's from .sft_speed/sft_speed.json to
    # re-measure them): ~9 min with the model build
    sft_cudnn)
      sft_speed --sizes 32768,65536,131072,262144 --variants swaa_cudnn_liger
      sft_speed --sizes 32768,131072 --variants stock ;;
    sft_long) sft_speed --sizes 65536,262144 --variants swaa,swaa_liger ;;           # ~6-7 min
    sft_stock_long) sft_speed --sizes 65536,262144 --variants stock ;;               # ~5 min (256K: one step)
    # one profiled `swaa sft` step per variant and size (SFT_PROFILE_VARIANTS, default swaa_cudnn_liger: the Hopper default;
    # SFT_PROFILE_SIZES, default 32K and 128K): the GPU's kernel time by kind (benchmarks/sft_profile.py), ~1-2 min each
    sft_profile)
      install_sft_wheels
      for v in ${SFT_PROFILE_VARIANTS:-swaa_cudnn_liger}; do
        for n in ${SFT_PROFILE_SIZES:-32768 131072}; do
          python3 benchmarks/sft_profile.py --n "$n" --variant "$v" --out "$OUT/sft_profile_${v}_$n.md" \
            > "$OUT/sft_profile_${v}_$n.log" 2>&1 || echo "sft_profile $v n=$n failed (see its log)"
        done
      done ;;
    # where a fresh process's first step goes (benchmarks/sft_first_step.py), ~1-1.5 min per run: the warm-start GPU tests
    # (FIRST_STEP_TESTS), then each length (FIRST_STEP_SIZES) with each training.precompile_kernels (FIRST_STEP_PRECOMPILE);
    # reports, logs and recorded manifests in .first_step/, sent back as $OUT/first_step.tgz after each run
    first_step)
      install_sft_wheels
      mkdir -p .first_step
      python3 -m pytest -q -p no:cacheprovider ${FIRST_STEP_TESTS:-tests/test_kernel_precompile.py tests/test_gpu_warmup.py} \
        > .first_step/tests.log 2>&1 || echo "warm-start tests failed (the runs below still measure; see tests.log)"
      tail -3 .first_step/tests.log
      for n in ${FIRST_STEP_SIZES:-131072 262144}; do
        for pre in ${FIRST_STEP_PRECOMPILE:-off auto}; do
          python3 benchmarks/sft_first_step.py --n "$n" --precompile "$pre" --out ".first_step/sft_first_step_${n}_$pre.md" \
            --manifest-out ".first_step/kernel_manifest_${n}_$pre.json" > ".first_step/sft_first_step_${n}_$pre.log" 2>&1 \
            || echo "sft_first_step n=$n precompile=$pre failed (see its log)"
          grep -h "first step as" ".first_step/sft_first_step_${n}_$pre.md" || true
          tar czf "$OUT/first_step.tgz" .first_step
        done
      done ;;
    # nvidia-h200-x2, ~9 min: DDP and FSDP2 vs one GPU at the same global batch (accumulation 2)
    sft_2gpu) sft_speed --sizes 32768,131072 --variants swaa_liger --layouts 1gpu_accum2,ddp,fsdp ;;
    serve)
      python3 -m pytest -q -p no:cacheprovider tests/test_continuous_batching.py 2>&1 | tee "$OUT/serve_tests.log"
      # rows accumulate in .serve_speed/ (kept between calls on a warm machine; --resume continues there)
      python3 benchmarks/serve_speed.py --resume --out .serve_speed/serve_speed.md ${SERVE_ARGS:-} 2>&1 | tee -a "$OUT/serve_speed.log"
      cp .serve_speed/serve_speed.md .serve_speed/serve_speed.json "$OUT/" ;;
    # issue 18's deeper demo model: train-demo recipes at once on the one GPU (SWEEP_ARGS: the recipes, e.g.
    #   SWEEP_ARGS='--common "--num-layers 8 --save-dtype bfloat16 --max-steps 8000 --eval-every 2000" --recipe lr5e-4="--learning-rate 5e-4 --warmup-steps 500"')
    # recipes live in .demo_sweep/ and resume there on a warm machine; one table + one tar of finished models come back
    demo_sweep)
      install_sft_wheels
      eval "python3 benchmarks/demo_recipe_sweep.py --out \"$OUT/demo_sweep.md\" --models-tar \"$OUT/demo_models.tar\" \
        --time-limit-s ${SWEEP_SECONDS:-540} ${SWEEP_ARGS:?set SWEEP_ARGS to the recipes}" 2>&1 | tail -n 60 | tee "$OUT/demo_sweep.log" ;;
    # the demo's adapters (demo/adapt.sh, recipes at once) beside calibration_demo.py's per-set SFT: one tar + one table
    demo_adapt)
      install_sft_wheels
      RECIPES= OUT= bash demo/adapt.sh > "$OUT/demo_adapt.log" 2>&1  # distill once, before the two jobs that read it
      PARALLEL=1 OUT= bash demo/adapt.sh >> "$OUT/demo_adapt.log" 2>&1 &
      adapt=$!
      python3 benchmarks/calibration_demo.py --sft-steps "${CAL_SFT_STEPS:-200}" --out "$OUT/calibration_demo.md" \
        > "$OUT/calibration_demo.log" 2>&1 || echo "calibration_demo failed (see calibration_demo.log)"
      wait "$adapt" || echo "demo/adapt.sh failed (see demo_adapt.log)"
      tail -n 5 sft_output/demo_*.log >> "$OUT/demo_adapt.log" || true
      tar -cf "$OUT/demo_adapters.tar" demo/sft-* distill_output/demo/summary.json calibration_output/demo ;;
    # benchmarks/calibration_demo.py with per-set SFT (CAL_SFT_STEPS, default 200), CAL_JOBS runs at once: one table
    calibration_demo)
      install_sft_wheels
      python3 benchmarks/calibration_demo.py --sft-steps "${CAL_SFT_STEPS:-200}" --jobs "${CAL_JOBS:-5}" \
        --out "$OUT/calibration_demo.md" > "$OUT/calibration_demo.log" 2>&1 || echo "calibration_demo failed (see its log)"
      tar -cf "$OUT/calibration_demo_logs.tar" sft_output/layer_sets/*/*.log calibration_output/demo || true ;;
    *) echo "unknown part: $part" >&2; exit 2 ;;
  esac
done
