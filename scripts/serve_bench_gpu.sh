#!/usr/bin/env bash
# The serving benchmark on one GPU, in one go (issue 15): uniattn-serve with the LLaMA-3.1-8B
# shape and random weights (--random-weights llama8b, bf16), loaded by scripts/serve_load.py
# (closed loop) at concurrency 32, 8, 1 and 128 with 512-token prompts and 256 output tokens,
# and with 16K-token prompts at the concurrency that fills the KV pool, for none, uniattn and cla;
# before that, uniattn-bench's static-batch decode at B=32 (the rate the issue's 85% target
# compares with). scripts/serve_bench_run.py does the work and cuts each phase to the budget.
#
# Usage, from the repository root on the GPU machine:
#   UNIATTN_COMMIT=<commit of the tree> scripts/serve_bench_gpu.sh [OUT]      (OUT: default $OUT)
# Writes into OUT: serve-bench.json (device, commit, command, the static rows, one entry per load
# run: output tokens/s, TTFT and ITL p50/p99, decode tokens/s, KV blocks used; and what was
# skipped for lack of time), static-decode.json (uniattn-bench's file), serve-<variant>.log,
# build.log, bench.log (the driver's log).
# Needs, besides the tree: .dev/kern-httplib (scripts/gpu_prepare_httplib.sh; the image has no
# cpp-httplib) and .dev/kern-pcre2 (scripts/gpu_prepare_pcre2.sh) when it builds. It builds
# $BUILD/uniattn-serve and $BUILD/uniattn-bench (CUDA, Release) unless both are there already
# (the build takes minutes; its time comes out of the budget). BUILD_ONLY=1: build, then stop (a
# first call on a fresh machine; the measurements then get a whole call of their own).
# Environment: BUDGET_S (default 500: the whole script), BUILD (default build-bench, as
# scripts/bench_h200.sh), JOBS, PYTHON (python3: the one with torch, for CMake's LibTorch),
# VARIANTS (none,uniattn,cla), KV_GB (KV pool per server, default 48 GiB: `none` then holds 23
# sequences of 16K+64 tokens, whose prefill fits the budget; 90 fills the H200's 140 GiB next to
# 15 GiB of weights and the gathers and attention maps of 16K-token contexts, but its 16K phase
# needs a longer budget, e.g. BUDGET_S=540 VARIANTS=none,uniattn CONCURRENCY=32), CONCURRENCY
# (32,8,1,128, in priority order), LONG_OUT (output tokens of the 16K phase, default 64),
# PREFILL_CHUNK (2048), RUN_EXTRA (more serve_bench_run.py arguments; e.g. for a CPU dry run:
#   BUILD=build KV_GB=0.05 RUN_EXTRA="--model smollm2 --device cpu --dtype f32 \
#     --prompt-tokens 16 --output-tokens 8 --long-prompt-tokens 64 --long-output-tokens 4 \
#     --static-case decode:2:32" scripts/serve_bench_gpu.sh "$OUT").
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${1:-${OUT:?give OUT as the first argument or in the environment}}
BUILD=${BUILD:-build-bench}
BUDGET_S=${BUDGET_S:-500}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }

# The image lacks cpp-httplib and PCRE2's development files: use the carried ones.
for dep in cpp-httplib:kern-httplib libpcre2-8:kern-pcre2; do
  if ! pkg-config --exists "${dep%%:*}" && [ -d ".dev/${dep#*:}/pc" ]; then
    export PKG_CONFIG_PATH=$PWD/.dev/${dep#*:}/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  fi
done
if [ -d .dev/kern-httplib/lib ]; then
  # A carried symbolic link may arrive as nothing: the linker needs the unversioned name.
  [ -e .dev/kern-httplib/lib/libcpp-httplib.so ] ||
    ln -sf libcpp-httplib.so.0.11 .dev/kern-httplib/lib/libcpp-httplib.so
  export LD_LIBRARY_PATH=$PWD/.dev/kern-httplib/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
export UNIATTN_COMMIT=${UNIATTN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
echo "gpu: ${gpu:-none}, commit $UNIATTN_COMMIT, budget ${BUDGET_S}s"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>/dev/null || true

# ---- build (only what is missing) ------------------------------------------------------------
build_rc=0
reserve=120  # seconds of the budget kept for the measurements
[ -z "${BUILD_ONLY:-}" ] || reserve=5
if [ ! -x "$BUILD/uniattn-serve" ] || [ ! -x "$BUILD/uniattn-bench" ]; then
  t0=$(date +%s)
  {
    if [ ! -f "$BUILD/build.ninja" ] || ! grep -q "uniattn-serve" "$BUILD/build.ninja"; then
      cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DUNIATTN_CUDA=ON \
        -DUNIATTN_TESTS=OFF -DUNIATTN_PYTHON="$(command -v "$PYTHON")" \
        -DCMAKE_PREFIX_PATH="$("$PYTHON" -c 'import torch;print(torch.utils.cmake_prefix_path)')"
    fi &&
      timeout $(( $(left) - reserve )) \
        cmake --build "$BUILD" -j"$JOBS" --target uniattn-serve uniattn-bench
  } >"$OUT/build.log" 2>&1
  build_rc=$?
  echo "build: exit $build_rc after $(( $(date +%s) - t0 )) s"
  [ "$build_rc" = 0 ] || { grep -E "error|Error" -A3 "$OUT/build.log" | head -40; }
fi
[ -x "$BUILD/uniattn-serve" ] || { echo "no $BUILD/uniattn-serve"; exit 1; }
if [ -n "${BUILD_ONLY:-}" ]; then echo "BUILD_ONLY: built in $(( $(date +%s) - start )) s"; exit "$build_rc"; fi
bench=$BUILD/uniattn-bench
[ -x "$bench" ] || bench=

# ---- measurements ----------------------------------------------------------------------------
run_args=(--serve "$BUILD/uniattn-serve" --bench "$bench" --out "$OUT" --gpu "${gpu:-none}"
  --budget-s $(( $(left) - 15 )) --variants "${VARIANTS:-none,uniattn,cla}"
  --kv-gb "${KV_GB:-48}" --concurrency "${CONCURRENCY:-32,8,1,128}"
  --long-output-tokens "${LONG_OUT:-64}" --prefill-chunk "${PREFILL_CHUNK:-2048}")
# shellcheck disable=SC2086
"$PYTHON" scripts/serve_bench_run.py "${run_args[@]}" ${RUN_EXTRA:-} 2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}
echo "serve_bench_gpu.sh: driver exit $rc, $(( $(date +%s) - start )) s in all"
exit "$rc"
