// A model's own chat template, rendered as transformers' apply_chat_template(...,
// tokenize=False) renders it: Python jinja2 with trim_blocks and lstrip_blocks, the loop
// controls extension, raise_exception(), strftime_now(), transformers' tojson, namespace() and
// the special tokens (bos_token, eos_token, ...) as variables.
//
// The Jinja interpreter behind it is this project's own (src/io/chat/): Debian packages no C++
// Jinja library. It covers what chat templates use and is tested byte for byte against Python
// jinja2 (tests/fixtures/make_chat_template_fixtures.py):
//  * statements: if/elif/else, for (tuple targets, `if` filter, else, loop.index/index0/
//    revindex/first/last/length/previtem/nextitem/cycle), break/continue, set (also tuples,
//    namespace attributes and {% set x %}...{% endset %}), macro (with defaults), raw,
//    generation, comments and all whitespace control;
//  * expressions: literals, lists, tuples, dicts, attributes, subscripts and slices, calls with
//    keywords, and/or/not, in/not in, is [not], == != < <= > >=, + - * / // % **, ~, ternary;
//  * filters: trim upper lower title capitalize replace indent tojson join int float default
//    length count first last list items reverse sort unique min max sum map select reject
//    selectattr rejectattr string safe abs attr; tests: defined undefined none boolean true
//    false integer float number string mapping iterable sequence callable escaped in eq/equalto
//    ne lt le gt ge odd even divisibleby lower upper sameas filter test;
//  * str methods strip lstrip rstrip split splitlines startswith endswith removeprefix
//    removesuffix replace find rfind index count join format upper lower title capitalize
//    is*; dict items keys values get; list count index; globals range dict namespace
//    raise_exception strftime_now.
// Anything else fails with an error naming the construct and the template line; a template is
// never rendered differently from jinja2 without an error.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace uniattn {

namespace jinja {
struct Template;
}

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

class ChatTemplate {
 public:
  // Parses `source`. special_tokens: the strings the template can read by name, as
  // transformers passes the tokenizer's special_tokens_map ({"bos_token": "<s>", ...}).
  // Throws uniattn::Error "chat template line N: ..." on a syntax error or an unsupported tag,
  // filter or test, and when special_tokens is not an object of strings.
  explicit ChatTemplate(std::string source,
                        nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object());

  // The template a model carries, or nullopt when it has none:
  //  * a HF directory: chat_template.jinja, else tokenizer_config.json "chat_template" (a string,
  //    or a list of {"name", "template"} of which "default" is used), with the special tokens of
  //    tokenizer_config.json (special_tokens_map.json filling gaps);
  //  * a .gguf file: metadata tokenizer.chat_template, with the special tokens named by
  //    tokenizer.ggml.{bos,eos,unknown,seperator,padding,cls,mask}_token_id.
  // Throws uniattn::Error naming the file when it cannot be read or is malformed, when a template
  // list has no "default", or when the template does not parse (as the constructor).
  static std::optional<ChatTemplate> load(const std::filesystem::path& model_path);

  // Renders the conversation; add_generation_prompt asks the template to open the assistant's
  // turn. extra: further variables (e.g. {"tools": [...], "date_string": "26 Jul 2024"}); they
  // override the special tokens, and "tools"/"documents" (None by default) may be set.
  // Throws uniattn::Error "chat template line N: <message>" when rendering fails:
  // raise_exception() in the template (the message is the template's), an undefined value
  // used, a type error, an unsupported construct reached, or a limit exceeded (16 MiB of
  // output, 64 nested macro calls, 10^7 steps). Also throws when `messages` is empty, `extra`
  // is not an object or sets "messages"/"add_generation_prompt", or a string is not UTF-8.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;
  // The same with messages as JSON objects of any fields (tool_calls, reasoning_content, ...).
  // As transformers does, keys whose value is null are dropped and a reasoning field is copied
  // to "thinking" and "reasoning_content". Throws as render(), and when a message is no object.
  std::string render_json(
      const nlohmann::ordered_json& messages, bool add_generation_prompt,
      const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& source() const;
  const nlohmann::ordered_json& special_tokens() const;

 private:
  std::shared_ptr<const jinja::Template> impl_;
};

}  // namespace uniattn
