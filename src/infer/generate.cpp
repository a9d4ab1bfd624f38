// The generation loop and the eager LibTorch decoder.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "uniattn/error.h"
#include "uniattn/infer/generate.h"
#include "uniattn/model/kv_cache.h"

namespace uniattn {

Decoder::~Decoder() = default;

namespace {

class EagerDecoder final : public Decoder {
 public:
  EagerDecoder(CausalLM model, int64_t batch, int64_t max_seq, AttentionPath path)
      : model_(std::move(model)),
        cache_(model_->config(), batch, max_seq, model_->dtype(), model_->device()),
        path_(path),
        // Padding only ever sits before the prompt, so every slot after it stays 1.
        mask_(at::ones({batch, max_seq},
                       at::TensorOptions().dtype(at::kLong).device(model_->device()))) {}

  at::Tensor prefill(const at::Tensor& ids, const at::Tensor& mask) override {
    cache_.reset();
    mask_.fill_(1);
    masked_ = mask.defined();
    if (masked_) mask_.narrow(1, 0, ids.size(1)).copy_(mask);
    return run(ids);
  }

  at::Tensor step(const at::Tensor& tokens) override {
    return run(tokens.view({cache_.batch(), 1}));
  }

  int64_t kv_bytes_per_token() const override { return cache_.bytes_per_token(); }

 private:
  at::Tensor run(const at::Tensor& ids) {
    ForwardOptions o;
    o.last_only = true;
    o.path = path_;
    if (masked_) o.attention_mask = mask_.narrow(1, 0, cache_.length() + ids.size(1));
    return model_->forward(ids, &cache_, o).select(1, 0);
  }

  CausalLM model_;
  KVCache cache_;
  AttentionPath path_;
  at::Tensor mask_;
  bool masked_ = false;
};

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

}  // namespace

std::unique_ptr<Decoder> make_eager_decoder(CausalLM model, int64_t batch, int64_t max_seq,
                                            AttentionPath path) {
  return std::make_unique<EagerDecoder>(std::move(model), batch, max_seq, path);
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length:
      return "length";
    case FinishReason::StopToken:
      return "stop_token";
    case FinishReason::StopString:
      return "stop_string";
  }
  return "?";
}

double GenerateStats::decode_tokens_per_s() const {
  const int64_t after_first = generated_tokens - batch;
  return decode_ms > 0 && after_first > 0 ? after_first * 1000.0 / decode_ms : 0.0;
}

namespace {

// Checks every prompt (non-empty, ids inside the model's vocabulary); returns the longest length.
int64_t check_prompts(const std::vector<std::vector<int32_t>>& prompts, int64_t model_vocab) {
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    UNIATTN_CHECK(!prompts[i].empty(), "generate: prompt ", i, " is empty");
    for (int32_t id : prompts[i])
      UNIATTN_CHECK(id >= 0 && id < model_vocab, "generate: prompt ", i, " has token id ", id,
                    " outside the model's vocabulary of ", model_vocab);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
  }
  return longest;
}

// The id used as left padding and fed to finished sequences: the option, else the tokenizer's
// pad, else its eos, else 0.
int32_t resolve_pad_id(const GenerateOptions& opt, const Tokenizer* tok, int64_t model_vocab) {
  int32_t pad = 0;
  if (opt.pad_id)
    pad = *opt.pad_id;
  else if (tok && tok->pad_id())
    pad = *tok->pad_id();
  else if (tok && tok->eos_id())
    pad = *tok->eos_id();
  UNIATTN_CHECK(pad >= 0 && pad < model_vocab, "generate: pad id ", pad, " out of range");
  return pad;
}

// The ids that end a sequence: stop tokens always; with stop_at_eos every end token the options,
// the model config and the tokenizer name (transformers stops at each id of eos_token_id).
std::vector<int32_t> stop_token_ids(const GenerateOptions& opt, const Tokenizer* tok,
                                    const ModelConfig& config) {
  std::vector<int32_t> stops = opt.stop_tokens;
  if (!opt.stop_at_eos) return stops;
  stops.insert(stops.end(), opt.eos_tokens.begin(), opt.eos_tokens.end());
  for (int64_t id : config.eos_token_ids)
    if (id >= 0 && id <= INT32_MAX) stops.push_back(static_cast<int32_t>(id));
  if (tok && tok->eos_id()) stops.push_back(*tok->eos_id());
  return stops;
}

struct PaddedPrompts {
  at::Tensor ids;   // [B, longest] int64, left padded, on the model's device
  at::Tensor mask;  // [B, longest] 1 for real tokens; undefined when no row is padded
  int64_t real_tokens = 0;
};

// Left-pads the prompts into one batch, built on the host then moved to `device` once.
PaddedPrompts left_pad_prompts(const std::vector<std::vector<int32_t>>& prompts, int64_t longest,
                               int32_t pad, at::Device device) {
  const int64_t batch = static_cast<int64_t>(prompts.size());
  auto ids = at::full({batch, longest}, pad, at::kLong);
  auto mask = at::zeros({batch, longest}, at::kLong);
  bool ragged = false;
  PaddedPrompts out;
  for (int64_t b = 0; b < batch; ++b) {
    const auto& p = prompts[b];
    const int64_t n = static_cast<int64_t>(p.size()), off = longest - n;
    ragged |= off > 0;
    auto row = ids.select(0, b).narrow(0, off, n);
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<int64_t>(p[j]);
    mask.select(0, b).narrow(0, off, n).fill_(1);
    out.real_tokens += n;
  }
  out.ids = ids.to(device);
  out.mask = ragged ? mask.to(device) : at::Tensor();
  return out;
}

// [B, vocab] bool: the tokens each prompt holds, which the repetition penalty starts from.
at::Tensor prompt_token_presence(const PaddedPrompts& in, int64_t vocab) {
  const int64_t batch = in.ids.size(0);
  auto seen =
      at::zeros({batch, vocab}, at::TensorOptions().dtype(at::kBool).device(in.ids.device()));
  auto real = in.mask.defined() ? in.mask.to(at::kBool) : at::ones_like(in.ids, at::kBool);
  // Padding ids would count as "present" otherwise: send them to a scratch column.
  auto cols = at::where(real, in.ids.clamp_max(vocab - 1), in.ids.new_full({}, vocab));
  auto scratch = at::zeros({batch, vocab + 1}, seen.options());
  scratch.scatter_(1, cols, true);
  seen.copy_(scratch.narrow(1, 0, vocab));
  return seen;
}

// The caller's factory, else the CUDA-graph decoder where it applies (CUDA, no padding, fused
// attention), else the eager one.
std::unique_ptr<Decoder> make_decoder(CausalLM& model, const GenerateOptions& opt, int64_t batch,
                                      int64_t max_seq, bool ragged) {
  std::unique_ptr<Decoder> dec;
  if (opt.decoder)
    dec = opt.decoder(model, batch, max_seq);
  else if (opt.cuda_graphs && model->device().is_cuda() && !ragged &&
           opt.path == AttentionPath::Fused)
    dec = make_cuda_graph_decoder(model, batch, max_seq);
  else
    dec = make_eager_decoder(model, batch, max_seq, opt.path);
  UNIATTN_CHECK(dec != nullptr, "generate: the decoder factory returned null");
  return dec;
}

// Per-sequence bookkeeping of the decode loop: tokens, text streams, stop checks and callbacks,
// written straight into the result.
class Sequences {
 public:
  Sequences(const Tokenizer* tok, const GenerateOptions& opt, std::vector<int32_t> stops,
            GenerateResult& res, int64_t batch)
      : tok_(tok), opt_(opt), stops_(std::move(stops)), res_(res), done_(batch, 0), live_(batch) {
    res_.tokens.resize(batch);
    res_.texts.resize(batch);
    res_.finish.assign(batch, FinishReason::Length);
    if (tok_)
      for (int64_t b = 0; b < batch; ++b) streams_.emplace_back(*tok_, opt_.stop_strings);
  }

  int64_t live() const { return live_; }
  // 1 for each finished sequence, as a bool tensor on the host.
  at::Tensor done_mask() {
    return at::from_blob(done_.data(), {static_cast<int64_t>(done_.size())}, at::kBool);
  }

  // Records the token chosen for each unfinished sequence; returns whether any of them finished.
  bool accept(const int64_t* next) {
    bool newly_done = false;
    for (int64_t b = 0; b < static_cast<int64_t>(done_.size()); ++b) {
      if (done_[b]) continue;
      const auto id = static_cast<int32_t>(next[b]);
      res_.tokens[b].push_back(id);
      ++res_.stats.generated_tokens;
      if (ends_sequence(b, id)) {
        finish(b);
        newly_done = true;
      }
    }
    return newly_done;
  }

  // After the last step: the sequences still running end by length.
  void finish_running() {
    for (int64_t b = 0; b < static_cast<int64_t>(done_.size()); ++b)
      if (!done_[b]) finish(b);
  }

 private:
  // Streams `id` into sequence b's text; returns whether it ends the sequence (noting why).
  bool ends_sequence(int64_t b, int32_t id) {
    if (std::find(stops_.begin(), stops_.end(), id) != stops_.end()) {
      res_.finish[b] = FinishReason::StopToken;
      return true;
    }
    if (!tok_) return false;
    emit(b, streams_[b].push(id));
    if (!streams_[b].stopped()) return false;
    res_.finish[b] = FinishReason::StopString;
    return true;
  }

  void finish(int64_t b) {
    // Text held back (a partial character, a possible stop-string start) is real output unless
    // a stop string did match: then it is that stop string, which never becomes text.
    if (tok_ && res_.finish[b] != FinishReason::StopString) emit(b, streams_[b].flush());
    if (opt_.on_finish) opt_.on_finish(b, res_.finish[b]);
    done_[b] = 1;
    --live_;
  }

  void emit(int64_t b, const std::string& text) {
    if (text.empty()) return;
    res_.texts[b] += text;
    if (opt_.on_text) opt_.on_text(b, text);
  }

  const Tokenizer* tok_;
  const GenerateOptions& opt_;
  const std::vector<int32_t> stops_;
  GenerateResult& res_;
  std::vector<TextStream> streams_;
  std::vector<char> done_;
  int64_t live_;
};

// Prefill, then one token per step until max_new_tokens or every sequence has finished; times
// the first token and the rest into `st`. Finished sequences keep being fed `pad`.
void decode_loop(Decoder& dec, const PaddedPrompts& in, int32_t pad, int64_t vocab,
                 const GenerateOptions& opt, at::Tensor& seen, at::Generator& gen, Sequences& seqs,
                 GenerateStats& st) {
  const int64_t batch = in.ids.size(0);
  const auto on_device = at::TensorOptions().device(in.ids.device());
  auto done_dev = at::zeros({batch}, on_device.dtype(at::kBool));
  auto pad_dev = at::full({batch}, pad, on_device.dtype(at::kLong));
  const auto t0 = Clock::now();
  Clock::time_point t_first;
  at::Tensor logits, next;
  if (opt.max_new_tokens > 0) logits = dec.prefill(in.ids, in.mask);
  for (int64_t step = 0; step < opt.max_new_tokens && seqs.live() > 0; ++step) {
    if (step > 0) logits = dec.step(next);
    next = select_tokens(logits.narrow(1, 0, vocab), opt.sampling, seen, gen);
    next = at::where(done_dev, pad_dev, next);
    const auto host = next.to(at::kCPU);
    if (step == 0) {
      st.ttft_ms = ms_since(t0);
      t_first = Clock::now();
    }
    if (seqs.accept(host.data_ptr<int64_t>())) done_dev.copy_(seqs.done_mask());
    if (seen.defined()) seen.scatter_(1, next.clamp_max(vocab - 1).unsqueeze(1), true);
    st.steps = step;
  }
  st.decode_ms = opt.max_new_tokens > 0 ? ms_since(t_first) : 0.0;
}

}  // namespace

void apply_generation_config(const GenerationConfig& g, GenerateOptions& o) {
  for (int64_t id : g.eos_token_ids) {
    UNIATTN_CHECK(id >= 0 && id <= INT32_MAX, "generation config: end token ", id,
                  " does not fit a token id");
    o.eos_tokens.push_back(static_cast<int32_t>(id));
  }
  for (const auto& text : g.stop_strings)
    if (std::find(o.stop_strings.begin(), o.stop_strings.end(), text) == o.stop_strings.end())
      o.stop_strings.push_back(text);
  auto& s = o.sampling;
  // transformers' GenerationConfig._get_default_generation_params fill what the file leaves
  // unset; greedy decoding ignores temperature, top_k and top_p.
  if (g.do_sample.value_or(false)) {
    s.temperature = g.temperature.value_or(1.0);
    s.top_k = g.top_k.value_or(50);
    s.top_p = g.top_p.value_or(1.0);
    // top_p 0 keeps only the most likely token in transformers (TopPLogitsWarper keeps one).
    if (s.top_p <= 0.0) {
      s.top_p = 1.0;
      s.top_k = 1;
    }
  } else {
    s.temperature = 0.0;
  }
  if (g.repetition_penalty) s.repetition_penalty = *g.repetition_penalty;
  if (g.max_new_tokens) o.max_new_tokens = *g.max_new_tokens;
}

GenerateResult generate(CausalLM& model, const Tokenizer* tok,
                        const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& opt) {
  c10::InferenceMode inference;
  opt.sampling.validate();
  UNIATTN_CHECK(!prompts.empty(), "generate: no prompts");
  UNIATTN_CHECK(opt.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ",
                opt.max_new_tokens);
  const int64_t batch = static_cast<int64_t>(prompts.size());
  const int64_t model_vocab = model->config().vocab_size;
  // The embedding may be padded past the tokenizer's vocabulary; never pick such an id.
  const int64_t vocab = tok ? std::min<int64_t>(model_vocab, tok->vocab_size()) : model_vocab;
  const int64_t longest = check_prompts(prompts, model_vocab);
  const int32_t pad = resolve_pad_id(opt, tok, model_vocab);
  const auto device = model->device();
  const PaddedPrompts in = left_pad_prompts(prompts, longest, pad, device);

  GenerateResult res;
  res.stats.batch = batch;
  res.stats.prompt_tokens = in.real_tokens;
  at::Tensor seen;  // [B, vocab] tokens present so far, for the repetition penalty
  if (opt.sampling.repetition_penalty != 1.0) seen = prompt_token_presence(in, vocab);
  at::Generator gen = make_generator(device, opt.sampling.seed);
  Sequences seqs(tok, opt, stop_token_ids(opt, tok, model->config()), res, batch);

  const int64_t max_seq = longest + std::max<int64_t>(opt.max_new_tokens, 1);
  const auto dec = make_decoder(model, opt, batch, max_seq, in.mask.defined());
  res.stats.kv_bytes_per_token = dec->kv_bytes_per_token();
  decode_loop(*dec, in, pad, vocab, opt, seen, gen, seqs, res.stats);
  seqs.finish_running();
  return res;
}

}  // namespace uniattn
