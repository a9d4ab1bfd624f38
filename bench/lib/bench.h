// End-to-end inference benchmark: time to first token (prefill) and CUDA-graph decode step time
// of whole models (LLaMA-3.1-8B shape with random weights, SmolLM2-135M) for each UniAttn
// variant, with roofline fractions and KV-cache capacity. The rooflines come from the device's
// ceilings (copy bandwidth, GEMM rate) measured at the start of the run (ceilings.h). Results are
// rows of {case, variant, metric, value, unit}; run_bench() rewrites its JSON file after every
// case so an interrupted run still leaves what it measured.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "ceilings.h"
#include "uniattn/config/model_config.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn {

enum class BenchKind { Prefill, Decode, PagedDecode, PagedPrefill };

// One measured shape: a prefill of `seq` tokens per row, or one decode step over a cache that
// already holds `seq` tokens per row: the static KVCache (Decode), or uniattn-serve's paged cache
// (PagedDecode: blocks of 16 interleaved across rows as a busy server leaves them, the block
// table widened to the serving bucket, paged_decode_forward replayed from a CUDA graph), or the
// same prefill through the paged cache in chunks as uniattn-serve runs it (PagedPrefill:
// BenchOptions::prefill_chunk tokens of every row per paged_forward call).
struct BenchCase {
  BenchKind kind = BenchKind::Prefill;
  int64_t batch = 1;
  int64_t seq = 0;
  // "<model>/prefill/S=4096/B=1", "<model>/decode/S=16384/B=8",
  // "<model>/paged_decode/S=640/B=32" or "<model>/paged_prefill/S=16384/B=1".
  std::string name(const std::string& model) const;
};

// Parses "prefill:B:S", "decode:B:S", "paged_decode:B:S" or "paged_prefill:B:S" (batch B,
// sequence S; both positive, S <= 1M, B <= 4096).
// Throws uniattn::Error naming the spec otherwise.
BenchCase parse_bench_case(const std::string& spec);

struct BenchModel {
  std::string name;    // used as the case-name prefix
  ModelConfig config;  // variant None; the runner sets the spec of each variant
  std::vector<BenchCase> cases;
  std::filesystem::path weights;  // checkpoint to load (GGUF / safetensors); empty: random
  std::string note;               // e.g. why random weights are used
};

// The benchmark models: "llama8b" (LLaMA-3.1-8B dims, random N(0, 0.02) weights) and "smollm2"
// (SmolLM2-135M; its GGUF from default_model_path() when found, else random weights of its dims).
// `quick` keeps one prefill and two small decode shapes. Throws uniattn::Error for another name.
BenchModel bench_model(const std::string& name, bool quick);

// The SuperBlock layout benchmarked for a model of `num_layers`: groups of 4 over the second half
// of the layers (for 32 layers: from_range(v, 4, 16, 32)), or `superblocks` when given (any form
// UniAttnSpec::parse takes, e.g. "24-27;28-31"). Variant None gives an empty spec. Throws
// uniattn::Error for a spec that does not fit `num_layers`.
UniAttnSpec bench_spec(Variant variant, int64_t num_layers, const std::string& superblocks = "");

// Bytes and parameter counts the rooflines are computed from.
struct ModelFootprint {
  int64_t param_bytes = 0;        // every parameter (what occupies device memory)
  int64_t decode_read_bytes = 0;  // parameters one decode step must read: all but an untied
                                  // input-embedding table (only B of its rows are read)
  int64_t matmul_params = 0;      // weights of the per-token GEMMs (layers, no embedding/lm_head)
  int64_t lm_head_params = 0;     // vocab x hidden (applied to the last position only)
};
ModelFootprint model_footprint(CausalLM& model);

// Memory-bound decode step: (weights read + KV bytes of B*S cached tokens) / bandwidth, in ms;
// `bytes_per_s` is the measured copy bandwidth (Ceilings::copy_bytes_per_s).
double decode_roofline_ms(int64_t weight_read_bytes, int64_t kv_bytes_per_token, int64_t batch,
                          int64_t seq, double bytes_per_s);
// GEMM-bound prefill with last-position logits: 2 * (matmul_params * B * S + lm_head * B) / rate,
// in ms; `flops_per_s` is the measured GEMM rate (Ceilings::gemm_flops_per_s). Attention FLOPs
// are not counted.
double prefill_roofline_ms(int64_t matmul_params, int64_t lm_head_params, int64_t batch,
                           int64_t seq, double flops_per_s);
// floor((total - weights - workspace) / (kv_bytes_per_token * seq)), 0 when nothing fits.
int64_t max_batch_at(int64_t total_memory, int64_t weight_bytes, int64_t kv_bytes_per_token,
                     int64_t seq, int64_t workspace = int64_t{4} << 30);

struct BenchRow {
  std::string case_name;
  std::string variant;  // "none" | "uniattn" | "cla" | ...
  std::string metric;   // ttft_ms, decode_step_ms, tokens_per_s, roofline_fraction, ...
  double value = 0;     // -1 for "oom" / "error" rows; the mean of the repetitions for times
  std::string unit;
  std::string note;  // optional (error text, weights used)
  // Spread of a repeated time (n > 0 only): repetitions, sample standard deviation, min, max, in
  // the row's unit. Written to the JSON as "n", "stdev", "min", "max".
  SampleStats stats;
};

struct BenchOptions {
  std::vector<BenchModel> models;
  std::vector<Variant> variants = {Variant::None, Variant::UniAttn, Variant::Cla};
  at::Device device = at::kCUDA;
  at::ScalarType dtype = at::kBFloat16;
  int decode_warmup = 3;
  int decode_iters = 20;   // replays per timed window
  int decode_repeats = 5;  // timed windows (the spread is over windows)
  int prefill_warmup = 1;
  int prefill_iters = 5;         // halved (at least 2) for prefills of 8192+ tokens
  int64_t prefill_chunk = 2048;  // PagedPrefill: tokens per row and paged_forward call
  // Also run `none` with the small fused CUDA ops (RMSNorm, RoPE, gated activation) switched off,
  // as variant "none_unfused": what the fusion buys, measured in the same run.
  bool unfused_baseline = false;
  // SuperBlocks of every variant but None ("" = bench_spec's default layout); recorded in the JSON
  // through `command`.
  std::string superblocks;
  std::filesystem::path out;  // JSON written after every case; empty: none
  std::string command;        // recorded in the JSON
  std::string commit;         // recorded in the JSON; empty: $UNIATTN_COMMIT, else git rev-parse
  std::string run_id;         // recorded as "run"; empty: $UNIATTN_RUN_ID (one id per driver run)
  // Ceilings the rooflines use; unset: measured at the start of the run with `ceiling_sizes`
  // (unset: CeilingSizes::for_device) in the benchmark's dtype.
  std::optional<Ceilings> ceilings;
  std::optional<CeilingSizes> ceiling_sizes;
  std::function<void(const BenchRow&)> on_row;  // e.g. print a table line
};

struct BenchResult {
  std::string gpu;  // device name (cudaGetDeviceProperties) or "cpu"
  std::string commit;
  std::string command;
  std::string run_id;  // written as "run" when not empty
  std::string dtype;   // e.g. "bfloat16"
  Ceilings ceilings;
  std::vector<BenchRow> rows;
  // {"gpu", "commit", "command", "run" (when set), "dtype", "ceilings": Ceilings::to_json(),
  //  "rows": [{"case", "variant", "metric", "value", "unit", "note"?, "n"?, "stdev"?, "min"?,
  //  "max"?}]}
  nlohmann::json to_json() const;
};

// Runs every model x variant x case, after measuring the device's ceilings (unless given); every
// roofline_fraction row is (roofline time from those ceilings) / (mean measured time).
// Out-of-memory in a case gives an "oom" row (value -1) and the run goes on; another failure in a
// case gives an "error" row with the message. Throws uniattn::Error for options that cannot run at
// all (CUDA device in a build without CUDA, no models, non-positive iteration counts) or when the
// JSON cannot be written.
BenchResult run_bench(const BenchOptions& options);

}  // namespace uniattn
