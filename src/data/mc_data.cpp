// Loading and validating the multiple-choice JSONL of uniattn-eval.
#include "uniattn/data/mc_data.h"

#include <nlohmann/json.hpp>

#include "uniattn/io/jsonl.h"

#include <string_view>

#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn {
namespace {

const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  UNIATTN_CHECK(it != j.end() && !it->is_null(), where, ": missing field \"", key, "\"");
  return *it;
}

std::string text_field(const nlohmann::json& v, const std::string& what, const std::string& where) {
  UNIATTN_CHECK(v.is_string(), where, ": ", what, " must be a string, got ", v.type_name());
  auto s = v.get<std::string>();
  UNIATTN_CHECK(!s.empty(), where, ": ", what, " is empty");
  UNIATTN_CHECK(s.size() <= kMaxMcTextBytes, where, ": ", what, " is ", s.size(), " bytes (limit ",
                kMaxMcTextBytes, ")");
  return s;
}

McQuestion parse_question(const nlohmann::json& j, const std::string& where) {
  UNIATTN_CHECK(j.is_object(), where, ": expected a JSON object, got ", j.type_name());
  McQuestion q;
  const auto& id = field(j, "id", where);
  if (id.is_string())
    q.id = id.get<std::string>();
  else if (id.is_number_integer())
    q.id = id.dump();
  else
    fail(where, ": \"id\" must be a string or an integer, got ", id.type_name());
  q.question = text_field(field(j, "question", where), "\"question\"", where);

  const auto& ch = field(j, "choices", where);
  UNIATTN_CHECK(ch.is_array(), where, ": \"choices\" must be an array of strings, got ",
                ch.type_name());
  UNIATTN_CHECK(ch.size() >= 2, where, ": \"choices\" holds ", ch.size(),
                " entries; a question needs at least 2");
  UNIATTN_CHECK(ch.size() <= kMaxMcChoices, where, ": \"choices\" holds ", ch.size(),
                " entries (limit ", kMaxMcChoices, ")");
  for (std::size_t i = 0; i < ch.size(); ++i)
    q.choices.push_back(text_field(ch[i], "choice " + std::to_string(i), where));

  const auto& a = field(j, "answer", where);
  UNIATTN_CHECK(a.is_number_integer(), where, ": \"answer\" must be an integer index, got ",
                a.type_name(), " ", a.dump());
  // Compared as signed 64-bit so huge unsigned values do not wrap into range.
  const bool neg = a.is_number_unsigned() ? false : a.get<int64_t>() < 0;
  const bool big = a.is_number_unsigned() ? a.get<uint64_t>() >= ch.size()
                                          : a.get<int64_t>() >= static_cast<int64_t>(ch.size());
  UNIATTN_CHECK(!neg && !big, where, ": \"answer\" ", a.dump(), " is out of range [0, ", ch.size(),
                ")");
  q.answer = a.get<int64_t>();
  return q;
}

struct TaskInfo {
  std::string name, split, group;
};

std::vector<TaskInfo> known_tasks() {
  std::vector<TaskInfo> t = {{"arc_easy", "test", ""},
                             {"arc_challenge", "test", ""},
                             {"medmcqa", "validation", ""},
                             {"medqa", "test", ""},
                             {"arc_easy_5shot", "test", ""},
                             {"arc_challenge_5shot", "test", ""},
                             {"medmcqa_5shot", "validation", ""},
                             {"medqa_5shot", "test", ""}};
  for (const auto& s : mmlu_medical_subjects()) t.push_back({"mmlu_" + s, "test", ""});
  return t;
}

}  // namespace

const std::vector<std::string>& mmlu_medical_subjects() {
  static const std::vector<std::string> s = {"anatomy",          "clinical_knowledge",
                                             "college_biology",  "college_medicine",
                                             "medical_genetics", "professional_medicine"};
  return s;
}

std::vector<McQuestion> load_mc_jsonl(const std::filesystem::path& path, int64_t limit) {
  UNIATTN_CHECK(std::filesystem::is_regular_file(path), path.string(),
                ": multiple-choice file does not exist or is not a file");
  const std::string text = read_text_file(path, std::size_t{4} << 30);
  std::vector<McQuestion> out;
  for_each_jsonl(text, path, [&](const nlohmann::json& j, const std::string& where) {
    out.push_back(parse_question(j, where));
    return limit <= 0 || static_cast<int64_t>(out.size()) < limit;
  });
  UNIATTN_CHECK(!out.empty(), path.string(), ": no questions");
  return out;
}

std::vector<McTaskFile> resolve_mc_tasks(const std::vector<std::string>& names,
                                         const std::filesystem::path& data_dir) {
  const auto known = known_tasks();
  auto file_for = [&](const std::string& task, const std::string& split) {
    const auto f = data_dir / (task + "_" + split + ".jsonl");
    UNIATTN_CHECK(std::filesystem::is_regular_file(f), "task ", task, ": ", f.string(),
                  " does not exist (run scripts/prepare_eval_data.py --out ", data_dir.string(),
                  ")");
    return f;
  };
  std::vector<McTaskFile> out;
  for (const auto& full : names) {
    UNIATTN_CHECK(!full.empty(), "empty task name");
    const auto colon = full.find(':');
    const std::string name = full.substr(0, colon);
    const std::string split = colon == std::string::npos ? "" : full.substr(colon + 1);
    UNIATTN_CHECK(colon == std::string::npos || !split.empty(), "task ", full, ": empty split");
    if (name == "mmlu_medical") {
      for (const auto& s : mmlu_medical_subjects()) {
        const auto task = "mmlu_" + s;
        out.push_back({task, file_for(task, split.empty() ? "test" : split), "mmlu_medical"});
      }
      continue;
    }
    bool found = false;
    for (const auto& k : known) {
      if (k.name != name) continue;
      const auto sp = split.empty() ? k.split : split;
      out.push_back({split.empty() ? name : full, file_for(name, sp), k.group});
      found = true;
    }
    if (found) continue;
    const auto stem = data_dir / (full + ".jsonl");
    if (colon == std::string::npos && std::filesystem::is_regular_file(stem)) {
      out.push_back({full, stem, ""});
      continue;
    }
    std::string list = "mmlu_medical";
    for (const auto& k : known) list += ", " + k.name;
    fail("unknown task '", full, "' (known: ", list, "; or a file stem in ", data_dir.string(),
         ")");
  }
  return out;
}

}  // namespace uniattn
