// Added-token matching as HF `tokenizers` does it (tokenizers/src/tokenizer/added_vocabulary.rs):
// a leftmost-longest scan over all tokens of one kind (raw or normalized), then per match the
// encode_special_tokens, single_word, lstrip and rstrip rules, with Rust regex's Unicode \s and \w.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "internal.h"

namespace uniattn::tok {

namespace {

// Rust regex \s: the Unicode White_Space property.
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Rust regex \w: Alphabetic, marks, decimal digits, connector punctuation, Join_Control.
bool is_word(char32_t c) {
  if (c < 0x80) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }
  struct Compiled {
    pcre2_code* code = nullptr;
    Compiled() {
      static const char kClass[] = R"(^[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])";
      int err = 0;
      PCRE2_SIZE off = 0;
      code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kClass), PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    }
  };
  static const Compiled re;
  UNIATTN_CHECK(re.code != nullptr,
                "added tokens: the PCRE2 word-character class does not compile");
  std::string s;
  append_utf8(s, c);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re.code, nullptr);
  UNIATTN_CHECK(md != nullptr, "added tokens: out of memory");
  const int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0,
                             PCRE2_NO_UTF_CHECK, md, nullptr);
  pcre2_match_data_free(md);
  return rc > 0;
}

// The character that ends at s.size() (s valid UTF-8 and non-empty); *begin gets its offset.
char32_t last_char(std::string_view s, std::size_t* begin) {
  std::size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  *begin = b;
  std::size_t i = b;
  return next_codepoint(s, i);
}

// Start of the whitespace that ends `s` (Rust: LEFTMOST_SPACE_AT_END, `\s*$`).
std::size_t space_leftmost_at_end(std::string_view s) {
  std::size_t end = s.size();
  while (end > 0) {
    std::size_t b = 0;
    if (!is_space(last_char(s.substr(0, end), &b))) break;
    end = b;
  }
  return end;
}

// Length of the whitespace that starts `s` (Rust: RIGHTMOST_SPACE_AT_START, `^\s*`).
std::size_t space_rightmost_at_start(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = i;
    if (!is_space(next_codepoint(s, j))) break;
    i = j;
  }
  return i;
}

bool ends_with_word(std::string_view s) {
  std::size_t b = 0;
  return !s.empty() && is_word(last_char(s, &b));
}

bool starts_with_word(std::string_view s) {
  std::size_t i = 0;
  return !s.empty() && is_word(next_codepoint(s, i));
}

uint64_t edge_key(int32_t node, unsigned char c) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(node)) << 8) | c;
}

}  // namespace

void AddedVocab::Trie::insert(std::string_view s, int32_t token) {
  int32_t node = 0;
  for (unsigned char c : s) {
    auto [it, fresh] = edges.emplace(edge_key(node, c), static_cast<int32_t>(nodes.size()));
    if (fresh) nodes.push_back(-1);
    node = it->second;
  }
  nodes[static_cast<std::size_t>(node)] = token;
}

AddedVocab::AddedVocab(const std::vector<AddedToken>& tokens,
                       const std::vector<NormStep>& normalizer)
    : tokens_(tokens) {
  for (std::size_t k = 0; k < tokens_.size(); ++k) {
    const AddedToken& t = tokens_[k];
    std::string pattern = t.content;
    if (t.normalized && !normalizer.empty()) pattern = normalize(normalizer, t.content);
    decoded_[t.id] = pattern;
    if (t.special) specials_.push_back(t.content);
    if (pattern.empty()) continue;
    (t.normalized ? norm_ : raw_).insert(pattern, static_cast<int32_t>(k));
  }
  std::sort(specials_.begin(), specials_.end());
}

std::vector<AddedVocab::Split> AddedVocab::split(std::string_view text, bool normalized,
                                                 bool parse_special) const {
  std::vector<Split> out;
  if (text.empty()) return out;
  const Trie& trie = normalized ? norm_ : raw_;
  std::size_t start_offset = 0;
  for (std::size_t i = 0; i < text.size() && trie.nodes.size() > 1;) {
    // The longest token that starts at i; the scan goes on after it whatever becomes of it.
    int32_t node = 0, best = -1;
    std::size_t best_end = 0;
    for (std::size_t j = i; j < text.size(); ++j) {
      const auto it = trie.edges.find(edge_key(node, static_cast<unsigned char>(text[j])));
      if (it == trie.edges.end()) break;
      node = it->second;
      if (trie.nodes[static_cast<std::size_t>(node)] >= 0) {
        best = trie.nodes[static_cast<std::size_t>(node)];
        best_end = j + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    std::size_t start = i, stop = best_end;
    i = best_end;
    const AddedToken& t = tokens_[static_cast<std::size_t>(best)];
    if (!parse_special && is_special(t.content)) continue;
    if (t.single_word) {
      const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
      const bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) start = std::max(space_leftmost_at_end(text.substr(0, start)), start_offset);
    if (t.rstrip) stop += space_rightmost_at_start(text.substr(stop));
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, t.id});
    start_offset = stop;
  }
  if (start_offset != text.size()) out.push_back({start_offset, text.size(), -1});
  return out;
}

const std::string* AddedVocab::decoded(int32_t id) const {
  const auto it = decoded_.find(id);
  return it == decoded_.end() ? nullptr : &it->second;
}

bool AddedVocab::is_special(std::string_view piece) const {
  return std::binary_search(specials_.begin(), specials_.end(), piece);
}

}  // namespace uniattn::tok
