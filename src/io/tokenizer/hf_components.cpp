// The normalizers, the Metaspace pre-tokenizer and the decoders that SentencePiece-style HF
// tokenizer.json files (LLaMA-2, Mistral, Gemma) use, with the semantics of HF `tokenizers`:
// normalizers/prepend.rs, normalizers/replace.rs, pre_tokenizers/metaspace.rs,
// decoders/byte_fallback.rs, decoders/fuse.rs, decoders/strip.rs.
#include <algorithm>
#include <cctype>
#include <utility>

#include "internal.h"

namespace uniattn::tok {

namespace {

// Replaces every non-overlapping occurrence of `pattern` (non-empty), leftmost first.
std::string replace_all(std::string_view s, std::string_view pattern, std::string_view content) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  while (true) {
    const std::size_t hit = s.find(pattern, pos);
    if (hit == std::string_view::npos) break;
    out.append(s, pos, hit - pos);
    out += content;
    pos = hit + pattern.size();
  }
  out.append(s, pos);
  return out;
}

// The length of the UTF-8 sequence that starts with byte c (1 for a stray byte).
std::size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 1;
}

// Splits `s` into characters; bytes that do not start a valid sequence count as one character.
std::vector<std::string_view> chars_of(std::string_view s) {
  std::vector<std::string_view> out;
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = std::min(utf8_len(static_cast<unsigned char>(s[i])), s.size() - i);
    if (find_invalid_utf8(s.substr(i, n)) != std::string_view::npos) n = 1;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// The byte of a "<0xXY>" token, as ByteFallback reads it (Rust u8::from_str_radix on the two
// characters, which also takes a leading '+').
std::optional<uint8_t> byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return std::nullopt;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (t[3] == '+') {
    const int lo = hex(t[4]);
    if (lo < 0) return std::nullopt;
    return static_cast<uint8_t>(lo);
  }
  const int hi = hex(t[3]), lo = hex(t[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi * 16 + lo);
}

// Whether `b` is valid UTF-8 except for an unfinished last character.
bool valid_prefix(std::string_view b) {
  const std::size_t bad = find_invalid_utf8(b);
  if (bad == std::string_view::npos) return true;
  const std::size_t need = utf8_len(static_cast<unsigned char>(b[bad]));
  if (need < 2 || b.size() - bad >= need) return false;
  // The tail must be the start of a valid sequence: try completing it with continuation bytes
  // (one of these fits the second-byte range of every lead byte).
  for (char fill : {'\x80', '\x90', '\xA0', '\xB0', '\xBF'}) {
    std::string p(b.substr(bad));
    p.append(need - p.size(), fill);
    if (find_invalid_utf8(p) == std::string_view::npos) return true;
  }
  return false;
}

std::vector<std::string> byte_fallback(std::vector<std::string> tokens) {
  std::vector<std::string> out;
  out.reserve(tokens.size());
  std::string run;
  auto flush = [&](bool at_end) {
    if (run.empty()) return;
    if (find_invalid_utf8(run) == std::string::npos || (at_end && valid_prefix(run))) {
      out.push_back(std::move(run));
    } else {
      for (std::size_t k = 0; k < run.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
    }
    run.clear();
  };
  for (std::string& t : tokens) {
    if (const auto b = byte_token(t)) {
      run += static_cast<char>(*b);
    } else {
      flush(false);
      out.push_back(std::move(t));
    }
  }
  flush(true);
  return out;
}

std::string strip(std::string_view token, std::string_view content, std::size_t start,
                  std::size_t stop) {
  const auto chars = chars_of(token);
  std::size_t start_cut = 0;
  for (std::size_t i = 0; i < std::min(start, chars.size()); ++i) {
    if (chars[i] != content) break;
    start_cut = i + 1;
  }
  std::size_t stop_cut = chars.size();
  for (std::size_t i = 0; i < std::min(stop, chars.size()); ++i) {
    const std::size_t index = chars.size() - i - 1;
    if (chars[index] != content) break;
    stop_cut = index;
  }
  std::string out;
  for (std::size_t i = start_cut; i < stop_cut; ++i) out += chars[i];
  return out;
}

}  // namespace

std::string escape_regex(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && (std::ispunct(u) || u == ' ')) out += '\\';
    out += c;
  }
  return out;
}

std::string normalize(const std::vector<NormStep>& steps, std::string_view s,
                      std::size_t* prepended) {
  std::string out(s);
  std::size_t pre = 0;
  for (const NormStep& n : steps) {
    if (n.kind == NormStep::kPrepend) {
      if (!out.empty()) {
        out.insert(0, n.a);
        pre += n.a.size();
      }
    } else {
      out = replace_all(out, n.a, n.b);
    }
  }
  if (prepended) *prepended = pre;
  return out;
}

const char* scheme_name(PrependScheme s) {
  switch (s) {
    case PrependScheme::kFirst:
      return "first";
    case PrependScheme::kNever:
      return "never";
    case PrependScheme::kAlways:
      break;
  }
  return "always";
}

void metaspace_pre_tokenize(const Metaspace& m, std::string piece, bool at_origin,
                            std::vector<std::string>& out) {
  piece = replace_all(piece, " ", m.replacement);
  const bool starts = piece.compare(0, m.replacement.size(), m.replacement) == 0;
  if (!starts &&
      (m.scheme == PrependScheme::kAlways || (m.scheme == PrependScheme::kFirst && at_origin))) {
    piece.insert(0, m.replacement);
  }
  if (piece.empty()) return;
  if (!m.split) {
    out.push_back(std::move(piece));
    return;
  }
  for (std::string& p : pre_tokenize(m.split_step, piece)) out.push_back(std::move(p));
}

std::string run_decoders(const std::vector<DecStep>& steps, std::vector<std::string> tokens) {
  for (const DecStep& d : steps) {
    switch (d.kind) {
      case DecStep::kReplace:
        for (std::string& t : tokens) t = replace_all(t, d.a, d.b);
        break;
      case DecStep::kByteFallback:
        tokens = byte_fallback(std::move(tokens));
        break;
      case DecStep::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecStep::kStrip:
        for (std::string& t : tokens) t = strip(t, d.a, d.start, d.stop);
        break;
      case DecStep::kMetaspace:
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          const bool drop = i == 0 && d.scheme != PrependScheme::kNever;
          tokens[i] = replace_all(tokens[i], d.a, drop ? "" : " ");
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace uniattn::tok
