// uniattn-serve and a checkpoint's stop_strings (generation_config.json, ServiceOptions): they
// join each request's `stop` (its own first, each string once) unless the request sets
// ignore_eos, and OpenAIService::run cuts the text before them as before a request's `stop`. The
// expected text comes from a run without any stop string on the same model: its prefix before
// the first occurrence of the stop string.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "model/model_test_util.h"
#include "serve/http/openai_service.h"
#include "uniattn/io/tokenizer.h"
#include "uniattn/model/causal_lm.h"
#include "uniattn/serve/engine.h"

namespace uniattn::serve {
namespace {

using json = nlohmann::json;

TEST(ServeStopStrings, CheckpointStringsFollowTheRequestsUnlessIgnoreEos) {
  ServiceOptions o;
  o.stop_strings = {"User:", "\n\n"};
  CompletionRequest r;
  r.stop = {"\n\n", "."};
  EXPECT_EQ(request_stop_strings(r, o), (std::vector<std::string>{"\n\n", ".", "User:"}));
  r.stop.clear();
  EXPECT_EQ(request_stop_strings(r, o), o.stop_strings);
  r.stop = {"."};
  r.ignore_eos = true;  // the checkpoint's end conditions are off; the request's own stay
  EXPECT_EQ(request_stop_strings(r, o), r.stop);
  EXPECT_EQ(request_stop_strings(CompletionRequest{}, ServiceOptions{}),
            std::vector<std::string>{});
}

// A greedy completion on a tiny random model, served with the checkpoint stop strings `stops`.
class ServeRun {
 public:
  explicit ServeRun(std::vector<std::string> stops) {
    // A byte-level vocabulary of the 64 characters '!'..'`', the tiny model's vocab size.
    BpeVocab v;
    for (char c = '!'; c <= '`'; ++c) v.tokens.emplace_back(1, c);
    tok_ = make_bpe_tokenizer(v);
    EngineOptions eo;
    eo.num_blocks = 8;
    eo.max_model_len = 64;
    at::manual_seed(7);  // the same weights in every ServeRun
    engine_ = std::make_unique<Engine>(CausalLM(test::tiny_llama_config(2)), eo);
    ServiceOptions so;
    so.max_model_len = eo.max_model_len;
    so.stop_strings = std::move(stops);
    service_ = std::make_unique<OpenAIService>(*engine_, *tok_, nullptr, so);
    thread_ = std::thread([this] { engine_->run(); });
  }
  ~ServeRun() {
    engine_->stop();
    thread_.join();
  }
  // {text, finish_reason} of a request body.
  std::pair<std::string, std::string> complete(const json& body) {
    auto job = service_->prepare(body.dump(), Endpoint::Completions);
    if (auto* e = std::get_if<ApiError>(&job)) {
      ADD_FAILURE() << e->message;
      return {};
    }
    const auto [status, text] = service_->run(std::get<Job>(job), nullptr);
    EXPECT_EQ(status, 200) << text;
    const json c = json::parse(text)["choices"][0];
    return {c["text"].get<std::string>(), c["finish_reason"].get<std::string>()};
  }

 private:
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<OpenAIService> service_;
  std::thread thread_;
};

TEST(ServeStopStrings, RunCutsTheTextBeforeACheckpointStopString) {
  const json body = {{"prompt", "ABC"}, {"max_tokens", 24}, {"temperature", 0}};
  std::string full;
  {
    ServeRun plain({});
    auto [text, finish] = plain.complete(body);
    EXPECT_EQ(finish, "length");
    full = text;
  }
  ASSERT_EQ(full.size(), 24u) << full;
  // A two-character string that first occurs a third of the way in or later, so that the cut
  // leaves some text and removes some.
  size_t at = std::string::npos;
  for (size_t i = full.size() / 3; i + 2 <= full.size() && at == std::string::npos; ++i)
    if (full.find(full.substr(i, 2)) == i) at = i;
  ASSERT_NE(at, std::string::npos) << "no usable stop string in " << full;
  const std::string stop = full.substr(at, 2);

  ServeRun served({stop});
  auto [cut, finish] = served.complete(body);
  EXPECT_EQ(cut, full.substr(0, at));
  EXPECT_EQ(finish, "stop");
  // ignore_eos: the checkpoint's stop string no longer applies.
  json ignore = body;
  ignore["ignore_eos"] = true;
  auto [whole, length] = served.complete(ignore);
  EXPECT_EQ(whole, full);
  EXPECT_EQ(length, "length");
  // The request's own stop still applies under ignore_eos, and cuts where it first occurs.
  ignore["stop"] = {full.substr(at + 1, 1)};
  EXPECT_EQ(served.complete(ignore).first, full.substr(0, full.find(full.substr(at + 1, 1))));
}

}  // namespace
}  // namespace uniattn::serve
