// OpenAI API requests for uniattn-serve, parsed and validated without any socket: a request body
// (JSON) becomes a CompletionRequest or an ApiError naming the offending field, as the OpenAI API
// reports it ({"error": {"message", "type", "param", "code"}}). Field semantics follow OpenAI's
// /v1/completions and /v1/chat/completions references, plus vLLM's extra sampling fields (top_k,
// repetition_penalty, stop_token_ids, ignore_eos).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace uniattn::serve {

enum class Endpoint { Completions, ChatCompletions };

struct ApiError {
  int status = 400;
  std::string message;
  std::string param;  // the field, "" when none
  std::string type = "invalid_request_error";
};

// One prompt: text to tokenize, or token ids given as such.
struct Prompt {
  std::string text;
  std::vector<int32_t> ids;
  bool is_ids = false;
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;
  std::vector<Prompt> prompts;        // completions: one or more
  nlohmann::ordered_json messages;    // chat: the conversation (array of objects)
  std::optional<int64_t> max_tokens;  // unset: 16 (completions) or the rest of the context (chat)
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;  // 0 or -1: off
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  double frequency_penalty = 0, presence_penalty = 0, repetition_penalty = 1;
  int64_t n = 1;
  bool stream = false, include_usage = false;
  int64_t logprobs = -1;  // -1: none; else the number of top alternatives (0..20)
  bool echo = false, ignore_eos = false;
};

// Parses a request body. Errors (status 400): the body is not an object, an unknown field, a
// field of the wrong type, a value out of range (temperature [0, 2], top_p (0, 1], top_k >= -1,
// penalties [-2, 2] and repetition_penalty > 0, n [1, 16], logprobs/top_logprobs [0, 20],
// max_tokens >= 1), a missing prompt/messages, echo on the chat endpoint. Never throws.
std::variant<CompletionRequest, ApiError> parse_completion_request(const nlohmann::json& body,
                                                                   Endpoint endpoint);

// Length check after tokenisation: prompt + max_tokens must fit max_model_len (param "prompt"
// when the prompt alone does not fit, else "max_tokens").
std::optional<ApiError> check_length(int64_t prompt_tokens, int64_t max_tokens,
                                     int64_t max_model_len);

// {"error": {"message", "type", "param", "code"}}.
nlohmann::json error_body(const ApiError& error);
// error_body as text; bytes that are not UTF-8 (a request path, a tokenizer's piece) become
// U+FFFD instead of making the dump throw.
std::string error_json(const ApiError& error);

}  // namespace uniattn::serve
