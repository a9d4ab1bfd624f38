#!/usr/bin/env bash
# The LLaMA-3.1-8B-shaped speed benchmark on one GPU, in one go (about 5-8 minutes on an H200):
#   - builds uniattn-bench with the CUDA kernels (in the background), while
#   - scripts/bench_peer.py measures the compiled PyTorch peer (torch.compile reduce-overhead);
#   - then uniattn-bench measures none, uniattn and cla on the same cases.
# Each program measures the device's ceilings (copy bandwidth, bf16 GEMM rate) at its start and
# computes its rooflines from them. Every time is the mean of a few repetitions, with its spread.
#
# Usage, from the repository root on the GPU machine:
#   UNIATTN_COMMIT=<commit of the tree> scripts/bench_h200.sh [OUT]      (OUT: default $OUT)
# Writes into OUT (at most 7 files): bench-llama8b-<gpu>.json, peer-llama8b-<gpu>.json (commit
# both to bench/results/ and run scripts/render_performance.py), performance.md (those two files
# rendered alone), summary.json (exit status and seconds of each step), build.log, peer.log,
# bench.log. The machine's image lacks the PCRE2 development files: carry .dev/kern-pcre2 (made
# by scripts/gpu_prepare_pcre2.sh). Environment: BUDGET_S (default 520: the whole script's
# deadline, each step is cut to fit), BUILD (default build-bench; SKIP_BUILD=1 uses the
# uniattn-bench already there), JOBS (build jobs, default: cores - 4, leaving room for the peer's
# compilation), MODEL (llama8b), CASES (uniattn-bench --cases), PEER_CASES (bench_peer.py
# --cases, the issue's two headline cells first so that a cut-off run still has them), PYTHON
# (python3: the one with torch), BENCH_EXTRA / PEER_EXTRA (more arguments, e.g. "--device cpu"
# and "--tiny --device cpu" for a dry run of this script without a GPU).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:?give OUT as the first argument or in the environment}}
BUILD=${BUILD:-build-bench}
BUDGET_S=${BUDGET_S:-520}
MODEL=${MODEL:-llama8b}
CASES=${CASES:-decode:1:512,decode:8:16384,decode:32:4096,prefill:1:4096,prefill:1:16384}
PEER_CASES=${PEER_CASES:-decode:1:512,prefill:1:4096,decode:8:16384,decode:32:4096,prefill:1:16384}
JOBS=${JOBS:-$(( $(nproc) > 8 ? $(nproc) - 4 : $(nproc) ))}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
# The image lacks PCRE2's development files: use the carried headers with the system library.
if ! pkg-config --exists libpcre2-8 && [ -f .dev/kern-pcre2/pc/libpcre2-8.pc ]; then
  export PKG_CONFIG_PATH=$PWD/.dev/kern-pcre2/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
fi
start=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }
declare -A rc secs

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
slug=$(echo "${gpu:-unknown}" | tr 'A-Z' 'a-z' | sed -e 's/^nvidia //' -e 's/[^a-z0-9].*//')
export UNIATTN_COMMIT=${UNIATTN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export UNIATTN_RUN_ID=${UNIATTN_RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)-${slug:-gpu}}
echo "gpu: $gpu ($slug), commit $UNIATTN_COMMIT, run $UNIATTN_RUN_ID, budget ${BUDGET_S}s"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
  2>/dev/null || true

# ---- build (background) ----------------------------------------------------------------------
if ! pkg-config --exists libpcre2-8 && [ -f .dev/kern-pcre2/pc/libpcre2-8.pc ]; then
  export PKG_CONFIG_PATH=$PWD/.dev/kern-pcre2/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
fi
build() {
  local t0=$(date +%s)
  if [ ! -f "$BUILD/build.ninja" ]; then
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DUNIATTN_CUDA=ON \
      -DUNIATTN_TESTS=OFF -DUNIATTN_PYTHON="$(command -v "$PYTHON")" \
      -DCMAKE_PREFIX_PATH="$("$PYTHON" -c 'import torch;print(torch.utils.cmake_prefix_path)')" ||
      return 1
  fi
  nice -n 10 cmake --build "$BUILD" -j"$JOBS" --target uniattn-bench || return 1
  echo "build took $(( $(date +%s) - t0 )) s"
}
if [ -n "${SKIP_BUILD:-}" ]; then
  echo "SKIP_BUILD: using $BUILD/uniattn-bench" >"$OUT/build.log"; echo 0 >"$OUT/.build_rc"
  build_pid=
else
  ( timeout $(( BUDGET_S - 90 )) \
      bash -c "$(declare -f build); BUILD='$BUILD' JOBS='$JOBS' PYTHON='$PYTHON' build" \
      >"$OUT/build.log" 2>&1; echo $? >"$OUT/.build_rc" ) &
  build_pid=$!
fi

# ---- compiled PyTorch peer (foreground, while the build runs) --------------------------------
t0=$(date +%s)
timeout $(( BUDGET_S - 150 )) "$PYTHON" scripts/bench_peer.py \
  --out "$OUT/peer-$MODEL-$slug.json" --iters 20 --repeats 3 --warmup 3 \
  --prefill-iters 3 --prefill-warmup 1 --cases "$PEER_CASES" ${PEER_EXTRA:-} \
  >"$OUT/peer.log" 2>&1
rc[peer]=$?; secs[peer]=$(( $(date +%s) - t0 ))
echo "peer: exit ${rc[peer]} after ${secs[peer]} s"; grep -E "ms|gpu:" "$OUT/peer.log" | tail -20

# ---- uniattn-bench ---------------------------------------------------------------------------
t0=$(date +%s)
[ -z "$build_pid" ] || wait "$build_pid"
rc[build]=$(cat "$OUT/.build_rc" 2>/dev/null || echo 1); rm -f "$OUT/.build_rc"
secs[build_wait]=$(( $(date +%s) - t0 ))
echo "build: exit ${rc[build]} ($(grep -o 'build took [0-9]* s' "$OUT/build.log"))"
[ "${rc[build]}" = 0 ] || grep -E "error|Error" -A3 "$OUT/build.log" | head -40
if [ "${rc[build]}" = 0 ] && [ "$(left)" -gt 20 ]; then
  t0=$(date +%s)
  timeout $(( $(left) - 10 )) "$BUILD/uniattn-bench" --model "$MODEL" \
    --variants none,uniattn,cla --cases "$CASES" --iters 20 --repeats 3 --warmup 3 \
    --prefill-iters 3 --prefill-warmup 1 --out "$OUT/bench-$MODEL-$slug.json" ${BENCH_EXTRA:-} \
    >"$OUT/bench.log" 2>&1
  rc[bench]=$?; secs[bench]=$(( $(date +%s) - t0 ))
  echo "uniattn-bench: exit ${rc[bench]} after ${secs[bench]} s"; tail -3 "$OUT/bench.log"
fi

# ---- summary ---------------------------------------------------------------------------------
{
  printf '{\n  "gpu": "%s",\n  "commit": "%s",\n  "run": "%s",\n  "seconds_total": %d,\n' \
    "$gpu" "$UNIATTN_COMMIT" "$UNIATTN_RUN_ID" $(( $(date +%s) - start ))
  printf '  "steps": {"build": %s, "peer": %s, "bench": %s},\n' "${rc[build]:-null}" \
    "${rc[peer]:-null}" "${rc[bench]:-null}"
  printf '  "seconds": {"peer": %s, "build_wait_after_peer": %s, "bench": %s}\n}\n' \
    "${secs[peer]:-null}" "${secs[build_wait]:-null}" "${secs[bench]:-null}"
} >"$OUT/summary.json"
"$PYTHON" scripts/render_performance.py --results "$OUT" --out "$OUT/performance.md" --summary ||
  echo "render_performance.py failed"
cat "$OUT/summary.json"
[ "${rc[build]:-1}" = 0 ] && [ "${rc[peer]:-1}" = 0 ] && [ "${rc[bench]:-1}" = 0 ]
