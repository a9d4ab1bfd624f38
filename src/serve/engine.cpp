// Engine: scheduler (admission, chunked prefill, preemption by recompute), block allocator and
// model runner over uniattn::paged_forward.
#include "uniattn/serve/engine.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>

#include "decode_runner.h"
#include "uniattn/error.h"
#include "uniattn/error_message.h"
#include "uniattn/model/paged_kv_cache.h"

namespace uniattn::serve {

namespace {

// Free-list allocator of KV blocks (vLLM's BlockAllocator without prefix sharing).
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t n) {
    for (int64_t i = n - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));
  }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  // Appends `n` blocks to `table`; false (nothing taken) when fewer are free.
  bool allocate(int64_t n, std::vector<int32_t>& table) {
    if (n > num_free()) return false;
    for (int64_t i = 0; i < n; ++i) table.push_back(free_.back()), free_.pop_back();
    return true;
  }
  // Returns every block of `table` (entries of -1 were given back already) and clears it.
  void release(std::vector<int32_t>& table) {
    for (auto it = table.rbegin(); it != table.rend(); ++it)
      if (*it >= 0) free_.push_back(*it);
    table.clear();
  }
  void release_one(int32_t block) { free_.push_back(block); }

 private:
  std::vector<int32_t> free_;
};

struct Sequence {
  uint64_t id = 0;
  EngineRequest req;
  Engine::Callback cb;
  std::vector<int32_t> output;
  // Block tables per block group (PagedKVCache::group_of); -1: given back (left the window).
  std::vector<int32_t> blocks[2];
  int64_t released[2] = {0, 0};  // blocks[g][0, released[g]) are -1
  int64_t computed = 0;          // tokens whose K/V are in the cache
  at::Generator gen;
  at::Tensor seen;                    // bool [1, V] when repetition_penalty != 1
  std::map<int32_t, int64_t> counts;  // output token counts (frequency/presence penalties)
  std::vector<TokenLogprob> prompt_lp;
  bool prompt_lp_done = false;
  bool done = false;  // finished; leaves `running` after the step
  int64_t total() const { return static_cast<int64_t>(req.prompt.size() + output.size()); }
  int32_t token(int64_t i) const {
    const auto p = static_cast<int64_t>(req.prompt.size());
    return i < p ? req.prompt[i] : output[i - p];
  }
};
using SeqPtr = std::shared_ptr<Sequence>;

// One row of a step: the sequence and how many tokens it feeds.
struct Row {
  SeqPtr seq;
  int64_t n = 0;
};

// A row whose sequence has fed all its tokens and gets its next one in this step.
struct Ready {
  Sequence* seq = nullptr;
  int64_t row = 0;  // its row of the step's last-position logits
};

// Greedy with no penalty: the token is the argmax of the raw logits, so these rows of a step share
// one argmax. Log-probabilities do not change the token (they are computed apart).
bool plain_greedy(const EngineRequest& r) {
  return r.sampling.greedy() && r.sampling.repetition_penalty == 1.0 && r.frequency_penalty == 0 &&
         r.presence_penalty == 0;
}

int64_t blocks_for(int64_t tokens, int64_t bs) { return (tokens + bs - 1) / bs; }

// Host time of a step's phases, accumulated in nanoseconds (EngineStats' seconds).
enum Phase { kSchedule, kForward, kSample, kEmit, kPhases };
struct PhaseClock {
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  void lap(std::atomic<int64_t>& total_ns) {
    const auto now = std::chrono::steady_clock::now();
    total_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(now - t).count();
    t = now;
  }
};

TokenLogprob logprob_of(const at::Tensor& logp_row, int32_t token, int64_t top_n) {
  TokenLogprob out;
  out.token = token;
  out.logprob = logp_row[token].item<float>();
  if (top_n > 0) {
    auto [vals, idx] = at::topk(logp_row, top_n);
    for (int64_t i = 0; i < top_n; ++i)
      out.top.emplace_back(static_cast<int32_t>(idx[i].item<int64_t>()), vals[i].item<float>());
  }
  return out;
}

}  // namespace

struct Engine::Impl {
  CausalLM model{nullptr};
  EngineOptions opt;
  std::unique_ptr<PagedKVCache> cache;
  std::unique_ptr<BlockAllocator> alloc[2];  // per block group
  int groups = 1;
  std::unique_ptr<DecodeRunner> decoder;
  int64_t vocab = 0;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<SeqPtr> incoming;
  std::vector<uint64_t> aborts;
  uint64_t next_id = 1;
  bool stopping = false;

  // Owned by the stepping thread.
  std::deque<SeqPtr> waiting;
  std::vector<SeqPtr> running;
  std::atomic<int64_t> n_waiting{0}, n_running{0}, n_free{0}, preemptions{0}, steps{0}, n_graphs{0},
      decode_steps{0}, n_free_sliding{0};
  std::atomic<int64_t> phase_ns[2][kPhases] = {};  // [decode, prefill][Phase]

  // Returns all of `s`'s blocks to the pool.
  // The free counts stats() reports are updated here too, before the sequence's last callback:
  // a client that saw its request end must not read its blocks as still held.
  void free_blocks(Sequence& s) {
    for (int g = 0; g < groups; ++g) {
      alloc[g]->release(s.blocks[g]);
      s.released[g] = 0;
    }
    publish_free();
  }

  void publish_free() {
    n_free = alloc[0]->num_free();
    n_free_sliding = groups == 2 ? alloc[1]->num_free() : 0;
  }

  // Grows `s`'s block tables to hold `tokens` when each group keeps at least `keep` blocks free
  // afterwards; false (and nothing allocated) otherwise.
  bool grow(Sequence& s, int64_t tokens, int64_t keep = 0) {
    int64_t need[2] = {0, 0};
    for (int g = 0; g < groups; ++g) {
      need[g] =
          std::max<int64_t>(blocks_for(tokens, opt.block_size) - int64_t(s.blocks[g].size()), 0);
      if (need[g] + keep > alloc[g]->num_free()) return false;
    }
    for (int g = 0; g < groups; ++g) alloc[g]->allocate(need[g], s.blocks[g]);
    return true;
  }

  void finish(const SeqPtr& s, Finish f, std::string error = {}) {
    free_blocks(*s);
    SeqOutput o;
    o.id = s->id;
    o.prompt_tokens = static_cast<int64_t>(s->req.prompt.size());
    o.finish = f;
    o.error = std::move(error);
    s->cb(o);
  }

  void drain_incoming() {
    std::vector<uint64_t> ab;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (auto& s : incoming) waiting.push_back(std::move(s));
      incoming.clear();
      ab.swap(aborts);
    }
    for (uint64_t id : ab) {
      auto match = [&](const SeqPtr& s) { return s->id == id; };
      if (auto it = std::find_if(waiting.begin(), waiting.end(), match); it != waiting.end()) {
        finish(*it, Finish::Abort);
        waiting.erase(it);
      } else if (auto jt = std::find_if(running.begin(), running.end(), match);
                 jt != running.end()) {
        finish(*jt, Finish::Abort);
        running.erase(jt);
      }
    }
  }

  // Frees the newest running sequence's blocks and puts it at the front of the queue; its K/V
  // are recomputed from its prompt and output when it is admitted again.
  void preempt_newest() {
    SeqPtr s = running.back();
    running.pop_back();
    free_blocks(*s);
    s->computed = 0;
    if (!s->prompt_lp_done) s->prompt_lp.clear();
    waiting.push_front(s);
    ++preemptions;
  }

  // Grows `s`'s block table to hold `tokens`; preempts newer sequences when blocks run out.
  // False when `s` itself had to be preempted.
  bool reserve(const SeqPtr& s, int64_t tokens) {
    while (!grow(*s, tokens)) {
      const bool self = running.back() == s;
      preempt_newest();
      if (self) return false;
    }
    return true;
  }

  // In each block group with a kept window (every layer sliding, or the sliding layers' own
  // group: PagedKVCache::kept_window), gives back the blocks that hold only positions before the
  // oldest key this step's queries of `s` read (PagedKVCache::first_key, which paged_forward
  // reads from).
  void release_outside_window(Sequence& s) {
    const int64_t bs = opt.block_size;
    for (int g = 0; g < groups; ++g) {
      const int64_t oldest = cache->first_key(s.computed, g);
      auto& table = s.blocks[g];
      for (int64_t& r = s.released[g]; r < int64_t(table.size()) && (r + 1) * bs <= oldest; ++r) {
        alloc[g]->release_one(table[r]);
        table[r] = -1;
      }
    }
  }

  // The rows of this step: every running sequence (decode: one token; prefill: a chunk of the
  // prefill budget), then waiting sequences admitted while slots, budget and blocks allow.
  std::vector<Row> schedule() {
    std::vector<Row> rows;
    int64_t budget = opt.prefill_chunk;
    bool preempted = false;
    for (auto& s : running) release_outside_window(*s);
    for (size_t i = 0; i < running.size(); ++i) {
      SeqPtr s = running[i];
      int64_t n = s->total() - s->computed;
      if (n > 1) n = std::max<int64_t>(std::min(n, budget), 0);
      if (n == 0) continue;
      const int64_t before = preemptions;
      if (!reserve(s, s->computed + n)) {
        preempted = true;
        break;
      }
      preempted = preempted || preemptions != before;
      if (n > 1 || s->computed < int64_t(s->req.prompt.size())) budget -= n;
      rows.push_back({s, n});
    }
    // Rows of sequences preempted after they were scheduled above must go.
    std::erase_if(rows, [&](const Row& r) {
      return std::find(running.begin(), running.end(), r.seq) == running.end();
    });
    // Admission leaves admission_headroom blocks per running sequence free for their growth:
    // admitted into the last free blocks, a sequence would be the newest, so the first to be
    // preempted when the running ones cross a block boundary, and be recomputed over and over.
    while (!preempted && !waiting.empty() && budget > 0 && int64_t(running.size()) < opt.max_seqs) {
      SeqPtr s = waiting.front();
      const int64_t n = std::min(s->total() - s->computed, budget);
      if (!grow(*s, s->computed + n, opt.admission_headroom * int64_t(running.size()))) break;
      waiting.pop_front();
      running.push_back(s);
      budget -= n;
      rows.push_back({s, n});
    }
    return rows;
  }

  // Logits of the rows (model dtype): [B, T, V] or, when last_only, [B, 1, V]. A batch of one
  // token per row is a decode step (the runner's CUDA graphs); others run paged_forward.
  at::Tensor run_rows(const std::vector<Row>& rows, bool last_only) {
    PagedBatch pb;
    int64_t t = 0;
    for (const Row& r : rows) t = std::max(t, r.n);
    std::vector<int64_t> ids(rows.size() * t, 0);
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto& s = *rows[i].seq;
      for (int64_t j = 0; j < rows[i].n; ++j) ids[i * t + j] = s.token(s.computed + j);
      pb.context_lens.push_back(s.computed);
      pb.query_lens.push_back(rows[i].n);
      pb.block_tables.push_back(s.blocks[0]);
      if (groups == 2) pb.sliding_block_tables.push_back(s.blocks[1]);
    }
    if (t == 1) return decoder->run(ids, pb);
    auto input = at::tensor(ids, at::TensorOptions().dtype(at::kLong))
                     .view({int64_t(rows.size()), t})
                     .to(model->device());
    return paged_forward(model, input, *cache, pb, last_only);
  }

  void record_prompt_logprobs(Sequence& s, const at::Tensor& logits_row, int64_t n) {
    const int64_t plen = int64_t(s.req.prompt.size());
    auto logp = at::log_softmax(logits_row.narrow(0, 0, n).to(at::kFloat), -1).cpu();
    for (int64_t j = 0; j < n; ++j) {
      const int64_t next = s.computed + j + 1;
      if (next < plen)
        s.prompt_lp.push_back(logprob_of(logp[j], s.req.prompt[next], s.req.logprobs));
    }
  }

  // Advances every row by the tokens it fed (recording echo's prompt log-probabilities) and
  // returns the rows that caught up.
  std::vector<Ready> advance(const std::vector<Row>& rows, const at::Tensor& logits, bool full) {
    std::vector<Ready> ready;
    for (size_t i = 0; i < rows.size(); ++i) {
      Sequence& s = *rows[i].seq;
      const int64_t n = rows[i].n;
      if (full && s.req.prompt_logprobs && !s.prompt_lp_done)
        record_prompt_logprobs(s, logits[int64_t(i)], n);
      s.computed += n;
      if (s.computed >= s.total()) ready.push_back({&s, int64_t(i)});
    }
    return ready;
  }

  // Logits [B, V] at each row's last fed position: one view (last_only) or one gather (full).
  static at::Tensor last_logits(const std::vector<Row>& rows, const at::Tensor& logits, bool full) {
    if (!full) return logits.select(1, 0);
    std::vector<int64_t> last;
    for (const Row& r : rows) last.push_back(r.n - 1);
    const auto idx = at::tensor(last).to(logits.device());
    return logits.gather(1, idx.view({-1, 1, 1}).expand({logits.size(0), 1, logits.size(2)}))
        .select(1, 0);
  }

  // The rows `want` of `last` ([B, V]): `last` itself when they are all of its rows in order,
  // else one index_select.
  static at::Tensor rows_of(const at::Tensor& last, const std::vector<int64_t>& want) {
    bool all = int64_t(want.size()) == last.size(0);
    for (size_t k = 0; all && k < want.size(); ++k) all = want[k] == int64_t(k);
    return all ? last : last.index_select(0, at::tensor(want).to(last.device()));
  }

  // A row that samples or has penalties keeps its own generator and `seen` mask, so it is drawn
  // alone (a draw shared by rows would change each seeded stream). The token stays on the device.
  static at::Tensor sample_row(Sequence& s, const at::Tensor& row) {
    auto logits = row.unsqueeze(0).to(at::kFloat);
    if (s.req.frequency_penalty != 0 || s.req.presence_penalty != 0) {
      logits = logits.clone();
      for (auto [tok, c] : s.counts)
        logits[0][tok] -= s.req.frequency_penalty * double(c) + s.req.presence_penalty;
    }
    return select_tokens(logits, s.req.sampling, s.seen, s.gen);
  }

  // Reading each row's token with .item() costs one device sync per row and step (32 per decode
  // step at 32 running sequences on a GPU), and per-row tensor views cost host time of their own.
  // Instead the plain greedy rows share one argmax over `last` (the model's dtype: converting
  // to float changes no argmax), the other rows' tokens stay on the device, and all come to the
  // host in one copy.
  static std::vector<int32_t> next_tokens(const std::vector<Ready>& ready, const at::Tensor& last) {
    std::vector<at::Tensor> parts;
    std::vector<int64_t> greedy_rows;
    std::vector<size_t> order;  // the ready row of each token of cat(parts)
    for (size_t j = 0; j < ready.size(); ++j) {
      if (!plain_greedy(ready[j].seq->req)) continue;
      greedy_rows.push_back(ready[j].row);
      order.push_back(j);
    }
    if (!greedy_rows.empty()) parts.push_back(at::argmax(rows_of(last, greedy_rows), -1));
    for (size_t j = 0; j < ready.size(); ++j) {
      if (plain_greedy(ready[j].seq->req)) continue;
      parts.push_back(sample_row(*ready[j].seq, last[ready[j].row]));
      order.push_back(j);
    }
    const auto host = at::cat(parts).to(at::kCPU, at::kLong).contiguous();
    const int64_t* tok = host.data_ptr<int64_t>();
    std::vector<int32_t> out(ready.size());
    for (size_t k = 0; k < order.size(); ++k) out[order[k]] = static_cast<int32_t>(tok[k]);
    return out;
  }

  // Log-softmax of the raw logits of the rows that asked for log-probabilities: one op and one
  // copy to the host for all of them, not one per row. Undefined for the other rows.
  static std::vector<at::Tensor> output_logprobs(const std::vector<Ready>& ready,
                                                 const at::Tensor& last) {
    std::vector<int64_t> rows;
    std::vector<at::Tensor> out(ready.size());
    for (const Ready& r : ready)
      if (r.seq->req.logprobs >= 0) rows.push_back(r.row);
    if (rows.empty()) return out;
    const auto logp = at::log_softmax(rows_of(last, rows).to(at::kFloat), -1).cpu();
    for (size_t j = 0, k = 0; j < ready.size(); ++j)
      if (ready[j].seq->req.logprobs >= 0) out[j] = logp[int64_t(k++)];
    return out;
  }

  // Appends `tok` to `s` and reports it (with its log-probabilities when `logp` is defined and,
  // once, echo's prompt log-probabilities); a stop token or the length limit ends `s`.
  void emit(Sequence& s, int32_t tok, const at::Tensor& logp) {
    SeqOutput o;
    o.id = s.id;
    o.prompt_tokens = int64_t(s.req.prompt.size());
    o.tokens = {tok};
    if (logp.defined()) o.logprobs.push_back(logprob_of(logp, tok, s.req.logprobs));
    if (s.req.prompt_logprobs && !s.prompt_lp_done) {
      o.prompt_logprobs = std::move(s.prompt_lp);
      s.prompt_lp_done = true;
    }
    s.output.push_back(tok);
    ++s.counts[tok];
    if (s.seen.defined()) s.seen[0][tok].fill_(true);
    const auto& stops = s.req.stop_token_ids;
    if (std::find(stops.begin(), stops.end(), tok) != stops.end())
      o.finish = Finish::Stop;
    else if (int64_t(s.output.size()) >= s.req.max_tokens || s.total() >= opt.max_model_len)
      o.finish = Finish::Length;
    if (o.finish != Finish::None) free_blocks(s), s.done = true;
    s.cb(o);
  }

  // After a forward: advance each row; rows that caught up get their next token.
  // Sampling waits for the device; `times` gets the sample and emit phases.
  void postprocess(const std::vector<Row>& rows, const at::Tensor& logits, bool full,
                   PhaseClock& clock, std::atomic<int64_t>* times) {
    const auto ready = advance(rows, logits, full);
    if (!ready.empty()) {
      const auto last = last_logits(rows, logits, full);
      const auto tokens = next_tokens(ready, last);
      const auto logp = output_logprobs(ready, last);
      clock.lap(times[kSample]);
      for (size_t j = 0; j < ready.size(); ++j) emit(*ready[j].seq, tokens[j], logp[j]);
    }
    std::erase_if(running, [](const SeqPtr& s) { return s->done; });
    clock.lap(times[kEmit]);
  }

  // Runs one group of the step: decode (every row one token) or prefill.
  void run_group(const std::vector<Row>& rows, bool decode) {
    if (rows.empty()) return;
    bool full = false;
    for (const Row& r : rows) full = full || (r.seq->req.prompt_logprobs && !r.seq->prompt_lp_done);
    auto* times = phase_ns[decode ? 0 : 1];
    try {
      PhaseClock clock;
      const auto logits = run_rows(rows, !full);
      clock.lap(times[kForward]);
      postprocess(rows, logits, full, clock, times);
      if (decode) ++decode_steps;
    } catch (const std::exception& e) {
      // An internal error fails the sequences of this group; the engine goes on.
      for (const Row& r : rows) {
        auto it = std::find(running.begin(), running.end(), r.seq);
        if (it == running.end()) continue;
        finish(r.seq, Finish::Error, error_message(e));
        running.erase(it);
      }
    }
  }

  void publish() {
    std::lock_guard<std::mutex> lock(mu);
    n_waiting = int64_t(waiting.size() + incoming.size());
    n_running = int64_t(running.size());
    publish_free();
    n_graphs = decoder->graphs();
  }
};

namespace {
// The blocks a sequence of max_model_len tokens holds at once in the sliding layers' group: its
// window, a prefill chunk past it, and a partial block at each end.
int64_t sliding_blocks_per_sequence(const EngineOptions& o, const ModelConfig& c) {
  return std::min(blocks_for(o.max_model_len, o.block_size),
                  blocks_for(c.sliding_window + o.prefill_chunk, o.block_size) + 2);
}

// Fills num_blocks (and num_sliding_blocks, for models that mix sliding and global layers) from
// kv_memory_bytes where they are 0: the memory is split so that both groups run out at the same
// number of sequences of max_model_len tokens. Throws when a pool cannot hold one such sequence.
void size_pools(EngineOptions& o, const ModelConfig& c, at::ScalarType dt) {
  const bool split = o.num_sliding_blocks >= 0 && PagedKVCache::mixes_windows(c);
  const int64_t per_seq = blocks_for(o.max_model_len, o.block_size);
  const int64_t per_seq_sliding = split ? sliding_blocks_per_sequence(o, c) : 0;
  if (!split) {
    o.num_sliding_blocks = 0;
    if (o.num_blocks <= 0)
      o.num_blocks = o.kv_memory_bytes / PagedKVCache::bytes_per_block(c, o.block_size, dt);
  } else if (o.num_blocks <= 0) {
    const int64_t seq_bytes =
        per_seq * PagedKVCache::bytes_per_block(c, o.block_size, dt, false) +
        per_seq_sliding * PagedKVCache::bytes_per_block(c, o.block_size, dt, true);
    const double seqs = double(o.kv_memory_bytes) / double(seq_bytes);
    o.num_blocks = int64_t(seqs * double(per_seq));
    if (o.num_sliding_blocks == 0) o.num_sliding_blocks = int64_t(seqs * double(per_seq_sliding));
  } else if (o.num_sliding_blocks == 0) {
    o.num_sliding_blocks = o.num_blocks;
  }
  const std::string pool =
      split ? std::to_string(o.num_blocks) + " blocks for the global layers and " +
                  std::to_string(o.num_sliding_blocks) + " for the sliding layers"
            : std::to_string(o.num_blocks) + " blocks";
  const std::string needs =
      split ? std::to_string(per_seq) + " and " + std::to_string(per_seq_sliding) + " blocks"
            : std::to_string(per_seq) + " blocks";
  UNIATTN_CHECK(o.num_blocks >= per_seq && o.num_sliding_blocks >= per_seq_sliding,
                "engine: the KV pool (", pool, " of ", o.block_size,
                " tokens) cannot hold one sequence of max_model_len ", o.max_model_len,
                " tokens, which needs ", needs,
                ": give the pool more memory (--kv-memory-gb) or lower --max-model-len");
}
}  // namespace

Engine::Engine(CausalLM model, const EngineOptions& o) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.model = std::move(model);
  m.opt = o;
  const auto& c = m.model->config();
  UNIATTN_CHECK(o.block_size >= 1 && o.max_seqs >= 1 && o.prefill_chunk >= 1,
                "engine: block_size, max_seqs and prefill_chunk must be >= 1");
  UNIATTN_CHECK(o.admission_headroom >= 0 && o.startup_capture_len >= 0,
                "engine: admission_headroom and startup_capture_len must be >= 0");
  if (m.opt.max_model_len <= 0) m.opt.max_model_len = c.max_position_embeddings;
  // As vLLM: rotary positions past the trained context give garbage, not an error.
  UNIATTN_CHECK(m.opt.max_model_len <= c.max_position_embeddings, "engine: max_model_len ",
                m.opt.max_model_len, " exceeds the model's context of ", c.max_position_embeddings,
                " tokens (max_position_embeddings)");
  size_pools(m.opt, c, m.model->dtype());
  c10::InferenceMode guard;
  m.cache = std::make_unique<PagedKVCache>(c, m.opt.num_blocks, o.block_size, m.model->dtype(),
                                           m.model->device(), m.opt.num_sliding_blocks);
  m.groups = m.cache->num_groups();
  for (int g = 0; g < m.groups; ++g)
    m.alloc[g] = std::make_unique<BlockAllocator>(m.cache->num_blocks(g));
  m.decoder =
      std::make_unique<DecodeRunner>(m.model, *m.cache, m.opt.max_seqs,
                                     blocks_for(m.opt.max_model_len, o.block_size), o.cuda_graphs);
  if (o.startup_capture_len > 0)
    m.decoder->capture_buckets(std::min(o.startup_capture_len, m.opt.max_model_len));
  m.vocab = c.vocab_size;
  m.publish();
}

Engine::~Engine() { stop(); }

const EngineOptions& Engine::options() const { return impl_->opt; }

uint64_t Engine::add(EngineRequest r, Callback cb) {
  auto& m = *impl_;
  UNIATTN_CHECK(!r.prompt.empty(), "engine: empty prompt");
  for (int32_t t : r.prompt)
    UNIATTN_CHECK(t >= 0 && t < m.vocab, "engine: token id ", t, " outside the vocabulary of ",
                  m.vocab);
  UNIATTN_CHECK(r.max_tokens >= 1, "engine: max_tokens must be >= 1");
  UNIATTN_CHECK(int64_t(r.prompt.size()) + r.max_tokens <= m.opt.max_model_len, "engine: prompt (",
                r.prompt.size(), " tokens) + max_tokens (", r.max_tokens,
                ") exceeds the context of ", m.opt.max_model_len);
  r.sampling.validate();
  auto s = std::make_shared<Sequence>();
  {
    c10::InferenceMode guard;
    s->gen = make_generator(m.model->device(), r.sampling.seed);
    if (r.sampling.repetition_penalty != 1.0) {
      s->seen = at::zeros({1, m.vocab}, at::TensorOptions().dtype(at::kBool));
      for (int32_t t : r.prompt) s->seen[0][t].fill_(true);
      s->seen = s->seen.to(m.model->device());
    }
  }
  s->req = std::move(r);
  s->cb = std::move(cb);
  {
    std::lock_guard<std::mutex> lock(m.mu);
    s->id = m.next_id++;
    m.incoming.push_back(s);
    ++m.n_waiting;
  }
  m.cv.notify_all();
  return s->id;
}

void Engine::abort(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->aborts.push_back(id);
  }
  impl_->cv.notify_all();
}

bool Engine::step() {
  auto& m = *impl_;
  c10::InferenceMode guard;
  PhaseClock clock;
  m.drain_incoming();
  auto rows = m.schedule();
  if (rows.empty()) {
    m.publish();
    return false;
  }
  std::vector<Row> decode, prefill;
  for (auto& r : rows) (r.n == 1 && !r.seq->req.prompt_logprobs ? decode : prefill).push_back(r);
  clock.lap(m.phase_ns[decode.empty() ? 1 : 0][kSchedule]);
  m.run_group(decode, true);
  m.run_group(prefill, false);
  ++m.steps;
  m.publish();
  return true;
}

void Engine::run() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(impl_->mu);
      if (impl_->stopping) return;
    }
    if (step()) continue;
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->cv.wait_for(lock, std::chrono::milliseconds(50), [&] {
      return impl_->stopping || !impl_->incoming.empty() || !impl_->aborts.empty();
    });
  }
}

void Engine::stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
}

EngineStats Engine::stats() const {
  const auto& m = *impl_;
  EngineStats s;
  s.waiting = m.n_waiting;
  s.running = m.n_running;
  s.sliding_blocks_total = m.groups == 2 ? m.opt.num_sliding_blocks : 0;
  s.sliding_blocks_free = m.n_free_sliding;
  s.blocks_total = m.opt.num_blocks + s.sliding_blocks_total;
  s.blocks_free = m.n_free + s.sliding_blocks_free;
  s.preemptions = m.preemptions;
  s.steps = m.steps;
  s.decode_graphs = m.n_graphs;
  s.decode_steps = m.decode_steps;
  for (int g = 0; g < 2; ++g) {
    auto sec = [&](int p) { return double(m.phase_ns[g][p].load()) * 1e-9; };
    s.seconds[g] = {sec(kSchedule), sec(kForward), sec(kSample), sec(kEmit)};
  }
  return s;
}

}  // namespace uniattn::serve
