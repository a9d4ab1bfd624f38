// Chat-format data: conversations rendered with the model's chat template, tokenised, and masked
// to the assistant turns (include/uniattn/data/chat_records.h has the definitions).
#include "uniattn/data/chat_records.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>

#include "tokenized.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/json_depth.h"

namespace uniattn {
namespace {

using ojson = nlohmann::ordered_json;

ojson parse_value(std::string_view text, const std::string& where) {
  check_json_depth(text, where);
  try {
    return ojson::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": not valid JSON: ", e.what());
  }
}

ojson messages_of(const ojson& record, const std::string& where) {
  UNIATTN_CHECK(record.is_object(), where, ": expected a JSON object, got ", record.type_name());
  auto it = record.find("messages");
  UNIATTN_CHECK(it != record.end() && it->is_array(), where,
                ": chat data needs a 'messages' array of {\"role\", \"content\"} objects");
  UNIATTN_CHECK(!it->empty(), where, ": 'messages' is empty");
  for (std::size_t i = 0; i < it->size(); ++i) {
    const auto& m = (*it)[i];
    const std::string at = where + ": message " + std::to_string(i);
    UNIATTN_CHECK(m.is_object(), at, ": expected an object, got ", m.type_name());
    UNIATTN_CHECK(m.contains("role") && m.at("role").is_string(), at, ": needs a string 'role'");
  }
  return *it;
}

// A span [begin, end) of the rendered text that the loss covers.
using Span = std::pair<std::size_t, std::size_t>;

// The assistant spans, found by rendering prefixes of the conversation (works for any template;
// the {% generation %} tags that transformers reads are not needed).
std::vector<Span> assistant_spans(const ojson& messages, const ChatTemplate& tmpl,
                                  const std::string& full) {
  std::vector<Span> spans;
  for (std::size_t k = 0; k < messages.size(); ++k) {
    if (messages[k].at("role").get<std::string>() != "assistant") continue;
    UNIATTN_CHECK(k > 0,
                  "chat data: the conversation starts with an assistant message; the "
                  "assistant turns are found from the rendered conversation before them");
    const ojson before(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(k));
    const ojson upto(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(k) + 1);
    const std::string a = tmpl.render_json(before, /*add_generation_prompt=*/true);
    const std::string b = tmpl.render_json(upto, /*add_generation_prompt=*/false);
    UNIATTN_CHECK(b.starts_with(a) && full.starts_with(b), "chat data: the chat template is not ",
                  "prefix-preserving at message ", k,
                  " (the conversation up to it renders to text that is not a prefix of the whole "
                  "conversation), so its assistant tokens cannot be found");
    if (b.size() > a.size()) spans.emplace_back(a.size(), b.size());
  }
  return spans;
}

// Byte offset where each token starts ([n + 1] entries), when decoding token by token gives the
// rendered text back (byte-level BPE); empty otherwise.
std::vector<std::size_t> token_offsets(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                       const std::string& text) {
  std::vector<std::size_t> off{0};
  for (int32_t id : ids) {
    const std::string piece = tok.decode(std::span<const int32_t>(&id, 1));
    if (text.compare(off.back(), piece.size(), piece) != 0) return {};
    off.push_back(off.back() + piece.size());
  }
  return off.back() == text.size() ? off : std::vector<std::size_t>{};
}

// The number of tokens that cover text[0, pos) exactly, when pos is a token boundary: encoding
// the prefix gives the first tokens of the whole. nullopt otherwise.
std::optional<std::size_t> boundary_by_prefix(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                              const std::string& text, std::size_t pos) {
  const auto p = tok.encode(std::string_view(text).substr(0, pos), false, true);
  if (p.size() <= ids.size() && std::equal(p.begin(), p.end(), ids.begin())) return p.size();
  return std::nullopt;
}

// Marks every token overlapping a span (transformers' rule for return_assistant_tokens_mask).
std::vector<uint8_t> span_mask(const Tokenizer& tok, const std::vector<int32_t>& ids,
                               const std::string& text, const std::vector<Span>& spans) {
  std::vector<uint8_t> mask(ids.size(), 0);
  if (spans.empty()) return mask;
  const auto off = token_offsets(tok, ids, text);
  for (const auto& [b, e] : spans) {
    std::size_t first = 0, last = 0;  // tokens [first, last)
    if (!off.empty()) {
      // Token i covers [off[i], off[i+1]); it overlaps [b, e) when off[i+1] > b and off[i] < e.
      first = std::upper_bound(off.begin() + 1, off.end(), b) - off.begin() - 1;
      last = std::lower_bound(off.begin(), off.end() - 1, e) - off.begin();
    } else {
      const auto fb = boundary_by_prefix(tok, ids, text, b);
      const auto lb = boundary_by_prefix(tok, ids, text, e);
      UNIATTN_CHECK(fb && lb,
                    "chat data: an assistant turn starts or ends inside a token, and "
                    "this tokenizer's tokens do not decode one by one to the text, so "
                    "the tokens of the turn cannot be told");
      first = *fb, last = *lb;
    }
    for (std::size_t i = first; i < last && i < ids.size(); ++i) mask[i] = 1;
  }
  return mask;
}

}  // namespace

std::vector<ojson> load_conversations(const std::filesystem::path& path) {
  UNIATTN_CHECK(std::filesystem::is_regular_file(path), path.string(),
                ": data file does not exist or is not a file");
  const std::string text = read_text_file(path, std::size_t{4} << 30);
  const auto first = text.find_first_not_of(" \t\r\n");
  UNIATTN_CHECK(first != std::string::npos, path.string(), ": data file is empty");
  std::vector<ojson> out;
  if (text[first] == '[') {
    const ojson all = parse_value(text, path.string());
    UNIATTN_CHECK(all.is_array() && !all.empty(), path.string(),
                  ": expected a non-empty JSON array of records");
    for (std::size_t i = 0; i < all.size(); ++i)
      out.push_back(messages_of(all[i], path.string() + ": record " + std::to_string(i)));
    return out;
  }
  std::size_t pos = 0, line = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line;
    const std::string_view l(text.data() + pos, end - pos);
    if (l.find_first_not_of(" \t\r") != std::string_view::npos) {
      const std::string where = path.string() + ": line " + std::to_string(line);
      out.push_back(messages_of(parse_value(l, where), where));
    }
    pos = end + 1;
  }
  UNIATTN_CHECK(!out.empty(), path.string(), ": no records");
  return out;
}

TokenizedExample tokenize_conversation(const ojson& messages, const ChatTemplate& tmpl,
                                       const Tokenizer& tok, int64_t max_len) {
  UNIATTN_CHECK(max_len >= 2, "tokenize: max_len must be >= 2, got ", max_len);
  const std::string full = tmpl.render_json(messages, /*add_generation_prompt=*/false);
  const auto spans = assistant_spans(messages, tmpl, full);
  TokenizedExample ex;
  ex.ids = tok.encode(full, /*add_bos=*/false, /*parse_special=*/true);
  ex.loss_mask = span_mask(tok, ex.ids, full, spans);
  const auto first = std::find(ex.loss_mask.begin(), ex.loss_mask.end(), uint8_t{1});
  ex.prompt_tokens = first - ex.loss_mask.begin();
  truncate_example(ex, max_len);
  return ex;
}

std::vector<TokenizedExample> tokenize_conversations(const std::vector<ojson>& conversations,
                                                     const ChatTemplate& tmpl, const Tokenizer& tok,
                                                     int64_t max_len, TokenizeStats* stats,
                                                     const std::string& origin) {
  TokenizeStats st;
  std::vector<TokenizedExample> out;
  for (std::size_t i = 0; i < conversations.size(); ++i) {
    ++st.records;
    TokenizedExample ex;
    try {
      ex = tokenize_conversation(conversations[i], tmpl, tok, max_len);
    } catch (const Error& e) {
      fail(origin, ": record ", i, ": ", e.what());
    }
    keep_if_targeted(out, std::move(ex), st);
  }
  if (stats) *stats = st;
  return out;
}

ChatTemplate chat_template_for_data(const std::filesystem::path& path) {
  auto t = ChatTemplate::load(path);
  UNIATTN_CHECK(t.has_value(), path.string(),
                ": carries no chat template (chat_template.jinja, tokenizer_config.json "
                "'chat_template' or GGUF tokenizer.chat_template), which chat data needs");
  return std::move(*t);
}

}  // namespace uniattn
