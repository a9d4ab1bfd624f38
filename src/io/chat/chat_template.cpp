#include "uniattn/io/chat_template.h"

#include "io/chat/jinja_builtins.h"
#include "io/chat/jinja_eval.h"
#include "io/chat/jinja_lexer.h"
#include "io/chat/jinja_text.h"
#include "uniattn/error.h"

namespace uniattn {

namespace jinja {
struct Template {
  std::string source;
  nlohmann::ordered_json special_tokens;
  Body body;
  Dict globals;
};
}  // namespace jinja

namespace {

[[noreturn]] void rethrow(const jinja::TemplateError& e) {
  if (e.line > 0) fail("chat template line ", e.line, ": ", e.what());
  fail("chat template: ", e.what());
}

// transformers' _normalize_chat_messages and _alias_reasoning_fields.
nlohmann::ordered_json normalize_message(const nlohmann::ordered_json& m) {
  if (!m.is_object()) fail("chat template: chat messages must be objects, got ", m.dump());
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const auto& [k, v] : m.items())
    if (!v.is_null()) out[k] = v;
  for (const char* field : {"reasoning_content", "thinking", "reasoning"}) {
    if (!out.contains(field)) continue;
    const auto reasoning = out[field];
    nlohmann::ordered_json aliased = {{"thinking", reasoning}};
    for (const auto& [k, v] : out.items()) aliased[k] = v;
    aliased["reasoning_content"] = reasoning;
    return aliased;
  }
  return out;
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source, nlohmann::ordered_json special_tokens) {
  if (!special_tokens.is_object()) fail("chat template: special tokens must be a JSON object");
  for (const auto& [k, v] : special_tokens.items())
    if (!v.is_string()) fail("chat template: special token '", k, "' is not a string");
  auto t = std::make_shared<jinja::Template>();
  t->source = std::move(source);
  t->special_tokens = std::move(special_tokens);
  t->globals = jinja::make_globals();
  try {
    t->body = jinja::parse_template(jinja::tokenize(t->source));
  } catch (const jinja::TemplateError& e) {
    rethrow(e);
  } catch (const std::exception& e) {  // e.g. std::bad_alloc: still this API's error type
    fail("chat template: ", e.what());
  }
  impl_ = std::move(t);
}

const std::string& ChatTemplate::source() const { return impl_->source; }
const nlohmann::ordered_json& ChatTemplate::special_tokens() const { return impl_->special_tokens; }

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  return render_json(list, add_generation_prompt, extra);
}

std::string ChatTemplate::render_json(const nlohmann::ordered_json& messages,
                                      bool add_generation_prompt,
                                      const nlohmann::ordered_json& extra) const {
  if (!messages.is_array()) fail("chat template: messages must be a JSON array");
  if (messages.empty())
    fail("chat template: cannot apply a chat template to an empty conversation");
  if (!extra.is_object()) fail("chat template: extra variables must be a JSON object");
  for (const char* reserved : {"messages", "add_generation_prompt"})
    if (extra.contains(reserved))
      fail("chat template: extra variables cannot set '", reserved, "'");
  nlohmann::ordered_json chat = nlohmann::ordered_json::array();
  for (const auto& m : messages) chat.push_back(normalize_message(m));
  try {
    // The keyword arguments of transformers' render(): messages, tools, documents,
    // add_generation_prompt, then the special tokens and the caller's variables.
    jinja::Dict vars;
    vars.set("messages", jinja::Value::from_json(chat));
    vars.set("tools", jinja::Value::none());
    vars.set("documents", jinja::Value::none());
    vars.set("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
    for (const auto& [k, v] : impl_->special_tokens.items())
      vars.set(k, jinja::Value::from_json(v));
    for (const auto& [k, v] : extra.items()) vars.set(k, jinja::Value::from_json(v));
    jinja::Interpreter interp(jinja::Limits{}, impl_->globals, vars);
    return interp.render(impl_->body);
  } catch (const jinja::TemplateError& e) {
    rethrow(e);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("chat template: ", e.what());
  }
}

}  // namespace uniattn
