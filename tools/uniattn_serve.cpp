// uniattn-serve: an OpenAI-compatible HTTP server (cpp-httplib) over the continuous-batching
// engine (uniattn/serve/engine.h). Routes /v1/completions, /v1/chat/completions, /v1/models,
// /health and /metrics to the OpenAIService (src/serve/http/); prints "listening on PORT" on
// stdout once bound. SIGTERM/SIGINT: new requests get 503, running ones finish, then it exits.
#include <httplib.h>
#include <signal.h>
#include <sys/socket.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "bench.h"
#include "cli_util.h"
#include "model_args.h"
#include "serve/http/id_tokenizer.h"
#include "serve/http/openai_service.h"
#include "uniattn/config/generation_config.h"
#include "uniattn/error.h"
#include "uniattn/error_message.h"
#include "uniattn/infer/generate.h"
#include "uniattn/model/checkpoint.h"

namespace {

using uniattn::serve::Endpoint;
using uniattn::serve::OpenAIService;

struct Args {
  std::string model_path, variant = "none", superblocks, device = "cpu", dtype = "f32";
  std::string host = "127.0.0.1", served_name, random_weights;
  int port = 8000;
  double kv_memory_gb = 1.0;
  int64_t max_seqs = 16, block_size = 16, prefill_chunk = 64, max_model_len = 0, threads = 64;
  int64_t startup_capture_len = 4096;
  bool enforce_eager = false, disable_hybrid_kv_cache = false;
};

void add_options(CLI::App& app, Args& a) {
  app.add_option("--model", a.model_path, "HF model directory or .gguf file (default: the demo)");
  app.add_option("--uniattn", a.variant, "Unify the model: none|softmax|uniattn|cla")
      ->check(CLI::IsMember({"none", "softmax", "uniattn", "cla"}));
  app.add_option("--superblocks", a.superblocks, "SuperBlocks as SIZE,BEGIN,END or groups");
  app.add_option("--device", a.device, "cpu, cuda or cuda:N");
  app.add_option("--dtype", a.dtype, "f32 or bf16");
  app.add_option("--host", a.host, "Address to listen on (default 127.0.0.1)");
  app.add_option("--port", a.port, "Port (0: any free port; the one taken is printed)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--served-model-name", a.served_name, "Name in /v1/models (default: file name)");
  app.add_option("--kv-memory-gb", a.kv_memory_gb, "KV cache pool size in GiB (default 1)")
      ->check(CLI::Range(1e-6, 1e6));
  app.add_option("--max-seqs", a.max_seqs, "Sequences in the running batch at most (16)");
  app.add_option("--block-size", a.block_size, "Tokens per KV block (16)");
  app.add_option("--prefill-chunk", a.prefill_chunk, "Prompt tokens prefilled per step (64)");
  app.add_option("--max-model-len", a.max_model_len, "Context length (default: the config's)");
  app.add_option("--http-threads", a.threads, "HTTP worker threads (64)");
  app.add_flag("--enforce-eager", a.enforce_eager,
               "Run decode steps eagerly, without CUDA graphs (as vLLM's flag)");
  app.add_option("--startup-capture-len", a.startup_capture_len,
                 "Capture the decode CUDA graphs of every batch size for contexts up to this "
                 "many tokens before serving (4096; 0: capture each on first use; ignored "
                 "without CUDA)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  app.add_flag("--disable-hybrid-kv-cache", a.disable_hybrid_kv_cache,
               "Models mixing sliding and global layers (Gemma-2/3): one block group for all "
               "layers instead of a window-sized one for the sliding layers (as vLLM's "
               "--disable-hybrid-kv-cache-manager)");
  app.add_option("--random-weights", a.random_weights,
                 "Serve a model of uniattn-bench's shape NAME (llama8b | smollm2) with random "
                 "N(0, 0.02) weights and token-id text, for load tests; --superblocks defaults "
                 "to uniattn-bench's layout")
      ->check(CLI::IsMember({"llama8b", "smollm2"}))
      ->excludes("--model");
}

// The model of uniattn-bench's `name` shape with random weights (seeded, so every run serves the
// same model), unified as uniattn-bench unifies it unless --superblocks says otherwise.
uniattn::CausalLM random_model(const Args& a) {
  uniattn::ModelConfig c = uniattn::bench_model(a.random_weights, true).config;
  const auto variant = uniattn::parse_variant(a.variant);
  c.uniattn = a.superblocks.empty()
                  ? uniattn::bench_spec(variant, c.num_layers)
                  : uniattn::UniAttnSpec::parse(variant, a.superblocks, c.num_layers);
  UNIATTN_CHECK(a.dtype == "f32" || a.dtype == "bf16", "--dtype: expected f32 or bf16, got '",
                a.dtype, "'");
  at::manual_seed(0);
  return uniattn::CausalLM(c, at::TensorOptions()
                                  .dtype(a.dtype == "bf16" ? at::kBFloat16 : at::kFloat)
                                  .device(uniattn::cli::parse_device(a.device)));
}

// End tokens as uniattn-generate uses them: the checkpoint's (generation_config.json, config.json,
// GGUF eos/eot/eom) and the tokenizer's eos; for chat, the template's end-of-turn too. The
// checkpoint's stop_strings join every request's `stop` (request_stop_strings), except those that
// are one special token, which text never shows: they become end tokens, as in uniattn-generate.
uniattn::serve::ServiceOptions service_options(const Args& a, const std::filesystem::path& path,
                                               const uniattn::CausalLM& model,
                                               const uniattn::Tokenizer& tok,
                                               const uniattn::ChatTemplate* tmpl,
                                               int64_t max_model_len) {
  uniattn::serve::ServiceOptions o;
  o.model_name = a.served_name.empty() ? path.filename().string() : a.served_name;
  o.max_model_len = max_model_len;
  auto add = [](std::vector<int32_t>& v, int64_t id) {
    if (std::find(v.begin(), v.end(), int32_t(id)) == v.end()) v.push_back(int32_t(id));
  };
  const auto g = uniattn::GenerationConfig::load(path);
  for (int64_t id : g.eos_token_ids) add(o.end_tokens, id);
  o.stop_strings = g.stop_strings;
  std::vector<int32_t> special;
  uniattn::cli::special_stops_to_ids(tok, o.stop_strings, special);
  for (int32_t id : special) add(o.end_tokens, id);
  for (int64_t id : model->config().eos_token_ids) add(o.end_tokens, id);
  if (tok.eos_id()) add(o.end_tokens, *tok.eos_id());
  try {
    for (int32_t id : uniattn::format_chat(tok, tmpl, "x").stop_tokens) add(o.chat_end_tokens, id);
  } catch (const std::exception&) {
  }
  return o;
}

void json_reply(httplib::Response& res, int status, const std::string& body) {
  res.status = status;
  res.set_content(body, "application/json");
}

void completion_route(httplib::Server& svr, const char* path, Endpoint ep, OpenAIService& service,
                      const std::atomic<bool>& draining) {
  svr.Post(path, [&service, &draining, ep](const httplib::Request& req, httplib::Response& res) {
    if (draining) {
      service.count_request(503);
      return json_reply(res, 503, uniattn::serve::error_json({503, "server is shutting down", ""}));
    }
    auto prepared = service.prepare(req.body, ep);
    if (auto* e = std::get_if<uniattn::serve::ApiError>(&prepared)) {
      service.count_request(e->status);
      return json_reply(res, e->status, uniattn::serve::error_json(*e));
    }
    auto job =
        std::make_shared<uniattn::serve::Job>(std::move(std::get<uniattn::serve::Job>(prepared)));
    if (!job->req.stream) {
      auto [status, body] = service.run(*job, nullptr);
      service.count_request(status);
      return json_reply(res, status, body);
    }
    res.set_chunked_content_provider(
        "text/event-stream", [&service, job](size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) {
            return sink.is_writable() && sink.write(s.data(), s.size());
          };
          auto [status, body] = service.run(*job, write);
          if (status >= 500) write("data: " + body + "\n\n");
          service.count_request(status);
          sink.done();
          return true;
        });
  });
}

void add_routes(httplib::Server& svr, OpenAIService& service, const std::atomic<bool>& draining) {
  completion_route(svr, "/v1/completions", Endpoint::Completions, service, draining);
  completion_route(svr, "/v1/chat/completions", Endpoint::ChatCompletions, service, draining);
  svr.Get("/v1/models", [&](const httplib::Request&, httplib::Response& res) {
    json_reply(res, 200, service.models().dump());
  });
  svr.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
    json_reply(res, draining ? 503 : 200, draining ? "{\"status\":\"draining\"}" : "{}");
  });
  svr.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(service.metrics(), "text/plain; version=0.0.4");
  });
  // Unknown paths and methods, and requests cpp-httplib refuses itself, get an OpenAI-style body
  // too, not an empty one.
  // cpp-httplib calls it outside its own try block: nothing may throw out of it.
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    try {
      const std::string what =
          res.status == 404 ? "no route " + req.method + " " + req.path : "bad request";
      json_reply(res, res.status, uniattn::serve::error_json({res.status, what, ""}));
    } catch (...) {
    }
  });
  svr.set_exception_handler([&](const httplib::Request&, httplib::Response& res,
                                std::exception_ptr ep) {
    std::string what = "unknown";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = uniattn::error_message(e);
    } catch (...) {
    }
    service.count_request(500);
    json_reply(res, 500,
               uniattn::serve::error_json({500, "internal error: " + what, "", "internal_error"}));
  });
}

// Waits for SIGTERM/SIGINT (blocked in every thread, taken here with sigwait), stops admitting,
// lets the engine finish what it runs (at most `grace`), then stops the server.
std::thread drain_on_signal(httplib::Server& svr, uniattn::serve::Engine& engine,
                            const OpenAIService& service, std::atomic<bool>& draining,
                            sigset_t set) {
  return std::thread([&svr, &engine, &service, &draining, set] {
    int sig = 0;
    sigwait(&set, &sig);
    std::fprintf(stderr, "uniattn-serve: signal %d, draining\n", sig);
    draining = true;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < until) {
      const auto s = engine.stats();
      if (s.waiting == 0 && s.running == 0 && service.active() == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    svr.stop();
  });
}

int run(int argc, char** argv) {
  CLI::App app{"OpenAI-compatible server with continuous batching over a paged KV cache"};
  Args a;
  add_options(app, a);
  CLI11_PARSE(app, argc, argv);
  // Before any thread starts (LibTorch's included), so that only the drainer takes them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-stream must not kill the server
  const bool random = !a.random_weights.empty();
  const std::filesystem::path path = random ? std::filesystem::path(a.random_weights)
                                     : a.model_path.empty() ? uniattn::cli::default_model_path()
                                                            : std::filesystem::path(a.model_path);
  uniattn::CausalLM model{nullptr};
  std::unique_ptr<uniattn::Tokenizer> tok;
  std::optional<uniattn::ChatTemplate> tmpl;
  if (random) {
    model = random_model(a);
    tok = std::make_unique<uniattn::serve::IdTokenizer>(
        static_cast<int32_t>(model->config().vocab_size));
  } else {
    model = uniattn::load_model(
        path, uniattn::cli::load_options(a.dtype, a.device, a.variant, a.superblocks, path));
    tok = uniattn::cli::load_tokenizer_noted(path, "serve");
    tmpl = uniattn::ChatTemplate::load(path);
  }

  uniattn::serve::EngineOptions eo;
  eo.kv_memory_bytes = static_cast<int64_t>(a.kv_memory_gb * double(int64_t(1) << 30));
  eo.max_seqs = a.max_seqs;
  eo.block_size = a.block_size;
  eo.prefill_chunk = a.prefill_chunk;
  eo.max_model_len = a.max_model_len;
  eo.cuda_graphs = !a.enforce_eager;
  eo.startup_capture_len = a.startup_capture_len;
  const auto engine_start = std::chrono::steady_clock::now();
  if (a.disable_hybrid_kv_cache) eo.num_sliding_blocks = -1;
  uniattn::serve::Engine engine(model, eo);
  auto so = random ? uniattn::serve::ServiceOptions{}
                   : service_options(a, path, model, *tok, tmpl ? &*tmpl : nullptr,
                                     engine.options().max_model_len);
  if (random) {
    so.model_name = a.served_name.empty() ? a.random_weights : a.served_name;
    so.max_model_len = engine.options().max_model_len;
  }
  OpenAIService service(engine, *tok, tmpl ? &*tmpl : nullptr, std::move(so));

  httplib::Server svr;
  const size_t threads = static_cast<size_t>(std::max<int64_t>(a.threads, 4));
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  std::atomic<bool> draining{false};
  add_routes(svr, service, draining);
  // cpp-httplib listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into Debian's
  // libcpp-httplib): 128 clients connecting at once overflowed it and saw connection resets.
  // Linux lets listen() be called again on a listening socket to raise the backlog, so the
  // socket is noted when cpp-httplib sets its options and listened on again after the bind.
  // cpp-httplib's default options set SO_REUSEPORT, which let a second server bind the same port
  // and take half its connections: only SO_REUSEADDR here (a restart may bind over TIME_WAIT).
  int listen_fd = -1;
  svr.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });
  const int port =
      a.port == 0 ? svr.bind_to_any_port(a.host) : (svr.bind_to_port(a.host, a.port) ? a.port : -1);
  if (port < 0) uniattn::fail("cannot listen on ", a.host, ":", a.port);
  if (listen_fd < 0 || ::listen(listen_fd, SOMAXCONN) != 0)
    std::fprintf(stderr, "uniattn-serve: warning: the listen backlog stays at 5\n");
  std::thread engine_thread([&] { engine.run(); });
  std::thread drainer = drain_on_signal(svr, engine, service, draining, set);
  const auto blocks = engine.stats();
  const std::string sliding =
      blocks.sliding_blocks_total > 0
          ? " (" + std::to_string(blocks.sliding_blocks_total) + " for the sliding layers)"
          : "";
  std::fprintf(stderr, "uniattn-serve: %s, %lld KV blocks%s of %lld tokens, max_model_len %lld\n",
               service.models()["data"][0]["id"].get<std::string>().c_str(),
               static_cast<long long>(blocks.blocks_total), sliding.c_str(),
               static_cast<long long>(a.block_size),
               static_cast<long long>(engine.options().max_model_len));
  if (blocks.decode_graphs > 0)
    std::fprintf(
        stderr,
        "uniattn-serve: %lld decode CUDA graphs captured at startup (engine ready in %.1f s)\n",
        static_cast<long long>(blocks.decode_graphs),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - engine_start).count());
  std::printf("listening on %d\n", port);
  std::fflush(stdout);
  svr.listen_after_bind();
  engine.stop();
  engine_thread.join();
  drainer.detach();  // still in sigwait when the server stopped for another reason
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return uniattn::cli::guarded_main("uniattn-serve", run, argc, argv);
}
