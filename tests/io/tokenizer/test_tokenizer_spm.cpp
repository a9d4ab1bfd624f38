// SentencePiece through libsentencepiece against the Python `sentencepiece` package, on tiny BPE
// and unigram models the fixture trains (with byte fallback and a user-defined symbol).
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "tokenizer_test_util.h"

namespace uniattn::test {
namespace {

class Spm : public ::testing::TestWithParam<std::string> {};

TEST_P(Spm, MatchesPythonSentencePiece) {
  const auto& exp = expected()["spm_" + GetParam()];
  const auto tok = load_sentencepiece(tok_dir() / ("spm_" + GetParam() + ".model"));
  EXPECT_EQ(tok->vocab_size(), exp["vocab_size"].get<int32_t>());
  EXPECT_EQ(tok->bos_id().value_or(-1), exp["bos"].get<int32_t>());
  EXPECT_EQ(tok->eos_id().value_or(-1), exp["eos"].get<int32_t>());
  EXPECT_EQ(tok->pad_id().value_or(-1), exp["pad"].get<int32_t>());
  const auto ts = texts();
  for (std::size_t i = 0; i < ts.size(); ++i) {
    SCOPED_TRACE(ts[i]);
    const auto ids = tok->encode(ts[i]);
    EXPECT_EQ(ids, exp["ids"][i].get<std::vector<int32_t>>());
    EXPECT_EQ(tok->decode(ids), exp["decoded"][i].get<std::string>());
  }
  // With byte fallback, every character survives.
  EXPECT_EQ(tok->decode(tok->encode("Grüße 中文 😀")), "Grüße 中文 😀");
}

TEST_P(Spm, ControlTokensAndBos) {
  const auto tok = load_sentencepiece(tok_dir() / ("spm_" + GetParam() + ".model"));
  const int32_t bos = *tok->bos_id(), eos = *tok->eos_id();
  EXPECT_EQ(tok->token_text(bos), "<s>");
  EXPECT_EQ(tok->find_token("</s>"), std::optional<int32_t>(eos));
  EXPECT_EQ(tok->find_token("no such piece here"), std::nullopt);
  const auto a = tok->encode("hello world"), b = tok->encode("the model");
  std::vector<int32_t> want{bos};
  want.insert(want.end(), a.begin(), a.end());
  want.push_back(eos);
  want.insert(want.end(), b.begin(), b.end());
  // "</s>" written in the text becomes the eos id; the text around it is encoded as usual.
  const auto ids = tok->encode("hello world</s>the model", /*add_bos=*/true);
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok->decode(ids, /*skip_special=*/false), "<s>hello world</s>the model");
  EXPECT_EQ(tok->decode(ids, /*skip_special=*/true), "hello worldthe model");
  // Not parsed: the same characters as plain text give different ids.
  EXPECT_NE(tok->encode("hello world</s>the model", false, false),
            std::vector<int32_t>(want.begin() + 1, want.end()));
}

TEST_P(Spm, SaveCopiesTheModel) {
  const auto src = tok_dir() / ("spm_" + GetParam() + ".model");
  const auto dir = scratch_dir();
  load_sentencepiece(src)->save(dir);
  auto slurp = [](const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(slurp(dir / "tokenizer.model"), slurp(src));
  const auto back = load_tokenizer_dir(dir);
  EXPECT_EQ(back->encode(texts()[1]),
            expected()["spm_" + GetParam()]["ids"][1].get<std::vector<int32_t>>());
  EXPECT_EQ(back->bos_id(), std::optional<int32_t>(1));
}

INSTANTIATE_TEST_SUITE_P(Models, Spm, ::testing::Values("bpe", "unigram"));

SpmVocab gguf_vocab() {
  std::ifstream f(tok_dir() / "spm_gguf_vocab.json");
  const auto j = nlohmann::json::parse(f);
  SpmVocab v;
  v.tokens = j["tokens"].get<std::vector<std::string>>();
  v.scores = j["scores"].get<std::vector<float>>();
  v.token_types = j["token_types"].get<std::vector<int32_t>>();
  v.bos = j["bos"].get<int32_t>();
  v.eos = j["eos"].get<int32_t>();
  v.add_space_prefix = j["add_space_prefix"].get<bool>();
  v.remove_extra_whitespaces = j["remove_extra_whitespaces"].get<bool>();
  return v;
}

TEST(SpmVocabTokenizer, MatchesPythonSentencePiece) {
  const auto tok = make_spm_tokenizer(gguf_vocab());
  const auto& exp = expected()["spm_gguf"];
  EXPECT_EQ(tok->bos_id(), std::optional<int32_t>(gguf_vocab().bos));
  EXPECT_EQ(tok->token_text(*tok->eos_id()), "<eos>");
  EXPECT_TRUE(tok->adds_bos());
  const auto ts = texts();
  for (std::size_t i = 0; i < ts.size(); ++i) {
    SCOPED_TRACE(ts[i]);
    const auto ids = tok->encode(ts[i]);
    EXPECT_EQ(ids, exp["ids"][i].get<std::vector<int32_t>>());
    EXPECT_EQ(tok->decode(ids), exp["decoded"][i].get<std::string>());
  }
}

TEST(SpmVocabTokenizer, SavedModelLoadsInPython) {
  const char* py = std::getenv("UNIATTN_PYTHON");
  if (!py) GTEST_SKIP() << "UNIATTN_PYTHON not set";
  const auto dir = scratch_dir();
  make_spm_tokenizer(gguf_vocab())->save(dir);
  std::ofstream(dir / "texts.json") << nlohmann::json(texts()).dump();
  std::ofstream(dir / "run.py")
      << "import json,sys\nimport sentencepiece as sp\n"
         "p = sp.SentencePieceProcessor(model_file=sys.argv[1])\n"
         "texts = json.load(open(sys.argv[2], encoding=\"utf-8\"))\n"
         "json.dump([p.encode(t) for t in texts], open(sys.argv[3], \"w\"))\n";
  const std::string cmd = std::string("\"") + py + "\" \"" + (dir / "run.py").string() + "\" \"" +
                          (dir / "tokenizer.model").string() + "\" \"" +
                          (dir / "texts.json").string() + "\" \"" + (dir / "ids.json").string() +
                          "\"";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream f(dir / "ids.json");
  EXPECT_EQ(nlohmann::json::parse(f), expected()["spm_gguf"]["ids"]);
}

// Gemma-3's GGUFs type <unk> as control (3) and name it by tokenizer.ggml.unknown_token_id, as
// llama.cpp reads it: the same vocabulary so given encodes as sentencepiece does.
TEST(SpmVocabTokenizer, UnknownTokenByIdInsteadOfType) {
  SpmVocab v = gguf_vocab();
  const auto it = std::find(v.token_types.begin(), v.token_types.end(), 2);
  ASSERT_NE(it, v.token_types.end());
  const auto unk = static_cast<int32_t>(it - v.token_types.begin());
  *it = 3;
  v.unk = unk;
  const auto tok = make_spm_tokenizer(v);
  const auto ts = texts();
  for (std::size_t i = 0; i < ts.size(); ++i)
    EXPECT_EQ(tok->encode(ts[i]), expected()["spm_gguf"]["ids"][i].get<std::vector<int32_t>>())
        << ts[i];
  v.unk = 100000;
  expect_error([&] { make_spm_tokenizer(v); }, {"unknown token id 100000"});
  v = gguf_vocab();
  v.unk = unk + 1;
  expect_error([&] { make_spm_tokenizer(v); }, {"has type unknown (2)"});
}

TEST(SpmVocabTokenizer, BadVocab) {
  SpmVocab v = gguf_vocab();
  v.scores.pop_back();
  expect_error([&] { make_spm_tokenizer(v); }, {"scores for"});
  v = gguf_vocab();
  v.token_types[0] = 1;
  expect_error([&] { make_spm_tokenizer(v); }, {"no token of type unknown"});
  v = gguf_vocab();
  v.token_types[5] = 9;
  expect_error([&] { make_spm_tokenizer(v); }, {"token 5", "unknown type 9"});
  v = gguf_vocab();
  v.bos = 100000;
  expect_error([&] { make_spm_tokenizer(v); }, {"special token id 100000"});
  v = gguf_vocab();
  v.tokens[10] = v.tokens[11];
  expect_error([&] { make_spm_tokenizer(v); }, {"SentencePiece vocab"});
}

}  // namespace
}  // namespace uniattn::test
