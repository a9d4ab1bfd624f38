// GGUF metadata of every value type, alignment and version handling, against what gguf-py's
// reader read from the same files (tests/fixtures/make_gguf_fixtures.py).
#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/io/gguf.h"

using namespace uniattn;
namespace fs = std::filesystem;

namespace {

fs::path gguf_dir() { return test::data_dir() / "gguf"; }

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  EXPECT_TRUE(in) << "cannot open " << p;
  return nlohmann::json::parse(in);
}

// Checks one value against gguf-py's {"type", "elem", "count", "value"}.
void expect_value(const GgufValue& v, const nlohmann::json& m) {
  const std::string type = m["type"], elem = m["elem"];
  EXPECT_STREQ(gguf_value_type_name(v.type()), type.c_str());
  EXPECT_STREQ(gguf_value_type_name(v.element_type()), elem.c_str());
  EXPECT_EQ(v.size(), m["count"].get<std::size_t>());
  const auto& val = m["value"];
  if (type == "ARRAY") {
    if (elem == "STRING") {
      EXPECT_EQ(v.as_string_array(), val.get<std::vector<std::string>>());
    } else if (elem == "FLOAT32" || elem == "FLOAT64") {
      EXPECT_EQ(v.as_float_array(), val.get<std::vector<double>>());
    } else if (elem == "BOOL") {
      std::vector<int64_t> want;
      for (auto& b : val) want.push_back(b.get<bool>() ? 1 : 0);
      EXPECT_EQ(v.as_int_array(), want);
    } else {
      EXPECT_EQ(v.as_int_array(), val.get<std::vector<int64_t>>());
    }
    return;
  }
  if (type == "STRING") {
    EXPECT_EQ(v.as_string(), val.get<std::string>());
  } else if (type == "BOOL") {
    EXPECT_EQ(v.as_bool(), val.get<bool>());
  } else if (type == "FLOAT32" || type == "FLOAT64") {
    // gguf-py widened the stored float32 to double exactly, as we do.
    EXPECT_EQ(v.as_float(), val.get<double>());
  } else if (val.is_number_unsigned() && val.get<uint64_t>() > uint64_t{INT64_MAX}) {
    EXPECT_THROW(v.as_int(), Error);
    EXPECT_EQ(v.as_float(), static_cast<double>(val.get<uint64_t>()));
  } else {
    EXPECT_EQ(v.as_int(), val.get<int64_t>());
  }
}

}  // namespace

TEST(GgufMetadata, EveryValueTypeMatchesGgufPy) {
  auto f = GgufFile::open(gguf_dir() / "metadata.gguf");
  auto m = read_json(gguf_dir() / "metadata.json");
  EXPECT_EQ(f.version(), m["version"].get<uint32_t>());
  const auto& keys = m["keys"];
  EXPECT_EQ(f.metadata().size(), keys.size());
  std::set<std::string> types;
  for (auto& [key, want] : keys.items()) {
    SCOPED_TRACE(key);
    ASSERT_TRUE(f.has(key));
    expect_value(f.at(key), want);
    types.insert(want["elem"].get<std::string>());
  }
  // The fixture must exercise all twelve element types (ARRAY is the container).
  EXPECT_EQ(types.size(), 12u);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.dequantize(f.tensors()[0]), (std::vector<float>{0, 1, 2, 3}));
}

TEST(GgufMetadata, TypedGettersAndErrorsNameTheKey) {
  auto f = GgufFile::open(gguf_dir() / "metadata.gguf");
  auto m = read_json(gguf_dir() / "metadata.json")["keys"];
  EXPECT_EQ(f.get_string("m.str"), m["m.str"]["value"].get<std::string>());
  EXPECT_EQ(f.get_int("m.u32"), m["m.u32"]["value"].get<int64_t>());
  EXPECT_EQ(f.get_float("m.f64"), m["m.f64"]["value"].get<double>());
  EXPECT_EQ(f.get_float("m.i16"), m["m.i16"]["value"].get<double>());  // ints read as floats
  EXPECT_EQ(f.get_int("absent", 7), 7);
  EXPECT_EQ(f.get_string("absent", "dflt"), "dflt");
  EXPECT_EQ(f.get_float("absent", 0.5), 0.5);
  EXPECT_TRUE(f.get_bool("absent", true));

  auto expect_msg = [](auto&& fn, const std::string& sub) {
    try {
      fn();
      ADD_FAILURE() << "expected an error containing '" << sub << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(sub), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { f.at("absent.key"); }, "missing metadata key 'absent.key'");
  expect_msg([&] { f.get_int("m.str"); }, "'m.str' is STRING, not an integer");
  expect_msg([&] { f.get_string("m.u8"); }, "'m.u8' is UINT8, not a string");
  // A type mismatch is an error even with a default.
  expect_msg([&] { f.get_int("m.str", 1); }, "'m.str'");
  expect_msg([&] { f.at("m.arr_i32").as_string_array(); }, "ARRAY[INT32] of 4");
  expect_msg([&] { f.get_int("m.u64_huge"); }, "does not fit in int64");
}

TEST(GgufMetadata, CustomAlignmentPlacesTheDataSection) {
  auto f = GgufFile::open(gguf_dir() / "aligned64.gguf");
  auto m = read_json(gguf_dir() / "aligned64.json");
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.get_int("general.alignment"), 64);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  for (auto& [name, want] : m.items()) {
    SCOPED_TRACE(name);
    const auto& t = f.tensor(name);
    EXPECT_EQ(t.offset % 64, 0u);
    auto got = f.dequantize(t);
    auto w = want.get<std::vector<double>>();
    ASSERT_EQ(got.size(), w.size());
    for (std::size_t i = 0; i < w.size(); ++i) EXPECT_EQ(got[i], static_cast<float>(w[i]));
  }
}

TEST(GgufMetadata, Version2ReadsLikeVersion3) {
  // Versions 2 and 3 share the little-endian layout; patch the version field of a copy.
  auto src = gguf_dir() / "metadata.gguf";
  auto dst = test::scratch_dir() / "v2.gguf";
  fs::copy_file(src, dst);
  {
    std::fstream io(dst, std::ios::in | std::ios::out | std::ios::binary);
    const uint32_t v2 = 2;
    io.seekp(4);
    io.write(reinterpret_cast<const char*>(&v2), 4);
  }
  auto f = GgufFile::open(dst);
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.get_string("m.str"), GgufFile::open(src).get_string("m.str"));
}
