// Chat-format training data: records {"messages": [{"role": ..., "content": ...}, ...]} (the
// conversational format of transformers / TRL datasets), rendered with the model's own chat
// template and tokenised with the loss on the assistant turns only. See docs/training.md,
// section "Chat data".
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "uniattn/data/records.h"
#include "uniattn/io/chat_template.h"
#include "uniattn/io/tokenizer.h"

namespace uniattn {

// Loads the "messages" arrays of a JSON array of records or of JSON Lines (blank lines skipped),
// like load_records. Every message must be an object with a string "role"; other fields
// ("content", "tool_calls", ...) are passed to the template as they are. Throws uniattn::Error
// naming the file and the record (index or line) for: a missing, empty or invalid file, a record
// that is not an object or has no "messages" array, an empty conversation, or a message that is
// not an object or lacks a string "role".
std::vector<nlohmann::ordered_json> load_conversations(const std::filesystem::path& path);

// Renders `messages` with `tmpl` (add_generation_prompt false, as transformers' SFT data) and
// tokenises the text as transformers' apply_chat_template(tokenize=True) does: no tokens added
// around it (the template writes bos itself), special tokens parsed. loss_mask[i] = 1 for the
// tokens of the assistant turns, as transformers' return_assistant_tokens_mask defines them:
// every token whose characters overlap an assistant span. A span is found without {% generation
// %} tags, for any template, by rendering prefixes of the conversation: assistant message k
// spans [len(render(m[0..k), add_generation_prompt=true)), len(render(m[0..k], false))), i.e.
// its content and what the template writes after it (the end-of-turn token and, for ChatML, the
// newline); the header the generation prompt opens is not part of it. Where the template writes
// {% generation %} tags around exactly that (TRL's training templates), the masks are the same.
// Cut to max_len tokens (the end is dropped; `truncated` set). prompt_tokens: tokens before the
// first assistant span. Throws uniattn::Error when max_len < 2, rendering fails, the template is
// not prefix-preserving (a prefix of the conversation renders to text that is not a prefix of
// the whole), an assistant message comes first (there is no prefix to render), or a span
// boundary cannot be placed on the tokens (tokenizers whose per-token decode does not give the
// text back, with a boundary inside a token).
TokenizedExample tokenize_conversation(const nlohmann::ordered_json& messages,
                                       const ChatTemplate& tmpl, const Tokenizer& tok,
                                       int64_t max_len);

// Tokenises every conversation; ones left without an assistant token (none in the conversation,
// or all cut off by max_len) are dropped and counted in stats. Errors read
// "<origin>: record N: ..." (origin: the data file).
std::vector<TokenizedExample> tokenize_conversations(
    const std::vector<nlohmann::ordered_json>& conversations, const ChatTemplate& tmpl,
    const Tokenizer& tok, int64_t max_len, TokenizeStats* stats = nullptr,
    const std::string& origin = "chat data");

// The chat template the data is rendered with: the one `model_or_tokenizer_path` carries
// (ChatTemplate::load). Throws uniattn::Error naming the path when it has none.
ChatTemplate chat_template_for_data(const std::filesystem::path& model_or_tokenizer_path);

}  // namespace uniattn
