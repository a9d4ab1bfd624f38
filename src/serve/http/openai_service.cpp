#include "serve/http/openai_service.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iomanip>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include "uniattn/error.h"
#include "uniattn/infer/generate.h"
#include "uniattn/io/json_depth.h"

namespace uniattn::serve {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string sse(const json& j) { return "data: " + j.dump() + "\n\n"; }

json token_bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char ch : s) b.push_back(int(ch));
  return b;
}

const char* finish_name(Finish f) {
  switch (f) {
    case Finish::Stop:
      return "stop";
    case Finish::Length:
      return "length";
    case Finish::Abort:
      return "abort";
    default:
      return "";
  }
}

// The engine's outputs for one job, handed from the engine thread to the request's thread.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<SeqOutput> q;
};

}  // namespace

std::vector<std::string> request_stop_strings(const CompletionRequest& r, const ServiceOptions& o) {
  std::vector<std::string> stops = r.stop;
  if (r.ignore_eos) return stops;
  for (const auto& s : o.stop_strings)
    if (std::find(stops.begin(), stops.end(), s) == stops.end()) stops.push_back(s);
  return stops;
}

struct OpenAIService::Choice {
  size_t index = 0, prompt = 0;
  uint64_t seq = 0;
  std::unique_ptr<TextStream> stream;
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> lps, prompt_lps;
  std::string finish, error;
  bool done = false;
  Clock::time_point last;
};

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}

void Histogram::observe(double s) {
  size_t i = 0;
  while (i < bounds_.size() && s > bounds_[i]) ++i;
  ++counts_[i];
  ++n_;
  sum_.fetch_add(s);
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::ostringstream o;
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
  int64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    o << name << "_bucket{le=\"" << bounds_[i] << "\"} " << cum << "\n";
  }
  o << name << "_bucket{le=\"+Inf\"} " << n_.load() << "\n";
  o << name << "_sum " << sum_.load() << "\n" << name << "_count " << n_.load() << "\n";
  return o.str();
}

OpenAIService::OpenAIService(Engine& engine, const Tokenizer& tokenizer, const ChatTemplate* tmpl,
                             ServiceOptions options)
    : engine_(engine),
      tok_(tokenizer),
      tmpl_(tmpl),
      opt_(std::move(options)),
      ttft_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      itl_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

std::variant<Job, ApiError> OpenAIService::prepare(const std::string& body,
                                                   Endpoint endpoint) const {
  json j;
  try {
    // Copies and dumps of a parsed value recurse per level: a body of nested brackets would
    // overflow the stack (fuzz/fuzz_serve_request.cpp).
    check_json_depth(body, "request body");
    j = json::parse(body);
  } catch (const json::exception& e) {  // also out_of_range 406: a number beyond double
    // "[json.exception.parse_error.101] parse error at line 1, ...": the bracket is the library's.
    std::string what = e.what();
    if (const auto end = what.find("] ");
        what.rfind("[json.exception.", 0) == 0 && end != std::string::npos)
      what.erase(0, end + 2);
    return ApiError{400, "malformed JSON: " + what, ""};
  } catch (const Error& e) {
    return ApiError{400, e.what(), ""};
  }
  auto parsed = parse_completion_request(j, endpoint);
  if (auto* e = std::get_if<ApiError>(&parsed)) return *e;
  Job job;
  job.req = std::move(std::get<CompletionRequest>(parsed));
  const auto& r = job.req;
  if (!r.model.empty() && r.model != opt_.model_name)
    return ApiError{404, "The model '" + r.model + "' does not exist", "model", "NotFoundError"};
  try {
    if (endpoint == Endpoint::ChatCompletions) {
      if (!tmpl_) return ApiError{400, "this model has no chat template", "messages"};
      std::string text;
      try {
        text = tmpl_->render_json(r.messages, /*add_generation_prompt=*/true);
      } catch (const Error& e) {
        return ApiError{400, std::string("'messages': ") + e.what(), "messages"};
      }
      job.prompts.push_back(tok_.encode(text, false, true));
      job.prompt_texts.push_back(text);
    }
    for (const auto& p : r.prompts) {
      for (int32_t id : p.ids)
        if (id >= tok_.vocab_size())
          return ApiError{400,
                          "'prompt': token id " + std::to_string(id) + " is outside the vocabulary",
                          "prompt"};
      job.prompts.push_back(p.is_ids ? p.ids : tok_.encode(p.text, tok_.adds_bos(), true));
      job.prompt_texts.push_back(p.is_ids ? tok_.decode(p.ids) : p.text);
    }
  } catch (const Error& e) {
    return ApiError{400, std::string("'prompt': ") + e.what(), "prompt"};
  }
  for (const auto& p : job.prompts) {
    const int64_t plen = int64_t(p.size());
    job.max_tokens = r.max_tokens.value_or(
        endpoint == Endpoint::Completions ? 16 : std::max<int64_t>(opt_.max_model_len - plen, 1));
    if (auto e = check_length(plen, job.max_tokens, opt_.max_model_len)) return *e;
  }
  static std::atomic<uint64_t> counter{0};
  job.id = (endpoint == Endpoint::Completions ? "cmpl-" : "chatcmpl-") + std::to_string(++counter);
  job.created = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  return job;
}

EngineRequest OpenAIService::engine_request(const Job& job, size_t prompt, int64_t sample) const {
  const auto& r = job.req;
  EngineRequest e;
  e.prompt = job.prompts[prompt];
  e.sampling.temperature = r.temperature;
  e.sampling.top_k = r.top_k;
  e.sampling.top_p = r.top_p;
  e.sampling.repetition_penalty = r.repetition_penalty;
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  e.sampling.seed = r.seed ? *r.seed + uint64_t(sample) : rng();
  e.frequency_penalty = r.frequency_penalty;
  e.presence_penalty = r.presence_penalty;
  e.max_tokens = job.max_tokens;
  e.stop_token_ids = r.stop_token_ids;
  if (!r.ignore_eos) {
    e.stop_token_ids.insert(e.stop_token_ids.end(), opt_.end_tokens.begin(), opt_.end_tokens.end());
    if (r.endpoint == Endpoint::ChatCompletions)
      e.stop_token_ids.insert(e.stop_token_ids.end(), opt_.chat_end_tokens.begin(),
                              opt_.chat_end_tokens.end());
  }
  e.logprobs = r.logprobs;
  e.prompt_logprobs = r.echo && r.logprobs >= 0;
  return e;
}

json OpenAIService::logprobs_json(const Job& job, const Choice& c, size_t from_token,
                                  size_t from_prompt) const {
  const bool chat = job.req.endpoint == Endpoint::ChatCompletions;
  auto piece = [&](int32_t id) { return tok_.decode(std::span<const int32_t>(&id, 1)); };
  if (chat) {
    json content = json::array();
    for (size_t i = from_token; i < c.lps.size(); ++i) {
      const auto& lp = c.lps[i];
      json top = json::array();
      for (auto [id, v] : lp.top)
        top.push_back({{"token", piece(id)}, {"logprob", v}, {"bytes", token_bytes(piece(id))}});
      const auto s = piece(lp.token);
      content.push_back({{"token", s},
                         {"logprob", lp.logprob},
                         {"bytes", token_bytes(s)},
                         {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  size_t offset = 0;
  auto add = [&](int32_t id, const TokenLogprob* lp) {
    const auto s = piece(id);
    tokens.push_back(s);
    offs.push_back(offset);
    offset += s.size();
    lps.push_back(lp ? json(lp->logprob) : json(nullptr));
    if (!lp) return tops.push_back(nullptr);
    json top = json::object();
    for (auto [tid, v] : lp->top) top[piece(tid)] = v;
    // As OpenAI and vLLM: the chosen token is always among them (up to logprobs + 1 entries).
    if (!top.contains(s)) top[s] = lp->logprob;
    tops.push_back(top);
  };
  if (job.req.echo && from_prompt == 0) {
    const auto& p = job.prompts[c.prompt];
    for (size_t i = 0; i < p.size(); ++i)
      add(p[i], i == 0 || i > c.prompt_lps.size() ? nullptr : &c.prompt_lps[i - 1]);
  }
  for (size_t i = from_token; i < c.lps.size(); ++i) add(c.lps[i].token, &c.lps[i]);
  return {
      {"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

json OpenAIService::choice_json(const Job& job, const Choice& c, bool) const {
  json out = {{"index", c.index}};
  std::string text = c.text;
  if (job.req.echo) text = job.prompt_texts[c.prompt] + text;
  if (job.req.endpoint == Endpoint::ChatCompletions)
    out["message"] = {{"role", "assistant"}, {"content", text}};
  else
    out["text"] = text;
  out["logprobs"] = job.req.logprobs >= 0 ? logprobs_json(job, c, 0, 0) : json(nullptr);
  out["finish_reason"] = c.finish;
  return out;
}

std::pair<int, std::string> OpenAIService::run(
    const Job& job, const std::function<bool(const std::string&)>& emit) {
  const auto& r = job.req;
  const bool chat = r.endpoint == Endpoint::ChatCompletions;
  struct Active {
    std::atomic<int64_t>& n;
    explicit Active(std::atomic<int64_t>& c) : n(c) { ++n; }
    ~Active() { --n; }
  } active(active_);
  auto chan = std::make_shared<Channel>();
  std::vector<Choice> choices(job.prompts.size() * size_t(r.n));
  std::map<uint64_t, size_t> by_id;
  const auto start = Clock::now();
  const auto stops = request_stop_strings(r, opt_);
  auto abort_open = [&] {
    for (auto& c : choices)
      if (!c.done && c.seq) engine_.abort(c.seq);
  };
  for (size_t i = 0; i < choices.size(); ++i) {
    auto& c = choices[i];
    c.index = i;
    c.prompt = i / size_t(r.n);
    c.stream = std::make_unique<TextStream>(tok_, stops);
    try {
      c.seq = engine_.add(engine_request(job, c.prompt, int64_t(i % size_t(r.n))),
                          [chan](const SeqOutput& o) {
                            std::lock_guard<std::mutex> lock(chan->mu);
                            chan->q.push_back(o);
                            chan->cv.notify_all();
                          });
    } catch (const Error& e) {
      abort_open();
      return {400, error_json({400, e.what(), ""})};
    }
    by_id[c.seq] = i;
  }
  int64_t prompt_tokens = 0;
  for (const auto& p : job.prompts) prompt_tokens += int64_t(p.size());
  prompt_tokens_ += prompt_tokens;
  auto chunk_base = [&] {
    return json{{"id", job.id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", job.created},
                {"model", opt_.model_name}};
  };
  size_t open = choices.size();
  std::vector<bool> started(choices.size(), false);
  while (open > 0) {
    std::deque<SeqOutput> batch;
    {
      std::unique_lock<std::mutex> lock(chan->mu);
      chan->cv.wait(lock, [&] { return !chan->q.empty(); });
      batch.swap(chan->q);
    }
    for (const auto& o : batch) {
      auto& c = choices[by_id.at(o.id)];
      if (c.done) continue;
      const size_t tokens_before = c.tokens.size();
      std::string delta;
      const auto now = Clock::now();
      for (int32_t t : o.tokens) {
        if (c.tokens.empty())
          ttft_.observe(seconds_between(start, now));
        else
          itl_.observe(seconds_between(c.last, now));
        c.last = now;
        c.tokens.push_back(t);
        if (o.finish != Finish::Stop) delta += c.stream->push(t);
      }
      generation_tokens_ += int64_t(o.tokens.size());
      c.lps.insert(c.lps.end(), o.logprobs.begin(), o.logprobs.end());
      if (!o.prompt_logprobs.empty()) c.prompt_lps = o.prompt_logprobs;
      if (o.finish == Finish::Error) {
        abort_open();
        ++requests_failed_;
        return {500, error_json({500, "internal error: " + o.error, "", "internal_error"})};
      }
      if (c.stream->stopped()) {
        c.finish = "stop";
        engine_.abort(c.seq);
      } else if (o.finish != Finish::None) {
        c.finish = finish_name(o.finish);
        delta += c.stream->flush();
      }
      c.text += delta;
      if (!c.finish.empty()) c.done = true, --open;
      if (!emit) continue;
      json ch = {{"index", c.index}};
      if (chat) {
        ch["delta"] = json::object();
        if (!started[c.index]) ch["delta"]["role"] = "assistant";
        ch["delta"]["content"] = delta;
      } else {
        ch["text"] = (!started[c.index] && r.echo ? job.prompt_texts[c.prompt] : "") + delta;
      }
      ch["logprobs"] = r.logprobs >= 0
                           ? logprobs_json(job, c, tokens_before, started[c.index] ? 1 : 0)
                           : json(nullptr);
      ch["finish_reason"] = c.finish.empty() ? json(nullptr) : json(c.finish);
      started[c.index] = true;
      auto j = chunk_base();
      j["choices"] = json::array({ch});
      if (!emit(sse(j))) {
        abort_open();
        return {499, ""};
      }
    }
  }
  int64_t completion = 0;
  for (const auto& c : choices) completion += int64_t(c.tokens.size());
  const json usage = {{"prompt_tokens", prompt_tokens},
                      {"completion_tokens", completion},
                      {"total_tokens", prompt_tokens + completion}};
  if (emit) {
    if (r.include_usage) {
      auto j = chunk_base();
      j["choices"] = json::array();
      j["usage"] = usage;
      if (!emit(sse(j))) return {499, ""};
    }
    emit("data: [DONE]\n\n");
    return {200, ""};
  }
  json body = {{"id", job.id},
               {"object", chat ? "chat.completion" : "text_completion"},
               {"created", job.created},
               {"model", opt_.model_name},
               {"choices", json::array()},
               {"usage", usage}};
  for (const auto& c : choices) body["choices"].push_back(choice_json(job, c, false));
  return {200, body.dump()};
}

json OpenAIService::models() const {
  return {{"object", "list"},
          {"data", json::array({{{"id", opt_.model_name},
                                 {"object", "model"},
                                 {"created", 0},
                                 {"owned_by", "uniattn"},
                                 {"max_model_len", opt_.max_model_len}}})}};
}

void OpenAIService::count_request(int status) {
  // 499 (nginx's "client closed request"): the client went away; its request was not at fault.
  (status < 400    ? requests_ok_
   : status == 499 ? requests_cancelled_
   : status < 500  ? requests_bad_
                   : requests_failed_)++;
}

std::string OpenAIService::metrics() const {
  const auto s = engine_.stats();
  std::ostringstream o;
  auto gauge = [&](const char* name, const char* type, const char* help, int64_t v) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
      << name << " " << v << "\n";
  };
  o << "# HELP uniattn_requests_total Finished HTTP requests by outcome.\n"
    << "# TYPE uniattn_requests_total counter\n"
    << "uniattn_requests_total{outcome=\"ok\"} " << requests_ok_.load() << "\n"
    << "uniattn_requests_total{outcome=\"client_error\"} " << requests_bad_.load() << "\n"
    << "uniattn_requests_total{outcome=\"cancelled\"} " << requests_cancelled_.load() << "\n"
    << "uniattn_requests_total{outcome=\"server_error\"} " << requests_failed_.load() << "\n";
  gauge("uniattn_prompt_tokens_total", "counter", "Prompt tokens admitted.", prompt_tokens_);
  gauge("uniattn_generation_tokens_total", "counter", "Tokens generated.", generation_tokens_);
  gauge("uniattn_num_requests_waiting", "gauge", "Sequences waiting for admission.", s.waiting);
  gauge("uniattn_num_requests_running", "gauge", "Sequences in the running batch.", s.running);
  gauge("uniattn_kv_blocks_total", "gauge", "KV cache blocks in the pool.", s.blocks_total);
  gauge("uniattn_kv_blocks_free", "gauge", "Free KV cache blocks.", s.blocks_free);
  gauge("uniattn_kv_blocks_used", "gauge", "KV cache blocks in use.",
        s.blocks_total - s.blocks_free);
  gauge("uniattn_num_preemptions_total", "counter", "Sequences preempted (recomputed later).",
        s.preemptions);
  gauge("uniattn_decode_cuda_graphs", "gauge", "CUDA graphs captured for decode steps.",
        s.decode_graphs);
  gauge("uniattn_engine_decode_steps_total", "counter", "Engine steps with decode rows.",
        s.decode_steps);
  o << "# HELP uniattn_engine_step_seconds_total Host seconds per step phase and row group.\n"
    << "# TYPE uniattn_engine_step_seconds_total counter\n";
  const char* groups[2] = {"decode", "prefill"};
  for (int g = 0; g < 2; ++g) {
    const auto& t = s.seconds[g];
    for (const auto& [phase, v] :
         {std::pair{"schedule", t.schedule}, std::pair{"forward", t.forward},
          std::pair{"sample", t.sample}, std::pair{"emit", t.emit}})
      o << "uniattn_engine_step_seconds_total{group=\"" << groups[g] << "\",phase=\"" << phase
        << "\"} " << std::setprecision(15) << v << "\n";
  }
  o << ttft_.render("uniattn_time_to_first_token_seconds", "Time to first token.");
  o << itl_.render("uniattn_inter_token_latency_seconds", "Time between output tokens.");
  return o.str();
}

}  // namespace uniattn::serve
