// Request parsing and validation of uniattn-serve (no sockets, no model): every bad input gets a
// 400 naming its field; good requests keep their values.
#include <gtest/gtest.h>

#include "serve/http/api.h"

namespace uniattn::serve {
namespace {

using json = nlohmann::json;

ApiError error_of(const json& body, Endpoint ep = Endpoint::Completions) {
  auto r = parse_completion_request(body, ep);
  EXPECT_TRUE(std::holds_alternative<ApiError>(r)) << body.dump();
  return std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r) : ApiError{};
}

CompletionRequest ok(const json& body, Endpoint ep = Endpoint::Completions) {
  auto r = parse_completion_request(body, ep);
  if (auto* e = std::get_if<ApiError>(&r)) ADD_FAILURE() << e->message;
  return std::holds_alternative<CompletionRequest>(r) ? std::get<CompletionRequest>(r)
                                                      : CompletionRequest{};
}

TEST(ServeApi, ParsesCompletionFields) {
  auto r = ok({{"model", "m"},
               {"prompt", "Hello"},
               {"max_tokens", 5},
               {"temperature", 0},
               {"top_p", 0.5},
               {"top_k", 4},
               {"seed", 7},
               {"stop", {"\n", "."}},
               {"stop_token_ids", {2}},
               {"frequency_penalty", 0.5},
               {"presence_penalty", -0.5},
               {"repetition_penalty", 1.1},
               {"n", 2},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}},
               {"logprobs", 3},
               {"echo", true},
               {"ignore_eos", true},
               {"user", "u"}});
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "Hello");
  EXPECT_EQ(*r.max_tokens, 5);
  EXPECT_EQ(r.temperature, 0);
  EXPECT_EQ(r.top_p, 0.5);
  EXPECT_EQ(r.top_k, 4);
  EXPECT_EQ(*r.seed, 7u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "."}));
  EXPECT_EQ(r.stop_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(r.frequency_penalty, 0.5);
  EXPECT_EQ(r.presence_penalty, -0.5);
  EXPECT_EQ(r.repetition_penalty, 1.1);
  EXPECT_EQ(r.n, 2);
  EXPECT_TRUE(r.stream && r.include_usage && r.echo && r.ignore_eos);
  EXPECT_EQ(r.logprobs, 3);
}

TEST(ServeApi, PromptForms) {
  EXPECT_EQ(ok({{"prompt", {1, 2, 3}}}).prompts[0].ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(ok({{"prompt", {"a", "b"}}}).prompts.size(), 2u);
  auto lists = ok({{"prompt", {{1, 2}, {3}}}}).prompts;
  ASSERT_EQ(lists.size(), 2u);
  EXPECT_TRUE(lists[1].is_ids);
  EXPECT_EQ(error_of({{"prompt", ""}}).param, "prompt");
  EXPECT_EQ(error_of({{"prompt", json::array()}}).param, "prompt");
  EXPECT_EQ(error_of({{"prompt", {1, -2}}}).param, "prompt");
  EXPECT_EQ(error_of({{"prompt", 5}}).param, "prompt");
  EXPECT_EQ(error_of({{"max_tokens", 5}}).param, "prompt");  // missing
}

TEST(ServeApi, ChatFields) {
  json msgs = {{{"role", "user"}, {"content", "hi"}}};
  auto r = ok(
      {{"messages", msgs}, {"logprobs", true}, {"top_logprobs", 2}, {"max_completion_tokens", 3}},
      Endpoint::ChatCompletions);
  EXPECT_EQ(r.logprobs, 2);
  EXPECT_EQ(*r.max_tokens, 3);
  EXPECT_EQ(ok({{"messages", msgs}, {"logprobs", true}}, Endpoint::ChatCompletions).logprobs, 0);
  EXPECT_EQ(ok({{"messages", msgs}}, Endpoint::ChatCompletions).logprobs, -1);
  EXPECT_EQ(error_of({{"messages", msgs}, {"top_logprobs", 2}}, Endpoint::ChatCompletions).param,
            "top_logprobs");
  EXPECT_EQ(error_of({{"messages", msgs}, {"echo", true}}, Endpoint::ChatCompletions).param,
            "echo");
  EXPECT_EQ(error_of({{"messages", "hi"}}, Endpoint::ChatCompletions).param, "messages");
  EXPECT_EQ(error_of({{"messages", {{{"content", "x"}}}}}, Endpoint::ChatCompletions).param,
            "messages");
  EXPECT_EQ(error_of({{"prompt", "x"}}, Endpoint::ChatCompletions).param, "prompt");
}

// Each out-of-range or wrongly typed value is refused with its field named.
TEST(ServeApi, RefusesBadValues) {
  const std::vector<std::pair<std::string, json>> bad = {
      {"temperature", -0.1},
      {"temperature", 2.5},
      {"temperature", "hot"},
      {"top_p", 0},
      {"top_p", 1.5},
      {"top_k", -2},
      {"top_k", 1.5},
      {"max_tokens", 0},
      {"max_tokens", "5"},
      {"n", 0},
      {"n", 17},
      {"logprobs", 21},
      {"logprobs", true},
      {"frequency_penalty", 3},
      {"presence_penalty", -2.5},
      {"repetition_penalty", 0},
      {"seed", -1},
      {"stream", 1},
      {"echo", "yes"},
      {"stop", 5},
      {"stop", {"a", 3}},
      {"stop_token_ids", {-1}},
      {"stream_options", {{"x", 1}}},
      // stream_options without stream
      {"stream_options", {{"include_usage", true}}},
      {"model", 3},
      {"logit_bias", json::object()},
      {"best_of", 2},
      {"frobnicate", 1}};
  for (const auto& [field, value] : bad) {
    json body = {{"prompt", "x"}, {field, value}};
    auto e = error_of(body);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param.substr(0, field.size()), field) << body.dump() << " -> " << e.message;
    EXPECT_NE(e.message.find(field), std::string::npos) << e.message;
  }
  EXPECT_EQ(error_of(json::array()).status, 400);
  EXPECT_EQ(error_of("text").status, 400);
  // Ranges read as written: top_p is in (0, 1], so 0 is out.
  EXPECT_EQ(error_of({{"prompt", "x"}, {"top_p", 0}}).message, "'top_p': must be in (0, 1], got 0");
  EXPECT_EQ(error_of({{"prompt", "x"}, {"temperature", 2.5}}).message,
            "'temperature': must be in [0, 2], got 2.5");
}

TEST(ServeApi, LengthCheckAndErrorBody) {
  EXPECT_FALSE(check_length(10, 6, 16));
  EXPECT_EQ(check_length(16, 1, 16)->param, "prompt");
  EXPECT_EQ(check_length(10, 7, 16)->param, "max_tokens");
  const auto body = error_body({400, "'n': bad", "n"});
  EXPECT_EQ(body["error"]["message"], "'n': bad");
  EXPECT_EQ(body["error"]["param"], "n");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_TRUE(error_body({500, "x", ""})["error"]["param"].is_null());
}

}  // namespace
}  // namespace uniattn::serve
