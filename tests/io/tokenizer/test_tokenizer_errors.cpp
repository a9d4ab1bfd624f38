// Bad input gives a clear uniattn::Error: malformed tokenizer.json files, bad vocabularies,
// missing files, invalid UTF-8, ids out of range.
#include <fstream>

#include "tokenizer_test_util.h"

namespace uniattn::test {
namespace {

std::filesystem::path write(const std::filesystem::path& dir, const std::string& name,
                            const std::string& text) {
  std::ofstream(dir / name) << text;
  return dir / name;
}

const std::string kPre = R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false})";

std::string json_with_model(const std::string& model) {
  return "{" + kPre + R"(, "decoder": {"type": "ByteLevel"}, "model": )" + model + "}";
}

TEST(TokenizerErrors, MalformedTokenizerJson) {
  const auto d = scratch_dir();
  expect_error([&] { load_tokenizer_json(write(d, "a.json", "{not json")); },
               {"a.json", "not valid JSON"});
  expect_error([&] { load_tokenizer_json(write(d, "b.json", "{" + kPre + "}")); },
               {"b.json", "missing key 'model'"});
  expect_error(
      [&] {
        load_tokenizer_json(
            write(d, "c.json", json_with_model(R"({"type": "WordPiece", "vocab": {}})")));
      },
      {"c.json", "model.type", "WordPiece"});
  expect_error(
      [&] {
        load_tokenizer_json(write(
            d, "d.json",
            json_with_model(
                R"({"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", "a zz"]})")));
      },
      {"d.json", "merge 1", "'zz'", "not in the vocabulary"});
  expect_error(
      [&] {
        load_tokenizer_json(
            write(d, "e.json",
                  json_with_model(
                      R"({"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]})")));
      },
      {"e.json", "makes 'ab'"});
  expect_error(
      [&] {
        load_tokenizer_json(write(
            d, "f.json", json_with_model(R"({"type": "BPE", "vocab": {"a": -4}, "merges": []})")));
      },
      {"f.json", "model.vocab['a']"});
  expect_error(
      [&] {
        load_tokenizer_json(write(
            d, "g.json",
            R"({"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"));
      },
      {"g.json", "pre_tokenizer", "Whitespace"});
  expect_error(
      [&] {
        load_tokenizer_json(write(
            d, "h.json",
            R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}, {"type": "ByteLevel"}]}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"));
      },
      {"h.json", "does not compile"});
  expect_error(
      [&] {
        load_tokenizer_json(write(
            d, "i.json",
            "{" + kPre +
                R"(, "normalizer": {"type": "NFKC"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"));
      },
      {"i.json", "normalizer", "NFKC"});
  expect_error(
      [&] {
        load_tokenizer_json(write(
            d, "j.json",
            "{" + kPre +
                R"(, "post_processor": {"type": "BertProcessing"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"));
      },
      {"j.json", "post_processor", "BertProcessing"});
  expect_error(
      [&] {
        load_tokenizer_json(write(
            d, "k.json",
            "{" + kPre +
                R"(, "decoder": {"type": "Fuse"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"));
      },
      {"k.json", "decoder", "Fuse", "ByteLevel"});
  expect_error(
      [&] {
        load_tokenizer_json(write(
            d, "l.json",
            "{" + kPre +
                R"(, "added_tokens": [{"id": 99999999, "content": "x"}], "model": {"type": "BPE", "vocab": {}, "merges": []}})"));
      },
      {"l.json", "added_tokens[0].id"});
}

TEST(TokenizerErrors, MissingFiles) {
  const auto d = scratch_dir();
  expect_error([&] { load_tokenizer_json(d / "nope.json"); }, {"nope.json", "not found"});
  expect_error([&] { load_sentencepiece(d / "nope.model"); }, {"nope.model", "not found"});
  expect_error([&] { load_tokenizer_dir(d); }, {"no tokenizer.json or tokenizer.model"});
  expect_error([&] { load_sentencepiece(write(d, "junk.model", "this is not a protobuf")); },
               {"junk.model", "not a valid SentencePiece model"});
}

TEST(TokenizerErrors, BadBpeVocab) {
  BpeVocab v;
  v.tokens = {"a", "b", "ab"};
  v.merges = {"a b"};
  v.pre = "klingon";
  expect_error([&] { make_bpe_tokenizer(v); }, {"tokenizer.ggml.pre", "klingon"});
  v.pre = "gpt2";
  v.merges = {"a c"};
  expect_error([&] { make_bpe_tokenizer(v); }, {"merge 0", "'c'"});
  v.merges = {"ab"};
  expect_error([&] { make_bpe_tokenizer(v); }, {"merge 0", "'a b'"});
  v.merges = {"a b"};
  v.token_types = {1, 1};
  expect_error([&] { make_bpe_tokenizer(v); }, {"token_types"});
  v.token_types = {};
  v.eos = 7;
  expect_error([&] { make_bpe_tokenizer(v); }, {"eos id 7"});
  v.eos = std::nullopt;
  const auto tok = make_bpe_tokenizer(v);
  EXPECT_EQ(tok->encode("abba"), (std::vector<int32_t>{2, 1, 0}));
  const std::vector<int32_t> bad{0, 3};
  expect_error([&] { tok->decode(bad); }, {"token id 3"});
  expect_error([&] { tok->token_text(-1); }, {"token id -1"});
  expect_error([&] { tok->encode("ok \xff\xfe"); }, {"not valid UTF-8", "offset 3"});
  expect_error([&] { tok->encode("\xed\xa0\x80"); }, {"not valid UTF-8"});  // a surrogate
}

TEST(TokenizerErrors, BadTokenizerConfig) {
  const auto d = scratch_dir();
  load_tokenizer_json(tok_dir() / "gpt2_small" / "tokenizer.json")->save(d);
  write(d, "tokenizer_config.json", R"({"bos_token": "<|not-there|>"})");
  expect_error([&] { load_tokenizer_dir(d); },
               {"tokenizer_config.json", "bos_token", "<|not-there|>"});
  write(d, "tokenizer_config.json", "[1, 2");
  expect_error([&] { load_tokenizer_dir(d); }, {"tokenizer_config.json", "not a valid JSON"});
}

}  // namespace
}  // namespace uniattn::test
