#include "serve/http/api.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <set>

namespace uniattn::serve {

namespace {

using json = nlohmann::json;

// Thrown inside the parser only; parse_completion_request turns it into an ApiError.
struct Bad {
  std::string param, message;
};

[[noreturn]] void bad(const std::string& param, const std::string& what) {
  throw Bad{param, "'" + param + "': " + what};
}

// A range bound as written ("0", "2", "100").
std::string bound(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", x);
  return buf;
}

// A number in [lo, hi], or in (lo, hi] when open_lo.
double get_number(const json& v, const std::string& k, double lo, double hi, bool open_lo = false) {
  if (!v.is_number()) bad(k, "must be a number");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || (open_lo && x == lo) || x > hi)
    bad(k, std::string("must be in ") + (open_lo ? "(" : "[") + bound(lo) + ", " + bound(hi) +
               "], got " + v.dump());
  return x;
}

int64_t get_int(const json& v, const std::string& k, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) bad(k, "must be an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    bad(k, "out of range");
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    bad(k, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
  return x;
}

bool get_bool(const json& v, const std::string& k) {
  if (!v.is_boolean()) bad(k, "must be a boolean");
  return v.get<bool>();
}

std::vector<int32_t> get_ids(const json& v, const std::string& k) {
  if (!v.is_array()) bad(k, "must be an array of token ids");
  std::vector<int32_t> out;
  for (const auto& x : v)
    out.push_back(static_cast<int32_t>(get_int(x, k, 0, std::numeric_limits<int32_t>::max())));
  return out;
}

// "prompt": a string, a list of strings, a list of ids, or a list of lists of ids.
std::vector<Prompt> get_prompts(const json& v) {
  auto text = [](const json& s) { return Prompt{s.get<std::string>(), {}, false}; };
  auto ids = [](const json& a) { return Prompt{{}, get_ids(a, "prompt"), true}; };
  std::vector<Prompt> out;
  if (v.is_string()) {
    out.push_back(text(v));
  } else if (v.is_array() && !v.empty() && v[0].is_number_integer()) {
    out.push_back(ids(v));
  } else if (v.is_array() && !v.empty()) {
    for (const auto& p : v) {
      if (p.is_string())
        out.push_back(text(p));
      else if (p.is_array())
        out.push_back(ids(p));
      else
        bad("prompt", "must be a string, a list of strings or a list of token-id lists");
    }
  } else {
    bad("prompt", "must be a non-empty string, a list of strings or a list of token ids");
  }
  for (const auto& p : out)
    if (p.is_ids ? p.ids.empty() : p.text.empty()) bad("prompt", "must not be empty");
  return out;
}

json get_messages(const json& v) {
  if (!v.is_array() || v.empty()) bad("messages", "must be a non-empty array of messages");
  for (const auto& m : v) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      bad("messages", "each message must be an object with a string 'role'");
    if (m.contains("content") && !m["content"].is_string() && !m["content"].is_null())
      bad("messages", "only string 'content' is supported");
  }
  return v;
}

std::vector<std::string> get_stop(const json& v) {
  if (v.is_null()) return {};
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array() || v.size() > 16) bad("stop", "must be a string or a list of at most 16");
  std::vector<std::string> out;
  for (const auto& s : v) {
    if (!s.is_string() || s.get<std::string>().empty()) bad("stop", "must hold non-empty strings");
    out.push_back(s.get<std::string>());
  }
  return out;
}

void parse_field(CompletionRequest& r, const std::string& k, const json& v, bool chat) {
  if (k == "model") {
    if (!v.is_string()) bad(k, "must be a string");
    r.model = v.get<std::string>();
  } else if (k == "prompt" && !chat) {
    r.prompts = get_prompts(v);
  } else if (k == "messages" && chat) {
    r.messages = get_messages(v);
  } else if (k == "max_tokens" || (chat && k == "max_completion_tokens")) {
    if (!v.is_null()) r.max_tokens = get_int(v, k, 1, std::numeric_limits<int32_t>::max());
  } else if (k == "temperature") {
    if (!v.is_null()) r.temperature = get_number(v, k, 0, 2);
  } else if (k == "top_p") {
    if (!v.is_null()) r.top_p = get_number(v, k, 0, 1, true);
  } else if (k == "top_k") {
    if (!v.is_null()) r.top_k = std::max<int64_t>(get_int(v, k, -1, 1 << 30), 0);
  } else if (k == "seed") {
    if (!v.is_null()) r.seed = uint64_t(get_int(v, k, 0, std::numeric_limits<int64_t>::max()));
  } else if (k == "stop") {
    r.stop = get_stop(v);
  } else if (k == "stop_token_ids") {
    if (!v.is_null()) r.stop_token_ids = get_ids(v, k);
  } else if (k == "frequency_penalty") {
    if (!v.is_null()) r.frequency_penalty = get_number(v, k, -2, 2);
  } else if (k == "presence_penalty") {
    if (!v.is_null()) r.presence_penalty = get_number(v, k, -2, 2);
  } else if (k == "repetition_penalty") {
    // A floor: a penalty that rounds to 0 in fp32 would divide logits into inf.
    if (!v.is_null()) r.repetition_penalty = get_number(v, k, 1e-6, 100);
  } else if (k == "n") {
    if (!v.is_null()) r.n = get_int(v, k, 1, 16);
  } else if (k == "stream") {
    if (!v.is_null()) r.stream = get_bool(v, k);
  } else if (k == "stream_options") {
    if (v.is_null()) return;
    if (!v.is_object()) bad(k, "must be an object");
    for (const auto& [sk, sv] : v.items()) {
      if (sk != "include_usage") bad(k + "." + sk, "unknown field");
      r.include_usage = get_bool(sv, k + ".include_usage");
    }
  } else if (k == "logprobs") {
    if (v.is_null()) return;
    if (chat)
      r.logprobs = get_bool(v, k) ? std::max<int64_t>(r.logprobs, 0) : -1;
    else
      r.logprobs = get_int(v, k, 0, 20);
  } else if (k == "top_logprobs" && chat) {
    if (!v.is_null()) r.logprobs = get_int(v, k, 0, 20);
  } else if (k == "echo" && !chat) {
    if (!v.is_null()) r.echo = get_bool(v, k);
  } else if (k == "ignore_eos") {
    if (!v.is_null()) r.ignore_eos = get_bool(v, k);
  } else if (k == "user") {
    if (!v.is_string() && !v.is_null()) bad(k, "must be a string");
  } else {
    bad(k, "unknown or unsupported field");
  }
}

}  // namespace

std::variant<CompletionRequest, ApiError> parse_completion_request(const json& body,
                                                                   Endpoint endpoint) {
  const bool chat = endpoint == Endpoint::ChatCompletions;
  CompletionRequest r;
  r.endpoint = endpoint;
  try {
    if (!body.is_object()) throw Bad{"", "the request body must be a JSON object"};
    bool top_logprobs = false, logprobs_on = false, stream_options = false;
    for (const auto& [k, v] : body.items()) {
      parse_field(r, k, v, chat);
      if (k == "top_logprobs" && !v.is_null()) top_logprobs = true;
      if (k == "logprobs" && v.is_boolean()) logprobs_on = v.get<bool>();
      if (k == "stream_options" && !v.is_null()) stream_options = true;
    }
    if (stream_options && !r.stream) bad("stream_options", "needs 'stream': true");
    if (chat && top_logprobs && !logprobs_on) bad("top_logprobs", "needs 'logprobs': true");
    if (chat && logprobs_on && !top_logprobs) r.logprobs = 0;
    if (!chat && r.prompts.empty()) bad("prompt", "is required");
    if (chat && r.messages.is_null()) bad("messages", "is required");
  } catch (const Bad& b) {
    return ApiError{400, b.message, b.param};
  } catch (const json::exception& e) {  // e.g. a string that is not valid UTF-8 on get<>
    return ApiError{400, std::string("invalid request: ") + e.what(), ""};
  }
  return r;
}

std::optional<ApiError> check_length(int64_t prompt_tokens, int64_t max_tokens,
                                     int64_t max_model_len) {
  if (prompt_tokens >= max_model_len)
    return ApiError{400,
                    "'prompt': " + std::to_string(prompt_tokens) +
                        " tokens do not fit the context of " + std::to_string(max_model_len) +
                        " tokens",
                    "prompt"};
  if (prompt_tokens + max_tokens > max_model_len)
    return ApiError{400,
                    "'max_tokens': " + std::to_string(max_tokens) + " + " +
                        std::to_string(prompt_tokens) + " prompt tokens exceed the context of " +
                        std::to_string(max_model_len) + " tokens",
                    "max_tokens"};
  return std::nullopt;
}

json error_body(const ApiError& e) {
  return json{{"error",
               {{"message", e.message},
                {"type", e.type},
                {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                {"code", e.status}}}};
}

std::string error_json(const ApiError& error) {
  return error_body(error).dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace uniattn::serve
