// uniattn-serve's request bodies that once ended the server (fuzz/fuzz_serve_request.cpp found
// them; their inputs are fuzz/corpus/serve_request/regress-*): OpenAIService::prepare answers each
// with a 400 ApiError instead of letting an exception out or overflowing the stack.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>
#include <variant>

#include "model/model_test_util.h"
#include "serve/http/openai_service.h"
#include "test_util.h"
#include "uniattn/io/tokenizer.h"
#include "uniattn/model/causal_lm.h"
#include "uniattn/serve/engine.h"

namespace uniattn {
namespace {
using serve::ApiError;
using serve::Endpoint;

// A corpus input: its first byte picks the endpoint (odd: chat), the rest is the body.
std::pair<Endpoint, std::string> regress_input(const std::string& name) {
  const auto path = test::source_dir() / "fuzz" / "corpus" / "serve_request" / name;
  std::ifstream f(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_FALSE(bytes.empty()) << path;
  if (bytes.empty()) return {Endpoint::Completions, ""};
  return {bytes[0] % 2 ? Endpoint::ChatCompletions : Endpoint::Completions, bytes.substr(1)};
}

class ServeRequestFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    // A byte-level vocabulary of the 64 characters '!'..'`', the tiny model's vocab size.
    BpeVocab v;
    for (char c = '!'; c <= '`'; ++c) v.tokens.emplace_back(1, c);
    tok_ = make_bpe_tokenizer(v);
    serve::EngineOptions eo;
    eo.num_blocks = 8;
    eo.max_model_len = 64;
    engine_ = std::make_unique<serve::Engine>(CausalLM(test::tiny_llama_config(2)), eo);
    serve::ServiceOptions so;
    so.max_model_len = eo.max_model_len;
    service_ = std::make_unique<serve::OpenAIService>(*engine_, *tok_, nullptr, so);
  }
  // prepare must return (never throw); the error it returns.
  ApiError refused(const std::string& body, Endpoint e) {
    std::variant<serve::Job, ApiError> r;
    EXPECT_NO_THROW(r = service_->prepare(body, e));
    EXPECT_TRUE(std::holds_alternative<ApiError>(r));
    return std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r) : ApiError{0, "", ""};
  }
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<serve::Engine> engine_;
  std::unique_ptr<serve::OpenAIService> service_;
};

TEST_F(ServeRequestFaults, AWellFormedBodyIsAccepted) {
  const auto r = service_->prepare(R"({"prompt": "ABC", "max_tokens": 2})", Endpoint::Completions);
  ASSERT_TRUE(std::holds_alternative<serve::Job>(r)) << std::get<ApiError>(r).message;
  EXPECT_EQ(std::get<serve::Job>(r).prompts.at(0).size(), 3u);
}

// nlohmann raises out_of_range (406), not parse_error, for a number beyond double's range.
TEST_F(ServeRequestFaults, NumberBeyondDoubleRangeIs400) {
  const auto [endpoint, body] = regress_input("regress-number_out_of_range");
  const auto e = refused(body, endpoint);
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message.find("malformed JSON"), std::string::npos) << e.message;
  const auto e2 = refused(R"({"prompt": "ABC", "max_tokens": 1e999})", Endpoint::Completions);
  EXPECT_EQ(e2.status, 400);
  EXPECT_NE(e2.message.find("malformed JSON"), std::string::npos) << e2.message;
  // The library's exception tag stays out of the message.
  const auto e3 = refused(R"({"prompt": "ABC",)", Endpoint::Completions);
  EXPECT_EQ(e3.message.rfind("malformed JSON: parse error at line 1", 0), 0u) << e3.message;
}

// Bodies nested deeper than 128 levels are refused before parsing (copies of a parsed value
// recurse per level: a 1 MB body of brackets overflowed the stack).
TEST_F(ServeRequestFaults, DeeplyNestedBodyIs400) {
  const auto [endpoint, body] = regress_input("regress-nested_body");
  const auto e = refused(body, endpoint);
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message.find("nested deeper than 128"), std::string::npos) << e.message;
  const std::string deep =
      R"({"prompt": )" + std::string(1 << 20, '[') + "1" + std::string(1 << 20, ']') + "}";
  const auto e2 = refused(deep, Endpoint::Completions);
  EXPECT_EQ(e2.status, 400);
  EXPECT_NE(e2.message.find("nested deeper than 128"), std::string::npos) << e2.message;
}

}  // namespace
}  // namespace uniattn
