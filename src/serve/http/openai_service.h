// The OpenAI-compatible service behind uniattn-serve, without sockets: it turns a request body
// into engine sequences (tokenisation, the model's chat template, end tokens, n samples per
// prompt), follows their tokens (detokenisation and stop strings, the request's and the
// checkpoint's, through TextStream), and writes OpenAI response bodies, server-sent-event chunks,
// /v1/models and Prometheus /metrics. The HTTP server (tools/uniattn_serve.cpp) only routes
// requests here.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "serve/http/api.h"
#include "uniattn/io/chat_template.h"
#include "uniattn/io/tokenizer.h"
#include "uniattn/serve/engine.h"

namespace uniattn::serve {

struct ServiceOptions {
  std::string model_name = "uniattn";
  int64_t max_model_len = 0;
  std::vector<int32_t> end_tokens;       // end every sequence unless ignore_eos
  std::vector<int32_t> chat_end_tokens;  // further end-of-turn ids for chat requests
  // The checkpoint's stop_strings (generation_config.json): text that ends every sequence unless
  // ignore_eos, cut from the output as a request's `stop` is (transformers keeps it).
  std::vector<std::string> stop_strings;
};

// The stop strings of one request: its own `stop`, then each of options.stop_strings it does not
// name already. ignore_eos leaves the checkpoint's out, as it leaves out options.end_tokens: both
// are the checkpoint's own end of a sequence, and ignore_eos asks for a run to max_tokens (load
// tests, benchmarks); the request's `stop` still applies, as vLLM's ignore_eos leaves `stop` alone.
std::vector<std::string> request_stop_strings(const CompletionRequest& request,
                                              const ServiceOptions& options);

// A validated, tokenised request.
struct Job {
  CompletionRequest req;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> prompt_texts;  // for echo
  int64_t max_tokens = 16;
  std::string id;
  int64_t created = 0;
};

// Latency histogram in Prometheus' text format (cumulative buckets, seconds).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double seconds);
  std::string render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<std::atomic<int64_t>> counts_;
  std::atomic<int64_t> n_{0};
  std::atomic<double> sum_{0};
};

class OpenAIService {
 public:
  // `tmpl` may be null (then the chat endpoint answers 400). The engine, tokenizer and template
  // must outlive the service.
  OpenAIService(Engine& engine, const Tokenizer& tokenizer, const ChatTemplate* tmpl,
                ServiceOptions options);

  // Parses, validates and tokenises a body: an ApiError (400) names the field.
  std::variant<Job, ApiError> prepare(const std::string& body, Endpoint endpoint) const;
  // Runs a job to the end. With `emit` set (stream), each server-sent event ("data: ...\n\n") is
  // passed to it, ending with "data: [DONE]\n\n"; when emit returns false (the client is gone)
  // the job's sequences are aborted and their blocks freed. Returns {status, body}: the response
  // JSON (empty for a stream), or an error body (500 when the engine failed a sequence).
  std::pair<int, std::string> run(const Job& job,
                                  const std::function<bool(const std::string&)>& emit);

  nlohmann::json models() const;
  std::string metrics() const;
  void count_request(int status);
  // Jobs inside run() now (SIGTERM waits for them to reach 0).
  int64_t active() const { return active_; }

 private:
  struct Choice;
  nlohmann::json choice_json(const Job& job, const Choice& c, bool stream) const;
  nlohmann::json logprobs_json(const Job& job, const Choice& c, size_t from_token,
                               size_t from_prompt) const;
  EngineRequest engine_request(const Job& job, size_t prompt, int64_t sample) const;

  Engine& engine_;
  const Tokenizer& tok_;
  const ChatTemplate* tmpl_;
  ServiceOptions opt_;
  std::atomic<int64_t> requests_ok_{0}, requests_bad_{0}, requests_failed_{0},
      requests_cancelled_{0};
  std::atomic<int64_t> prompt_tokens_{0}, generation_tokens_{0}, active_{0};
  Histogram ttft_, itl_;
};

}  // namespace uniattn::serve
