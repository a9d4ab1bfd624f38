#!/usr/bin/env bash
# Builds and checks the CUDA kernels on a GPU machine, in one go:
#   configure + build (CUDA on; sm_80 sm_86 sm_89 sm_90a + compute_90 PTX unless
#   CMAKE_CUDA_ARCHITECTURES / TORCH_CUDA_ARCH_LIST say otherwise)
#   -> CPU fallback and decision-table tests -> GPU kernel tests (error-ratio rule), forced
#   fallbacks (test_kernel_fallbacks) -> the same GPU tests with UNIATTN_DISABLE_KERNELS=1 (every
#   operation on its ATen path; test_kernels on its quick shape set) -> compute-sanitizer memcheck -> timings vs SDPA
#   -> rebuild of the kernels as compute_80 PTX only (CMAKE_CUDA_ARCHITECTURES=80-virtual, same
#   build directory: only the kernels recompile) and the GPU tests again (test_kernels: quick
#   shapes, which cover every head_dim, dtype, softcap and window), so the driver JIT-compiles
#   Ampere's code for this GPU and an instruction that needs a newer GPU shows up.
# Usage: scripts/gpu_kernel_tests.sh [build-dir]   (OUT=<dir> collects logs and JSON; default
# <build-dir>/gpu-out). STEPS="gpu_tests ptx80_gpu_tests ..." runs a subset (names as in
# summary.json; configure and build always run). Writes $OUT/summary.json,
# $OUT/test_kernels.json, $OUT/test_fused_ops.json (GoogleTest), $OUT/sanitizer*.log,
# $OUT/archs.txt (cuobjdump listings of both builds) and $OUT/kernels-h100.json (copy it to
# bench/results/ to commit).
# If pkg-config finds no libpcre2-8 and .dev/kern-pcre2 (headers + a linker script pointing at the
# system's libpcre2-8.so.0) is present, that folder is used.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${1:-build-gpu}
OUT=${OUT:-$BUILD/gpu-out}
mkdir -p "$OUT"
declare -A status
ALL_STEPS="configure build kernel_paths fallback_tests gpu_tests fused_ops_tests fallbacks_tests
  disabled_gpu_tests disabled_fused_ops_tests disabled_fallbacks_tests memcheck memcheck_fused bench
  ptx80_build ptx80_gpu_tests ptx80_fused_ops_tests ptx80_fallbacks_tests"
STEPS=${STEPS:-$ALL_STEPS}

# configure and build always run; any ptx80_* step needs the compute_80 rebuild (ptx80_build).
want() {
  local steps=" ${STEPS//$'\n'/ } configure build "
  [[ $steps == *" ptx80_"* ]] && steps+="ptx80_build "
  [[ $steps == *" $1 "* ]]
}
step() {  # step NAME command...: runs when selected, records the exit code
  local name=$1; shift
  want "$name" || return 0
  echo "=== $name: $*"
  "$@"
  status[$name]=$?
  echo "=== $name exit ${status[$name]}"
}
archs() {  # archs LABEL: the kernel images in libuniattn.so (count of files per architecture)
  { echo "--- $1: SASS (cuobjdump --list-elf)"
    cuobjdump --list-elf "$BUILD/libuniattn.so" 2>&1 | grep -o 'sm_[0-9]*[af]*' | sort | uniq -c
    echo "--- $1: PTX (cuobjdump --list-ptx)"
    cuobjdump --list-ptx "$BUILD/libuniattn.so" 2>&1 | grep -o 'sm_[0-9]*[af]*' | sort | uniq -c
  } | tee -a "$OUT/archs.txt"
}

nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader || true
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

TARGETS="test_kernels test_kernel_bench test_attention_reference test_fused_ops
  test_kernel_fallbacks test_kernel_paths"
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
: >"$OUT/archs.txt"
# -U: a directory left with the compute_80 build below goes back to the default architectures
# (or TORCH_CUDA_ARCH_LIST's; UNIATTN_CMAKE_ARGS may name others).
# shellcheck disable=SC2086  # UNIATTN_CMAKE_ARGS: several words
step configure cmake -S . -B "$BUILD" -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DUNIATTN_CUDA=ON -DUNIATTN_PYTHON="$(command -v python3)" -DCMAKE_BUILD_TYPE=Release \
  -UCMAKE_CUDA_ARCHITECTURES ${UNIATTN_CMAKE_ARGS:-}
# shellcheck disable=SC2046,SC2086  # one --target per word of TARGETS
step build cmake --build "$BUILD" -j"$(nproc)" $(printf -- '--target %s ' $TARGETS)

T=$BUILD/tests
if [ "${status[build]}" = 0 ]; then
  archs "default build"
  step kernel_paths "$T/test_kernel_paths" --gtest_brief=1
  step fallback_tests "$T/test_attention_reference" --gtest_brief=1
  step gpu_tests "$T/test_kernels" --gtest_output=json:"$OUT/test_kernels.json"
  step fused_ops_tests "$T/test_fused_ops" --gtest_output=json:"$OUT/test_fused_ops.json"
  step fallbacks_tests "$T/test_kernel_fallbacks"
  step disabled_gpu_tests env UNIATTN_DISABLE_KERNELS=1 UNIATTN_KERNEL_TEST_QUICK=1 \
    "$T/test_kernels" --gtest_brief=1
  step disabled_fused_ops_tests env UNIATTN_DISABLE_KERNELS=1 "$T/test_fused_ops" --gtest_brief=1
  step disabled_fallbacks_tests env UNIATTN_DISABLE_KERNELS=1 "$T/test_kernel_fallbacks"
  step memcheck env UNIATTN_KERNEL_TEST_QUICK=1 compute-sanitizer --tool memcheck \
    --log-file "$OUT/sanitizer.log" --error-exitcode 3 "$T/test_kernels" --gtest_brief=1
  step memcheck_fused compute-sanitizer --tool memcheck --log-file "$OUT/sanitizer-fused.log" \
    --error-exitcode 3 "$T/test_fused_ops" --gtest_brief=1
  step bench env UNIATTN_KERNEL_BENCH_OUT="$OUT/kernels-h100.json" \
    UNIATTN_BENCH_COMMAND="scripts/gpu_kernel_tests.sh (test_kernel_bench)" \
    "$T/test_kernel_bench" --gtest_brief=1

  # Ampere's code on this GPU: compute_80 PTX only, JIT-compiled by the driver (no JIT cache).
  ptx80_build() {
    cmake -S . -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES=80-virtual >/dev/null &&
      cmake --build "$BUILD" -j"$(nproc)" --target test_kernels test_fused_ops \
        test_kernel_fallbacks || return 1
    archs "compute_80 PTX build"
    # No SASS may remain, and the PTX must be compute_80 (listings read whole: grep -q would end
    # the pipe early, which pipefail reports as a failure).
    local elf ptx
    elf=$(cuobjdump --list-elf "$BUILD/libuniattn.so" 2>/dev/null)
    ptx=$(cuobjdump --list-ptx "$BUILD/libuniattn.so" 2>/dev/null)
    [[ "$elf" != *sm_* && "$ptx" == *sm_80* && "$ptx" != *sm_9* ]]
  }
  step ptx80_build ptx80_build
  if [ "${status[ptx80_build]:-1}" = 0 ]; then
    export CUDA_CACHE_DISABLE=1
    step ptx80_gpu_tests env UNIATTN_KERNEL_TEST_QUICK=1 "$T/test_kernels" --gtest_brief=1
    step ptx80_fused_ops_tests "$T/test_fused_ops" --gtest_brief=1
    step ptx80_fallbacks_tests "$T/test_kernel_fallbacks"
  fi
fi

{
  echo "{"
  echo "  \"pcre2\": \"$pcre2\","
  echo "  \"gpu\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)\","
  first=1
  echo "  \"steps\": {"
  for k in $ALL_STEPS; do
    want "$k" || continue
    [ $first = 1 ] || echo ","
    first=0
    printf '    "%s": %s' "$k" "${status[$k]:-null}"
  done
  echo ""
  echo "  }"
  echo "}"
} > "$OUT/summary.json"
cat "$OUT/summary.json"
for k in $ALL_STEPS; do
  want "$k" || continue
  [ "${status[$k]:-1}" = 0 ] || exit 1
done
