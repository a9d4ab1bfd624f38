#!/usr/bin/env bash
# The unit tests of the LibTorch-free stages (tests/io with chat, gguf, safetensors, tokenizer;
# tests/config; tests/data) built against the same sources compiled with AddressSanitizer and
# UndefinedBehaviorSanitizer (clang), run with CTest (label `sanitizer`). Any report fails the
# test. They read the oracle fixtures of the main build (build/test-data: run scripts/test.sh or
# `ctest -R fixture_` in build/ first). docs/reliability.md.
#
#   scripts/sanitizer_tests.sh [ctest args...]
#
# Environment: UNIATTN_FUZZ_BUILD_DIR (default build-fuzz, shared with scripts/fuzz.sh),
# UNIATTN_TEST_DATA (default build/test-data), UNIATTN_JOBS (default: the number of cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${UNIATTN_FUZZ_BUILD_DIR:-build-fuzz}
export CXX=${CXX:-clang++} CC=${CC:-clang}
cmake -S fuzz -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DUNIATTN_FUZZ_TESTS=ON \
  -DUNIATTN_TEST_DATA="${UNIATTN_TEST_DATA:-$root/build/test-data}" >/dev/null
cmake --build "$build" --target san_tests
ctest --test-dir "$build" -L sanitizer --output-on-failure -j"${UNIATTN_JOBS:-$(nproc)}" "$@"
