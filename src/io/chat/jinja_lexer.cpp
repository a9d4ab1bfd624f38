#include "io/chat/jinja_lexer.h"

#include <charconv>
#include <cstring>

#include "io/chat/jinja_text.h"
#include "io/chat/jinja_value.h"

namespace uniattn::jinja {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }
bool is_ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// jinja2 first normalises every line break to "\n" and drops one trailing newline
// (keep_trailing_newline=False).
std::string normalize_source(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out += '\n';
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out += s[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Python's rstrip() of whitespace (Unicode, as `\s` in Python's re).
std::string rstrip_space(std::string_view s) { return py_strip(s, std::nullopt, false, true); }

// Whether all of s is Python whitespace (and s is not empty), as whitespace_re.fullmatch.
bool all_space(std::string_view s) {
  if (s.empty()) return false;
  for (uint32_t cp : decode_utf8(s))
    if (!is_py_space(cp)) return false;
  return true;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(normalize_source(source)) {}

  std::vector<Token> run() {
    if (!valid_utf8(src_)) fail("the template is not valid UTF-8");
    while (pos_ < src_.size()) root_step();
    emit(TokType::Eof, "");
    return std::move(out_);
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const { throw TemplateError(msg, line_); }

  void emit(TokType type, std::string text) {
    Token t;
    t.type = type;
    t.text = std::move(text);
    t.line = line_;
    out_.push_back(std::move(t));
  }

  // Moves pos_ to `to`, counting lines and remembering whether the consumed match ended a line
  // (jinja2's line_starting, which lstrip_blocks looks at).
  void advance(size_t to) {
    for (size_t i = pos_; i < to; ++i) line_ += src_[i] == '\n';
    if (to > pos_) line_starting_ = src_[to - 1] == '\n';
    pos_ = to;
  }

  size_t skip_ascii_space(size_t p) const {
    while (p < src_.size() && is_ascii_space(src_[p])) ++p;
    return p;
  }

  // Past "\s*" from p, with Unicode whitespace as Python's re has it.
  size_t skip_py_space(size_t p) const {
    while (p < src_.size()) {
      const auto c = static_cast<unsigned char>(src_[p]);
      if (c < 0x80) {
        if (!is_ascii_space(src_[p]) && !(c >= 0x1C && c <= 0x1F)) break;
        ++p;
        continue;
      }
      size_t q = p + 1;
      while (q < src_.size() && (static_cast<unsigned char>(src_[q]) & 0xC0) == 0x80) ++q;
      if (!is_py_space(decode_utf8(std::string_view(src_).substr(p, q - p))[0])) break;
      p = q;
    }
    return p;
  }

  bool starts(size_t p, std::string_view s) const {
    return p <= src_.size() && std::string_view(src_).substr(p).starts_with(s);
  }

  // Text before a tag, with the tag's whitespace control applied (jinja2's OptionalLStrip).
  std::string strip_before(std::string text, char sign, bool variable) const {
    if (sign == '-') return rstrip_space(text);
    if (sign == '+' || variable) return text;
    const size_t l_pos = text.rfind('\n') + 1;  // npos + 1 == 0
    if ((l_pos > 0 || line_starting_) && all_space(std::string_view(text).substr(l_pos)))
      text.resize(l_pos);
    return text;
  }

  void root_step();
  size_t match_raw_begin(size_t p) const;
  void lex_raw();
  void lex_comment();
  void lex_tag(bool block);
  bool lex_tag_end(bool block);
  void lex_number();
  void lex_string();
  void lex_operator();

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<char> balance_;
  std::vector<Token> out_;
};

void Lexer::root_step() {
  size_t start = pos_;
  while ((start = src_.find('{', start)) != std::string::npos) {
    if (start + 1 < src_.size() && std::strchr("{%#", src_[start + 1])) break;
    ++start;
  }
  if (start == std::string::npos) {
    emit(TokType::Data, src_.substr(pos_));
    advance(src_.size());
    return;
  }
  const char kind = src_[start + 1];
  size_t p = start + 2;
  char sign = 0;
  if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
  const size_t raw_end = kind == '%' ? match_raw_begin(p) : 0;
  std::string text = strip_before(src_.substr(pos_, start - pos_), sign, kind == '{');
  if (!text.empty()) emit(TokType::Data, std::move(text));
  advance(start);
  if (raw_end) {
    advance(raw_end);
    lex_raw();
  } else if (kind == '#') {
    advance(p);
    lex_comment();
  } else {
    emit(kind == '%' ? TokType::BlockBegin : TokType::VarBegin, "");
    advance(p);
    lex_tag(kind == '%');
  }
}

// End of "\s*raw\s*(-%}\s*|%})" at p, or 0 if the block there is not {% raw %}.
size_t Lexer::match_raw_begin(size_t p) const {
  p = skip_py_space(p);
  if (!starts(p, "raw")) return 0;
  p = skip_py_space(p + 3);
  if (starts(p, "-%}")) return skip_py_space(p + 3);
  if (starts(p, "%}")) return p + 2;
  return 0;
}

void Lexer::lex_raw() {
  for (size_t j = pos_; (j = src_.find("{%", j)) != std::string::npos; j += 2) {
    size_t p = j + 2;
    char sign = 0;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
    p = skip_py_space(p);
    if (!starts(p, "endraw")) continue;
    p = skip_py_space(p + 6);
    size_t end;
    if (starts(p, "+%}")) {
      end = p + 3;
    } else if (starts(p, "-%}")) {
      end = skip_py_space(p + 3);
    } else if (starts(p, "%}")) {
      end = p + 2 + (starts(p + 2, "\n") ? 1 : 0);
    } else {
      continue;
    }
    std::string text = strip_before(src_.substr(pos_, j - pos_), sign, false);
    if (!text.empty()) emit(TokType::Data, std::move(text));
    advance(end);
    return;
  }
  fail("missing end of raw directive");
}

void Lexer::lex_comment() {
  const size_t q = src_.find("#}", pos_);
  if (q == std::string::npos) fail("missing end of comment tag");
  size_t end = q + 2;
  const char before = q > pos_ ? src_[q - 1] : 0;
  if (before == '-')
    end = skip_py_space(end);
  else if (before != '+' && starts(end, "\n"))
    ++end;  // trim_blocks
  advance(end);
}

bool Lexer::lex_tag_end(bool block) {
  if (!balance_.empty()) return false;
  size_t end = 0;
  if (block) {
    if (starts(pos_, "+%}"))
      end = pos_ + 3;
    else if (starts(pos_, "-%}"))
      end = skip_py_space(pos_ + 3);
    else if (starts(pos_, "%}"))
      end = pos_ + 2 + (starts(pos_ + 2, "\n") ? 1 : 0);
  } else {
    if (starts(pos_, "-}}"))
      end = skip_py_space(pos_ + 3);
    else if (starts(pos_, "}}"))
      end = pos_ + 2;
  }
  if (!end) return false;
  emit(block ? TokType::BlockEnd : TokType::VarEnd, "");
  advance(end);
  return true;
}

void Lexer::lex_tag(bool block) {
  while (true) {
    if (pos_ >= src_.size()) fail("unexpected end of template inside a tag");
    if (lex_tag_end(block)) return;
    const char c = src_[pos_];
    if (is_ascii_space(c)) {
      advance(skip_ascii_space(pos_));
    } else if (is_digit(c)) {
      lex_number();
    } else if (is_name_start(c)) {
      size_t e = pos_;
      while (e < src_.size() && is_name_char(src_[e])) ++e;
      emit(TokType::Name, src_.substr(pos_, e - pos_));
      advance(e);
    } else if (c == '\'' || c == '"') {
      lex_string();
    } else {
      lex_operator();
    }
  }
}

// Digits with single underscores between groups, "(\d+_)*\d+"; returns the end or p if none.
size_t digit_groups(const std::string& s, size_t p) {
  if (p >= s.size() || !is_digit(s[p])) return p;
  while (p < s.size() && is_digit(s[p])) ++p;
  while (p + 1 < s.size() && s[p] == '_' && is_digit(s[p + 1]))
    for (++p; p < s.size() && is_digit(s[p]);) ++p;
  return p;
}

// End of jinja2's float_re match at p (0 if none): digits, then ".digits" and/or an exponent.
size_t match_float(const std::string& s, size_t p) {
  if (p > 0 && s[p - 1] == '.') return 0;
  const size_t ip = digit_groups(s, p);
  if (ip == p) return 0;
  auto exponent = [&](size_t q) -> size_t {
    if (q >= s.size() || (s[q] != 'e' && s[q] != 'E')) return 0;
    ++q;
    if (q < s.size() && (s[q] == '+' || s[q] == '-')) ++q;
    const size_t e = digit_groups(s, q);
    return e == q ? 0 : e;
  };
  size_t frac = 0;
  if (ip < s.size() && s[ip] == '.') {
    const size_t f = digit_groups(s, ip + 1);
    if (f > ip + 1) frac = f;
  }
  if (frac) {
    const size_t e = exponent(frac);
    return e ? e : frac;
  }
  return exponent(ip);
}

// End of jinja2's integer_re match at p, and its base.
size_t match_integer(const std::string& s, size_t p, int& base) {
  auto run = [&](size_t q, auto ok) {  // (_?[class])+
    size_t e = q;
    while (true) {
      size_t r = e;
      if (r < s.size() && s[r] == '_') ++r;
      if (r >= s.size() || !ok(s[r])) return e;
      e = r + 1;
    }
  };
  const char x = p + 1 < s.size() ? static_cast<char>(s[p + 1] | 0x20) : 0;
  if (s[p] == '0' && (x == 'b' || x == 'o' || x == 'x')) {
    base = x == 'b' ? 2 : x == 'o' ? 8 : 16;
    const size_t e = run(p + 2, [&](char c) {
      if (base == 2) return c == '0' || c == '1';
      if (base == 8) return c >= '0' && c <= '7';
      return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
    });
    if (e > p + 2) return e;
  }
  base = 10;
  if (s[p] != '0') return run(p + 1, is_digit);
  return run(p + 1, [](char c) { return c == '0'; });
}

}  // namespace

void Lexer::lex_number() {
  std::string text;
  if (const size_t e = match_float(src_, pos_)) {
    for (size_t i = pos_; i < e; ++i)
      if (src_[i] != '_') text += src_[i];
    double v = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (r.ec != std::errc()) fail("unsupported: float literal " + text + " out of range");
    emit(TokType::Float, text);
    out_.back().fval = v;
    advance(e);
    return;
  }
  int base = 10;
  const size_t e = match_integer(src_, pos_, base);
  for (size_t i = pos_ + (base == 10 ? 0 : 2); i < e; ++i)
    if (src_[i] != '_') text += src_[i];
  int64_t v = 0;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), v, base);
  if (r.ec != std::errc()) fail("unsupported: integer literal " + text + " beyond 64 bits");
  emit(TokType::Int, src_.substr(pos_, e - pos_));
  out_.back().ival = v;
  advance(e);
}

namespace {

int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  c = static_cast<char>(c | 0x20);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

// Python's "unicode-escape" decoding of a string literal's body (jinja2 runs it after
// encode("ascii", "backslashreplace"), which leaves ASCII escapes as they are).
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    const char d = s[++i];  // the lexer guarantees a character after every backslash
    static constexpr std::string_view kFrom = "\\'\"abfnrtv", kTo = "\\'\"\a\b\f\n\r\t\v";
    if (const size_t k = kFrom.find(d); k != std::string_view::npos) {
      out += kTo[k];
    } else if (d == '\n') {
      // backslash-newline: a line continuation, nothing is kept
    } else if (d >= '0' && d <= '7') {
      uint32_t cp = d - '0';
      for (int n = 1; n < 3 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++n)
        cp = cp * 8 + (s[++i] - '0');
      append_utf8(out, cp);
    } else if (d == 'x' || d == 'u' || d == 'U') {
      const int n = d == 'x' ? 2 : d == 'u' ? 4 : 8;
      uint32_t cp = 0;
      for (int k = 0; k < n; ++k) {
        const int h = i + 1 < s.size() ? hex_value(s[i + 1]) : -1;
        if (h < 0) raise("truncated \\", std::string(1, d), " escape in a string literal");
        cp = cp * 16 + h, ++i;
      }
      if (cp > 0x10FFFF) raise("illegal Unicode character in a string literal");
      if (cp >= 0xD800 && cp <= 0xDFFF) raise("unsupported: a surrogate escape in a string");
      append_utf8(out, cp);
    } else if (d == 'N' || static_cast<unsigned char>(d) >= 0x80) {
      raise("unsupported: the escape \\", std::string(1, d), " in a string literal");
    } else {
      out += '\\';  // unknown escapes keep their backslash
      out += d;
    }
  }
  return out;
}

}  // namespace

void Lexer::lex_string() {
  const char q = src_[pos_];
  size_t j = pos_ + 1;
  while (j < src_.size() && src_[j] != q) j += src_[j] == '\\' ? 2 : 1;
  if (j >= src_.size()) fail("unterminated string literal");
  try {
    emit(TokType::String, unescape(std::string_view(src_).substr(pos_ + 1, j - pos_ - 1)));
  } catch (const TemplateError& e) {
    fail(e.what());
  }
  advance(j + 1);
}

void Lexer::lex_operator() {
  static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
  std::string op;
  for (auto t : kTwo)
    if (starts(pos_, t)) op = t;
  if (op.empty() && std::strchr("+-/*%~[](){}><=.:|,;", src_[pos_]) && src_[pos_])
    op = std::string(1, src_[pos_]);
  if (op.empty()) fail(std::string("unexpected char '") + src_[pos_] + "' in a tag");
  const char c = op[0];
  if (op.size() == 1 && (c == '(' || c == '[' || c == '{')) {
    balance_.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
  } else if (op.size() == 1 && (c == ')' || c == ']' || c == '}')) {
    if (balance_.empty()) fail("unexpected '" + op + "'");
    if (balance_.back() != c) fail("unexpected '" + op + "', expected '" + balance_.back() + "'");
    balance_.pop_back();
  }
  emit(TokType::Op, op);
  advance(pos_ + op.size());
}

std::vector<Token> tokenize(std::string_view source) { return Lexer(source).run(); }

}  // namespace uniattn::jinja
