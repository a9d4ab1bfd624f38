#!/usr/bin/env bash
# End-to-end check on a GPU machine: builds uniattn with CUDA, then compares SmolLM2 greedy
# generation (32 tokens) on the GPU with the CPU, fp32 and bf16, eager and CUDA-graph decoding,
# and records decode speed. Usage: scripts/gpu_check.sh BUILD_DIR GGUF OUT_DIR
set -u -o pipefail
cd "$(dirname "$0")/.."
BUILD=$1 GGUF=$2 OUT=$3
mkdir -p "$OUT"
if ! pkg-config --exists libpcre2-8 && [ -f .dev/kern-pcre2/pc/libpcre2-8.pc ]; then
  export PKG_CONFIG_PATH=$PWD/.dev/kern-pcre2/pc  # the GPU image lacks libpcre2-dev
fi
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DUNIATTN_TESTS=ON \
    -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
    -DUNIATTN_PYTHON="$(command -v python3)" >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
fi
targets=${TARGETS:-uniattn-generate}
cmake --build "$BUILD" -j"$(nproc)" --target $targets >"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
[ -n "${BUILD_ONLY:-}" ] && exit 0

gen() {  # gen DEVICE DTYPE PROMPT -> generated text
  "$BUILD/uniattn-generate" --model "$GGUF" --device "$1" --dtype "$2" --chat \
    --max-new-tokens 32 --prompt "$3" 2>/dev/null
}
prompts=("What is the capital of France?" "Explain what a kidney does in one sentence.")
ok=1
for p in "${prompts[@]}"; do
  cpu=$(gen cpu f32 "$p"); g32=$(gen cuda f32 "$p"); g16=$(gen cuda bf16 "$p")
  echo "PROMPT: $p"; echo "  cpu f32 : $cpu"; echo "  cuda f32: $g32"; echo "  cuda bf16: $g16"
  [ "$cpu" == "$g32" ] || { echo "  MISMATCH cpu f32 vs cuda f32"; ok=0; }
  [ "$cpu" == "$g16" ] || echo "  (bf16 differs from fp32 greedy)"
done
echo "greedy_cpu_equals_gpu_f32=$ok"
for v in none uniattn cla; do
  echo "--- generate --bench, $v, bf16"
  sb=(); [ $v != none ] && sb=(--uniattn $v --superblocks 4,15,30)
  "$BUILD/uniattn-generate" --model "$GGUF" --device cuda --dtype bf16 "${sb[@]}" \
    --max-new-tokens 128 --ignore-eos --prompt "Tell me about the heart." --bench 2>&1 >/dev/null | tail -4
done
