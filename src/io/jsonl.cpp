#include "uniattn/io/jsonl.h"

#include "uniattn/error.h"
#include "uniattn/io/json_depth.h"

namespace uniattn {

void for_each_jsonl(
    const std::string& text, const std::filesystem::path& path,
    const std::function<bool(const nlohmann::json&, const std::string&)>& on_value) {
  std::size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    auto nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    ++line_no;
    const std::string_view line(text.data() + pos, nl - pos);
    pos = nl + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = path.string() + ": line " + std::to_string(line_no);
    nlohmann::json j;
    check_json_depth(line, where);
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail(where, ": not valid JSON (expected one object per line): ", e.what());
    }
    if (!on_value(j, where)) return;
  }
}

}  // namespace uniattn
