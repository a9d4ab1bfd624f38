// Chat-format training data ('messages' records, src/data/chat_records.cpp): a JSON array or JSON
// Lines file loaded with load_conversations, then every conversation rendered with a chat template
// and tokenised with its assistant-turn mask (tokenize_conversations), as uniattn-train's
// data.template: chat does. First byte: bit 0 the .jsonl name, bit 1 the template (ChatML, or
// Gemma's turns with its role checks), bits 2-7 max_len (2 + 8 * value, so truncation is reached).
// The tokenizer is a byte-level BPE with no merges (every byte a token) plus the templates'
// special tokens, so any text encodes and decodes back.
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "fuzz_util.h"
#include "uniattn/data/chat_records.h"
#include "uniattn/io/tokenizer.h"

namespace {
using namespace uniattn;

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others map to U+0100 up.
std::string byte_symbol(int b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

const Tokenizer& byte_tokenizer() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = b;
    nlohmann::ordered_json added = nlohmann::ordered_json::array();
    int id = 256;
    for (const char* t :
         {"<|im_start|>", "<|im_end|>", "<bos>", "<start_of_turn>", "<end_of_turn>"}) {
      added.push_back({{"id", id++},
                       {"content", t},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", true}});
    }
    const nlohmann::ordered_json byte_level = {{"type", "ByteLevel"},
                                               {"add_prefix_space", false},
                                               {"trim_offsets", true},
                                               {"use_regex", true}};
    const nlohmann::ordered_json j = {{"version", "1.0"},
                                      {"added_tokens", added},
                                      {"normalizer", nullptr},
                                      {"pre_tokenizer", byte_level},
                                      {"post_processor", nullptr},
                                      {"decoder", byte_level},
                                      {"model",
                                       {{"type", "BPE"},
                                        {"dropout", nullptr},
                                        {"unk_token", nullptr},
                                        {"continuing_subword_prefix", nullptr},
                                        {"end_of_word_suffix", nullptr},
                                        {"fuse_unk", false},
                                        {"byte_fallback", false},
                                        {"vocab", vocab},
                                        {"merges", nlohmann::ordered_json::array()}}}};
    return load_tokenizer_json(fuzz::write_input("byte_tokenizer.json", j.dump()));
  }();
  return *tok;
}

// SmolLM2's ChatML template, and Gemma's (bos, user/model turns, roles must alternate).
const char* const kChatML =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const char* const kGemma =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = "
    "messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}"
    "{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) "
    "%}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') "
    "}}{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
    "(first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

const ChatTemplate& chat_template(bool gemma) {
  static const ChatTemplate chatml{kChatML, nlohmann::ordered_json{{"eos_token", "<|im_end|>"}}};
  static const ChatTemplate gem{
      kGemma, nlohmann::ordered_json{{"bos_token", "<bos>"}, {"eos_token", "<eos>"}}};
  return gemma ? gem : chatml;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto path = fuzz::write_input(data[0] & 1 ? "chat.jsonl" : "chat.json",
                                      fuzz::as_text(data + 1, size - 1));
  const auto& tmpl = chat_template(data[0] & 2);
  const int64_t max_len = 2 + 8 * (data[0] >> 2);
  fuzz::expect_ok_or_error([&] {
    const auto conversations = load_conversations(path);
    TokenizeStats st;
    (void)tokenize_conversations(conversations, tmpl, byte_tokenizer(), max_len, &st,
                                 path.string());
  });
  return 0;
}
