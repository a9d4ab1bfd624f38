// Python str semantics on UTF-8 text: indexing by code point, Unicode whitespace (str.isspace),
// strip/split/splitlines, and case mapping. Case mapping covers ASCII and the scripts without
// case (CJK, Hangul, Indic, Arabic, symbols, emoji); any other non-ASCII character fails rather
// than being left unchanged where Python would change it.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace uniattn::jinja {

bool valid_utf8(std::string_view s);
std::vector<uint32_t> decode_utf8(std::string_view s);  // s must be valid
void append_utf8(std::string& out, uint32_t cp);
std::string encode_utf8(const std::vector<uint32_t>& cps);
size_t count_code_points(std::string_view s);

// Python str.isspace() for one code point (also what `\s` matches in Python's re).
bool is_py_space(uint32_t cp);

// str.strip/lstrip/rstrip: `chars` empty optional = whitespace, else the set of its code points.
std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                     bool right);
// str.split(sep=None, maxsplit=-1). Fails on an empty separator, as Python does.
std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep,
                                  int64_t maxsplit);
// str.splitlines() (without keepends).
std::vector<std::string> py_splitlines(std::string_view s);
// str.replace(old, new, count); count < 0 = all.
std::string py_replace(std::string_view s, std::string_view from, std::string_view to,
                       int64_t count);

std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_title(std::string_view s);       // str.title()
std::string py_capitalize(std::string_view s);  // str.capitalize()
std::string jinja_title(std::string_view s);    // jinja2's |title filter

// Python slice s[start:stop:step] over code points (nullopt = omitted). Fails on step 0.
std::string py_slice(std::string_view s, std::optional<int64_t> start, std::optional<int64_t> stop,
                     std::optional<int64_t> step);
// The (start, step, count) of indices a slice selects from a sequence of length n, as
// Python's slice.indices does.
struct SliceRange {
  int64_t start = 0, step = 1, count = 0;
};
SliceRange slice_range(int64_t n, std::optional<int64_t> start, std::optional<int64_t> stop,
                       std::optional<int64_t> step);

}  // namespace uniattn::jinja
