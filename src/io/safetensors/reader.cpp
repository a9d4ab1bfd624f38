// SafetensorsFile: maps a .safetensors file and validates every size and offset in its header
// before any span into the data buffer is handed out.
#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

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

// Where the JSON header and the data buffer lie in the file.
struct Layout {
  std::string_view header;
  std::uint64_t buffer_begin = 0, buffer_size = 0;
};

// Reads the 8-byte header length and checks that the header fits the file.
Layout locate_header(const MappedFile& file, const std::string& where) {
  const std::uint64_t size = file.size();
  UNIATTN_CHECK(size >= 8, where, ": file is ", size,
                " bytes, too short to hold the 8-byte safetensors header length");
  const std::uint64_t header_len = read_u64_le(file.data());
  UNIATTN_CHECK(header_len <= safetensors_detail::kMaxHeaderBytes, where, ": header length ",
                header_len, " exceeds the limit of ", safetensors_detail::kMaxHeaderBytes,
                " bytes (not a safetensors file?)");
  UNIATTN_CHECK(header_len <= size - 8, where, ": header length ", header_len,
                " is larger than the rest of the file (", size - 8,
                " bytes; truncated file or not a safetensors file?)");
  Layout l;
  l.header = std::string_view(reinterpret_cast<const char*>(file.data()) + 8, header_len);
  l.buffer_begin = 8 + header_len;
  l.buffer_size = size - l.buffer_begin;
  return l;
}

// The header as a JSON object with unique top-level keys.
json parse_header_object(std::string_view text, const std::string& where) {
  ParsedHeader parsed = parse_header(text);
  UNIATTN_CHECK(!parsed.too_deep, where, ": header JSON is nested deeper than ", kMaxJsonDepth,
                " levels");
  UNIATTN_CHECK(!parsed.root.is_discarded(), where, ": header is not valid JSON");
  UNIATTN_CHECK(parsed.root.is_object(), where, ": header is not a JSON object but ",
                parsed.root.type_name());
  UNIATTN_CHECK(parsed.duplicate_key.empty(), where, ": header names tensor '",
                parsed.duplicate_key, "' more than once");
  return std::move(parsed.root);
}

void read_metadata(const json& entry, const std::string& where,
                   std::map<std::string, std::string>& out) {
  UNIATTN_CHECK(entry.is_object(), where, ": __metadata__ is not a JSON object but ",
                entry.type_name());
  for (const auto& [key, value] : entry.items()) {
    UNIATTN_CHECK(value.is_string(), where, ": __metadata__ value for key '", key,
                  "' is not a string but ", value.type_name());
    out[key] = value.get<std::string>();
  }
}

DType read_dtype(const json& entry, const std::string& ctx) {
  auto dt = entry.find("dtype");
  UNIATTN_CHECK(dt != entry.end() && dt->is_string(), ctx, ": missing or non-string \"dtype\"");
  try {
    return parse_dtype(dt->get<std::string>());
  } catch (const Error& e) {
    fail(ctx, ": ", e.what());
  }
}

std::vector<std::int64_t> read_shape(const json& entry, const std::string& ctx) {
  auto sh = entry.find("shape");
  UNIATTN_CHECK(sh != entry.end() && sh->is_array(), ctx, ": missing or non-array \"shape\"");
  std::vector<std::int64_t> shape;
  for (const auto& d : *sh) {
    UNIATTN_CHECK(d.is_number_integer(), ctx, ": shape ", sh->dump(),
                  " has a dimension that is not an integer");
    UNIATTN_CHECK(d.is_number_unsigned(), ctx, ": shape ", sh->dump(), " has a negative dimension");
    const auto v = d.get<std::uint64_t>();
    UNIATTN_CHECK(v <= static_cast<std::uint64_t>(INT64_MAX), ctx, ": shape ", sh->dump(),
                  " has a dimension too large for int64");
    shape.push_back(static_cast<std::int64_t>(v));
  }
  return shape;
}

struct Placed {
  TensorView view;
  std::uint64_t begin = 0, end = 0;  // data_offsets, relative to the data buffer
};

// "data_offsets" of tensor `t` (dtype and shape already read): well formed, inside the buffer and
// exactly as long as dtype and shape demand.
void read_data_offsets(const json& entry, const std::string& ctx, const Layout& layout, Placed& p) {
  const TensorView& t = p.view;
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
  UNIATTN_CHECK(end <= layout.buffer_size, ctx, ": data_offsets [", begin, ", ", end,
                "] end beyond the data buffer of ", layout.buffer_size, " bytes (truncated file?)");
  UNIATTN_CHECK(end - begin == *nbytes, ctx, ": data_offsets [", begin, ", ", end, "] span ",
                end - begin, " bytes but dtype ", dtype_name(t.dtype), " with shape ",
                shape_str(t.shape), " needs ", *nbytes, " bytes");
  p.begin = begin;
  p.end = end;
}

// One tensor's header entry, validated, with its bytes in the mapping.
Placed read_tensor(const std::string& name, const json& entry, const std::string& where,
                   const MappedFile& file, const Layout& layout) {
  const std::string ctx = where + ": tensor '" + name + "'";
  UNIATTN_CHECK(entry.is_object(), ctx, ": header entry is not a JSON object but ",
                entry.type_name());
  Placed p;
  p.view.name = name;
  p.view.dtype = read_dtype(entry, ctx);
  p.view.shape = read_shape(entry, ctx);
  read_data_offsets(entry, ctx, layout, p);
  p.view.data = file.slice(layout.buffer_begin + p.begin, p.end - p.begin, "tensor '" + name + "'");
  return p;
}

// Orders the tensors by position in the buffer (then name, for empty tensors sharing an offset)
// and checks that they tile the data buffer as the safetensors format requires (the reference
// library's Metadata::validate and read_metadata): sorted by offsets, each tensor begins where
// the previous one ends, the first at 0, and the last ends at the end of the file. Bytes that
// belong to no tensor, between tensors or after the last, are refused like overlaps.
std::vector<TensorView> order_by_offset(std::vector<Placed> placed, std::uint64_t buffer_size,
                                        const std::string& where) {
  std::sort(placed.begin(), placed.end(), [](const Placed& a, const Placed& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.view.name < b.view.name;
  });
  const Placed* prev = nullptr;  // the tensor that ends at `covered`
  std::uint64_t covered = 0;     // bytes [0, covered) of the buffer belong to a tensor
  for (const auto& p : placed) {
    UNIATTN_CHECK(p.begin >= covered, where, ": tensor '", p.view.name, "' (bytes [", p.begin,
                  ", ", p.end, ")) overlaps tensor '", prev ? prev->view.name : "", "' (bytes [",
                  prev ? prev->begin : 0, ", ", covered, "))");
    UNIATTN_CHECK(p.begin == covered, where, ": bytes [", covered, ", ", p.begin,
                  ") of the data buffer belong to no tensor (a gap before tensor '", p.view.name,
                  "'); safetensors stores tensors back to back");
    covered = p.end;
    prev = &p;
  }
  UNIATTN_CHECK(covered == buffer_size, where, ": bytes [", covered, ", ", buffer_size,
                ") of the data buffer belong to no tensor (after ",
                prev ? "tensor '" + prev->view.name + "'" : std::string("the header"),
                "); safetensors stores tensors back to back up to the end of the file");
  std::vector<TensorView> ordered;
  ordered.reserve(placed.size());
  for (auto& p : placed) ordered.push_back(std::move(p.view));
  return ordered;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile f;
  f.path_ = path;
  std::shared_ptr<const MappedFile> file = MappedFile::open(path);
  f.file_ = file;
  const std::string where = path.string();
  const Layout layout = locate_header(*file, where);
  const json root = parse_header_object(layout.header, where);
  std::vector<Placed> placed;
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__")
      read_metadata(entry, where, f.metadata_);
    else
      placed.push_back(read_tensor(name, entry, where, *file, layout));
  }
  f.tensors_ = order_by_offset(std::move(placed), layout.buffer_size, where);
  for (std::size_t i = 0; i < f.tensors_.size(); ++i) f.by_name_[f.tensors_[i].name] = i;
  return f;
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace uniattn
