// Finding a model's chat template and special tokens where transformers finds them.
#include <system_error>

#include "uniattn/error.h"
#include "uniattn/io/chat_template.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/json_depth.h"
#include "uniattn/io/gguf.h"

namespace uniattn {

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order.
constexpr const char* kSpecialNames[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                         "pad_token", "cls_token", "mask_token"};

ojson read_json(const fs::path& path) {
  try {
    const std::string text = read_text_file(path);
    check_json_depth(text, path.string());
    return ojson::parse(text);
  } catch (const ojson::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
}

// A special token as tokenizer_config.json writes it: a string or an AddedToken object.
std::optional<std::string> token_string(const ojson& v, const fs::path& file, const char* key) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  fail(file.string(), ": '", key, "' is neither a string nor an object with \"content\"");
}

ojson dir_special_tokens(const fs::path& dir, const ojson& config) {
  ojson out = ojson::object();
  const fs::path map_file = dir / "special_tokens_map.json";
  std::error_code ec;
  const ojson map = fs::exists(map_file, ec) ? read_json(map_file) : ojson::object();
  for (const char* name : kSpecialNames) {
    std::optional<std::string> tok;
    if (config.contains(name))
      tok = token_string(config[name], dir / "tokenizer_config.json", name);
    if (!tok && map.is_object() && map.contains(name))
      tok = token_string(map[name], map_file, name);
    if (tok) out[name] = *tok;
  }
  return out;
}

// tokenizer_config.json's "chat_template": a string, or a list of named templates of which
// transformers uses "default" when no tools are given.
std::optional<std::string> config_template(const ojson& config, const fs::path& file) {
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return std::nullopt;
  const ojson& t = config["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (!t.is_array()) fail(file.string(), ": 'chat_template' is neither a string nor a list");
  std::string names;
  for (const auto& entry : t) {
    if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
        !entry["name"].is_string() || !entry["template"].is_string())
      fail(file.string(), ": 'chat_template' list entries need string \"name\" and \"template\"");
    if (entry["name"] == "default") return entry["template"].get<std::string>();
    names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
  }
  fail(file.string(), ": 'chat_template' lists templates (", names, ") but none named \"default\"");
}

std::optional<ChatTemplate> load_dir(const fs::path& dir) {
  std::error_code ec;
  const fs::path config_file = dir / "tokenizer_config.json";
  const ojson config = fs::exists(config_file, ec) ? read_json(config_file) : ojson::object();
  if (!config.is_object()) fail(config_file.string(), ": not a JSON object");
  std::optional<std::string> source;
  if (fs::exists(dir / "chat_template.jinja", ec))  // transformers prefers it to the config's
    source = read_text_file(dir / "chat_template.jinja");
  else
    source = config_template(config, config_file);
  if (!source) return std::nullopt;
  try {
    return ChatTemplate(std::move(*source), dir_special_tokens(dir, config));
  } catch (const Error& e) {
    fail(dir.string(), ": ", e.what());
  }
}

std::optional<ChatTemplate> load_gguf(const fs::path& path) {
  const GgufFile f = GgufFile::open(path);
  if (!f.has("tokenizer.chat_template")) return std::nullopt;
  std::string source = f.get_string("tokenizer.chat_template");
  ojson special = ojson::object();
  static constexpr std::pair<const char*, const char*> kIds[] = {
      {"bos_token", "bos"},       {"eos_token", "eos"}, {"unk_token", "unknown"},
      {"sep_token", "seperator"},  // sic: the GGUF spec spells it so
      {"pad_token", "padding"},   {"cls_token", "cls"}, {"mask_token", "mask"}};
  const bool has_tokens = f.has("tokenizer.ggml.tokens");
  for (const auto& [name, key] : kIds) {
    const std::string id_key = std::string("tokenizer.ggml.") + key + "_token_id";
    if (!f.has(id_key)) continue;
    if (!has_tokens) fail(path.string(), ": ", id_key, " without tokenizer.ggml.tokens");
    const auto& tokens = f.at("tokenizer.ggml.tokens").as_string_array();
    const int64_t id = f.get_int(id_key);
    if (id < 0 || id >= static_cast<int64_t>(tokens.size()))
      fail(path.string(), ": ", id_key, " = ", id, " is outside the vocabulary");
    special[name] = tokens[id];
  }
  try {
    return ChatTemplate(std::move(source), std::move(special));
  } catch (const Error& e) {
    fail(path.string(), ": ", e.what());
  }
}

}  // namespace

std::optional<ChatTemplate> ChatTemplate::load(const fs::path& model_path) {
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) return load_dir(model_path);
  if (!fs::exists(model_path, ec)) fail(model_path.string(), ": no such file or directory");
  return load_gguf(model_path);
}

}  // namespace uniattn
