// Pre-tokenization: splitting text into the pieces BPE merges within (regex splits, digit splits,
// byte-level's own GPT-2 split), with PCRE2 in UTF mode. PCRE2's Unicode tables (Debian's 10.42:
// Unicode 14) decide nothing on their own, since HF tokenizers classifies by Unicode 16 (17 for
// Digits): regexes go through unicode::translate_regex, which writes \p{..}, \d, \s as exactly
// those sets (PCRE2's own \p{X} only where its table lies inside the set, plus explicit ranges).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "internal.h"
#include "uniattn/error.h"
#include "unicode_tables.h"

namespace uniattn::tok {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Pattern =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class Regex {
 public:
  // `pcre2_pattern` is what PCRE2 compiles (a translation, or the literal string); `shown` is the
  // pattern as the tokenizer file wrote it, for messages.
  Regex(const std::string& pcre2_pattern, bool literal, std::string_view source,
        std::string_view shown) {
    int err = 0;
    PCRE2_SIZE off = 0;
    const uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0u);
    // Newline LF and \R = any Unicode line break, as Oniguruma; not left to PCRE2's build.
    pcre2_compile_context* ctx = pcre2_compile_context_create(nullptr);
    UNIATTN_CHECK(ctx != nullptr, "pre-tokenizer: out of memory");
    pcre2_set_newline(ctx, PCRE2_NEWLINE_LF);
    pcre2_set_bsr(ctx, PCRE2_BSR_UNICODE);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2_pattern.data()), pcre2_pattern.size(),
                          opts, &err, &off, ctx);
    pcre2_compile_context_free(ctx);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      if (literal) {
        fail(source, ": pre-tokenizer regex '", shown, "' does not compile at offset ", off, ": ",
             reinterpret_cast<const char*>(msg));
      }
      fail(source, ": pre-tokenizer regex '", shown,
           "' does not compile (PCRE2: ", reinterpret_cast<const char*>(msg), ")");
    }
    // JIT is only a speed-up; matching falls back to the interpreter when it is unavailable.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(begin, end) for each match in `s` (valid UTF-8), in order, as the `onig` crate's
  // find_iter gives them to HF tokenizers (tokenizers/src/utils/onig.rs): empty matches too
  // (a Split cuts the text there), except an empty one right where the previous match ended.
  template <typename F>
  void for_each_match(std::string_view s, F&& f) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    UNIATTN_CHECK(md != nullptr, "pre-tokenizer: out of memory");
    std::size_t pos = 0;
    std::optional<std::size_t> last_end;
    auto step_over_char = [&](std::size_t at) {
      std::size_t p = at + 1;
      while (p < s.size() && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) ++p;
      return p;
    };
    while (pos <= s.size()) {
      // The whole text was UTF-8-checked once up front, so PCRE2 need not re-check each call.
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                                 PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(md);
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        fail("pre-tokenizer regex match failed: ", reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const std::size_t b = ov[0], e = ov[1];
      if (e > b) {
        f(b, e);
        last_end = e;
        pos = e;
        continue;
      }
      if (last_end != e) {
        f(b, e);
        last_end = e;
      }
      // An empty match: search again one character further on.
      if (b >= s.size()) break;
      pos = step_over_char(b);
    }
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
};

const char* behavior_name(SplitBehavior b) {
  switch (b) {
    case SplitBehavior::kIsolated:
      return "Isolated";
    case SplitBehavior::kRemoved:
      return "Removed";
    case SplitBehavior::kMergedWithPrevious:
      return "MergedWithPrevious";
    case SplitBehavior::kMergedWithNext:
      return "MergedWithNext";
    case SplitBehavior::kContiguous:
      return "Contiguous";
  }
  return "?";
}

std::shared_ptr<const Regex> compile_regex(const std::string& pattern, std::string_view source,
                                           bool native) {
  return std::make_shared<Regex>(unicode::translate_regex(pattern, source, native), false, source,
                                 pattern);
}

std::vector<std::pair<std::size_t, std::size_t>> match_spans(const Regex& re, std::string_view s) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  re.for_each_match(s, [&](std::size_t b, std::size_t e) { out.emplace_back(b, e); });
  return out;
}

void compile_pre_steps(std::vector<PreStep>& steps, std::string_view source) {
  for (auto& s : steps) {
    if (s.kind == PreStep::kSplit) {
      s.regex = s.pattern_is_regex ? compile_regex(s.pattern, source)
                                   : std::make_shared<Regex>(s.pattern, true, source, s.pattern);
    } else if (s.kind == PreStep::kDigits) {
      // HF's Digits splits on Rust's char::is_numeric (Nd, Nl, No; tokenizers/src/
      // pre_tokenizers/digits.rs), of the Rust standard library's Unicode version (17.0 in the
      // tokenizers 0.23 wheel), not of its regex engine's.
      static const std::string numeric = unicode::pcre2_class(
          unicode::CodeSet(unicode::numeric_ranges.begin(), unicode::numeric_ranges.end()));
      s.regex = std::make_shared<Regex>(numeric, false, source, "Digits");
    } else if (s.kind == PreStep::kByteLevel && s.use_regex) {
      s.regex = compile_regex(kGpt2Pattern, source);
    }
  }
}

namespace {

struct Span {
  std::size_t b, e;
  bool delim;
};

// Turns the spans (covering the piece, in order) into pieces following `behavior`. A delimiter
// merges into its neighbour only when that neighbour is not a delimiter itself; spans that are not
// delimiters never merge with each other (except under Contiguous, which fuses equal runs).
void apply_behavior(std::string_view piece, const std::vector<Span>& spans, SplitBehavior behavior,
                    std::vector<std::string>& out) {
  struct Range {
    std::size_t b, e;
  };
  std::vector<Range> acc;
  bool prev_delim = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) acc.push_back({s.b, s.e});
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.delim) acc.push_back({s.b, s.e});
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.delim && !prev_delim && !acc.empty()) {
          acc.back().e = s.e;
        } else {
          acc.push_back({s.b, s.e});
        }
        prev_delim = s.delim;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->delim && !prev_delim && !acc.empty()) {
          acc.back().b = it->b;
        } else {
          acc.push_back({it->b, it->e});
        }
        prev_delim = it->delim;
      }
      std::reverse(acc.begin(), acc.end());
      break;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.delim == prev_delim && !acc.empty()) {
          acc.back().e = s.e;
        } else {
          acc.push_back({s.b, s.e});
        }
        prev_delim = s.delim;
      }
      break;
  }
  for (const Range& r : acc) {
    if (r.e > r.b) out.emplace_back(piece.substr(r.b, r.e - r.b));
  }
}

// Splits `piece` where `is_match` spans are, per the step's behavior.
template <typename FindMatches>
void split_piece(std::string_view piece, SplitBehavior behavior, bool invert,
                 FindMatches&& find_matches, std::vector<std::string>& out) {
  std::vector<Span> spans;
  std::size_t last = 0;
  find_matches(piece, [&](std::size_t b, std::size_t e) {
    if (b > last) spans.push_back({last, b, invert});
    spans.push_back({b, e, !invert});
    last = e;
  });
  if (last < piece.size()) spans.push_back({last, piece.size(), invert});
  apply_behavior(piece, spans, behavior, out);
}

}  // namespace

std::vector<std::string> pre_tokenize(const std::vector<PreStep>& steps, std::string_view text) {
  std::vector<std::string> pieces;
  if (text.empty()) return pieces;
  pieces.emplace_back(text);
  std::vector<std::string> next;
  for (const PreStep& step : steps) {
    next.clear();
    for (std::string& piece : pieces) {
      switch (step.kind) {
        case PreStep::kSplit:
          split_piece(
              piece, step.behavior, step.invert,
              [&](std::string_view s, auto&& f) { step.regex->for_each_match(s, f); }, next);
          break;
        case PreStep::kDigits:
          split_piece(
              piece, step.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
              false, [&](std::string_view s, auto&& f) { step.regex->for_each_match(s, f); }, next);
          break;
        case PreStep::kByteLevel:
          // HF adds the prefix space to every piece that reaches this step, not only the first.
          if (step.add_prefix_space && piece[0] != ' ') piece.insert(piece.begin(), ' ');
          if (step.use_regex) {
            split_piece(
                piece, SplitBehavior::kIsolated, false,
                [&](std::string_view s, auto&& f) { step.regex->for_each_match(s, f); }, next);
          } else {
            next.push_back(std::move(piece));
          }
          break;
      }
    }
    std::swap(pieces, next);
  }
  return pieces;
}

}  // namespace uniattn::tok
