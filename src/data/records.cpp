#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "tokenized.h"
#include "uniattn/data/records.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/json_depth.h"
#include "uniattn/io/jsonl.h"

namespace uniattn {
namespace {

// Splits a template into literal text and placeholder names (marked by a leading '\0').
std::vector<std::string> split_template(const std::string& t, const std::string& what) {
  std::vector<std::string> parts;
  std::string lit;
  for (std::size_t i = 0; i < t.size(); ++i) {
    const char c = t[i];
    if (c == '{' && i + 1 < t.size() && t[i + 1] == '{') {
      lit += '{';
      ++i;
    } else if (c == '}' && i + 1 < t.size() && t[i + 1] == '}') {
      lit += '}';
      ++i;
    } else if (c == '{') {
      const auto end = t.find('}', i + 1);
      UNIATTN_CHECK(end != std::string::npos, what, ": unclosed '{' at offset ", i);
      std::string name = t.substr(i + 1, end - i - 1);
      UNIATTN_CHECK(!name.empty() && name.find('{') == std::string::npos, what,
                    ": empty or malformed placeholder at offset ", i);
      if (!lit.empty()) parts.push_back(std::move(lit));
      lit.clear();
      parts.push_back(std::string(1, '\0') + name);
      i = end;
    } else {
      UNIATTN_CHECK(c != '}', what, ": unmatched '}' at offset ", i, " (write '}}' for a brace)");
      lit += c;
    }
  }
  if (!lit.empty()) parts.push_back(std::move(lit));
  return parts;
}

std::string field_of(const Record& r, const std::string& name, const std::string& tmpl) {
  auto it = r.find(name);
  UNIATTN_CHECK(it != r.end(), "record lacks field '", name, "' needed by template '", tmpl, "'");
  return it->second;
}

std::string render(const std::string& t, const Record& r, const std::string& tmpl) {
  std::string out;
  for (const auto& p : split_template(t, "template '" + tmpl + "'")) {
    if (!p.empty() && p[0] == '\0')
      out += field_of(r, p.substr(1), tmpl);
    else
      out += p;
  }
  return out;
}

// A record from one JSON value; `where` names the file and index for errors.
Record to_record(const nlohmann::json& j, const std::string& where) {
  UNIATTN_CHECK(j.is_object(), where, ": expected a JSON object, got ", j.type_name());
  Record r;
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.value().is_string()) r[it.key()] = it.value().get<std::string>();
  return r;
}

void check_record(const nlohmann::json& j, const Record& r, const PromptTemplate& t,
                  const std::string& where) {
  auto check = [&](const std::string& f, bool optional) {
    auto it = j.find(f);
    if (it == j.end() || it->is_null()) {
      UNIATTN_CHECK(optional, where, ": missing field '", f, "' (template '", t.name, "')");
      return;
    }
    UNIATTN_CHECK(it->is_string(), where, ": field '", f, "' must be a string, got ",
                  it->type_name());
  };
  for (const auto& f : t.required_fields()) check(f, false);
  if (!t.optional_field.empty()) check(t.optional_field, true);
  (void)r;
}

}  // namespace

std::vector<std::string> PromptTemplate::required_fields() const {
  std::set<std::string> names;
  for (const auto* s : {&prompt, &prompt_without})
    for (const auto& p : split_template(*s, "template '" + name + "'"))
      if (!p.empty() && p[0] == '\0' && p.substr(1) != optional_field) names.insert(p.substr(1));
  names.insert(response_field);
  return {names.begin(), names.end()};
}

std::string PromptTemplate::render_prompt(const Record& r) const {
  bool use_without = false;
  if (!optional_field.empty() && !prompt_without.empty()) {
    auto it = r.find(optional_field);
    use_without = it == r.end() || it->second.empty();
  }
  return render(use_without ? prompt_without : prompt, r, name);
}

PromptTemplate PromptTemplate::alpaca() {
  PromptTemplate t;
  t.name = "alpaca";
  t.prompt =
      "Below is an instruction that describes a task, paired with an input that provides further "
      "context. Write a response that appropriately completes the request.\n\n"
      "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
  t.prompt_without =
      "Below is an instruction that describes a task. Write a response that appropriately "
      "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";
  t.optional_field = "input";
  return t;
}

PromptTemplate PromptTemplate::tulu() {
  PromptTemplate t;
  t.name = "tulu";
  t.prompt = "### Input:\n{input}\n\n### Response:";
  return t;
}

PromptTemplate PromptTemplate::custom(std::string prompt, std::string response_field) {
  PromptTemplate t;
  t.name = "custom";
  split_template(prompt, "custom template");  // validates
  UNIATTN_CHECK(!response_field.empty(), "custom template: empty response field name");
  t.prompt = std::move(prompt);
  t.response_field = std::move(response_field);
  return t;
}

PromptTemplate PromptTemplate::by_name(const std::string& name) {
  if (name == "alpaca") return alpaca();
  if (name == "tulu") return tulu();
  fail("unknown prompt template '", name, "' (expected alpaca or tulu)");
}

std::vector<Record> load_records(const std::filesystem::path& path, const PromptTemplate* tmpl) {
  UNIATTN_CHECK(std::filesystem::is_regular_file(path), path.string(),
                ": data file does not exist or is not a file");
  const std::string text = read_text_file(path, std::size_t{4} << 30);
  const auto first = text.find_first_not_of(" \t\r\n");
  UNIATTN_CHECK(first != std::string::npos, path.string(), ": data file is empty");
  std::vector<Record> out;
  auto add = [&](const nlohmann::json& j, const std::string& where) {
    Record r = to_record(j, where);
    if (tmpl) check_record(j, r, *tmpl, where);
    out.push_back(std::move(r));
  };
  if (text[first] == '[') {
    nlohmann::json j;
    try {
      check_json_depth(text, path.string());
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail(path.string(), ": not valid JSON: ", e.what());
    }
    UNIATTN_CHECK(j.is_array(), path.string(), ": expected a JSON array of records");
    UNIATTN_CHECK(!j.empty(), path.string(), ": the array holds no records");
    for (std::size_t i = 0; i < j.size(); ++i)
      add(j[i], path.string() + ": record " + std::to_string(i));
    return out;
  }
  UNIATTN_CHECK(text[first] == '{', path.string(),
                ": not a JSON array of records or JSON Lines (first character '", text[first],
                "')");
  for_each_jsonl(text, path, [&](const nlohmann::json& j, const std::string& where) {
    add(j, where);
    return true;
  });
  UNIATTN_CHECK(!out.empty(), path.string(), ": no records");
  return out;
}

int64_t TokenizedExample::target_tokens() const {
  return std::count(loss_mask.begin(), loss_mask.end(), uint8_t{1});
}

TokenizedExample tokenize_example(const Record& r, const PromptTemplate& tmpl,
                                  const TextEncoder& enc, int64_t max_len) {
  UNIATTN_CHECK(enc.encode, "tokenize: no encoder");
  UNIATTN_CHECK(enc.eos.has_value(), "tokenize: the tokenizer has no end-of-sequence token");
  UNIATTN_CHECK(max_len >= 2, "tokenize: max_len must be >= 2, got ", max_len);
  TokenizedExample ex;
  if (enc.bos) ex.ids.push_back(*enc.bos);
  const auto prompt = enc.encode(tmpl.render_prompt(r));
  ex.ids.insert(ex.ids.end(), prompt.begin(), prompt.end());
  ex.prompt_tokens = static_cast<int64_t>(ex.ids.size());
  const auto resp = enc.encode(field_of(r, tmpl.response_field, tmpl.name));
  ex.ids.insert(ex.ids.end(), resp.begin(), resp.end());
  ex.ids.push_back(*enc.eos);
  ex.loss_mask.assign(ex.ids.size(), 0);
  std::fill(ex.loss_mask.begin() + ex.prompt_tokens, ex.loss_mask.end(), uint8_t{1});
  truncate_example(ex, max_len);
  return ex;
}

std::vector<TokenizedExample> tokenize_records(const std::vector<Record>& records,
                                               const PromptTemplate& tmpl, const TextEncoder& enc,
                                               int64_t max_len, TokenizeStats* stats) {
  TokenizeStats st;
  std::vector<TokenizedExample> out;
  for (const auto& r : records) {
    ++st.records;
    auto ex = tokenize_example(r, tmpl, enc, max_len);
    keep_if_targeted(out, std::move(ex), st);
  }
  if (stats) *stats = st;
  return out;
}

}  // namespace uniattn
