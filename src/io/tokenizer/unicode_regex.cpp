// Translation of tokenizer.json regexes (HF tokenizers compiles them with Oniguruma, Ruby syntax)
// into PCRE2 patterns that classify characters by our generated Unicode tables instead of
// PCRE2's own. See unicode_tables.h for why.
//
// Oniguruma's meanings below are those of Oniguruma 6.9.10 (doc/RE) in its default syntax
// (OnigDefaultSyntax, what the `onig` crate's Regex::new and so tokenizers' SysRegex use, in
// tokenizers/src/utils/onig.rs); each was also checked against the tokenizers 0.23 wheel
// (tests/fixtures/make_unicode_fixtures.py writes those checks as fixtures, and
// tests/io/tokenizer/test_tokenizer_unicode.cpp runs them).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "internal.h"
#include "uniattn/error.h"
#include "unicode_tables.h"

namespace uniattn::tok::unicode {

namespace {

constexpr char32_t kMaxCp = 0x10FFFF;

constexpr uint32_t bit(GeneralCategory g) { return uint32_t{1} << static_cast<unsigned>(g); }

using enum GeneralCategory;
constexpr uint32_t kL = bit(Lu) | bit(Ll) | bit(Lt) | bit(Lm) | bit(Lo);
constexpr uint32_t kLC = bit(Lu) | bit(Ll) | bit(Lt);
constexpr uint32_t kM = bit(Mn) | bit(Mc) | bit(Me);
constexpr uint32_t kN = bit(Nd) | bit(Nl) | bit(No);
constexpr uint32_t kP = bit(Pc) | bit(Pd) | bit(Ps) | bit(Pe) | bit(Pi) | bit(Pf) | bit(Po);
constexpr uint32_t kS = bit(Sm) | bit(Sc) | bit(Sk) | bit(So);
constexpr uint32_t kZ = bit(Zs) | bit(Zl) | bit(Zp);
constexpr uint32_t kC = bit(Cc) | bit(Cf) | bit(Cs) | bit(Co) | bit(Cn);
constexpr uint32_t kAll = kL | kM | kN | kP | kS | kZ | kC;

// Property names \p{..} accepts here: the general categories (short and long names) and Any,
// Assigned, all as Oniguruma looks them up: ASCII case, spaces, '-' and '_' ignored. Oniguruma's
// other properties (scripts, blocks, binary properties, the POSIX names such as Alpha or Punct)
// are not carried and are refused.
struct PropertyName {
  const char* name;
  uint32_t mask;
};
constexpr PropertyName kProperties[] = {
    {"any", kAll},
    {"assigned", kAll & ~bit(Cn)},
    {"l", kL},
    {"letter", kL},
    {"lc", kLC},
    {"casedletter", kLC},
    {"lu", bit(Lu)},
    {"uppercaseletter", bit(Lu)},
    {"ll", bit(Ll)},
    {"lowercaseletter", bit(Ll)},
    {"lt", bit(Lt)},
    {"titlecaseletter", bit(Lt)},
    {"lm", bit(Lm)},
    {"modifierletter", bit(Lm)},
    {"lo", bit(Lo)},
    {"otherletter", bit(Lo)},
    {"m", kM},
    {"mark", kM},
    {"combiningmark", kM},
    {"mn", bit(Mn)},
    {"nonspacingmark", bit(Mn)},
    {"mc", bit(Mc)},
    {"spacingmark", bit(Mc)},
    {"me", bit(Me)},
    {"enclosingmark", bit(Me)},
    {"n", kN},
    {"number", kN},
    {"nd", bit(Nd)},
    {"decimalnumber", bit(Nd)},
    {"nl", bit(Nl)},
    {"letternumber", bit(Nl)},
    {"no", bit(No)},
    {"othernumber", bit(No)},
    {"p", kP},
    {"punctuation", kP},
    {"pc", bit(Pc)},
    {"connectorpunctuation", bit(Pc)},
    {"pd", bit(Pd)},
    {"dashpunctuation", bit(Pd)},
    {"ps", bit(Ps)},
    {"openpunctuation", bit(Ps)},
    {"pe", bit(Pe)},
    {"closepunctuation", bit(Pe)},
    {"pi", bit(Pi)},
    {"initialpunctuation", bit(Pi)},
    {"pf", bit(Pf)},
    {"finalpunctuation", bit(Pf)},
    {"po", bit(Po)},
    {"otherpunctuation", bit(Po)},
    {"s", kS},
    {"symbol", kS},
    {"sm", bit(Sm)},
    {"mathsymbol", bit(Sm)},
    {"sc", bit(Sc)},
    {"currencysymbol", bit(Sc)},
    {"sk", bit(Sk)},
    {"modifiersymbol", bit(Sk)},
    {"so", bit(So)},
    {"othersymbol", bit(So)},
    {"z", kZ},
    {"separator", kZ},
    {"zs", bit(Zs)},
    {"spaceseparator", bit(Zs)},
    {"zl", bit(Zl)},
    {"lineseparator", bit(Zl)},
    {"zp", bit(Zp)},
    {"paragraphseparator", bit(Zp)},
    {"c", kC},
    {"other", kC},
    {"cc", bit(Cc)},
    {"control", bit(Cc)},
    {"cf", bit(Cf)},
    {"format", bit(Cf)},
    {"cs", bit(Cs)},
    {"surrogate", bit(Cs)},
    {"co", bit(Co)},
    {"privateuse", bit(Co)},
    {"cn", bit(Cn)},
    {"unassigned", bit(Cn)},
};

std::optional<uint32_t> property_mask(std::string_view name) {
  std::string key;
  for (char c : name) {
    if (c == ' ' || c == '-' || c == '_') continue;
    key += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  for (const auto& p : kProperties) {
    if (key == p.name) return p.mask;
  }
  return std::nullopt;
}

CodeSet normalize(CodeSet s) {
  std::sort(s.begin(), s.end(),
            [](const CodeRange& a, const CodeRange& b) { return a.first < b.first; });
  CodeSet out;
  for (const CodeRange& r : s) {
    if (!out.empty() && r.first <= out.back().last + 1) {
      out.back().last = std::max(out.back().last, r.last);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

CodeSet unite(CodeSet a, const CodeSet& b) {
  a.insert(a.end(), b.begin(), b.end());
  return normalize(std::move(a));
}

// Oniguruma's \s for Unicode: U+0009..U+000D, U+0085 and the separators Zs, Zl, Zp (doc/RE),
// i.e. the White_Space property.
CodeSet space_set() { return unite(category_set(kZ), {{0x09, 0x0D}, {0x85, 0x85}}); }

// Oniguruma's \h (Ruby syntax): a hexadecimal digit, not PCRE2's horizontal space.
const CodeSet kHexSet = {{'0', '9'}, {'A', 'F'}, {'a', 'f'}};

void append_hex(std::string& out, char32_t cp) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "\\x{%X}", static_cast<unsigned>(cp));
  out += buf;
}

// Explicit class items for `s`, leaving out the UTF-16 surrogates: they never occur in UTF-8
// text and PCRE2 refuses them as code points in UTF mode.
std::string range_items(const CodeSet& s) {
  std::string out;
  for (CodeRange r : s) {
    for (const CodeRange part : {CodeRange{r.first, std::min<char32_t>(r.last, 0xD7FF)},
                                 CodeRange{std::max<char32_t>(r.first, 0xE000), r.last}}) {
      if (part.first > part.last) continue;
      append_hex(out, part.first);
      if (part.last != part.first) {
        out += '-';
        append_hex(out, part.last);
      }
    }
  }
  return out;
}

bool is_subset(const CodeSet& a, const CodeSet& b) {
  auto it = b.begin();
  for (const CodeRange& r : a) {
    while (it != b.end() && it->last < r.first) ++it;
    if (it == b.end() || it->first > r.first || it->last < r.last) return false;
  }
  return true;
}

CodeSet subtract(const CodeSet& a, const CodeSet& b) {
  CodeSet out;
  const CodeSet nb = complement(b);
  auto it = nb.begin();
  for (const CodeRange& r : a) {
    while (it != nb.end() && it->last < r.first) ++it;
    for (auto jt = it; jt != nb.end() && jt->first <= r.last; ++jt)
      out.push_back({std::max(r.first, jt->first), std::min(r.last, jt->last)});
  }
  return out;
}

// PCRE2's own sets of each category (kPcre2UnicodeVersion), surrogates left out.
const std::array<CodeSet, 30>& pcre2_sets() {
  static const std::array<CodeSet, 30> sets = [] {
    std::array<CodeSet, 30> out;
    for (std::size_t k = 0; k < pcre2_gc_runs.size(); ++k) {
      const char32_t last = k + 1 < pcre2_gc_runs.size() ? pcre2_gc_runs[k + 1].first - 1 : kMaxCp;
      out[static_cast<std::size_t>(pcre2_gc_runs[k].gc)].push_back({pcre2_gc_runs[k].first, last});
    }
    out[static_cast<std::size_t>(Cs)].clear();
    return out;
  }();
  return sets;
}

// Class items for `s`: PCRE2's \p{X} for every category X whose PCRE2 set lies inside `s`
// (the major class \p{L} etc. when all of its categories do; PCRE2 checks a property in constant
// time), then explicit ranges for what they leave out. Without `native`, ranges only.
std::string class_items(const CodeSet& s, bool native) {
  if (!native || !pcre2_tables_known()) return range_items(s);
  const auto& sets = pcre2_sets();
  uint32_t chosen = 0;
  CodeSet covered;
  for (std::size_t x = 0; x < sets.size(); ++x) {
    if (!sets[x].empty() && is_subset(sets[x], s)) {
      chosen |= uint32_t{1} << x;
      covered = unite(std::move(covered), sets[x]);
    }
  }
  struct Group {
    const char* name;
    uint32_t mask;
  };
  // Cs is left out of C: it never occurs in UTF-8 text.
  static constexpr Group kGroups[] = {{"L", kL}, {"M", kM}, {"N", kN},           {"P", kP},
                                      {"S", kS}, {"Z", kZ}, {"C", kC & ~bit(Cs)}};
  static constexpr const char* kNames[] = {
      "Cc", "Cf", "Cn", "Co", "Cs", "Ll", "Lm", "Lo", "Lt", "Lu", "Mc", "Me", "Mn", "Nd", "Nl",
      "No", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "Sc", "Sk", "Sm", "So", "Zl", "Zp", "Zs"};
  std::string out;
  for (const Group& g : kGroups) {
    if ((chosen & g.mask) == g.mask) {
      out += "\\p{";
      out += g.name;
      out += '}';
      continue;
    }
    for (std::size_t x = 0; x < 30; ++x) {
      if ((g.mask & chosen) >> x & 1) {
        out += "\\p{";
        out += kNames[x];
        out += '}';
      }
    }
  }
  return out + range_items(subtract(s, covered));
}

// What one escape or literal stands for.
struct Atom {
  enum Kind { kChar, kSet, kVerbatim } kind = kChar;
  char32_t cp = 0;         // kChar
  CodeSet set;             // kSet: the positive set...
  bool negated = false;    // ...and whether the escape means its complement
  bool case_free = false;  // kSet: no member has a case partner (\d, \s, \h)
  std::string text;        // kVerbatim: PCRE2 text with the same meaning
};

class Translator {
 public:
  Translator(std::string_view pattern, std::string_view source, bool native)
      : p_(pattern), source_(source), native_(native) {}

  std::string run() {
    while (i_ < p_.size()) step();
    return std::move(out_);
  }

 private:
  template <typename... Args>
  [[noreturn]] void refuse(const Args&... why) const {
    fail(source_, ": pre-tokenizer regex '", p_, "' is not supported: ", why...,
         " (HF tokenizers matches it with Oniguruma and Unicode ", kRegexUnicodeVersion,
         " tables; this construct cannot be translated to PCRE2 exactly)");
  }

  bool at(char c) const { return i_ < p_.size() && p_[i_] == c; }
  bool at(std::size_t k, char c) const { return i_ + k < p_.size() && p_[i_ + k] == c; }

  char32_t next_char() {
    std::size_t j = i_;
    const char32_t cp = next_codepoint(p_, j);
    i_ = j;
    return cp;
  }

  static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // Reads up to `max` digits of base `base` (at least one); returns the value.
  char32_t read_number(int base, std::size_t max, std::string_view what) {
    char32_t v = 0;
    std::size_t n = 0;
    while (n < max && i_ < p_.size()) {
      const int d = hex_value(p_[i_]);
      if (d < 0 || d >= base) break;
      v = v * base + static_cast<char32_t>(d);
      if (v > kMaxCp) refuse(what, " past U+10FFFF");
      ++i_, ++n;
    }
    if (n == 0) refuse("malformed ", what);
    return v;
  }

  char32_t read_braced(int base, std::string_view what) {
    ++i_;  // '{'
    const char32_t v = read_number(base, 8, what);
    if (!at('}')) refuse("malformed ", what);
    ++i_;
    return v;
  }

  // After a backslash: one escape, in or outside a class.
  Atom escape(bool in_class) {
    if (i_ >= p_.size()) refuse("a trailing backslash");
    const std::size_t start = i_ - 1;
    const char c = p_[i_];
    auto verbatim = [&](std::size_t len) {
      if (in_class) refuse("\\", std::string(1, c), " inside a character class");
      i_ += len;
      return Atom{Atom::kVerbatim, 0, {}, false, false, std::string(p_.substr(start, i_ - start))};
    };
    auto set = [&](CodeSet s, bool negated, bool case_free) {
      ++i_;
      return Atom{Atom::kSet, 0, std::move(s), negated, case_free, {}};
    };
    auto chr = [&](char32_t cp, std::size_t len) {
      i_ += len;
      return Atom{Atom::kChar, cp, {}, false, false, {}};
    };
    switch (c) {
      case 'p':
      case 'P': {
        ++i_;
        if (!at('{')) refuse("\\", std::string(1, c), " without {name}");
        const std::size_t close = p_.find('}', i_);
        if (close == std::string_view::npos) refuse("an unterminated \\", std::string(1, c), "{");
        std::string_view name = p_.substr(i_ + 1, close - i_ - 1);
        bool negated = c == 'P';
        if (!name.empty() && name[0] == '^') negated = !negated, name.remove_prefix(1);
        const auto mask = property_mask(name);
        if (!mask) {
          refuse("Unicode property \\p{", name,
                 "} (only general categories, Any and Assigned are carried)");
        }
        i_ = close + 1;
        return Atom{Atom::kSet, 0, category_set(*mask), negated, false, {}};
      }
      case 'd':
      case 'D':  // Oniguruma: Decimal_Number
        return set(category_set(bit(Nd)), c == 'D', true);
      case 's':
      case 'S':
        return set(space_set(), c == 'S', true);
      case 'h':
      case 'H':
        return set(kHexSet, c == 'H', true);
      case 'w':
      case 'W':
        refuse("\\", std::string(1, c),
               " (Oniguruma's word characters need Unicode properties that are not carried)");
      case 'b':
        if (in_class) return chr(0x08, 1);  // backspace inside a class, in both engines
        refuse("\\b (word boundaries depend on Oniguruma's word characters, not carried)");
      case 'B':
        refuse("\\B (word boundaries depend on Oniguruma's word characters, not carried)");
      case 't':
        return chr('\t', 1);
      case 'n':
        return chr('\n', 1);
      case 'r':
        return chr('\r', 1);
      case 'f':
        return chr('\f', 1);
      case 'v':  // Oniguruma (Ruby syntax): the vertical tab only, not PCRE2's vertical space
        return chr(0x0B, 1);
      case 'a':
        return chr(0x07, 1);
      case 'e':
        return chr(0x1B, 1);
      case 'x':
        ++i_;
        if (at('{')) return chr(read_braced(16, "\\x{...}"), 0);
        return chr(read_number(16, 2, "\\x"), 0);
      case 'u':  // Oniguruma (Ruby syntax): exactly four hex digits; PCRE2 refuses \u
        ++i_;
        if (i_ + 4 > p_.size() || !std::all_of(p_.begin() + i_, p_.begin() + i_ + 4,
                                               [](char h) { return hex_value(h) >= 0; })) {
          refuse("malformed \\u");
        }
        return chr(read_number(16, 4, "\\u"), 0);
      case 'o':
        ++i_;
        if (!at('{')) refuse("\\o without {octal}");
        return chr(read_braced(8, "\\o{...}"), 0);
      case '0':
        ++i_;
        if (i_ < p_.size() && p_[i_] >= '0' && p_[i_] <= '7')
          return chr(read_number(8, 2, "\\0"), 0);
        return chr(0, 0);
      case 'c': {
        ++i_;
        if (i_ >= p_.size() || static_cast<unsigned char>(p_[i_]) >= 0x80) refuse("malformed \\c");
        return chr(static_cast<char32_t>(p_[i_]) & 0x1F, 1);
      }
      case 'A':
      case 'z':
      case 'Z':
      case 'G':
      case 'K':
      case 'R':
      case 'N':
        return verbatim(1);
      case 'k':
      case 'g': {
        // Named back-reference (\k<name>, \k'name') or subroutine call (\g<name>, \g<n>).
        const char open = at(1, '<') ? '<' : at(1, '\'') ? '\'' : 0;
        if (!open) refuse("\\", std::string(1, c), " without <name>");
        const std::size_t close = p_.find(open == '<' ? '>' : '\'', i_ + 2);
        if (close == std::string_view::npos) refuse("an unterminated \\", std::string(1, c));
        const std::string_view name = p_.substr(i_ + 2, close - i_ - 2);
        const bool ok_name = !name.empty() && std::all_of(name.begin(), name.end(), [&](char n) {
          return (n >= 'a' && n <= 'z') || (n >= 'A' && n <= 'Z') || n == '_' ||
                 (n >= '0' && n <= '9' && c == 'g');
        });
        if (!ok_name || (c == 'k' && name[0] >= '0' && name[0] <= '9'))
          refuse("\\", std::string(1, c), "<", name, ">");
        return verbatim(close + 1 - i_);
      }
      default:
        break;
    }
    if (c >= '1' && c <= '9') {
      if (in_class) refuse("an octal or back-reference escape inside a character class");
      if (at(1, '0') || (i_ + 1 < p_.size() && p_[i_ + 1] >= '1' && p_[i_ + 1] <= '9'))
        refuse("a multi-digit back-reference or octal escape");
      return verbatim(1);
    }
    const auto uc = static_cast<unsigned char>(c);
    if (uc < 0x80 && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
      refuse("the escape \\", std::string(1, c));
    // An escaped punctuation, space or non-ASCII character stands for itself.
    return chr(next_char(), 0);
  }

  // Caseless matching is left to PCRE2 only where both engines fold alike: ASCII letters one by
  // one (both use Unicode simple folding, so 'k' also matches U+212A). Oniguruma also folds
  // strings to multi-character folds (ss matches U+00DF, st U+FB06), and PCRE2's case pairs are
  // Unicode 14's, so non-ASCII characters, property classes and those letter pairs are refused.
  void check_caseless_char(char32_t cp) {
    if (!caseless_) {
      prev_letter_ = 0;
      return;
    }
    if (cp >= 0x80) refuse("a non-ASCII character in a case-insensitive part");
    const char lower =
        (cp >= 'A' && cp <= 'Z') ? static_cast<char>(cp - 'A' + 'a') : static_cast<char>(cp);
    const bool letter = lower >= 'a' && lower <= 'z';
    if (letter && prev_letter_) {
      static constexpr std::array<const char*, 5> kMultiFolds = {"ss", "st", "ff", "fi", "fl"};
      for (const char* pair : kMultiFolds) {
        if (prev_letter_ == pair[0] && lower == pair[1])
          refuse("the letters '", pair, "' in a case-insensitive part (a character folds to them)");
      }
    }
    prev_letter_ = letter ? lower : 0;
  }

  void check_caseless_set(const Atom& a) {
    if (caseless_ && !a.case_free) refuse("a Unicode property class in a case-insensitive part");
  }

  void emit_char(char32_t cp) {
    check_caseless_char(cp);
    append_hex(out_, cp);
  }

  void emit_set(const Atom& a) {
    check_caseless_set(a);
    prev_letter_ = 0;
    const std::string items = class_items(a.set, native_ && !caseless_);
    if (items.empty()) {
      out_ += a.negated ? "[\\x{0}-\\x{D7FF}\\x{E000}-\\x{10FFFF}]" : "(?!)";
    } else {
      out_ += a.negated ? "[^" : "[";
      out_ += items;
      out_ += ']';
    }
  }

  // At '[': one character class, to its closing ']', as a set and whether it is negated.
  // Oniguruma nests classes ([a[b]] is a union, [^a[^b]] a negated one); PCRE2 would read the
  // inner '[' as a literal, so the union is computed here.
  std::pair<CodeSet, bool> class_set(int depth) {
    ++i_;
    const bool negated = at('^');
    if (negated) ++i_;
    CodeSet set;
    bool first = true;
    for (;;) {
      if (i_ >= p_.size()) refuse("an unterminated character class");
      const char c = p_[i_];
      if (c == ']' && !first) {
        ++i_;
        break;
      }
      first = false;
      if (c == '[') {
        if (at(1, ':')) refuse("a POSIX bracket class [:name:]");
        if (caseless_) refuse("a nested character class in a case-insensitive part");
        if (depth >= 32) refuse("character classes nested too deep");
        auto [inner, inner_negated] = class_set(depth + 1);
        set = unite(std::move(set), inner_negated ? complement(inner) : inner);
        if (at('-') && !at(1, ']')) refuse("a range next to a nested class");
        continue;
      }
      if (c == '&' && at(1, '&')) refuse("a class intersection &&");
      Atom a = class_atom();
      if (a.kind == Atom::kSet) {
        check_caseless_set(a);
        if (at('-') && !at(1, ']')) refuse("a range next to a class escape");
        set = unite(std::move(set), a.negated ? complement(a.set) : a.set);
        continue;
      }
      char32_t last = a.cp;
      if (at('-') && i_ + 1 < p_.size() && !at(1, ']')) {
        ++i_;
        if (at('[')) refuse("a range ending in a nested class");
        const Atom b = class_atom();
        if (b.kind != Atom::kChar) refuse("a range ending in a class escape");
        last = b.cp;
        if (last < a.cp) refuse("a range out of order");
      }
      if (caseless_ && last >= 0x80) refuse("a non-ASCII character in a case-insensitive part");
      set = unite(std::move(set), {{a.cp, last}});
    }
    return {std::move(set), negated};
  }

  void char_class() {
    const auto [set, negated] = class_set(0);
    prev_letter_ = 0;
    const std::string items = class_items(set, native_ && !caseless_);
    if (items.empty()) {
      out_ += negated ? "[\\x{0}-\\x{D7FF}\\x{E000}-\\x{10FFFF}]" : "(?!)";
    } else {
      // Negation stays PCRE2's: under caseless matching it must exclude case partners too.
      out_ += negated ? "[^" : "[";
      out_ += items;
      out_ += ']';
    }
  }

  Atom class_atom() {
    if (at('\\')) {
      ++i_;
      return escape(/*in_class=*/true);
    }
    return Atom{Atom::kChar, next_char(), {}, false, false, {}};
  }

  // At '(': a group opening.
  void group() {
    groups_.push_back(caseless_);
    ++i_;
    if (!at('?')) {
      if (at('*')) refuse("a PCRE2 verb (*...)");
      out_ += '(';
      return;
    }
    ++i_;
    if (i_ >= p_.size()) refuse("an unterminated group");
    const char c = p_[i_];
    if (c == '#') {  // comment, to the next ')'
      const std::size_t close = p_.find(')', i_);
      if (close == std::string_view::npos) refuse("an unterminated comment");
      i_ = close + 1;
      groups_.pop_back();
      return;
    }
    if (c == ':' || c == '=' || c == '!' || c == '>') {
      out_ += "(?";
      out_ += c;
      ++i_;
      return;
    }
    if (c == '<' && (at(1, '=') || at(1, '!'))) {
      out_ += "(?<";
      out_ += p_[i_ + 1];
      i_ += 2;
      return;
    }
    if (c == '<' || c == '\'') {
      const char close_ch = c == '<' ? '>' : '\'';
      const std::size_t close = p_.find(close_ch, i_ + 1);
      if (close == std::string_view::npos) refuse("an unterminated group name");
      const std::string_view name = p_.substr(i_ + 1, close - i_ - 1);
      const bool ok = !name.empty() && !(name[0] >= '0' && name[0] <= '9') &&
                      std::all_of(name.begin(), name.end(), [](char n) {
                        return (n >= 'a' && n <= 'z') || (n >= 'A' && n <= 'Z') || n == '_' ||
                               (n >= '0' && n <= '9');
                      });
      if (!ok) refuse("the group name '", name, "'");
      out_ += "(?<";
      out_ += name;
      out_ += '>';
      i_ = close + 1;
      return;
    }
    // Option settings: Oniguruma's i (caseless) and m (dot matches newline, PCRE2's s).
    std::string on, off;
    bool minus = false, new_caseless = caseless_;
    for (;; ++i_) {
      if (i_ >= p_.size()) refuse("an unterminated group");
      const char f = p_[i_];
      if (f == '-' && !minus) {
        minus = true;
      } else if (f == 'i' || f == 'm') {
        (minus ? off : on) += f == 'i' ? 'i' : 's';
        if (f == 'i') new_caseless = !minus;
      } else if (f == ':' || f == ')') {
        break;
      } else {
        refuse("the group or option '(?", std::string(p_.substr(i_, 1)), "'");
      }
    }
    const bool scoped = p_[i_] == ':';
    ++i_;
    out_ += "(?" + on + (off.empty() ? "" : "-" + off) + (scoped ? ":" : ")");
    if (!scoped) {
      // (?i) alone lasts to the end of the enclosing group, in both engines.
      groups_.pop_back();
    }
    caseless_ = new_caseless;
    prev_letter_ = 0;
  }

  void close_group() {
    ++i_;
    out_ += ')';
    if (!groups_.empty()) {
      caseless_ = groups_.back();
      groups_.pop_back();
    }
  }

  // At '{': an interval, or a literal '{' as in both engines when it is not one.
  void interval() {
    std::size_t j = i_ + 1;
    auto digits = [&] {
      const std::size_t s = j;
      while (j < p_.size() && p_[j] >= '0' && p_[j] <= '9') ++j;
      return p_.substr(s, j - s);
    };
    const std::string_view lo = digits();
    bool comma = false;
    std::string_view hi;
    if (j < p_.size() && p_[j] == ',') {
      comma = true;
      ++j;
      hi = digits();
    }
    if (j >= p_.size() || p_[j] != '}' || (lo.empty() && hi.empty())) {
      out_ += "\\{";
      ++i_;
      return;
    }
    ++j;
    // Oniguruma reads {,n} as {0,n}; PCRE2 10.42 takes it literally.
    out_ += '{';
    out_ += lo.empty() ? std::string_view("0") : lo;
    if (comma) out_ += ',';
    out_ += hi;
    out_ += '}';
    i_ = j;
    if (at('+')) refuse("a possessive interval {..}+ (PCRE2's; Oniguruma repeats it instead)");
    if (at('?') && !comma) refuse("{n}? (Oniguruma makes it optional, PCRE2 lazy)");
    if (at('?')) {
      out_ += '?';
      ++i_;
    }
  }

  void step() {
    const char c = p_[i_];
    switch (c) {
      case '\\': {
        ++i_;
        const Atom a = escape(/*in_class=*/false);
        if (a.kind == Atom::kChar) {
          emit_char(a.cp);
        } else if (a.kind == Atom::kSet) {
          emit_set(a);
        } else {
          prev_letter_ = 0;
          out_ += a.text;
        }
        return;
      }
      case '[':
        char_class();
        return;
      case '(':
        group();
        return;
      case ')':
        close_group();
        return;
      case '{':
        interval();
        return;
      case '^':  // Oniguruma's anchors are always line anchors (Ruby); newline is LF in both
      case '$':
        ++i_;
        out_ += c == '^' ? "(?m:^)" : "(?m:$)";
        prev_letter_ = 0;
        return;
      case '|':
        ++i_;
        out_ += '|';
        prev_letter_ = 0;
        return;
      case '.':
      case '*':
      case '+':
      case '?':
        ++i_;
        out_ += c;
        if (c == '.') prev_letter_ = 0;
        return;
      default:
        emit_char(next_char());
        return;
    }
  }

  std::string_view p_;
  std::string_view source_;
  bool native_;
  std::size_t i_ = 0;
  std::string out_;
  bool caseless_ = false;
  char prev_letter_ = 0;      // the previous literal when it was an ASCII letter (lower case)
  std::vector<bool> groups_;  // caseless_ at each open group
};

}  // namespace

GeneralCategory general_category(char32_t cp) {
  const auto it = std::upper_bound(gc_runs.begin(), gc_runs.end(), cp,
                                   [](char32_t c, const GcRun& r) { return c < r.first; });
  return std::prev(it)->gc;
}

CodeSet category_set(uint32_t mask) {
  CodeSet out;
  for (std::size_t k = 0; k < gc_runs.size(); ++k) {
    if (!(mask & bit(gc_runs[k].gc))) continue;
    const char32_t last = k + 1 < gc_runs.size() ? gc_runs[k + 1].first - 1 : kMaxCp;
    if (!out.empty() && out.back().last + 1 == gc_runs[k].first) {
      out.back().last = last;
    } else {
      out.push_back({gc_runs[k].first, last});
    }
  }
  return out;
}

CodeSet complement(const CodeSet& s) {
  CodeSet out;
  char32_t next = 0;
  for (const CodeRange& r : s) {
    if (r.first > next) out.push_back({next, r.first - 1});
    next = r.last + 1;
  }
  if (next <= kMaxCp) out.push_back({next, kMaxCp});
  return out;
}

std::string pcre2_class(const CodeSet& s, bool native) {
  const std::string items = class_items(s, native);
  return items.empty() ? "(?!)" : "[" + items + "]";
}

bool pcre2_tables_known() {
  static const bool known = [] {
    char version[64] = {};
    const int n = pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, nullptr);
    if (n <= 0 || n > static_cast<int>(sizeof version)) return false;
    pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, version);
    return std::string_view(version) == kPcre2UnicodeVersion;
  }();
  return known;
}

std::string translate_regex(std::string_view pattern, std::string_view source, bool native) {
  return Translator(pattern, source, native).run();
}

}  // namespace uniattn::tok::unicode
