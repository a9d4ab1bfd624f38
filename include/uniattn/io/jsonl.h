// JSON Lines: one JSON value per line, blank lines skipped.
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace uniattn {

// Calls `on_value(value, where)` for each non-blank line of `text` (read from `path`), where
// `where` is "<path>: line N" for error messages. Stops early when `on_value` returns false.
// A line that is not valid JSON throws uniattn::Error naming the file and line.
void for_each_jsonl(const std::string& text, const std::filesystem::path& path,
                    const std::function<bool(const nlohmann::json&, const std::string&)>& on_value);

}  // namespace uniattn
