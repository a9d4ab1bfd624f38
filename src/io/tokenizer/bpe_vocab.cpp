// make_bpe_tokenizer: a byte-level BPE tokenizer from a GGUF-style vocabulary (tokenizer.ggml.*).
#include "internal.h"
#include "uniattn/error.h"

namespace uniattn {

namespace {

constexpr const char* kSource = "BPE vocab";

// The split steps each tokenizer.ggml.pre name stands for (the pre-tokenizers of the HF
// tokenizer.json files these models ship with).
std::vector<tok::PreStep> pre_steps_for(const std::string& pre) {
  tok::PreStep byte_level;
  byte_level.kind = tok::PreStep::kByteLevel;
  if (pre.empty() || pre == "default" || pre == "gpt2" || pre == "gpt-2") {
    return {byte_level};  // ByteLevel with its own GPT-2 regex
  }
  if (pre == "smollm" || pre == "starcoder") {
    tok::PreStep digits;
    digits.kind = tok::PreStep::kDigits;
    digits.individual_digits = true;
    return {digits, byte_level};
  }
  tok::PreStep split;
  split.kind = tok::PreStep::kSplit;
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "smaug-bpe" ||
      pre == "dbrx") {
    split.pattern = tok::kLlama3Pattern;
  } else if (pre == "qwen2") {
    split.pattern = tok::kQwen2Pattern;
  } else {
    fail(kSource, ": unsupported tokenizer.ggml.pre '", pre,
         "' (supported: default, gpt2, smollm, starcoder, llama-bpe, llama3, smaug-bpe, dbrx, "
         "qwen2)");
  }
  byte_level.use_regex = false;
  return {split, byte_level};
}

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const BpeVocab& v) {
  UNIATTN_CHECK(!v.tokens.empty(), kSource, ": no tokens");
  UNIATTN_CHECK(static_cast<int64_t>(v.tokens.size()) <= tok::kMaxVocab, kSource, ": ",
                v.tokens.size(), " tokens, more than the limit ", tok::kMaxVocab);
  UNIATTN_CHECK(v.token_types.empty() || v.token_types.size() == v.tokens.size(), kSource,
                ": token_types has ", v.token_types.size(), " entries for ", v.tokens.size(),
                " tokens");
  UNIATTN_CHECK(static_cast<int64_t>(v.merges.size()) <= tok::kMaxMerges, kSource, ": ",
                v.merges.size(), " merges, more than the limit ", tok::kMaxMerges);
  tok::BpeSpec spec;
  spec.source = kSource;
  tok::PreOp op;
  op.steps = pre_steps_for(v.pre);
  spec.ignore_merges = op.steps.front().kind == tok::PreStep::kSplit &&
                       op.steps.front().pattern == tok::kLlama3Pattern;
  spec.pre.push_back(std::move(op));
  spec.vocab.reserve(v.tokens.size());
  for (std::size_t i = 0; i < v.tokens.size(); ++i) {
    tok::check_utf8(v.tokens[i], std::string(kSource) + ": token " + std::to_string(i));
    spec.vocab.emplace_back(v.tokens[i]);
    const int32_t type = v.token_types.empty() ? 1 : v.token_types[i];
    UNIATTN_CHECK(type >= 0 && type <= 6, kSource, ": token ", i, " has unknown type ", type);
    // Control tokens are the specials written literally in chat templates; user-defined ones are
    // matched in text too but are not special (not skipped when decoding).
    if (type == 3 || type == 4) {
      UNIATTN_CHECK(!v.tokens[i].empty(), kSource, ": token ", i, " is empty");
      tok::AddedToken t;
      t.content = v.tokens[i];
      t.id = static_cast<int32_t>(i);
      t.special = type == 3;
      spec.added.push_back(std::move(t));
    }
  }
  spec.merges.reserve(v.merges.size());
  for (std::size_t r = 0; r < v.merges.size(); ++r) {
    const std::string& s = v.merges[r];
    const std::size_t sp = s.find(' ');
    UNIATTN_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() &&
                      s.find(' ', sp + 1) == std::string::npos,
                  kSource, ": merge ", r, " '", s, "' is not of the form 'a b'");
    spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
  }
  spec.bos = v.bos;
  spec.eos = v.eos;
  spec.pad = v.pad;
  if (v.unk) {
    UNIATTN_CHECK(*v.unk >= 0 && static_cast<std::size_t>(*v.unk) < v.tokens.size(), kSource,
                  ": unk id ", *v.unk, " is outside the vocabulary [0, ", v.tokens.size(), ")");
    spec.unk_token = v.tokens[static_cast<std::size_t>(*v.unk)];
  }
  spec.add_bos = v.add_bos;
  if (v.add_bos && v.bos) {
    spec.has_template = true;
    spec.template_prefix = {*v.bos};
  }
  return tok::build_bpe(std::move(spec), /*gguf=*/true);
}

}  // namespace uniattn
