// Text generation: batched prefill + decode over a static KV cache, with left padding for ragged
// prompts, sampling (uniattn/infer/sampling.h), end tokens, stop tokens and stop strings, and
// streaming of complete UTF-8 text per sequence. A checkpoint's end tokens, stop strings and
// sampling defaults come from GenerationConfig::load (uniattn/config/generation_config.h) via
// apply_generation_config.
//
// The loop talks to the model only through `Decoder`: prefill(prompts) and step(next tokens) each
// return next-token logits. The eager LibTorch decoder here can be swapped for another (e.g. one
// replaying a captured CUDA graph) via GenerateOptions::decoder.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/config/generation_config.h"
#include "uniattn/infer/sampling.h"
#include "uniattn/io/tokenizer.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn {

// One model + cache behind the generation loop. All calls are for a fixed batch size.
class Decoder {
 public:
  virtual ~Decoder();
  // Starts over with prompts ids [B, T] (int64, left padded) and mask [B, T] (1 for real tokens,
  // 0 for padding; undefined when no row is padded). Returns logits [B, V] for the last position.
  virtual at::Tensor prefill(const at::Tensor& ids, const at::Tensor& mask) = 0;
  // Feeds one token per sequence (int64 [B], on the model's device) and returns logits [B, V].
  virtual at::Tensor step(const at::Tensor& tokens) = 0;
  // KV cache bytes one token of one sequence occupies.
  virtual int64_t kv_bytes_per_token() const = 0;
};

// The LibTorch decoder: CausalLM::forward over a preallocated KVCache of `max_seq` tokens and a
// preallocated mask buffer. Throws uniattn::Error (from the cache) when a step would overflow.
std::unique_ptr<Decoder> make_eager_decoder(CausalLM model, int64_t batch, int64_t max_seq,
                                            AttentionPath path = AttentionPath::Fused);

// The CUDA decoder: each single-token step is captured once in a CUDA graph and replayed, using
// the shared-Softmax decode kernels over the static cache. Prompts must be of equal length (no
// padding mask); generate() falls back to the eager decoder for ragged batches. Throws
// uniattn::Error for a model not on CUDA, or in a build without CUDA. step() throws
// uniattn::Error before writing anything when the cache already holds max_seq tokens (prompt +
// steps), or when `tokens` does not hold one token per sequence. Each step() returns its own
// logits tensor (a copy of the graph's output buffer, which the next replay overwrites), as the
// eager decoder does.
std::unique_ptr<Decoder> make_cuda_graph_decoder(CausalLM model, int64_t batch, int64_t max_seq);

using DecoderFactory =
    std::function<std::unique_ptr<Decoder>(CausalLM& model, int64_t batch, int64_t max_seq)>;

enum class FinishReason { Length, StopToken, StopString };
const char* finish_reason_name(FinishReason);

struct GenerateOptions {
  // On CUDA, equal-length batches decode through the CUDA-graph decoder unless this is false.
  bool cuda_graphs = true;
  int64_t max_new_tokens = 128;
  SamplingParams sampling;
  // The end-of-sequence tokens end a sequence (kept in its tokens): eos_tokens, the model
  // config's eos_token_ids (config.json, int or list; a GGUF's eos) and the tokenizer's eos_id().
  // False for fixed-length runs.
  bool stop_at_eos = true;
  // End tokens beyond those: generation_config.json's, a GGUF's eot/eom (apply_generation_config).
  std::vector<int32_t> eos_tokens;
  std::vector<int32_t> stop_tokens;       // further ids that end a sequence (kept in its tokens)
  std::vector<std::string> stop_strings;  // text that ends a sequence (not part of its text)
  // Fed to finished sequences and used as left padding; default: tokenizer pad, else eos, else 0.
  std::optional<int32_t> pad_id;
  AttentionPath path = AttentionPath::Fused;
  DecoderFactory decoder;  // empty: make_eager_decoder
  // Called with each new piece of complete UTF-8 text of sequence `seq` (special tokens skipped).
  std::function<void(int64_t seq, std::string_view text)> on_text;
  // Called once per sequence when it finishes (after its last on_text call).
  std::function<void(int64_t seq, FinishReason reason)> on_finish;
};

struct GenerateStats {
  int64_t batch = 0;
  int64_t prompt_tokens = 0;     // real (unpadded) prompt tokens over the batch
  int64_t generated_tokens = 0;  // tokens of unfinished sequences, summed over the batch
  int64_t steps = 0;             // decode steps after prefill
  double ttft_ms = 0;            // prefill + first token selection
  double decode_ms = 0;          // from the first token to the last
  int64_t kv_bytes_per_token = 0;
  // Tokens after each sequence's first, per second of decode time.
  double decode_tokens_per_s() const;
};

struct GenerateResult {
  // Per sequence: generated ids, a final stop token included, no padding after it.
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::string> texts;  // what on_text received, per sequence
  std::vector<FinishReason> finish;
  GenerateStats stats;
};

// Generates continuations of `prompts` (token ids, each non-empty) as one batch. `tokenizer` may
// be null, which disables text, streaming, eos and stop strings. Throws uniattn::Error on an empty
// prompt list or prompt, an id outside the model's vocabulary, or invalid sampling options.
GenerateResult generate(CausalLM& model, const Tokenizer* tokenizer,
                        const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& options);

// Applies a checkpoint's generation settings as transformers' generate() does when the caller
// passes none (GenerationModelMixin._prepare_generation_config): its end tokens are added to
// eos_tokens; its stop_strings are added to stop_strings after those already there, each not yet
// there (so a caller's own stop strings, set before, come first; like them, the output stops
// before the stop text, where transformers keeps it); do_sample true samples with its temperature,
// top_k and top_p, each defaulting to transformers' global default (1.0, 50, 1.0:
// GenerationConfig._get_default_generation_params); do_sample false or unset is greedy (temperature
// 0); repetition_penalty and max_new_tokens replace the options' values when set. bos/pad are not
// used. Throws uniattn::Error when an end token does not fit int32.
void apply_generation_config(const GenerationConfig& config, GenerateOptions& options);

// Turns a token stream into text pieces that hold only complete UTF-8 characters, decoding a
// short window of recent tokens each time (so a SentencePiece leading space or a byte token split
// across several ids comes out right), and holding back text that may begin a stop string.
class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings = {});
  // Adds one token; returns the text that became complete (possibly empty). After a stop string
  // appears, returns the text before it and stopped() turns true; later calls return "".
  std::string push(int32_t id);
  // Returns whatever is still held back (an incomplete character's bytes, a stop-string prefix).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::string hold_for_stops(std::string piece);
  const Tokenizer& tok_;
  std::vector<std::string> stops_;
  std::vector<int32_t> ids_;
  size_t window_ = 0;   // first id of the decode window
  size_t emitted_ = 0;  // bytes of decode(window) already passed on
  std::string held_;
  bool stopped_ = false;
};

// Length of the longest prefix of `s` that does not end inside a UTF-8 character (an invalid
// byte counts as a whole character, so malformed output is never held back forever).
size_t complete_utf8_prefix(std::string_view s);

// A single-turn chat prompt plus the end-of-turn ids to stop at. The text is the model's own chat
// template rendered (the overload with a ChatTemplate below) or, only when the model has no chat
// template, a built-in format chosen by the special tokens the vocabulary has (ChatML, LLaMA-3,
// Gemma or Mistral [INST]).
struct ChatPrompt {
  std::string text;  // encode with add_bos = false, parse_special = true
  std::vector<int32_t> stop_tokens;
};
// The built-in format alone, for models without a chat template (the tools call the overload
// below, which uses the model's template when there is one). Throws uniattn::Error when the
// vocabulary matches no built-in format.
ChatPrompt format_chat(const Tokenizer& tokenizer, std::string_view user_message);
class ChatTemplate;
// The model's own chat template (ChatTemplate::load, uniattn/io/chat_template.h) rendered for one
// user turn with add_generation_prompt, as transformers' apply_chat_template does; stop_tokens
// are the end-of-turn id of the built-in format the vocabulary matches (empty if none; the
// checkpoint's end tokens stop generation anyway, GenerateOptions::eos_tokens). Only a null
// template (the model has none) falls back to the built-in format above (said once on stderr).
// Throws uniattn::Error when rendering fails (ChatTemplate::render), or without a template as the
// overload above.
ChatPrompt format_chat(const Tokenizer& tokenizer, const ChatTemplate* chat_template,
                       std::string_view user_message);

}  // namespace uniattn
