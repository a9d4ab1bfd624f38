// uniattn-serve's request bodies (OpenAI /v1/completions and /v1/chat/completions): the body text
// is parsed as OpenAIService::prepare does, then validated by parse_completion_request, which
// must answer every body with a request or an ApiError and never throw. First byte: the endpoint.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "serve/http/api.h"
#include "uniattn/io/json_depth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  using serve::Endpoint;
  if (size < 1) return 0;
  const auto endpoint = data[0] % 2 ? Endpoint::ChatCompletions : Endpoint::Completions;
  const auto body = fuzz::as_text(data + 1, size - 1);
  nlohmann::json j;
  try {
    check_json_depth(body, "request body");
    j = nlohmann::json::parse(body);
  } catch (const nlohmann::json::exception&) {
    return 0;  // answered 400 "malformed JSON" (parse_error, and out_of_range for 1e999)
  } catch (const Error&) {
    return 0;  // answered 400 (nested too deep)
  }
  auto r = serve::parse_completion_request(j, endpoint);
  if (auto* e = std::get_if<serve::ApiError>(&r)) (void)serve::error_body(*e).dump();
  return 0;
}
