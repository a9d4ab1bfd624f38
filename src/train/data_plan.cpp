// Training data: instruction records (rendered and tokenised by data/records.h) or pre-tokenised
// JSONL, optional packing, and the deterministic batch plan that makes resumption exact: the
// sequences of batch b of a stage are a pure function of (seed, stage, b), so the data position is
// the step.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <random>

#include "internal.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/data/chat_records.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn::train_detail {
namespace {

std::vector<Sequence> load_token_file(const std::string& path, int64_t vocab, int64_t max_len) {
  std::ifstream in(path);
  UNIATTN_CHECK(in.good(), path, ": cannot open the data file");
  std::vector<Sequence> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail(path, ":", lineno, ": invalid JSON: ", e.what());
    }
    UNIATTN_CHECK(j.is_object() && j.contains("ids") && j["ids"].is_array(), path, ":", lineno,
                  ": expected an object with an \"ids\" array");
    for (const auto& [k, v] : j.items())
      UNIATTN_CHECK(k == "ids" || k == "loss_mask", path, ":", lineno, ": unknown key \"", k, "\"");
    Sequence s;
    for (const auto& v : j["ids"]) {
      UNIATTN_CHECK(v.is_number_integer(), path, ":", lineno, ": ids must be integers");
      const int64_t id = v.get<int64_t>();
      UNIATTN_CHECK(id >= 0 && id < vocab, path, ":", lineno, ": token id ", id,
                    " outside the vocabulary [0, ", vocab, ")");
      s.ids.push_back(static_cast<int32_t>(id));
    }
    UNIATTN_CHECK(s.ids.size() >= 2, path, ":", lineno, ": a sequence needs at least 2 ids");
    if (j.contains("loss_mask")) {
      const auto& m = j["loss_mask"];
      UNIATTN_CHECK(m.is_array() && m.size() == s.ids.size(), path, ":", lineno,
                    ": loss_mask must be an array as long as ids");
      for (const auto& v : m) {
        UNIATTN_CHECK(v.is_number_integer() && (v == 0 || v == 1), path, ":", lineno,
                      ": loss_mask entries must be 0 or 1");
        s.loss_mask.push_back(static_cast<uint8_t>(v.get<int>()));
      }
    } else {
      s.loss_mask.assign(s.ids.size(), 1);
    }
    s.loss_mask[0] = 0;  // the first token has no prefix to be predicted from
    if (static_cast<int64_t>(s.ids.size()) > max_len) {
      s.ids.resize(static_cast<size_t>(max_len));
      s.loss_mask.resize(static_cast<size_t>(max_len));
      s.truncated = true;
    }
    if (s.target_tokens() > 0) out.push_back(std::move(s));
  }
  UNIATTN_CHECK(!out.empty(), path, ": no usable sequences");
  return out;
}

// Concatenates examples (in file order) into sequences of exactly max_len tokens; the last
// partial one is kept. The first token of each example keeps its mask (it is predicted from the
// previous example's end only when it is a target, which templates never make it).
std::vector<Sequence> pack(const std::vector<Sequence>& in, int64_t max_len) {
  std::vector<Sequence> out;
  Sequence cur;
  for (const auto& s : in) {
    for (size_t i = 0; i < s.ids.size(); ++i) {
      cur.ids.push_back(s.ids[i]);
      cur.loss_mask.push_back(s.loss_mask[i]);
      if (static_cast<int64_t>(cur.ids.size()) == max_len) {
        cur.loss_mask[0] = 0;
        if (cur.target_tokens() > 0) out.push_back(std::move(cur));
        cur = Sequence();
      }
    }
  }
  if (cur.ids.size() >= 2) {
    cur.loss_mask[0] = 0;
    if (cur.target_tokens() > 0) out.push_back(std::move(cur));
  }
  return out;
}

// `messages` records rendered with the chat template of the tokenizer's model, loss on the
// assistant turns (data/chat_records.h); response_only_loss false scores every token.
std::vector<Sequence> load_chat_sequences(const std::string& path, const TrainConfig& c,
                                          int64_t vocab_size, const std::string& model_path) {
  const std::string tok_path = c.data.tokenizer.empty() ? model_path : c.data.tokenizer;
  const auto tok = load_tokenizer(tok_path);
  UNIATTN_CHECK(tok->vocab_size() <= vocab_size, path, ": the tokenizer has ", tok->vocab_size(),
                " tokens but the model only ", vocab_size);
  TokenizeStats stats;
  auto seqs = tokenize_conversations(load_conversations(path), chat_template_for_data(tok_path),
                                     *tok, c.data.max_length, &stats, path);
  UNIATTN_CHECK(!seqs.empty(), path, ": no conversation has an assistant token left (",
                stats.records, " records, max_length ", c.data.max_length, ")");
  if (!c.data.response_only_loss)
    for (auto& s : seqs) {
      std::fill(s.loss_mask.begin(), s.loss_mask.end(), 1);
      s.loss_mask[0] = 0;
    }
  return seqs;
}

}  // namespace

std::vector<Sequence> load_sequences(const TrainConfig& c, bool eval, int64_t vocab_size,
                                     const std::string& model_path) {
  const std::string& path = eval ? c.data.eval : c.data.train;
  std::vector<Sequence> seqs;
  if (c.data.format == "tokens") {
    seqs = load_token_file(path, vocab_size, c.data.max_length);
  } else if (c.data.template_ == "chat") {
    seqs = load_chat_sequences(path, c, vocab_size, model_path);
  } else {
    const auto& t = c.data.template_;
    PromptTemplate tmpl = (t == "alpaca" || t == "tulu")
                              ? PromptTemplate::by_name(t)
                              : PromptTemplate::custom(t, c.data.response_field);
    if (t == "alpaca" || t == "tulu") tmpl.response_field = c.data.response_field;
    const auto records = load_records(path, &tmpl);
    const auto tok = load_tokenizer(c.data.tokenizer.empty() ? model_path : c.data.tokenizer);
    UNIATTN_CHECK(tok->vocab_size() <= vocab_size, path, ": the tokenizer has ", tok->vocab_size(),
                  " tokens but the model only ", vocab_size);
    TokenizeStats stats;
    seqs = tokenize_records(records, tmpl, text_encoder(*tok), c.data.max_length, &stats);
    UNIATTN_CHECK(!seqs.empty(), path, ": every record lost its response to truncation (",
                  stats.records, " records, max_length ", c.data.max_length, ")");
    if (!c.data.response_only_loss)
      for (auto& s : seqs) {
        std::fill(s.loss_mask.begin(), s.loss_mask.end(), 1);
        s.loss_mask[0] = 0;
      }
  }
  if (eval && c.data.eval_max_examples > 0 &&
      static_cast<int64_t>(seqs.size()) > c.data.eval_max_examples)
    seqs.resize(static_cast<size_t>(c.data.eval_max_examples));
  if (!eval && c.data.packing) seqs = pack(seqs, c.data.max_length);
  UNIATTN_CHECK(!seqs.empty(), path, ": no sequences with a target token");
  return seqs;
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t stage, int64_t epoch,
                                 bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  if (!shuffle) return order;
  // Fisher-Yates with our own draws: std::shuffle's use of the engine is implementation-defined,
  // and the order must not change with the standard library.
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(stage) * 1000003ull +
                      static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

std::vector<int64_t> batch_indices(int64_t n, int64_t global_batch, uint64_t seed, int64_t stage,
                                   int64_t batch, bool shuffle) {
  const int64_t per_epoch = n / global_batch;
  UNIATTN_CHECK(per_epoch > 0, "the training data has ", n,
                " sequences, fewer than training.global_batch (", global_batch, ")");
  const int64_t epoch = batch / per_epoch, pos = batch % per_epoch;
  const auto order = epoch_order(n, seed, stage, epoch, shuffle);
  return {order.begin() + pos * global_batch, order.begin() + (pos + 1) * global_batch};
}

void collate(const std::vector<Sequence>& data, const std::vector<int64_t>& idx, int32_t pad,
             at::Tensor& ids, at::Tensor& mask) {
  size_t len = 0;
  for (auto i : idx) len = std::max(len, data[static_cast<size_t>(i)].ids.size());
  const auto b = static_cast<int64_t>(idx.size()), l = static_cast<int64_t>(len);
  ids = at::full({b, l}, static_cast<int64_t>(pad), at::kLong);
  mask = at::zeros({b, l}, at::kFloat);
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mask.accessor<float, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const auto& s = data[static_cast<size_t>(idx[static_cast<size_t>(r)])];
    for (size_t j = 0; j < s.ids.size(); ++j) {
      ia[r][static_cast<int64_t>(j)] = s.ids[j];
      ma[r][static_cast<int64_t>(j)] = s.loss_mask[j] ? 1.f : 0.f;
    }
  }
}

}  // namespace uniattn::train_detail
