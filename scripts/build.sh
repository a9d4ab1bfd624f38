#!/usr/bin/env bash
# Configures (once) and builds uniattn into build/, incrementally, with ccache when available.
#   scripts/build.sh                 every target (library, tools, tests)
#   scripts/build.sh uniattn-calib   only the named targets and what they need
# Every caller shares one configuration, so the README's two commands never rebuild each other's
# work. Environment: UNIATTN_BUILD_DIR (default build), UNIATTN_WERROR=ON (warnings as errors; CI
# sets it), UNIATTN_CMAKE_ARGS (extra configure arguments, e.g. "-DUNIATTN_CUDA=ON"),
# UNIATTN_JOBS (default: all cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${UNIATTN_BUILD_DIR:-build}
werror=${UNIATTN_WERROR:-OFF}
# shellcheck disable=SC2206
extra=(${UNIATTN_CMAKE_ARGS:-})
cached_werror=$(sed -n 's/^UNIATTN_WERROR:BOOL=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
if [ ! -f "$build/CMakeCache.txt" ] || [ "$cached_werror" != "$werror" ] || [ ${#extra[@]} -gt 0 ]; then
  gen=()
  [ -f "$build/CMakeCache.txt" ] || { command -v ninja >/dev/null && gen=(-G Ninja); }
  mkdir -p "$build"  # its configure log lives inside it (ignored by git)
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DUNIATTN_WERROR="$werror" "${extra[@]}" >"$build/configure.log" 2>&1 \
    || { cat "$build/configure.log"; exit 1; }
fi
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build" -j"${UNIATTN_JOBS:-$(nproc)}" "${targets[@]}"
