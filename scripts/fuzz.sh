#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang with -fsanitize=fuzzer,address,undefined) and runs
# each for a fixed time; fails if any target finds a crash, a sanitizer report, a leak, an
# exception other than uniattn::Error, a timeout or an out-of-memory. docs/reliability.md.
#
#   scripts/fuzz.sh                 # every target 60 s (CI), then a summary table
#   scripts/fuzz.sh 300             # every target 300 s
#   scripts/fuzz.sh --long          # every target 3600 s
#   scripts/fuzz.sh 60 superblock gguf_quant      # only these targets
#   scripts/fuzz.sh --replay        # only run the corpora (seeds + past findings) once
#
# Environment: UNIATTN_FUZZ_BUILD_DIR (default build-fuzz), UNIATTN_FUZZ_JOBS (targets run at
# once; default: the number of cores), CXX/CC (default clang++/clang). Inputs that raise coverage
# are kept in $BUILD/corpus-work/<target>/ (not in the repository); findings are written to
# $BUILD/findings/<target>-crash-... and the log of each run to $BUILD/logs/<target>.log.
# A finding becomes fuzz/corpus/<target>/regress-<name> plus a unit test (docs/reliability.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=60
replay=0
targets=()
for a in "$@"; do
  case "$a" in
    --long) secs=3600 ;;
    --replay) replay=1 ;;
    [0-9]*) secs=$a ;;
    *) targets+=("$a") ;;
  esac
done
build=${UNIATTN_FUZZ_BUILD_DIR:-build-fuzz}
jobs=${UNIATTN_FUZZ_JOBS:-$(nproc)}
export CXX=${CXX:-clang++} CC=${CC:-clang}
if [[ ! -f $build/build.ninja ]]; then
  cmake -S fuzz -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
cmake --build "$build" --target fuzz_all
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); targets+=("${n#fuzz_}"); done
fi
mkdir -p "$build/logs" "$build/findings"
rm -f "$build/logs/failed"  # left by an interrupted run, it would mark targets as findings

# Every finding aborts; leaks count as findings. A 10 s input is a hang, 2 GiB an OOM.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
run_one() {
  local t=$1 bin=$build/fuzz_$1 log=$build/logs/$1.log
  local work=$build/corpus-work/$t
  mkdir -p "$work"
  local opts=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$build/findings/$t-")
  if [[ $replay -eq 1 ]]; then
    "$bin" "${opts[@]}" -runs=0 "fuzz/corpus/$t" >"$log" 2>&1
  else
    # The first directory receives new inputs; the repository's corpus is only read.
    "$bin" "${opts[@]}" -max_total_time="$secs" "$work" "fuzz/corpus/$t" >"$log" 2>&1
  fi
}
export -f run_one
export build secs replay
start=$(date +%s)
status=0
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {} || echo "{}" >>"$build/logs/failed"' || true
took=$(( $(date +%s) - start ))

# Summary: executions and libFuzzer's coverage (cov: edges, ft: features) per target.
printf '%-20s %10s %8s %8s  %s\n' target executions cov ft result
for t in "${targets[@]}"; do
  log=$build/logs/$t.log
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  result=ok
  if [[ -f $build/logs/failed ]] && grep -qx "$t" "$build/logs/failed"; then
    result="FINDING (see $log)"
    status=1
  fi
  printf '%-20s %10s %8s %8s  %s\n' "$t" "${execs:--}" "${cov:--}" "${ft:--}" "$result"
done
rm -f "$build/logs/failed"
if [[ $replay -eq 1 ]]; then
  echo "replay took ${took}s (${#targets[@]} targets' corpora, $jobs at a time)"
else
  echo "fuzzing took ${took}s (${#targets[@]} targets, ${secs}s each, $jobs at a time)"
fi
if [[ $status -ne 0 ]]; then
  echo "findings: $build/findings/ (reproduce: $build/fuzz_<target> <file>)" >&2
fi
exit $status
