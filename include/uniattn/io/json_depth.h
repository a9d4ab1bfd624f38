// A nesting bound for JSON read from outside. nlohmann::json parses and destroys deep values
// without recursion, but dump(), copies, comparisons and our own walkers over nested components
// (tokenizer.json Sequences) recurse once per level, so a few megabytes of '[' overflow the stack.
#pragma once
#include <string>
#include <string_view>

namespace uniattn {

// Deeper than any config, tokenizer or data file in use (tokenizer.json: about 6 levels).
inline constexpr int kMaxJsonDepth = 128;

// Scans `text` (before parsing it) and throws uniattn::Error "<origin>: JSON nested deeper than
// <max_depth> levels (at byte N)" when arrays and objects nest deeper than `max_depth`. Brackets
// inside strings do not count; the text need not be valid JSON (the parser judges that).
void check_json_depth(std::string_view text, const std::string& origin,
                      int max_depth = kMaxJsonDepth);

}  // namespace uniattn
