// Tokenizer files that made the loaders fail with something other than uniattn::Error (found by
// fuzzing, fuzz/; docs/reliability.md): a library exception from libsentencepiece, a
// nlohmann::json type_error, and unbounded recursion over nested component Sequences.
#include <fstream>

#include "tokenizer_test_util.h"

namespace uniattn::test {
namespace {

std::filesystem::path faults() { return source_dir() / "tests/io/tokenizer/data/faults"; }

// A model whose piece is a NUL byte: darts-clone (inside libsentencepiece) throws
// "zero-length key" while building its trie, past the Status that LoadFromSerializedProto
// returns; the process terminated.
TEST(TokenizerFaults, SentencePieceLibraryExceptionBecomesOurError) {
  expect_error([] { load_sentencepiece(faults() / "nul_piece.model"); },
               {"nul_piece.model", "not a valid SentencePiece model", "zero-length key"});
  // The same model reached through a directory.
  const auto d = scratch_dir();
  std::filesystem::copy_file(faults() / "nul_piece.model", d / "tokenizer.model");
  expect_error([&] { load_tokenizer_dir(d); }, {"tokenizer.model", "zero-length key"});
}

// "normalizer": 1 let nlohmann::json::type_error out of the component reader.
TEST(TokenizerFaults, ComponentOfTheWrongJsonTypeIsNamed) {
  expect_error([] { load_tokenizer_json(faults() / "normalizer_not_object.tokenizer.json"); },
               {"normalizer_not_object.tokenizer.json", "normalizer"});
  const auto d = scratch_dir();
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0}, "merges": []})";
  for (const std::string comp :
       {R"("normalizer": "x")", R"("normalizer": [1])", R"("pre_tokenizer": 3)",
        R"("decoder": true)", R"("post_processor": [])",
        R"("normalizer": {"type": "Sequence", "normalizers": 5})",
        R"("pre_tokenizer": {"type": "Sequence", "pretokenizers": [7]})",
        R"("decoder": {"type": "Sequence", "decoders": {"a": 1}})"}) {
    SCOPED_TRACE(comp);
    std::ofstream(d / "t.json") << "{" << model << ", " << comp << "}";
    const std::string key = comp.substr(1, comp.find('"', 1) - 1);
    expect_error([&] { load_tokenizer_json(d / "t.json"); }, {"t.json", key});
  }
}

// Sequences nest: each level is one recursive call of the reader; 100,000 levels overflowed the
// stack. The file's nesting is bounded before it is read.
TEST(TokenizerFaults, DeeplyNestedSequencesAreRefused) {
  const auto d = scratch_dir();
  std::string seq;
  const int n = 100000;
  for (int i = 0; i < n; ++i) seq += R"({"type": "Sequence", "normalizers": [)";
  for (int i = 0; i < n; ++i) seq += "]}";
  std::ofstream(d / "tokenizer.json")
      << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": )" << seq
      << "}";
  expect_error([&] { load_tokenizer_json(d / "tokenizer.json"); },
               {"tokenizer.json", "JSON nested deeper than 128 levels"});
  expect_error([&] { load_tokenizer_dir(d); }, {"tokenizer.json", "nested deeper"});
}

}  // namespace
}  // namespace uniattn::test
