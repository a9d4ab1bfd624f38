// The generation loop and the eager LibTorch decoder.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>

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
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    UNIATTN_CHECK(!prompts[i].empty(), "generate: prompt ", i, " is empty");
    for (int32_t id : prompts[i])
      UNIATTN_CHECK(id >= 0 && id < model_vocab, "generate: prompt ", i, " has token id ", id,
                    " outside the model's vocabulary of ", model_vocab);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
  }
  int32_t pad = 0;
  if (opt.pad_id)
    pad = *opt.pad_id;
  else if (tok && tok->pad_id())
    pad = *tok->pad_id();
  else if (tok && tok->eos_id())
    pad = *tok->eos_id();
  UNIATTN_CHECK(pad >= 0 && pad < model_vocab, "generate: pad id ", pad, " out of range");
  std::vector<int32_t> stops = opt.stop_tokens;
  if (opt.stop_at_eos && tok && tok->eos_id()) stops.push_back(*tok->eos_id());

  // Left-padded prompt batch, built on the host then moved once.
  auto ids = at::full({batch, longest}, pad, at::kLong);
  auto mask = at::zeros({batch, longest}, at::kLong);
  bool ragged = false;
  GenerateResult res;
  res.tokens.resize(batch);
  res.texts.resize(batch);
  res.finish.assign(batch, FinishReason::Length);
  auto& st = res.stats;
  st.batch = batch;
  for (int64_t b = 0; b < batch; ++b) {
    const auto& p = prompts[b];
    const int64_t n = static_cast<int64_t>(p.size()), off = longest - n;
    ragged |= off > 0;
    auto row = ids.select(0, b).narrow(0, off, n);
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<int64_t>(p[j]);
    mask.select(0, b).narrow(0, off, n).fill_(1);
    st.prompt_tokens += n;
  }
  const auto device = model->device();
  ids = ids.to(device);
  mask = ragged ? mask.to(device) : at::Tensor();

  const SamplingParams& sp = opt.sampling;
  at::Tensor seen;  // [B, vocab] tokens present so far, for the repetition penalty
  if (sp.repetition_penalty != 1.0) {
    seen = at::zeros({batch, vocab}, at::TensorOptions().dtype(at::kBool).device(device));
    auto real = mask.defined() ? mask.to(at::kBool) : at::ones_like(ids, at::kBool);
    // Padding ids would count as "present" otherwise: send them to a scratch column.
    auto cols = at::where(real, ids.clamp_max(vocab - 1), ids.new_full({}, vocab));
    auto scratch = at::zeros({batch, vocab + 1}, seen.options());
    scratch.scatter_(1, cols, true);
    seen.copy_(scratch.narrow(1, 0, vocab));
  }
  at::Generator gen = make_generator(device, sp.seed);

  std::vector<TextStream> streams;
  if (tok)
    for (int64_t b = 0; b < batch; ++b) streams.emplace_back(*tok, opt.stop_strings);
  auto emit = [&](int64_t b, const std::string& text) {
    if (text.empty()) return;
    res.texts[b] += text;
    if (opt.on_text) opt.on_text(b, text);
  };

  std::unique_ptr<Decoder> dec;
  const int64_t max_seq = longest + std::max<int64_t>(opt.max_new_tokens, 1);
  if (opt.decoder)
    dec = opt.decoder(model, batch, max_seq);
  else if (opt.cuda_graphs && model->device().is_cuda() && !mask.defined() &&
           opt.path == AttentionPath::Fused)
    dec = make_cuda_graph_decoder(model, batch, max_seq);
  else
    dec = make_eager_decoder(model, batch, max_seq, opt.path);
  UNIATTN_CHECK(dec != nullptr, "generate: the decoder factory returned null");
  st.kv_bytes_per_token = dec->kv_bytes_per_token();

  std::vector<char> done(batch, 0);
  auto done_dev = at::zeros({batch}, at::TensorOptions().dtype(at::kBool).device(device));
  auto pad_dev = at::full({batch}, pad, at::TensorOptions().dtype(at::kLong).device(device));
  int64_t live = batch;
  const auto t0 = Clock::now();
  Clock::time_point t_first;
  at::Tensor logits, next_dev;
  if (opt.max_new_tokens > 0) logits = dec->prefill(ids, mask);
  for (int64_t step = 0; step < opt.max_new_tokens && live > 0; ++step) {
    if (step > 0) logits = dec->step(next_dev);
    auto next = select_tokens(logits.narrow(1, 0, vocab), sp, seen, gen);
    next = at::where(done_dev, pad_dev, next);
    const auto host = next.to(at::kCPU);
    const int64_t* h = host.data_ptr<int64_t>();
    if (step == 0) {
      st.ttft_ms = ms_since(t0);
      t_first = Clock::now();
    }
    bool newly_done = false;
    for (int64_t b = 0; b < batch; ++b) {
      if (done[b]) continue;
      const auto id = static_cast<int32_t>(h[b]);
      res.tokens[b].push_back(id);
      ++st.generated_tokens;
      bool finished = false;
      if (std::find(stops.begin(), stops.end(), id) != stops.end()) {
        res.finish[b] = FinishReason::StopToken;
        finished = true;
      } else if (tok) {
        emit(b, streams[b].push(id));
        if (streams[b].stopped()) {
          res.finish[b] = FinishReason::StopString;
          finished = true;
        }
      }
      if (finished) {
        if (tok && res.finish[b] == FinishReason::StopToken) emit(b, streams[b].flush());
        if (opt.on_finish) opt.on_finish(b, res.finish[b]);
        done[b] = 1;
        --live;
        newly_done = true;
      }
    }
    if (newly_done) done_dev.copy_(at::from_blob(done.data(), {batch}, at::kBool));
    if (seen.defined()) seen.scatter_(1, next.clamp_max(vocab - 1).unsqueeze(1), true);
    next_dev = next;
    st.steps = step;
  }
  st.decode_ms = opt.max_new_tokens > 0 ? ms_since(t_first) : 0.0;
  for (int64_t b = 0; b < batch; ++b) {
    if (done[b]) continue;
    if (tok) emit(b, streams[b].flush());
    if (opt.on_finish) opt.on_finish(b, res.finish[b]);
  }
  return res;
}

}  // namespace uniattn
