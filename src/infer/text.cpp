// The text side of generation: incremental detokenisation, stop strings, chat templates.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <system_error>

#include "uniattn/error.h"
#include "uniattn/infer/generate.h"
#include "uniattn/io/chat_template.h"

namespace uniattn {

size_t complete_utf8_prefix(std::string_view s) {
  // Only the last (at most 3) bytes can be an unfinished character; find the last lead byte.
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(4, n); ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for its lead
    size_t need = 1;
    if ((c & 0xE0) == 0xC0)
      need = 2;
    else if ((c & 0xF0) == 0xE0)
      need = 3;
    else if ((c & 0xF8) == 0xF0)
      need = 4;
    // ASCII, an invalid lead, or a finished character: everything is complete.
    return back < need ? n - back : n;
  }
  return n;  // only continuation bytes at the end: malformed, pass them on
}

namespace {

// Length of the well-formed UTF-8 character at s[i], or of its maximal ill-formed subpart (at least
// 1) with *valid false: the Unicode Standard's table 3-7 and its "maximal subpart" practice, which
// Rust's String::from_utf8_lossy (and so `tokenizers`' decoders) follow.
size_t utf8_unit(std::string_view s, size_t i, bool* valid) {
  const auto c = static_cast<unsigned char>(s[i]);
  *valid = true;
  if (c < 0x80) return 1;
  size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  }
  size_t len = 1;
  for (; need > 0 && len < need && i + len < s.size(); ++len) {
    const auto b = static_cast<unsigned char>(s[i + len]);
    if (b < (len == 1 ? lo : 0x80) || b > (len == 1 ? hi : 0xBF)) break;
  }
  *valid = need > 0 && len == need;
  return len;
}

// `s` with each ill-formed UTF-8 subpart replaced by U+FFFD, as transformers' decode() gives text
// whose byte-level tokens do not form whole characters.
std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    bool valid = false;
    const size_t n = utf8_unit(s, i, &valid);
    if (valid)
      out.append(s.substr(i, n));
    else
      out += "\xEF\xBF\xBD";
    i += n;
  }
  return out;
}

}  // namespace

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings)
    : tok_(tokenizer), stops_(std::move(stop_strings)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string TextStream::push(int32_t id) {
  if (stopped_) return {};
  ids_.push_back(id);
  std::span<const int32_t> window(ids_.data() + window_, ids_.size() - window_);
  const std::string text = tok_.decode(window, /*skip_special=*/true);
  std::string piece;
  if (text.size() > emitted_) {
    const size_t complete = complete_utf8_prefix(text);
    if (complete > emitted_) {
      // Bytes that cannot become a character become U+FFFD, as in transformers' decode().
      piece = utf8_lossy(std::string_view(text).substr(emitted_, complete - emitted_));
      emitted_ = complete;
    }
  }
  // Keep decoding cost bounded: once everything decoded is passed on, restart the window at the
  // last id, which stays as context (a SentencePiece piece decodes differently at the start).
  if (emitted_ == text.size() && ids_.size() - window_ > 8) {
    window_ = ids_.size() - 1;
    emitted_ = tok_.decode(std::span<const int32_t>(ids_.data() + window_, 1), true).size();
  }
  return hold_for_stops(std::move(piece));
}

std::string TextStream::hold_for_stops(std::string piece) {
  if (stops_.empty()) return piece;
  held_ += piece;
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // A stop string that has begun lies wholly in held_: keep the longest suffix that is a proper
  // prefix of some stop string.
  size_t keep = 0;
  for (const auto& s : stops_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string TextStream::flush() {
  if (stopped_) return {};
  std::span<const int32_t> window(ids_.data() + window_, ids_.size() - window_);
  const std::string text = tok_.decode(window, true);
  std::string out = held_;
  if (text.size() > emitted_) out += utf8_lossy(std::string_view(text).substr(emitted_));
  emitted_ = text.size();
  held_.clear();
  return out;
}

namespace {

// The prompt format of the chat markers the vocabulary has (ChatML, LLaMA-3, Gemma, Mistral
// [INST]) and its end-of-turn id; nullopt when it has none of them.
std::optional<ChatPrompt> builtin_chat(const Tokenizer& tok, const std::string& msg,
                                       const char** family) {
  auto id = [&](std::string_view piece) { return tok.find_token(piece); };
  ChatPrompt p;
  if (auto end = id("<|im_end|>"); end && id("<|im_start|>")) {
    *family = "ChatML";
    p.text = "<|im_start|>user\n" + msg + "<|im_end|>\n<|im_start|>assistant\n";
    p.stop_tokens = {*end};
  } else if (auto eot = id("<|eot_id|>"); eot && id("<|start_header_id|>")) {
    *family = "LLaMA-3";
    p.text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + msg +
             "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    p.stop_tokens = {*eot};
  } else if (auto eot = id("<end_of_turn>"); eot && id("<start_of_turn>")) {
    *family = "Gemma";
    p.text = "<bos><start_of_turn>user\n" + msg + "<end_of_turn>\n<start_of_turn>model\n";
    p.stop_tokens = {*eot};
  } else if (id("[INST]") || id("▁[INST]") || id("[/INST]")) {
    *family = "Mistral [INST]";
    p.text = "<s>[INST] " + msg + " [/INST]";
  } else {
    return std::nullopt;
  }
  return p;
}

}  // namespace

ChatPrompt format_chat(const Tokenizer& tok, std::string_view user) {
  const char* family = nullptr;
  auto p = builtin_chat(tok, std::string(user), &family);
  if (!p)
    fail(
        "--chat: the tokenizer has none of the chat markers this build knows (ChatML "
        "<|im_start|>, LLaMA-3 <|start_header_id|>, Gemma <start_of_turn>, Mistral [INST])");
  return *p;
}

ChatPrompt format_chat(const Tokenizer& tok, const ChatTemplate* chat_template,
                       std::string_view user) {
  if (!chat_template) {
    static std::atomic<bool> logged{false};
    const char* family = "no";
    const bool known = builtin_chat(tok, "", &family).has_value();
    if (known && !logged.exchange(true))
      std::fprintf(stderr,
                   "uniattn: the model has no chat template; --chat falls back to the built-in "
                   "%s prompt format\n",
                   family);
    return format_chat(tok, user);
  }
  ChatPrompt p;
  p.text = chat_template->render({{"user", std::string(user)}}, /*add_generation_prompt=*/true);
  // The end-of-turn id stays the one the built-in format knows (end tokens proper come from the
  // checkpoint's configuration, see GenerateOptions::eos_tokens).
  const char* family = nullptr;
  if (auto builtin = builtin_chat(tok, "", &family)) p.stop_tokens = builtin->stop_tokens;
  return p;
}

}  // namespace uniattn
