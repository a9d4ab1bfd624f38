// SentencePiece-style tokenizer.json files (BPE with byte fallback, as LLaMA-2, Mistral and Gemma
// ship them) against HF `tokenizers` (tests/fixtures/make_tokenizer_fixtures.py, spm_json/):
// tiny LLaMA-style files in the transformers 5 and the hub layouts, with added tokens of every
// kind; the real Mistral-7B v0.1 and v0.3 tokenizers; a tiny Gemma-style one and the real Gemma-3
// tokenizer. Also: directories whose tokenizer.json we cannot run fall back to tokenizer.model,
// and the LLaMA-2-style directory of a reported case (tests/io/tokenizer/data).
#include <cstdlib>
#include <fstream>
#include <functional>

#include "tokenizer_test_util.h"

namespace uniattn::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

fs::path spm_dir() { return tok_dir() / "spm_json"; }

const json& spm_expected() {
  static const json j = [] {
    std::ifstream f(spm_dir() / "expected.json");
    return json::parse(f);
  }();
  return j;
}

std::vector<std::string> spm_texts() {
  return spm_expected()["texts"].get<std::vector<std::string>>();
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

json read_json_file(const fs::path& p) {
  std::ifstream f(p);
  return json::parse(f);
}

void write_json_file(const fs::path& p, const json& j) { std::ofstream(p) << j.dump(1); }

// Skips a test whose tokenizer the fixture could not make (a PyPI package missing).
#define REQUIRE_SPM_FIXTURE(name)                                                                  \
  if (!spm_expected().contains(name)) {                                                            \
    GTEST_SKIP() << name << " missing: " << spm_expected().value("mistral_missing", std::string()) \
                 << " " << spm_expected().value("gemma3_missing", std::string());                  \
  }

// Every text: plain ids, ids with the template's specials, specials not parsed, and decoding
// with and without the special tokens.
void check_all(const Tokenizer& tok, const json& exp) {
  const auto ts = spm_texts();
  ASSERT_EQ(exp["ids"].size(), ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    SCOPED_TRACE("text " + std::to_string(i) + ": " + ts[i]);
    EXPECT_EQ(tok.encode(ts[i]), ids_of(exp["ids"][i]));
    const auto with_special = tok.encode(ts[i], /*add_bos=*/true);
    EXPECT_EQ(with_special, ids_of(exp["ids_with_special"][i]));
    EXPECT_EQ(tok.encode(ts[i], false, /*parse_special=*/false), ids_of(exp["ids_no_special"][i]));
    EXPECT_EQ(tok.decode(with_special), exp["decoded"][i].get<std::string>());
    EXPECT_EQ(tok.decode(with_special, /*skip_special=*/true),
              exp["decoded_skip"][i].get<std::string>());
  }
}

class SpmJson : public ::testing::TestWithParam<std::string> {};

TEST_P(SpmJson, MatchesTokenizers) {
  REQUIRE_SPM_FIXTURE(GetParam());
  const auto tok = load_tokenizer_json(spm_dir() / GetParam() / "tokenizer.json");
  const json& exp = spm_expected()[GetParam()];
  EXPECT_EQ(tok->vocab_size(), exp["vocab_size"].get<int32_t>());
  check_all(*tok, exp);
}

// The directory as transformers saved it (tokenizer_config.json with the specials): prompts get
// what transformers adds.
TEST_P(SpmJson, DirectoryAddsWhatTransformersAdds) {
  REQUIRE_SPM_FIXTURE(GetParam());
  const auto tok = load_tokenizer_dir(spm_dir() / GetParam());
  EXPECT_TRUE(tok->load_note().empty()) << tok->load_note();
  const json& exp = spm_expected()[GetParam()];
  const auto ts = spm_texts();
  for (std::size_t i = 0; i < ts.size(); ++i) {
    SCOPED_TRACE(ts[i]);
    EXPECT_EQ(tok->encode(ts[i], tok->adds_bos()), ids_of(exp["ids_with_special"][i]));
  }
}

// save() writes a tokenizer.json that `tokenizers` runs to the same ids, and that loads back.
TEST_P(SpmJson, SavedFileGivesTheSameIdsInTokenizers) {
  REQUIRE_SPM_FIXTURE(GetParam());
  const char* py = std::getenv("UNIATTN_PYTHON");
  const auto dir = scratch_dir();
  load_tokenizer_json(spm_dir() / GetParam() / "tokenizer.json")->save(dir / "out");
  const json& exp = spm_expected()[GetParam()];
  check_all(*load_tokenizer_json(dir / "out" / "tokenizer.json"), exp);
  if (!py) GTEST_SKIP() << "UNIATTN_PYTHON not set";
  write_json_file(dir / "texts.json", spm_expected()["texts"]);
  std::ofstream(dir / "run.py")
      << "import json,sys\nfrom tokenizers import Tokenizer\n"
         "t = Tokenizer.from_file(sys.argv[1])\n"
         "texts = json.load(open(sys.argv[2], encoding=\"utf-8\"))\n"
         "json.dump({\"ids\": [t.encode(x, add_special_tokens=False).ids for x in texts],\n"
         "           \"ids_with_special\": [t.encode(x).ids for x in texts]},\n"
         "          open(sys.argv[3], \"w\"))\n";
  const std::string cmd = std::string("\"") + py + "\" \"" + (dir / "run.py").string() + "\" \"" +
                          (dir / "out" / "tokenizer.json").string() + "\" \"" +
                          (dir / "texts.json").string() + "\" \"" + (dir / "ids.json").string() +
                          "\"";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const json got = read_json_file(dir / "ids.json");
  EXPECT_EQ(got["ids"], exp["ids"]);
  EXPECT_EQ(got["ids_with_special"], exp["ids_with_special"]);
}

INSTANTIATE_TEST_SUITE_P(Files, SpmJson,
                         ::testing::Values("llama_first", "llama_legacy", "llama_split",
                                           "llama_nofallback", "gemma_small", "mistral_v1",
                                           "mistral_v1_hub", "mistral_v3", "gemma3"));

TEST(SpmJsonDecode, SlicesEndInsideACharacterAndBadBytesBecomeReplacementCharacters) {
  REQUIRE_SPM_FIXTURE("mistral_v1");
  const auto tok = load_tokenizer_json(spm_dir() / "mistral_v1" / "tokenizer.json");
  // A private-use character, not in the vocabulary: it falls back to its four bytes.
  const std::string text = "a \xF4\x8F\xBF\xBD";
  const auto ids = tok->encode(text);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(tok->decode(ids), text);
  // A slice ending inside the character gives the bytes so far (TextStream waits for the rest).
  const std::span<const int32_t> cut(ids.data(), ids.size() - 1);
  EXPECT_EQ(tok->decode(cut), std::string("a \xF4\x8F\xBF"));
  // Bytes that cannot start a character become U+FFFD each, as tokenizers' ByteFallback does.
  const int32_t cont = *tok->find_token("<0x80>"), a = *tok->find_token("▁a");
  const std::vector<int32_t> bad{a, cont, cont, a};
  EXPECT_EQ(tok->decode(bad), "a\xEF\xBF\xBD\xEF\xBF\xBD a");
  const std::vector<int32_t> bad_end{a, cont};
  EXPECT_EQ(tok->decode(bad_end), "a\xEF\xBF\xBD");
}

TEST(SpmJsonErrors, UnsupportedComponentsAreNamed) {
  const auto src = read_json_file(spm_dir() / "llama_legacy" / "tokenizer.json");
  const auto d = scratch_dir();
  auto variant = [&](const std::string& name, auto&& edit) {
    json j = src;
    edit(j);
    write_json_file(d / name, j);
    return d / name;
  };
  struct Case {
    std::string name;
    std::function<void(json&)> edit;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases{
      {"nfkc.json",
       [](json& j) {
         j["normalizer"]["normalizers"].push_back({{"type", "NFKC"}});
       },
       {"nfkc.json", "normalizer.normalizers[2]", "NFKC"}},
      {"regex.json",
       [](json& j) {
         j["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", " +"}};
       },
       {"regex.json", "normalizer.normalizers[1].pattern", "Regex"}},
      {"meta_first.json",
       [](json& j) {
         j["pre_tokenizer"] = {{"type", "Sequence"},
                               {"pretokenizers",
                                {{{"type", "Digits"}, {"individual_digits", true}},
                                 {{"type", "Metaspace"},
                                  {"replacement", "▁"},
                                  {"prepend_scheme", "first"},
                                  {"split", false}}}}};
       },
       {"meta_first.json", "pre_tokenizer.pretokenizers[1]", "Metaspace", "first"}},
      {"ctc.json",
       [](json& j) {
         j["decoder"]["decoders"][2] = {{"type", "CTC"}};
       },
       {"ctc.json", "decoder.decoders[2]", "CTC"}},
      {"dropout.json",
       [](json& j) { j["model"]["dropout"] = 0.1; },
       {"dropout.json", "model.dropout"}},
      {"bert.json",
       [](json& j) {
         j["post_processor"] = {{"type", "BertProcessing"}};
       },
       {"bert.json", "post_processor", "BertProcessing"}},
      {"bytelevel_dec.json",
       [](json& j) {
         j["decoder"] = {{"type", "ByteLevel"}};
       },
       {"bytelevel_dec.json", "decoder", "ByteLevel"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto path = variant(c.name, c.edit);
    try {
      load_tokenizer_json(path);
      ADD_FAILURE() << "no uniattn::Error thrown";
    } catch (const Error& e) {
      for (const auto& p : c.parts) {
        EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << p << " not in " << e.what();
      }
    }
  }
  // Malformed rather than unsupported.
  expect_error(
      [&] {
        load_tokenizer_json(variant("bad_meta.json", [](json& j) {
          j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "ab"}};
        }));
      },
      {"bad_meta.json", "pre_tokenizer.replacement", "single character"});
  expect_error(
      [&] {
        load_tokenizer_json(variant("old_meta.json", [](json& j) {
          j["pre_tokenizer"] = {
              {"type", "Metaspace"}, {"replacement", "▁"}, {"add_prefix_space", false}};
        }));
      },
      {"old_meta.json", "add_prefix_space does not match"});
  // unk is looked up when needed, as tokenizers does.
  const auto no_unk = load_tokenizer_json(variant("no_unk.json", [](json& j) {
    j["model"]["byte_fallback"] = false;
    j["model"]["unk_token"] = "<not-there>";
  }));
  EXPECT_FALSE(no_unk->encode("abc").empty());
  expect_error([&] { no_unk->encode("abc \xF4\x8F\xBF\xBD"); }, {"model.unk_token", "<not-there>"});
}

TEST(SpmDirFallback, UnsupportedTokenizerJsonFallsBackToTokenizerModel) {
  REQUIRE_SPM_FIXTURE("fallback");
  const auto tok = load_tokenizer_dir(spm_dir() / "fallback");
  EXPECT_NE(tok->load_note().find("NFKC"), std::string::npos) << tok->load_note();
  EXPECT_NE(tok->load_note().find("tokenizer.model"), std::string::npos) << tok->load_note();
  // The template's bos is kept.
  EXPECT_TRUE(tok->adds_bos());
  EXPECT_EQ(tok->bos_id(), std::optional<int32_t>(1));
  const json& exp = spm_expected()["fallback"];
  const auto ts = spm_texts();
  for (std::size_t i = 0; i < ts.size(); ++i) {
    SCOPED_TRACE(ts[i]);
    EXPECT_EQ(tok->encode(ts[i], false, /*parse_special=*/false), ids_of(exp["ids"][i]));
    EXPECT_EQ(tok->encode(ts[i], tok->adds_bos(), false), ids_of(exp["ids_with_special"][i]));
  }
}

TEST(SpmDirFallback, TemplateMustNameTheModelsPieces) {
  REQUIRE_SPM_FIXTURE("fallback");
  expect_error([&] { load_tokenizer_dir(spm_dir() / "fallback_mismatch"); },
               {"NFKC", "'<s>' (id 2) is not that id's piece in tokenizer.model"});
}

TEST(SpmDirFallback, AddedTokensMustBeTheModelsPieces) {
  REQUIRE_SPM_FIXTURE("fallback");
  const auto d = scratch_dir();
  fs::copy_file(spm_dir() / "fallback" / "tokenizer.model", d / "tokenizer.model");
  json j = read_json_file(spm_dir() / "fallback" / "tokenizer.json");
  j["added_tokens"].push_back({{"id", 32000},
                               {"content", "<|im_start|>"},
                               {"single_word", false},
                               {"lstrip", false},
                               {"rstrip", false},
                               {"normalized", false},
                               {"special", true}});
  write_json_file(d / "tokenizer.json", j);
  expect_error([&] { load_tokenizer_dir(d); },
               {"NFKC", "added token '<|im_start|>' (id 32000) is not that id's piece"});
}

TEST(SpmDirFallback, NoTokenizerModelMeansNoFallback) {
  const auto d = scratch_dir();
  json j = read_json_file(spm_dir() / "llama_legacy" / "tokenizer.json");
  j["normalizer"] = {{"type", "Lowercase"}};
  write_json_file(d / "tokenizer.json", j);
  expect_error([&] { load_tokenizer_dir(d); },
               {"normalizer", "Lowercase", "no tokenizer.model to fall back to"});
  // A malformed tokenizer.json is an error even next to a tokenizer.model.
  fs::copy_file(spm_dir() / "llama.model", d / "tokenizer.model");
  std::ofstream(d / "tokenizer.json") << "{\"model\": ";
  expect_error([&] { load_tokenizer_dir(d); }, {"tokenizer.json", "not valid JSON"});
}

// tokenizer_config.json's explicit add_bos_token/add_eos_token replace the template, as in
// transformers.
TEST(SpmDir, TokenizerConfigAddBosAndEos) {
  const auto d = scratch_dir();
  fs::copy_file(spm_dir() / "llama_legacy" / "tokenizer.json", d / "tokenizer.json");
  const auto plain = load_tokenizer_json(d / "tokenizer.json")->encode("hi there");
  std::ofstream(d / "tokenizer_config.json")
      << R"({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false,
            "add_eos_token": true})";
  const auto tok = load_tokenizer_dir(d);
  EXPECT_FALSE(tok->adds_bos());
  std::vector<int32_t> want = plain;
  want.push_back(2);
  EXPECT_EQ(tok->encode("hi there", true), want);
}

// ---- the reported LLaMA-2-style directory ------------------------------------------------------

fs::path case_dir() {
  return source_dir() / "tests" / "io" / "tokenizer" / "data" / "llama2_style_dir";
}

TEST(Llama2StyleDir, LoadsAndMatchesTransformersAndSentencePiece) {
  const json exp = read_json_file(case_dir() / "expected.json");
  const json texts = read_json_file(case_dir() / "texts.json");
  const auto tok = load_tokenizer_dir(case_dir() / "llama2_style");
  EXPECT_TRUE(tok->load_note().empty());
  const auto spm = load_sentencepiece(case_dir() / "llama2_style" / "tokenizer.model");
  ASSERT_EQ(exp["results"].size(), texts.size());
  for (const json& r : exp["results"]) {
    const std::string text = r["text"].get<std::string>();
    SCOPED_TRACE(text);
    EXPECT_EQ(tok->encode(text, /*add_bos=*/true), ids_of(r["hf_ids"]));
    EXPECT_EQ(tok->encode(text, tok->adds_bos()), ids_of(r["hf_ids"]));
    EXPECT_EQ(tok->encode(text), ids_of(r["hf_ids_nospecial"]));
    EXPECT_EQ(spm->encode(text, false, /*parse_special=*/false), ids_of(r["spm_ids"]));
  }
  EXPECT_EQ(tok->bos_id(), std::optional<int32_t>(1));
  EXPECT_EQ(tok->eos_id(), std::optional<int32_t>(2));
  EXPECT_EQ(tok->decode(tok->encode("Hello world")), "Hello world");
}

// The same directory with a tokenizer.json we cannot run: tokenizer.model gives sentencepiece's
// ids, and, as the template adds nothing, no bos.
TEST(Llama2StyleDir, FallsBackToTokenizerModel) {
  const auto d = scratch_dir();
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "config.json"}) {
    fs::copy_file(case_dir() / "llama2_style" / f, d / f);
  }
  json j = read_json_file(case_dir() / "llama2_style" / "tokenizer.json");
  j["normalizer"] = {{"type", "NFKC"}};
  write_json_file(d / "tokenizer.json", j);
  const auto tok = load_tokenizer_dir(d);
  EXPECT_FALSE(tok->load_note().empty());
  EXPECT_FALSE(tok->adds_bos());
  // Named: a range-for over a member of a temporary would read the freed temporary.
  const json expected = read_json_file(case_dir() / "expected.json");
  for (const json& r : expected["results"]) {
    const std::string text = r["text"].get<std::string>();
    SCOPED_TRACE(text);
    EXPECT_EQ(tok->encode(text, tok->adds_bos(), /*parse_special=*/false), ids_of(r["spm_ids"]));
  }
  // With a bos template in tokenizer.json, the fallback adds the bos.
  j["post_processor"] =
      read_json_file(spm_dir() / "llama_legacy" / "tokenizer.json")["post_processor"];
  write_json_file(d / "tokenizer.json", j);
  const auto with_bos = load_tokenizer_dir(d);
  EXPECT_TRUE(with_bos->adds_bos());
  EXPECT_EQ(with_bos->encode("Hello world", true).front(), 1);
}

}  // namespace
}  // namespace uniattn::test
