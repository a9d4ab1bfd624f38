// SafetensorsFile: maps a .safetensors file and validates every size and offset in its header
// before any span into the data buffer is handed out.
#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "detail.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/safetensors.h"

namespace uniattn {
namespace {

using nlohmann::json;
using safetensors_detail::shape_str;
using safetensors_detail::tensor_nbytes;

// A valid header nests three levels (root object, tensor entry, shape array); anything much
// deeper is corrupt, and bounding it keeps a hostile header from exhausting memory or stack.
constexpr int kMaxJsonDepth = 8;

struct ParsedHeader {
  json root;
  bool too_deep = false;
  std::string duplicate_key;
};

// Parses the header without exceptions, recording nesting depth overflows and duplicate top-level
// keys (which nlohmann::json would otherwise silently collapse to the last value).
ParsedHeader parse_header(std::string_view text) {
  ParsedHeader h;
  std::set<std::string, std::less<>> top_keys;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > kMaxJsonDepth) {
      h.too_deep = true;
      return false;
    }
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!top_keys.insert(key).second && h.duplicate_key.empty()) h.duplicate_key = key;
    }
    return true;
  };
  h.root = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  return h;
}

std::uint64_t read_u64_le(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

struct Placed {
  std::size_t index;
  std::uint64_t begin, end;
};

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile f;
  f.path_ = path;
  std::shared_ptr<const MappedFile> file = MappedFile::open(path);
  f.file_ = file;
  const std::string where = path.string();
  const std::uint64_t size = file->size();
  UNIATTN_CHECK(size >= 8, where, ": file is ", size,
                " bytes, too short to hold the 8-byte safetensors header length");
  const std::uint64_t header_len = read_u64_le(file->data());
  UNIATTN_CHECK(header_len <= safetensors_detail::kMaxHeaderBytes, where, ": header length ",
                header_len, " exceeds the limit of ", safetensors_detail::kMaxHeaderBytes,
                " bytes (not a safetensors file?)");
  UNIATTN_CHECK(header_len <= size - 8, where, ": header length ", header_len,
                " is larger than the rest of the file (", size - 8,
                " bytes; truncated file or not a safetensors file?)");
  const std::string_view text(reinterpret_cast<const char*>(file->data()) + 8, header_len);
  const std::uint64_t buffer_begin = 8 + header_len;
  const std::uint64_t buffer_size = size - buffer_begin;

  ParsedHeader parsed = parse_header(text);
  UNIATTN_CHECK(!parsed.too_deep, where, ": header JSON is nested deeper than ", kMaxJsonDepth,
                " levels");
  UNIATTN_CHECK(!parsed.root.is_discarded(), where, ": header is not valid JSON");
  UNIATTN_CHECK(parsed.root.is_object(), where, ": header is not a JSON object but ",
                parsed.root.type_name());
  UNIATTN_CHECK(parsed.duplicate_key.empty(), where, ": header names tensor '",
                parsed.duplicate_key, "' more than once");

  std::vector<Placed> placed;
  for (const auto& [name, entry] : parsed.root.items()) {
    if (name == "__metadata__") {
      UNIATTN_CHECK(entry.is_object(), where, ": __metadata__ is not a JSON object but ",
                    entry.type_name());
      for (const auto& [key, value] : entry.items()) {
        UNIATTN_CHECK(value.is_string(), where, ": __metadata__ value for key '", key,
                      "' is not a string but ", value.type_name());
        f.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string ctx = where + ": tensor '" + name + "'";
    UNIATTN_CHECK(entry.is_object(), ctx, ": header entry is not a JSON object but ",
                  entry.type_name());
    TensorView t;
    t.name = name;

    auto dt = entry.find("dtype");
    UNIATTN_CHECK(dt != entry.end() && dt->is_string(), ctx, ": missing or non-string \"dtype\"");
    try {
      t.dtype = parse_dtype(dt->get<std::string>());
    } catch (const Error& e) {
      fail(ctx, ": ", e.what());
    }

    auto sh = entry.find("shape");
    UNIATTN_CHECK(sh != entry.end() && sh->is_array(), ctx, ": missing or non-array \"shape\"");
    for (const auto& d : *sh) {
      UNIATTN_CHECK(d.is_number_integer(), ctx, ": shape ", sh->dump(),
                    " has a dimension that is not an integer");
      UNIATTN_CHECK(d.is_number_unsigned(), ctx, ": shape ", sh->dump(),
                    " has a negative dimension");
      const auto v = d.get<std::uint64_t>();
      UNIATTN_CHECK(v <= static_cast<std::uint64_t>(INT64_MAX), ctx, ": shape ", sh->dump(),
                    " has a dimension too large for int64");
      t.shape.push_back(static_cast<std::int64_t>(v));
    }
    const auto nbytes = tensor_nbytes(t.dtype, t.shape);
    UNIATTN_CHECK(nbytes.has_value(), ctx, ": shape ", shape_str(t.shape), " of dtype ",
                  dtype_name(t.dtype), " overflows the element count or byte size");

    auto off = entry.find("data_offsets");
    UNIATTN_CHECK(off != entry.end() && off->is_array() && off->size() == 2 &&
                      (*off)[0].is_number_unsigned() && (*off)[1].is_number_unsigned(),
                  ctx, ": \"data_offsets\" must be two non-negative integers [begin, end], got ",
                  off == entry.end() ? std::string("nothing") : off->dump());
    const auto begin = (*off)[0].get<std::uint64_t>();
    const auto end = (*off)[1].get<std::uint64_t>();
    UNIATTN_CHECK(begin <= end, ctx, ": data_offsets [", begin, ", ", end,
                  "] are decreasing (begin must not exceed end)");
    UNIATTN_CHECK(end <= buffer_size, ctx, ": data_offsets [", begin, ", ", end,
                  "] end beyond the data buffer of ", buffer_size, " bytes (truncated file?)");
    UNIATTN_CHECK(end - begin == *nbytes, ctx, ": data_offsets [", begin, ", ", end, "] span ",
                  end - begin, " bytes but dtype ", dtype_name(t.dtype), " with shape ",
                  shape_str(t.shape), " needs ", *nbytes, " bytes");
    t.data = file->slice(buffer_begin + begin, end - begin, "tensor '" + name + "'");
    placed.push_back({f.tensors_.size(), begin, end});
    f.tensors_.push_back(std::move(t));
  }

  // Order by position in the buffer (then name, for empty tensors sharing an offset), and
  // reject any two non-empty tensors sharing bytes.
  std::sort(placed.begin(), placed.end(), [&](const Placed& a, const Placed& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return f.tensors_[a.index].name < f.tensors_[b.index].name;
  });
  const Placed* prev = nullptr;  // last non-empty tensor
  for (const auto& p : placed) {
    if (p.begin == p.end) continue;
    if (prev) {
      UNIATTN_CHECK(p.begin >= prev->end, where, ": tensor '", f.tensors_[p.index].name,
                    "' (bytes [", p.begin, ", ", p.end, ")) overlaps tensor '",
                    f.tensors_[prev->index].name, "' (bytes [", prev->begin, ", ", prev->end, "))");
    }
    if (!prev || p.end > prev->end) prev = &p;
  }
  std::vector<TensorView> ordered;
  ordered.reserve(placed.size());
  for (const auto& p : placed) ordered.push_back(std::move(f.tensors_[p.index]));
  f.tensors_ = std::move(ordered);
  for (std::size_t i = 0; i < f.tensors_.size(); ++i) f.by_name_[f.tensors_[i].name] = i;
  return f;
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace uniattn
