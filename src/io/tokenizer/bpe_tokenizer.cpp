// BPE: the encode pipeline of HF `tokenizers` (tokenizers/src/tokenizer/mod.rs
// encode_single_sequence: added tokens, normalizer, pre-tokenizer, model), the BPE model with
// byte fallback and unk fusing (tokenizers/src/models/bpe/model.rs, word.rs), and decoding.
// Saving to tokenizer.json lives in bpe_save.cpp.
#include "bpe_tokenizer.h"

#include <algorithm>
#include <map>
#include <queue>
#include <utility>

#include "uniattn/error.h"

namespace uniattn::tok {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

bool same_flags(const AddedToken& a, const AddedToken& b) {
  return a.content == b.content && a.special == b.special && a.lstrip == b.lstrip &&
         a.rstrip == b.rstrip && a.normalized == b.normalized && a.single_word == b.single_word;
}

// "<0x0A>": the piece byte fallback looks up (Rust format!("<{b:#04X}>")).
std::string byte_piece(uint8_t b) {
  static const char* const kHex = "0123456789ABCDEF";
  return std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
}

}  // namespace

BpeTokenizer::BpeTokenizer(BpeSpec spec, bool gguf) : spec_(std::move(spec)) {
  const std::string& src = spec_.source;
  UNIATTN_CHECK(static_cast<int64_t>(spec_.vocab.size()) <= kMaxVocab, src, ": vocabulary has ",
                spec_.vocab.size(), " entries, more than the limit ", kMaxVocab);
  UNIATTN_CHECK(static_cast<int64_t>(spec_.merges.size()) <= kMaxMerges, src, ": ",
                spec_.merges.size(), " merges, more than the limit ", kMaxMerges);
  UNIATTN_CHECK(static_cast<int64_t>(spec_.added.size()) <= kMaxVocab, src, ": ",
                spec_.added.size(), " added tokens, more than the limit ", kMaxVocab);
  piece_to_id_.reserve(spec_.vocab.size());
  for (std::size_t id = 0; id < spec_.vocab.size(); ++id) {
    // A duplicated piece (some GGUF vocabularies have them) keeps its first id.
    if (spec_.vocab[id]) piece_to_id_.emplace(*spec_.vocab[id], static_cast<int32_t>(id));
  }
  assign_added_ids(gguf);
  int64_t size = static_cast<int64_t>(spec_.vocab.size());
  for (const AddedToken& t : spec_.added) {
    UNIATTN_CHECK(t.id >= 0 && t.id < kMaxVocab, src, ": added token '", t.content, "' has id ",
                  t.id, " outside [0, ", kMaxVocab, ")");
    check_utf8(t.content, src + ": added token " + std::to_string(t.id));
    size = std::max<int64_t>(size, int64_t{t.id} + 1);
  }
  UNIATTN_CHECK(size <= kMaxVocab, src, ": more than ", kMaxVocab, " token ids");
  vocab_size_ = static_cast<int32_t>(size);
  added_by_id_.assign(static_cast<std::size_t>(size), -1);
  for (std::size_t k = 0; k < spec_.added.size(); ++k) {
    added_by_id_[static_cast<std::size_t>(spec_.added[k].id)] = static_cast<int32_t>(k);
  }
  added_ = AddedVocab(spec_.added, spec_.normalizer);

  auto check_id = [&](const std::optional<int32_t>& id, const char* what) {
    UNIATTN_CHECK(!id || (*id >= 0 && *id < vocab_size_), src, ": ", what, " id ", id.value_or(0),
                  " is outside the vocabulary [0, ", vocab_size_, ")");
  };
  check_id(spec_.bos, "bos");
  check_id(spec_.eos, "eos");
  check_id(spec_.pad, "pad");
  for (int32_t id : spec_.template_prefix) check_id(id, "post-processor template token");
  for (int32_t id : spec_.template_suffix) check_id(id, "post-processor template token");
  bos_ = spec_.bos;
  eos_ = spec_.eos;
  pad_ = spec_.pad;
  adds_bos_ = spec_.add_bos;

  if (spec_.unk_token) {
    auto it = piece_to_id_.find(*spec_.unk_token);
    if (it != piece_to_id_.end()) unk_id_ = it->second;
  }
  for (const PreOp& op : spec_.pre) {
    for (const PreStep& s : op.steps) byte_level_ |= s.kind == PreStep::kByteLevel;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = piece_to_id_.find(byte_to_unicode(static_cast<uint8_t>(b)));
    byte_id_[b] = it == piece_to_id_.end() ? -1 : it->second;
    it = piece_to_id_.find(byte_piece(static_cast<uint8_t>(b)));
    fallback_id_[b] = it == piece_to_id_.end() ? -1 : it->second;
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
    const Merge m{static_cast<int32_t>(r), im->second};
    if (gguf) {
      merges_.emplace(pair_key(ia->second, ib->second), m);
    } else {
      merges_.insert_or_assign(pair_key(ia->second, ib->second), m);  // a HashMap collect
    }
  }
  for (PreOp& op : spec_.pre) {
    compile_pre_steps(op.steps, src);
    compile_pre_steps(op.metaspace.split_step, src);
  }
}

// tokenizers/src/tokenizer/serialization.rs + added_vocabulary.rs add_tokens: a token whose
// content is already added or in the model vocabulary takes that id; the others are numbered on
// from the size of the model vocabulary, in order. Empty tokens are ignored; a repeated content
// with other flags replaces the earlier entry.
void BpeTokenizer::assign_added_ids(bool gguf) {
  if (gguf) return;
  std::unordered_map<std::string, int32_t> by_content;
  std::map<int32_t, AddedToken> by_id;
  int64_t next_id = 0;  // BPE::get_vocab_size: the number of model vocabulary entries
  for (const auto& p : spec_.vocab) next_id += p.has_value();
  for (AddedToken t : spec_.added) {
    if (t.content.empty()) continue;
    int64_t id;
    if (auto it = by_content.find(t.content); it != by_content.end()) {
      if (same_flags(by_id.at(it->second), t)) continue;
      id = it->second;
    } else if (auto m = piece_to_id_.find(t.content); m != piece_to_id_.end()) {
      id = m->second;
    } else {
      id = next_id++;
    }
    UNIATTN_CHECK(id < kMaxVocab, spec_.source, ": added token '", t.content, "' would get id ", id,
                  ", past the limit ", kMaxVocab);
    t.id = static_cast<int32_t>(id);
    by_content[t.content] = t.id;
    by_id[t.id] = std::move(t);
  }
  spec_.added.clear();
  for (auto& [id, t] : by_id) spec_.added.push_back(std::move(t));
}

void BpeTokenizer::set_template(std::vector<int32_t> prefix, std::vector<int32_t> suffix) {
  for (int32_t id : prefix) {
    UNIATTN_CHECK(id >= 0 && id < vocab_size_, spec_.source, ": template token id ", id,
                  " is outside the vocabulary");
  }
  for (int32_t id : suffix) {
    UNIATTN_CHECK(id >= 0 && id < vocab_size_, spec_.source, ": template token id ", id,
                  " is outside the vocabulary");
  }
  spec_.has_template = true;
  spec_.template_prefix = std::move(prefix);
  spec_.template_suffix = std::move(suffix);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_bos,
                                          bool parse_special) const {
  check_utf8(text, spec_.source + ": encode");
  std::vector<int32_t> out;
  if (add_bos) {
    if (spec_.has_template) {
      out = spec_.template_prefix;
    } else if (bos_) {
      out.push_back(*bos_);
    }
  }
  for (const AddedVocab::Split& s : added_.split(text, /*normalized=*/false, parse_special)) {
    if (s.id >= 0) {
      out.push_back(s.id);
    } else {
      encode_segment(text.substr(s.begin, s.end - s.begin), s.begin == 0, parse_special, out);
    }
  }
  if (add_bos && spec_.has_template) {
    out.insert(out.end(), spec_.template_suffix.begin(), spec_.template_suffix.end());
  }
  return out;
}

void BpeTokenizer::encode_segment(std::string_view text, bool at_origin, bool parse_special,
                                  std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::size_t prepended = 0;
  std::string norm = normalize(spec_.normalizer, text, &prepended);
  if (!added_.has_normalized()) {
    pre_and_model(std::move(norm), at_origin, out);
    return;
  }
  for (const AddedVocab::Split& s : added_.split(norm, /*normalized=*/true, parse_special)) {
    if (s.id >= 0) {
      out.push_back(s.id);
    } else {
      // Prepended characters are aligned with the first original one, so a piece that starts
      // right after them still starts at the segment's origin.
      pre_and_model(norm.substr(s.begin, s.end - s.begin), at_origin && s.begin <= prepended, out);
    }
  }
}

void BpeTokenizer::pre_and_model(std::string piece, bool at_origin,
                                 std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (spec_.pre.empty()) {
    model_piece(piece, out);
    return;
  }
  std::vector<std::string> pieces, next;
  pieces.push_back(std::move(piece));
  for (const PreOp& op : spec_.pre) {
    next.clear();
    for (std::size_t k = 0; k < pieces.size(); ++k) {
      if (op.is_metaspace) {
        // The loader allows Metaspace(first) only as the first step, so piece 0 is the segment.
        metaspace_pre_tokenize(op.metaspace, std::move(pieces[k]), at_origin && k == 0, next);
      } else {
        for (std::string& p : pre_tokenize(op.steps, pieces[k])) next.push_back(std::move(p));
      }
    }
    std::swap(pieces, next);
  }
  for (const std::string& p : pieces) model_piece(p, out);
}

void BpeTokenizer::model_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (spec_.ignore_merges) {
    // A piece that is itself in the vocabulary is taken whole (BPE::tokenize_with_cache).
    std::string mapped;
    if (byte_level_) {
      for (unsigned char c : piece) mapped += byte_to_unicode(c);
    }
    auto it = piece_to_id_.find(byte_level_ ? std::string_view(mapped) : piece);
    if (it != piece_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(piece.size());
  auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, n + 1, true});
  };
  // merge_word: each character of the model's string is a vocabulary piece, else its bytes as
  // "<0xXY>" pieces (byte fallback, all or none), else unk, fused with a pending unk when
  // fuse_unk; a pending unk is written only when the next known character (or the end) comes.
  bool pending_unk = false;
  auto unknown = [&](std::string_view ch) {
    if (spec_.byte_fallback) {
      bool all = true;
      for (unsigned char b : ch) all &= fallback_id_[b] >= 0;
      if (all) {
        for (unsigned char b : ch) add(fallback_id_[b]);
        return;
      }
    }
    if (!spec_.unk_token) return;  // no unk: the character is dropped
    UNIATTN_CHECK(unk_id_.has_value(), spec_.source, ": model.unk_token '", *spec_.unk_token,
                  "' is needed for '", std::string(ch), "' but is not in model.vocab");
    if (pending_unk && !spec_.fuse_unk) add(*unk_id_);
    pending_unk = true;
  };
  auto known = [&](int32_t id) {
    if (pending_unk) add(*unk_id_);
    pending_unk = false;
    add(id);
  };
  if (byte_level_) {
    for (unsigned char c : piece) {
      if (byte_id_[c] >= 0) {
        known(byte_id_[c]);
      } else {
        unknown(byte_to_unicode(c));
      }
    }
  } else {
    for (std::size_t i = 0; i < piece.size();) {
      const std::size_t start = i;
      next_codepoint(piece, i);
      const std::string_view ch = piece.substr(start, i - start);
      auto it = piece_to_id_.find(ch);
      if (it != piece_to_id_.end()) {
        known(it->second);
      } else {
        unknown(ch);
      }
    }
  }
  if (pending_unk) add(*unk_id_);
  if (syms.empty()) return;
  syms.back().next = -1;

  // Word::merge_all: lowest rank first, then leftmost; an entry is stale when the pair at its
  // position no longer merges into the same token.
  struct Cand {
    int32_t rank, pos, new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || syms[pos].next < 0) return;
    auto it = merges_.find(pair_key(syms[pos].id, syms[syms[pos].next].id));
    if (it != merges_.end()) heap.push({it->second.rank, pos, it->second.id});
  };
  for (int32_t p = 0; p + 1 < static_cast<int32_t>(syms.size()); ++p) push(p);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& left = syms[c.pos];
    if (!left.alive || left.next < 0) continue;
    const int32_t right_pos = left.next;
    auto it = merges_.find(pair_key(left.id, syms[right_pos].id));
    if (it == merges_.end() || it->second.id != c.new_id) continue;
    left.id = c.new_id;
    left.next = syms[right_pos].next;
    if (left.next >= 0) syms[left.next].prev = c.pos;
    syms[right_pos].alive = false;
    push(left.prev);
    push(c.pos);
  }
  for (int32_t p = 0; p >= 0; p = syms[p].next) out.push_back(syms[p].id);
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  std::vector<std::string> tokens;
  for (int32_t id : ids) {
    UNIATTN_CHECK(id >= 0 && id < vocab_size_, spec_.source, ": decode: token id ", id,
                  " is outside the vocabulary [0, ", vocab_size_, ")");
    const std::size_t uid = static_cast<std::size_t>(id);
    const int32_t k = added_by_id_[uid];
    if (byte_level_) {
      if (k >= 0) {
        // Added tokens were matched on raw text, so their content is written back as is.
        const AddedToken& t = spec_.added[static_cast<std::size_t>(k)];
        if (!(skip_special && t.special)) out += t.content;
        continue;
      }
      UNIATTN_CHECK(uid < spec_.vocab.size() && spec_.vocab[uid], spec_.source,
                    ": decode: token id ", id, " has no vocabulary piece");
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
      continue;
    }
    // Tokenizer::decode: the added token's (normalized) string or the model's piece; specials
    // are recognised by that string.
    const std::string* s = k >= 0 ? added_.decoded(id) : nullptr;
    if (!s) {
      UNIATTN_CHECK(uid < spec_.vocab.size() && spec_.vocab[uid], spec_.source,
                    ": decode: token id ", id, " has no vocabulary piece");
      s = &*spec_.vocab[uid];
    }
    if (skip_special && added_.is_special(*s)) continue;
    tokens.push_back(*s);
  }
  if (byte_level_) return out;
  if (spec_.has_decoder) return run_decoders(spec_.decoders, std::move(tokens));
  for (std::size_t i = 0; i < tokens.size(); ++i) {  // no decoder: tokens joined by spaces
    if (i) out += ' ';
    out += tokens[i];
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
  auto it = piece_to_id_.find(piece);
  if (it == piece_to_id_.end()) return std::nullopt;
  return it->second;
}

std::unique_ptr<Tokenizer> build_bpe(BpeSpec spec, bool gguf) {
  return std::make_unique<BpeTokenizer>(std::move(spec), gguf);
}

}  // namespace uniattn::tok
