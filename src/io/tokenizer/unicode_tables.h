// Unicode character classification for the pre-tokenizer, from generated tables (not a public
// header). HF `tokenizers` classifies characters by the tables of its own regex engine
// (Oniguruma 6.9.10: Unicode 16.0) and, in its Digits pre-tokenizer, of Rust's char::is_numeric
// (Unicode 17.0); PCRE2 carries whatever version it was built with (Debian's 10.42: Unicode
// 14.0). So the pre-tokenizer never lets PCRE2's tables decide: translate_regex() turns every
// Unicode-dependent part of a tokenizer.json regex into a class holding exactly our set.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace uniattn::tok::unicode {

// Alphabetical, as scripts/gen_unicode_tables.py lists them.
enum class GeneralCategory : uint8_t {
  Cc,
  Cf,
  Cn,
  Co,
  Cs,
  Ll,
  Lm,
  Lo,
  Lt,
  Lu,
  Mc,
  Me,
  Mn,
  Nd,
  Nl,
  No,
  Pc,
  Pd,
  Pe,
  Pf,
  Pi,
  Po,
  Ps,
  Sc,
  Sk,
  Sm,
  So,
  Zl,
  Zp,
  Zs
};

struct GcRun {
  char32_t first;  // the run lasts until the next run's first code point
  GeneralCategory gc;
};
struct CodeRange {
  char32_t first, last;  // inclusive
};

// Generated (unicode_data.cpp).
extern const char* const kRegexUnicodeVersion;    // general categories: "16.0.0"
extern const char* const kNumericUnicodeVersion;  // numeric_ranges: "17.0.0"
extern const char* const kPcre2UnicodeVersion;    // pcre2_gc_runs: "14.0.0"
extern const std::span<const GcRun> gc_runs;
extern const std::span<const CodeRange> numeric_ranges;
// PCRE2's own table (Debian 12's PCRE2 10.42), so that its fast \p{..} can stand for the part of
// a class it classifies as we do; used only when PCRE2 reports that Unicode version.
extern const std::span<const GcRun> pcre2_gc_runs;

// The general category of `cp` (<= U+10FFFF) in kRegexUnicodeVersion.
GeneralCategory general_category(char32_t cp);

// A set of code points as sorted, disjoint, non-adjacent ranges.
using CodeSet = std::vector<CodeRange>;

// Code points whose category is in `mask` (bit i = GeneralCategory i).
CodeSet category_set(uint32_t mask);
// Every code point U+0000..U+10FFFF outside `s`.
CodeSet complement(const CodeSet& s);

// Rewrites a tokenizer.json regex, written for HF tokenizers' Oniguruma (Ruby syntax), into a
// PCRE2 pattern (for PCRE2_UTF | PCRE2_UCP, newline LF) that matches the same: \p{..}, \P{..},
// \d, \s (and their negations) become classes of explicit ranges from these tables, and the
// constructs whose meaning differs between the two engines are rewritten (\h, \v, \uHHHH,
// {,n}, ^, $, (?m)). Whatever it cannot translate exactly throws uniattn::Error naming the
// pattern and `source` (the tokenizer file), rather than let PCRE2 give other pieces.
//
// `native`: a class may use PCRE2's own \p{X} for each category X whose PCRE2 table lies inside
// the wanted set, plus explicit ranges for the rest (several times faster to match than ranges
// alone); only done when PCRE2's Unicode version is kPcre2UnicodeVersion. false: ranges only.
std::string translate_regex(std::string_view pattern, std::string_view source, bool native = true);

// A PCRE2 class matching exactly `s` ("(?!)" when `s` holds no character); `native` as above.
std::string pcre2_class(const CodeSet& s, bool native = true);

// Whether PCRE2's own general categories are kPcre2UnicodeVersion's (pcre2_config).
bool pcre2_tables_known();

}  // namespace uniattn::tok::unicode
