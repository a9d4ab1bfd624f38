#!/usr/bin/env bash
# Builds and checks the CUDA attention kernels on a GPU machine, in one go:
#   configure + build (CUDA on) -> CPU fallback tests -> GPU kernel tests (error-ratio rule)
#   -> compute-sanitizer memcheck on a reduced shape set -> timings vs SDPA.
# Usage: scripts/gpu_kernel_tests.sh [build-dir]   (OUT=<dir> collects logs and JSON; default
# <build-dir>/gpu-out). Writes $OUT/summary.json, $OUT/test_kernels.json (GoogleTest),
# $OUT/sanitizer.log and $OUT/kernels-h100.json (copy it to bench/results/ to commit).
# If pkg-config finds no libpcre2-8 and .dev/kern-pcre2 (headers + a linker script pointing at the
# system's libpcre2-8.so.0) is present, that folder is used.
set -u -o pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
OUT=${OUT:-$BUILD/gpu-out}
mkdir -p "$OUT"
declare -A status

step() {  # step NAME command...: runs, records the exit code
  local name=$1; shift
  echo "=== $name: $*"
  "$@"
  status[$name]=$?
  echo "=== $name exit ${status[$name]}"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
nvcc --version | tail -1 || true

pcre2=absent
if pkg-config --exists libpcre2-8; then
  pcre2="present ($(pkg-config --modversion libpcre2-8))"
elif [ -f .dev/kern-pcre2/pc/libpcre2-8.pc ] && [ -e /usr/lib/x86_64-linux-gnu/libpcre2-8.so.0 ]; then
  export PKG_CONFIG_PATH=$PWD/.dev/kern-pcre2/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  pcre2="absent; used carried headers .dev/kern-pcre2 with the system libpcre2-8.so.0"
fi
echo "pcre2: $pcre2"
for pc in yaml-cpp sentencepiece; do
  pkg-config --exists $pc && echo "$pc: $(pkg-config --modversion $pc)" || echo "$pc: MISSING"
done

TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
step configure cmake -S . -B "$BUILD" -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DUNIATTN_CUDA=ON -DUNIATTN_PYTHON="$(command -v python3)" -DCMAKE_BUILD_TYPE=Release
step build cmake --build "$BUILD" -j"$(nproc)" --target test_kernels test_kernel_bench \
  test_attention_reference test_fused_ops

if [ "${status[build]}" = 0 ]; then
  step fallback_tests "$BUILD/tests/test_attention_reference" --gtest_brief=1
  step gpu_tests "$BUILD/tests/test_kernels" --gtest_output=json:"$OUT/test_kernels.json"
  step fused_ops_tests "$BUILD/tests/test_fused_ops" --gtest_output=json:"$OUT/test_fused_ops.json"
  step memcheck env UNIATTN_KERNEL_TEST_QUICK=1 compute-sanitizer --tool memcheck \
    --log-file "$OUT/sanitizer.log" --error-exitcode 3 "$BUILD/tests/test_kernels" --gtest_brief=1
  step memcheck_fused compute-sanitizer --tool memcheck --log-file "$OUT/sanitizer-fused.log" \
    --error-exitcode 3 "$BUILD/tests/test_fused_ops" --gtest_brief=1
  step bench env UNIATTN_KERNEL_BENCH_OUT="$OUT/kernels-h100.json" \
    UNIATTN_BENCH_COMMAND="scripts/gpu_kernel_tests.sh (test_kernel_bench)" \
    "$BUILD/tests/test_kernel_bench" --gtest_brief=1
fi

{
  echo "{"
  echo "  \"pcre2\": \"$pcre2\","
  echo "  \"gpu\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)\","
  first=1
  echo "  \"steps\": {"
  for k in configure build fallback_tests gpu_tests fused_ops_tests memcheck memcheck_fused bench; do
    [ $first = 1 ] || echo ","
    first=0
    printf '    "%s": %s' "$k" "${status[$k]:-null}"
  done
  echo ""
  echo "  }"
  echo "}"
} > "$OUT/summary.json"
cat "$OUT/summary.json"
for k in configure build fallback_tests gpu_tests fused_ops_tests memcheck memcheck_fused bench; do
  [ "${status[$k]:-1}" = 0 ] || exit 1
done
