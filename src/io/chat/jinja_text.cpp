#include "io/chat/jinja_text.h"

#include <algorithm>
#include <cstdio>

#include "io/chat/jinja_value.h"
#include "io/tokenizer/internal.h"

namespace uniattn::jinja {

namespace {

// Decodes the code point at s[i] and advances i (bounded on malformed input).
uint32_t next_cp(std::string_view s, size_t& i) { return tok::next_codepoint(s, i); }

// Code points whose case Python never changes and that are not "cased" (so str.title() treats
// them as word breaks): the scripts and symbol blocks chat text mostly uses besides Latin.
bool caseless(uint32_t cp) {
  static constexpr std::pair<uint32_t, uint32_t> kRanges[] = {
      {0x00A0, 0x00A9}, {0x00AB, 0x00B4},   {0x00B6, 0x00B9},   {0x00BB, 0x00BF},
      {0x00D7, 0x00D7}, {0x00F7, 0x00F7},   {0x0590, 0x05FF},   {0x0600, 0x06FF},
      {0x0900, 0x0DFF}, {0x0E00, 0x0E7F},   {0x2000, 0x206F},   {0x20A0, 0x20CF},
      {0x2190, 0x23FF}, {0x2500, 0x27BF},   {0x2800, 0x28FF},   {0x2E80, 0x2FDF},
      {0x3000, 0x9FFF}, {0xA000, 0xA4CF},   {0xAC00, 0xD7AF},   {0xF900, 0xFAFF},
      {0xFE10, 0xFE1F}, {0xFE30, 0xFE6F},   {0xFF00, 0xFF20},   {0xFF3B, 0xFF40},
      {0xFF5B, 0xFFEF}, {0x1F000, 0x1F12F}, {0x1F18A, 0x1FAFF}, {0x20000, 0x3FFFF},
  };
  for (const auto& [lo, hi] : kRanges)
    if (cp >= lo && cp <= hi) return true;
  return false;
}

enum class Case { Upper, Lower };

// Maps one code point; `cased` reports whether it is a cased letter (for title()).
uint32_t map_case(uint32_t cp, Case to, bool* cased = nullptr) {
  if (cp < 0x80) {
    const bool up = cp >= 'A' && cp <= 'Z', low = cp >= 'a' && cp <= 'z';
    if (cased) *cased = up || low;
    if (to == Case::Upper && low) return cp - 32;
    if (to == Case::Lower && up) return cp + 32;
    return cp;
  }
  if (!caseless(cp)) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "U+%04X", static_cast<unsigned>(cp));
    raise("unsupported: case conversion of the non-ASCII character ", hex);
  }
  if (cased) *cased = false;
  return cp;
}

std::string map_all(std::string_view s, Case to) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) append_utf8(out, map_case(next_cp(s, i), to));
  return out;
}

bool in_set(uint32_t cp, const std::vector<uint32_t>& set) {
  return std::find(set.begin(), set.end(), cp) != set.end();
}

}  // namespace

bool valid_utf8(std::string_view s) { return tok::find_invalid_utf8(s) == std::string_view::npos; }

std::vector<uint32_t> decode_utf8(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out.push_back(next_cp(s, i));
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  // The tokenizers' encoder: one UTF-8 writer in the project.
  tok::append_utf8(out, static_cast<char32_t>(cp));
}

std::string encode_utf8(const std::vector<uint32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (uint32_t cp : cps) append_utf8(out, cp);
  return out;
}

size_t count_code_points(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

bool is_py_space(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                     bool right) {
  const auto cps = decode_utf8(s);
  const auto set = chars ? decode_utf8(*chars) : std::vector<uint32_t>{};
  auto strip_it = [&](uint32_t cp) { return chars ? in_set(cp, set) : is_py_space(cp); };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_it(cps[b])) ++b;
  if (right)
    while (e > b && strip_it(cps[e - 1])) --e;
  return encode_utf8(std::vector<uint32_t>(cps.begin() + b, cps.begin() + e));
}

std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep,
                                  int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) raise("split(): empty separator");
    size_t pos = 0;
    for (size_t hit; (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) &&
                     (hit = s.find(*sep, pos)) != std::string_view::npos;
         pos = hit + sep->size())
      out.emplace_back(s.substr(pos, hit - pos));
    out.emplace_back(s.substr(pos));
    return out;
  }
  const auto cps = decode_utf8(s);
  size_t i = 0;
  while (true) {
    while (i < cps.size() && is_py_space(cps[i])) ++i;
    if (i == cps.size()) break;
    size_t j = i;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      // The rest, trailing whitespace included, is the last field (as CPython does).
      out.push_back(encode_utf8(std::vector<uint32_t>(cps.begin() + i, cps.end())));
      break;
    }
    while (j < cps.size() && !is_py_space(cps[j])) ++j;
    out.push_back(encode_utf8(std::vector<uint32_t>(cps.begin() + i, cps.begin() + j)));
    i = j;
  }
  return out;
}

std::vector<std::string> py_splitlines(std::string_view s) {
  const auto cps = decode_utf8(s);
  std::vector<std::string> out;
  std::vector<uint32_t> cur;
  for (size_t i = 0; i < cps.size(); ++i) {
    const uint32_t c = cps[i];
    const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
                     c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) {
      cur.push_back(c);
      continue;
    }
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    out.push_back(encode_utf8(cur));
    cur.clear();
  }
  if (!cur.empty()) out.push_back(encode_utf8(cur));
  return out;
}

std::string py_replace(std::string_view s, std::string_view from, std::string_view to,
                       int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` before every code point and at the end.
    const auto cps = decode_utf8(s);
    int64_t done = 0;
    for (uint32_t cp : cps) {
      if (count < 0 || done < count) out.append(to), ++done;
      append_utf8(out, cp);
    }
    if (count < 0 || done < count) out.append(to);
    return out;
  }
  size_t pos = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos)).append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

std::string py_upper(std::string_view s) { return map_all(s, Case::Upper); }
std::string py_lower(std::string_view s) { return map_all(s, Case::Lower); }

std::string py_title(std::string_view s) {
  std::string out;
  bool prev_cased = false;
  for (size_t i = 0; i < s.size();) {
    const uint32_t cp = next_cp(s, i);
    bool cased = false;
    map_case(cp, Case::Lower, &cased);
    append_utf8(out, map_case(cp, prev_cased ? Case::Lower : Case::Upper));
    prev_cased = cased;
  }
  return out;
}

std::string py_capitalize(std::string_view s) {
  std::string out;
  bool first = true;
  for (size_t i = 0; i < s.size(); first = false)
    append_utf8(out, map_case(next_cp(s, i), first ? Case::Upper : Case::Lower));
  return out;
}

std::string jinja_title(std::string_view s) {
  // jinja2: re.split(r"([-\s\(\{\[\<]+)") then item[0].upper() + item[1:].lower() per item.
  auto is_sep = [](uint32_t cp) {
    return cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || is_py_space(cp);
  };
  std::string out;
  bool word_start = true;
  for (size_t i = 0; i < s.size();) {
    const uint32_t cp = next_cp(s, i);
    const bool sep = is_sep(cp);
    append_utf8(out, map_case(cp, word_start && !sep ? Case::Upper : Case::Lower));
    word_start = sep;
  }
  return out;
}

SliceRange slice_range(int64_t n, std::optional<int64_t> start, std::optional<int64_t> stop,
                       std::optional<int64_t> step) {
  SliceRange r;
  r.step = step.value_or(1);
  if (r.step == 0) raise("slice step cannot be zero");
  auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = r.step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = r.step < 0 ? n - 1 : n;
    }
    return x;
  };
  const int64_t b = clamp(start, r.step < 0 ? n - 1 : 0);
  const int64_t e = clamp(stop, r.step < 0 ? -1 : n);
  r.start = b;
  if (r.step > 0)
    r.count = b < e ? (e - b - 1) / r.step + 1 : 0;
  else
    r.count = e < b ? (b - e - 1) / (-r.step) + 1 : 0;
  return r;
}

std::string py_slice(std::string_view s, std::optional<int64_t> start, std::optional<int64_t> stop,
                     std::optional<int64_t> step) {
  const auto cps = decode_utf8(s);
  const auto r = slice_range(static_cast<int64_t>(cps.size()), start, stop, step);
  std::string out;
  for (int64_t k = 0; k < r.count; ++k) append_utf8(out, cps[r.start + k * r.step]);
  return out;
}

}  // namespace uniattn::jinja
