// The serving engine: continuous batching over a paged KV cache (vLLM's design: a scheduler, a
// block allocator with per-sequence block tables, and a model runner). Sequences join and leave
// the running batch at token granularity; prompts are prefilled in chunks, each step running the
// decode rows and up to `prefill_chunk` prompt tokens; a sequence is admitted only when blocks for
// its next chunk are free, and when a running sequence needs a block and none is free the newest
// sequence is preempted (its blocks freed) and later recomputed from its prompt and the tokens it
// had produced. Token-level only: detokenisation and stop strings belong to the caller (who calls
// abort() when a stop string appears).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "uniattn/infer/sampling.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn::serve {

struct EngineOptions {
  int64_t block_size = 16;  // token slots per KV block
  int64_t num_blocks = 0;   // pool size; 0: from kv_memory_bytes
  // Models that mix sliding-window and global layers (Gemma-2/3): blocks of the sliding layers'
  // own group, which keeps only each sequence's window (vLLM's hybrid KV cache groups). 0: from
  // kv_memory_bytes (split with num_blocks so both run out at the same number of sequences of
  // max_model_len tokens), or as many as num_blocks when that is given; -1: no group of their
  // own (every block holds every layer). Ignored for other models.
  int64_t num_sliding_blocks = 0;
  int64_t kv_memory_bytes = int64_t(1) << 30;
  int64_t max_seqs = 16;       // running sequences at most
  int64_t prefill_chunk = 64;  // prompt tokens prefilled per step (over all prefilling rows)
  int64_t max_model_len = 0;   // prompt + output tokens; 0: the config's max_position_embeddings
  // A waiting sequence is admitted only when its blocks leave this many free blocks per running
  // sequence (in each block group), so the running ones can grow before anyone is preempted.
  // 0 admits whenever the blocks fit (vLLM V1's rule), which under memory pressure preempts and
  // recomputes the newest sequence again and again.
  int64_t admission_headroom = 1;
  // Decode steps on a CUDA device replay CUDA graphs captured per batch-size bucket (vLLM's
  // default; false is its --enforce-eager).
  bool cuda_graphs = true;
  // With cuda_graphs, the engine's constructor captures every batch-size bucket for block tables
  // up to this many tokens (as vLLM captures its batch sizes at startup), so early steps replay
  // instead of capturing; wider tables are captured on first use. 0: all on first use.
  int64_t startup_capture_len = 4096;
};

struct EngineRequest {
  std::vector<int32_t> prompt;  // token ids, non-empty
  SamplingParams sampling;      // repetition_penalty counts prompt and output tokens
  double frequency_penalty = 0, presence_penalty = 0;  // OpenAI: over output tokens only
  int64_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;  // end the sequence (the token is kept in its output)
  int64_t logprobs = -1;                // >= 0: log-probability of each output token and its top-n
  bool prompt_logprobs = false;         // log-probabilities of prompt tokens 1.. (echo)
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // the `logprobs` most likely, best first
};

enum class Finish { None, Length, Stop, Abort, Error };

// What one step produced for one sequence.
struct SeqOutput {
  uint64_t id = 0;
  std::vector<int32_t> tokens;                // new output tokens (0 or 1 per step)
  std::vector<TokenLogprob> logprobs;         // one per new token when requested
  std::vector<TokenLogprob> prompt_logprobs;  // once, for prompt tokens 1..n-1, when requested
  int64_t prompt_tokens = 0;
  Finish finish = Finish::None;
  std::string error;  // Finish::Error
};

struct EngineStats {
  int64_t waiting = 0, running = 0;
  int64_t blocks_total = 0, blocks_free = 0;                  // both block groups together
  int64_t sliding_blocks_total = 0, sliding_blocks_free = 0;  // the sliding layers' group
  int64_t preemptions = 0, steps = 0;
  int64_t decode_graphs = 0;  // CUDA graphs captured for decode steps
  int64_t decode_steps = 0;   // steps that ran a decode group
  // Host seconds in each phase of the steps, cumulative (vLLM's step-time metrics), for the
  // decode groups [0] and the prefill groups [1]: scheduling (counted under decode when the step
  // has decode rows), the forward call (inputs, launch or CUDA-graph replay), sampling (which
  // waits for the device) and emitting tokens to the callbacks.
  struct PhaseSeconds {
    double schedule = 0, forward = 0, sample = 0, emit = 0;
  };
  PhaseSeconds seconds[2];
};

// Thread safety: add/abort/stats may be called from any thread; step() from one thread at a
// time (run() is such a loop). Callbacks run on the stepping thread.
class Engine {
 public:
  using Callback = std::function<void(const SeqOutput&)>;
  // Throws uniattn::Error on invalid options (block_size/max_seqs/prefill_chunk < 1, a pool
  // smaller than one sequence of max_model_len tokens).
  Engine(CausalLM model, const EngineOptions& options);
  ~Engine();
  // Queues a sequence; returns its id. Throws uniattn::Error (before queueing) on an empty
  // prompt, an id outside the vocabulary, prompt + max_tokens beyond max_model_len, or invalid
  // sampling values.
  uint64_t add(EngineRequest request, Callback on_output);
  // Cancels a sequence (frees its blocks at the next step); its callback gets Finish::Abort.
  void abort(uint64_t id);
  // One scheduling step. Returns false when there was nothing to do.
  bool step();
  // Steps until stop(); sleeps while idle.
  void run();
  void stop();
  EngineStats stats() const;
  const EngineOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace uniattn::serve
