// Byte-level BPE: added-token matching, pre-tokenization, rank-ordered merging, decoding.
// Saving to tokenizer.json lives in bpe_save.cpp.
#include "bpe_tokenizer.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "uniattn/error.h"

namespace uniattn::tok {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

}  // namespace

BpeTokenizer::BpeTokenizer(BpeSpec spec) : spec_(std::move(spec)) {
  const std::string& src = spec_.source;
  UNIATTN_CHECK(static_cast<int64_t>(spec_.vocab.size()) <= kMaxVocab, src, ": vocabulary has ",
                spec_.vocab.size(), " entries, more than the limit ", kMaxVocab);
  UNIATTN_CHECK(static_cast<int64_t>(spec_.merges.size()) <= kMaxMerges, src, ": ",
                spec_.merges.size(), " merges, more than the limit ", kMaxMerges);
  int64_t size = static_cast<int64_t>(spec_.vocab.size());
  piece_to_id_.reserve(spec_.vocab.size());
  for (std::size_t id = 0; id < spec_.vocab.size(); ++id) {
    // A duplicated piece (some GGUF vocabularies have them) keeps its first id.
    if (spec_.vocab[id]) piece_to_id_.emplace(*spec_.vocab[id], static_cast<int32_t>(id));
  }
  for (const AddedToken& t : spec_.added) {
    UNIATTN_CHECK(t.id >= 0 && t.id < kMaxVocab, src, ": added token '", t.content, "' has id ",
                  t.id, " outside [0, ", kMaxVocab, ")");
    UNIATTN_CHECK(!t.content.empty(), src, ": added token ", t.id, " has empty content");
    check_utf8(t.content, src + ": added token " + std::to_string(t.id));
    size = std::max<int64_t>(size, int64_t{t.id} + 1);
  }
  vocab_size_ = static_cast<int32_t>(size);
  added_by_id_.assign(static_cast<std::size_t>(size), -1);
  for (std::size_t k = 0; k < spec_.added.size(); ++k) {
    const AddedToken& t = spec_.added[k];
    added_by_id_[static_cast<std::size_t>(t.id)] = static_cast<int32_t>(k);
    by_first_byte_[static_cast<unsigned char>(t.content[0])].push_back(static_cast<int32_t>(k));
  }
  // Longest first, so that the first hit at a position is the longest match.
  for (auto& list : by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [&](int32_t a, int32_t b) {
      return spec_.added[a].content.size() > spec_.added[b].content.size();
    });
  }
  auto check_id = [&](const std::optional<int32_t>& id, const char* what) {
    UNIATTN_CHECK(!id || (*id >= 0 && *id < vocab_size_), src, ": ", what, " id ", id.value_or(0),
                  " is outside the vocabulary [0, ", vocab_size_, ")");
  };
  check_id(spec_.unk, "unk");
  check_id(spec_.bos, "bos");
  check_id(spec_.eos, "eos");
  check_id(spec_.pad, "pad");
  for (int32_t id : spec_.template_prefix) check_id(id, "post-processor template token");
  for (int32_t id : spec_.template_suffix) check_id(id, "post-processor template token");
  bos_ = spec_.bos;
  eos_ = spec_.eos;
  pad_ = spec_.pad;
  adds_bos_ = spec_.add_bos;

  for (int b = 0; b < 256; ++b) {
    auto it = piece_to_id_.find(byte_to_unicode(static_cast<uint8_t>(b)));
    byte_id_[b] = it == piece_to_id_.end() ? -1 : it->second;
  }

  merges_.reserve(spec_.merges.size());
  for (std::size_t r = 0; r < spec_.merges.size(); ++r) {
    const auto& [a, b] = spec_.merges[r];
    auto ia = piece_to_id_.find(a);
    auto ib = piece_to_id_.find(b);
    UNIATTN_CHECK(ia != piece_to_id_.end() && ib != piece_to_id_.end(), src, ": merge ", r, " '", a,
                  " ", b, "' names '", ia == piece_to_id_.end() ? a : b,
                  "', which is not in the vocabulary");
    auto im = piece_to_id_.find(a + b);
    UNIATTN_CHECK(im != piece_to_id_.end(), src, ": merge ", r, " '", a, " ", b, "' makes '", a + b,
                  "', which is not in the vocabulary");
    // A repeated merge keeps its first (lowest) rank.
    merges_.emplace(pair_key(ia->second, ib->second), Merge{static_cast<int32_t>(r), im->second});
  }
  compile_pre_steps(spec_.pre, src);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_bos,
                                          bool parse_special) const {
  check_utf8(text, spec_.source + ": encode");
  std::vector<int32_t> out;
  if (add_bos) {
    if (!spec_.template_prefix.empty() || !spec_.template_suffix.empty()) {
      out = spec_.template_prefix;
    } else if (bos_) {
      out.push_back(*bos_);
    }
  }
  // Leftmost-longest matching of added tokens; the text between them is tokenized normally.
  std::size_t seg_begin = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (int32_t k : by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& t = spec_.added[k];
      if ((parse_special || !t.special) && text.substr(i, t.content.size()) == t.content) {
        hit = &t;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    std::size_t seg_end = i, after = i + hit->content.size();
    if (hit->lstrip) {
      while (seg_end > seg_begin && is_ascii_space(text[seg_end - 1])) --seg_end;
    }
    if (hit->rstrip) {
      while (after < text.size() && is_ascii_space(text[after])) ++after;
    }
    encode_segment(text.substr(seg_begin, seg_end - seg_begin), out);
    out.push_back(hit->id);
    seg_begin = i = after;
  }
  encode_segment(text.substr(seg_begin), out);
  if (add_bos) out.insert(out.end(), spec_.template_suffix.begin(), spec_.template_suffix.end());
  return out;
}

void BpeTokenizer::encode_segment(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  for (const std::string& piece : pre_tokenize(spec_.pre, text)) bpe_piece(piece, out);
}

void BpeTokenizer::bpe_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (spec_.ignore_merges) {
    // LLaMA-3 style: a piece that is itself in the vocabulary is taken whole.
    std::string mapped;
    for (unsigned char c : piece) mapped += byte_to_unicode(c);
    auto it = piece_to_id_.find(mapped);
    if (it != piece_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Sym {
    int32_t id, prev, next;
  };
  std::vector<Sym> syms;
  syms.reserve(piece.size());
  for (unsigned char c : piece) {
    int32_t id = byte_id_[c];
    if (id < 0) {
      // As HF BPE does: a symbol missing from the vocabulary becomes unk, or is dropped.
      if (!spec_.unk) continue;
      id = *spec_.unk;
    }
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, n + 1});
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || syms[pos].next < 0) return;
    const int32_t l = syms[pos].id, r = syms[syms[pos].next].id;
    auto it = merges_.find(pair_key(l, r));
    if (it != merges_.end()) heap.push({it->second.rank, pos, l, r});
  };
  for (int32_t p = 0; p + 1 < static_cast<int32_t>(syms.size()); ++p) push(p);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& left = syms[c.pos];
    // Stale candidates (a side was merged away since) no longer match the current pair.
    if (left.id != c.left || left.next < 0 || syms[left.next].id != c.right) continue;
    const int32_t right_pos = left.next;
    left.id = merges_.at(pair_key(c.left, c.right)).id;
    left.next = syms[right_pos].next;
    if (left.next >= 0) syms[left.next].prev = c.pos;
    syms[right_pos].id = -1;  // dead
    push(left.prev);
    push(c.pos);
  }
  for (int32_t p = 0; p >= 0; p = syms[p].next) out.push_back(syms[p].id);
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    UNIATTN_CHECK(id >= 0 && id < vocab_size_, spec_.source, ": decode: token id ", id,
                  " is outside the vocabulary [0, ", vocab_size_, ")");
    const int32_t k = added_by_id_[static_cast<std::size_t>(id)];
    if (k >= 0) {
      // Added tokens were matched on raw text, so their content is written back as is.
      const AddedToken& t = spec_.added[static_cast<std::size_t>(k)];
      if (!(skip_special && t.special)) out += t.content;
      continue;
    }
    const std::size_t uid = static_cast<std::size_t>(id);
    UNIATTN_CHECK(uid < spec_.vocab.size() && spec_.vocab[uid], spec_.source, ": decode: token id ",
                  id, " has no vocabulary piece");
    const std::string& piece = *spec_.vocab[uid];
    for (std::size_t i = 0; i < piece.size();) {
      const std::size_t start = i;
      const char32_t cp = next_codepoint(piece, i);
      const int b = unicode_to_byte(cp);
      if (b >= 0) {
        out += static_cast<char>(b);
      } else {
        out.append(piece, start, i - start);  // not a byte-level character: kept as it is
      }
    }
  }
  return out;
}

std::string BpeTokenizer::token_text(int32_t id) const {
  UNIATTN_CHECK(id >= 0 && id < vocab_size_, spec_.source, ": token id ", id,
                " is outside the vocabulary [0, ", vocab_size_, ")");
  const int32_t k = added_by_id_[static_cast<std::size_t>(id)];
  if (k >= 0) return spec_.added[static_cast<std::size_t>(k)].content;
  const std::size_t uid = static_cast<std::size_t>(id);
  return uid < spec_.vocab.size() && spec_.vocab[uid] ? *spec_.vocab[uid] : std::string();
}

std::optional<int32_t> BpeTokenizer::find_token(std::string_view piece) const {
  for (const AddedToken& t : spec_.added) {
    if (t.content == piece) return t.id;
  }
  auto it = piece_to_id_.find(std::string(piece));
  if (it == piece_to_id_.end()) return std::nullopt;
  return it->second;
}

std::unique_ptr<Tokenizer> build_bpe(BpeSpec spec) {
  return std::make_unique<BpeTokenizer>(std::move(spec));
}

}  // namespace uniattn::tok
