// uniattn-analyze: which layers to unify. `similarity` measures how alike the layers' attention
// maps are over some records; `search` finds SuperBlocks under a follower or KV budget by the
// held-out loss after closed-form calibration. A thin shell over
// include/uniattn/calib/layer_similarity.h and layer_search.h; see docs/layer_selection.md.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cli_util.h"
#include "model_args.h"
#include "uniattn/calib/layer_search.h"
#include "uniattn/calib/layer_similarity.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace {

using namespace uniattn;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
json num(double v) { return std::isnan(v) ? json() : json(v); }

struct Common {
  std::string model = "default", data, tmpl = "alpaca", device = "cpu", dtype = "f32", out;
  int64_t max_len = 512;
  std::string command;
};

struct SimArgs {
  int64_t first = 0, records = 8;
  double threshold = 0.8, max_map_gb = 1.0;
};

struct SearchArgs {
  int64_t samples = 32, heldout = 8, followers = -1, kv_bytes = -1, max_group = 4, verify = 3;
  int64_t batch_tokens = 8192;
  std::string layers, calib_ridge = "auto";
  std::vector<std::string> compare;
  double ridge = 1e-4, budget_gb = 4.0;
};

void add_common(CLI::App& app, Common& c) {
  app.add_option("--model", c.model, "base checkpoint: HF directory, .gguf, or 'default'")
      ->capture_default_str();
  app.add_option("--data", c.data, "records (.json array or .jsonl)")->required();
  app.add_option("--template", c.tmpl, "prompt template: alpaca | tulu")->capture_default_str();
  app.add_option("--max-len", c.max_len, "tokens per example")->capture_default_str();
  app.add_option("--device", c.device, "cpu | cuda | cuda:N")
      ->capture_default_str()
      ->check(cli::device_check);
  app.add_option("--dtype", c.dtype, "compute dtype: f32 | bf16")->capture_default_str();
  app.add_option("--out", c.out, "JSON result file")->required();
}

at::ScalarType parse_dtype(const std::string& s) {
  if (s == "f32") return at::kFloat;
  if (s == "bf16") return at::kBFloat16;
  fail("--dtype: unknown dtype '", s, "' (expected f32 or bf16)");
}

struct Data {
  std::vector<TokenizedExample> a, b;  // records [first, first + na), then the next nb
  int32_t pad_id = 0;
};

Data load_data(const Common& c, const std::filesystem::path& model, int64_t first, int64_t na,
               int64_t nb) {
  UNIATTN_CHECK(first >= 0 && na > 0 && nb >= 0, "record counts must be positive");
  UNIATTN_CHECK(c.max_len >= 2, "--max-len must be >= 2");
  auto tok = cli::load_tokenizer_noted(model, "analyze");
  const auto pt = PromptTemplate::by_name(c.tmpl);
  auto records = load_records(c.data, &pt);
  UNIATTN_CHECK(static_cast<int64_t>(records.size()) >= first + na + nb, c.data, " holds ",
                records.size(), " records; ", first + na + nb, " are needed");
  auto at = [&](int64_t i) { return records.begin() + i; };
  const auto enc = text_encoder(*tok);
  Data d;
  d.a = tokenize_records({at(first), at(first + na)}, pt, enc, c.max_len, nullptr);
  d.b = tokenize_records({at(first + na), at(first + na + nb)}, pt, enc, c.max_len, nullptr);
  d.pad_id = tok->pad_id().value_or(*enc.eos);
  return d;
}

CausalLM load_base(const Common& c, const std::filesystem::path& model) {
  LoadOptions lo;
  lo.dtype = parse_dtype(c.dtype);
  lo.device = cli::parse_device(c.device);
  return load_model(model, lo);
}

json matrix(const at::Tensor& t) {
  auto d = t.to(at::kDouble).contiguous();
  if (d.dim() == 1)
    return json(std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel()));
  json out = json::array();
  for (int64_t i = 0; i < d.size(0); ++i) out.push_back(matrix(d[i]));
  return out;
}

int run_similarity(const Common& c, const SimArgs& a) {
  const auto t0 = Clock::now();
  const auto model = cli::resolve_model_path(c.model);
  auto data = load_data(c, model, a.first, a.records, 0);
  auto base = load_base(c, model);
  SimilarityOptions so;
  so.max_map_bytes = static_cast<std::size_t>(a.max_map_gb * (1ull << 30));
  so.progress = [](int64_t done, int64_t) {
    std::fprintf(stderr, "\r[analyze] %lld", (long long)done);
  };
  const auto sim = attention_similarity(base, data.a, so);
  std::fprintf(stderr, "\n");
  const auto& cfg = base->config();
  const auto chains = superblock_chains(cfg);
  const auto groups = candidate_groups(sim.mean, chains, a.threshold);
  std::vector<double> adjacent;
  for (int64_t l = 0; l + 1 < sim.num_layers; ++l)
    adjacent.push_back(sim.mean[l][l + 1].item<double>());
  json jg = json::array();
  for (const auto& g : groups)
    jg.push_back({{"layers", g.layers},
                  {"spec", format_groups({g.layers})},
                  {"min_adjacent", g.min_adjacent},
                  {"mean_adjacent", g.mean_adjacent}});
  json j = {{"model", model.string()},
            {"data", c.data},
            {"template", c.tmpl},
            {"max_len", c.max_len},
            {"first_record", a.first},
            {"records", sim.records},
            {"tokens", sim.tokens},
            {"num_layers", sim.num_layers},
            {"num_heads", sim.num_heads},
            {"num_kv_heads", sim.num_kv_heads},
            {"sliding_layers", cfg.sliding_layers},
            {"chains", chains},
            {"threshold", a.threshold},
            {"adjacent", adjacent},
            {"candidate_groups", jg},
            {"mean", matrix(sim.mean)},
            {"per_kv_group", matrix(sim.per_kv_group)},
            {"per_head", matrix(sim.per_head)},
            {"seconds", since(t0)},
            {"command", c.command}};
  write_text_atomic(c.out, j.dump(1) + "\n");
  const auto [lo, hi] = std::minmax_element(adjacent.begin(), adjacent.end());
  std::printf(
      "%lld records, %lld tokens; adjacent-layer similarity %.3f (%lld-%lld) .. %.3f (%lld-%lld)\n",
      (long long)sim.records, (long long)sim.tokens, *lo, (long long)(lo - adjacent.begin()),
      (long long)(lo - adjacent.begin() + 1), *hi, (long long)(hi - adjacent.begin()),
      (long long)(hi - adjacent.begin() + 1));
  for (size_t l = 0; l < adjacent.size(); ++l)
    std::printf("  %2zu-%-2zu %.3f\n", l, l + 1, adjacent[l]);
  std::printf("candidate groups (adjacent similarity >= %.2f):\n", a.threshold);
  for (const auto& g : groups)
    std::printf("  %-12s min %.3f mean %.3f\n", format_groups({g.layers}).c_str(), g.min_adjacent,
                g.mean_adjacent);
  std::printf("wrote %s (%.1fs)\n", c.out.c_str(), since(t0));
  return 0;
}

void set_search_options(const SearchArgs& a, const ModelConfig& cfg, int32_t pad_id,
                        LayerSearchOptions& o) {
  o.followers = a.followers;
  o.kv_bytes_per_token = a.kv_bytes;
  UNIATTN_CHECK((a.followers >= 0) != (a.kv_bytes >= 0), "give one of --followers and --kv-bytes");
  o.max_group = a.max_group;
  o.verify = a.verify;
  o.ridge = a.ridge;
  if (!a.layers.empty()) {
    const auto dash = a.layers.find('-');
    UNIATTN_CHECK(dash != std::string::npos, "--layers: expected FIRST-LAST, got '", a.layers, "'");
    try {
      o.first_layer = std::stoll(a.layers.substr(0, dash));
      o.last_layer = std::stoll(a.layers.substr(dash + 1));
    } catch (const std::exception&) {
      fail("--layers: expected FIRST-LAST, got '", a.layers, "'");
    }
  }
  for (const auto& s : a.compare)
    o.compare.push_back(UniAttnSpec::parse(Variant::UniAttn, s, cfg.num_layers));
  if (a.calib_ridge != "auto") {
    try {
      o.calib.ridge = std::stod(a.calib_ridge);
    } catch (const std::exception&) {
      fail("--calib-ridge: expected a number or auto, got '", a.calib_ridge, "'");
    }
  }
  o.calib.pad_id = pad_id;
  o.calib.batch_tokens = a.batch_tokens;
  o.calib.memory_budget_bytes = static_cast<std::size_t>(a.budget_gb * (1ull << 30));
  o.progress = [](const std::string& s) { std::fprintf(stderr, "[analyze] %s\n", s.c_str()); };
}

json search_json(const SearchResult& r) {
  json cands = json::array(), rows = json::array();
  for (const auto& k : r.candidates)
    cands.push_back({{"layers", k.layers},
                     {"spec", format_groups({k.layers})},
                     {"heldout_loss", k.heldout_loss},
                     {"delta", k.delta},
                     {"rel_err", k.rel_err}});
  for (const auto& w : r.rows) {
    json f = json::array();
    for (const auto& x : w.report)
      f.push_back({{"layer", x.layer},
                   {"leader", x.leader},
                   {"ridge", x.ridge},
                   {"heldout_err", num(x.heldout_err)},
                   {"heldout_rel_residual", num(x.heldout_rel_residual)}});
    rows.push_back({{"spec", w.spec},
                    {"origin", w.origin},
                    {"followers", w.followers},
                    {"kv_bytes_per_token", w.kv_bytes_per_token},
                    {"predicted_delta", num(w.predicted_delta)},
                    {"loss_no_wc", num(w.loss_no_wc)},
                    {"loss_wc", num(w.loss_wc)},
                    {"followers_report", f}});
  }
  return {{"loss_base", r.loss_base},
          {"base_kv_bytes_per_token", r.base_kv_bytes_per_token},
          {"budget_followers", r.followers},
          {"calib_tokens", r.calib_tokens},
          {"heldout_target_tokens", r.heldout_tokens},
          {"candidates", cands},
          {"rows", rows},
          {"best", r.rows.empty() ? json() : json(r.rows.front().spec)},
          {"seconds", {{"candidates", r.seconds_candidates}, {"verify", r.seconds_verify}}}};
}

int run_search(const Common& c, const SearchArgs& a) {
  const auto t0 = Clock::now();
  const auto model = cli::resolve_model_path(c.model);
  auto data = load_data(c, model, 0, a.samples, a.heldout);
  auto base = load_base(c, model);
  LayerSearchOptions o;
  set_search_options(a, base->config(), data.pad_id, o);
  const auto r = search_superblocks(base, data.a, data.b, o);
  json j = search_json(r);
  j["model"] = model.string();
  j["data"] = c.data;
  j["template"] = c.tmpl;
  j["max_len"] = c.max_len;
  j["calib_examples"] = data.a.size();
  j["heldout_examples"] = data.b.size();
  j["command"] = c.command;
  j["seconds"]["total"] = since(t0);
  write_text_atomic(c.out, j.dump(1) + "\n");
  std::printf("base held-out loss %.4f, KV %lld bytes/token; budget %lld followers\n", r.loss_base,
              (long long)r.base_kv_bytes_per_token, (long long)r.followers);
  std::printf("%-24s %-8s %9s %9s %10s %10s %10s\n", "spec", "origin", "followers", "KV B/tok",
              "predicted", "no W_c", "with W_c");
  for (const auto& w : r.rows)
    std::printf("%-24s %-8s %9lld %9lld %10.4f %10.4f %10.4f\n", w.spec.c_str(), w.origin.c_str(),
                (long long)w.followers, (long long)w.kv_bytes_per_token,
                r.loss_base + w.predicted_delta, w.loss_no_wc, w.loss_wc);
  if (!r.rows.empty()) std::printf("best: --superblocks '%s'\n", r.rows.front().spec.c_str());
  std::printf("wrote %s (%.1fs)\n", c.out.c_str(), since(t0));
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{"Which layers to unify: attention-map similarity and SuperBlock search"};
  app.require_subcommand(1);
  Common c;
  for (int i = 0; i < argc; ++i) c.command += (i ? " " : "") + std::string(argv[i]);
  SimArgs sa;
  auto* sim =
      app.add_subcommand("similarity", "cosine similarity of attention maps between layers");
  add_common(*sim, c);
  sim->add_option("--first", sa.first, "first record used")->capture_default_str();
  sim->add_option("--records", sa.records, "records measured")->capture_default_str();
  sim->add_option("--threshold", sa.threshold, "adjacent similarity of a candidate group")
      ->capture_default_str();
  sim->add_option("--max-map-gb", sa.max_map_gb, "probability maps held at once")
      ->capture_default_str();
  SearchArgs ra;
  auto* search = app.add_subcommand("search", "SuperBlocks under a budget, by held-out loss");
  add_common(*search, c);
  search->add_option("--samples", ra.samples, "calibration records (the first ones)")
      ->capture_default_str();
  search->add_option("--heldout", ra.heldout, "held-out records after them")->capture_default_str();
  search->add_option("--followers", ra.followers, "follower budget");
  search->add_option("--kv-bytes", ra.kv_bytes, "KV-cache bytes per token to reach (model dtype)");
  search->add_option("--max-group", ra.max_group, "largest SuperBlock")->capture_default_str();
  search->add_option("--layers", ra.layers, "FIRST-LAST: where groups may go");
  search->add_option("--verify", ra.verify, "best specs calibrated in full")->capture_default_str();
  search->add_option("--compare", ra.compare, "SuperBlocks also calibrated and ranked");
  search->add_option("--ridge", ra.ridge, "relative ridge of the candidate scores")
      ->capture_default_str();
  search->add_option("--calib-ridge", ra.calib_ridge, "ridge of the full calibrations, or auto")
      ->capture_default_str();
  search->add_option("--batch-tokens", ra.batch_tokens, "padded tokens per batch")
      ->capture_default_str();
  search->add_option("--memory-budget-gb", ra.budget_gb, "activations kept in memory")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return sim->parsed() ? run_similarity(c, sa) : run_search(c, ra);
}

}  // namespace

int main(int argc, char** argv) {
  return uniattn::cli::guarded_main("uniattn-analyze", run, argc, argv);
}
