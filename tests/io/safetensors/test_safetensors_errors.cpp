// Malformed safetensors files and indexes, built here byte by byte: each must fail with a
// uniattn::Error whose message names the file (and tensor) and says what is wrong.
#include <cstring>
#include <fstream>
#include <random>

#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/safetensors.h"

using namespace uniattn;
namespace fs = std::filesystem;

namespace {

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string u64le(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A file with the given header text and `buffer_bytes` zero bytes of data.
fs::path st_file(const fs::path& dir, const std::string& header, std::size_t buffer_bytes = 0,
                 const std::string& name = "bad.safetensors") {
  write_bytes(dir / name, u64le(header.size()) + header + std::string(buffer_bytes, '\0'));
  return dir / name;
}

// Expects SafetensorsFile::open(p) to throw an Error containing each of `parts`.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const auto& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << part << "\"";
  }
}

void expect_open_error(const fs::path& p, std::initializer_list<std::string> parts) {
  SCOPED_TRACE(p.string());
  expect_error([&] { SafetensorsFile::open(p); }, parts);
  // The checkpoint reader reports the same problem.
  expect_error([&] { SafetensorsCheckpoint::open(p); }, parts);
}

std::string tensor(const std::string& name, const std::string& dtype, const std::string& shape,
                   const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

}  // namespace

TEST(SafetensorsErrors, ValidMinimalFileOpens) {
  // The builders below produce valid files when given valid input, so each error test varies
  // exactly one thing.
  auto dir = test::scratch_dir();
  auto p = st_file(dir, "{" + tensor("w", "F32", "[2,2]", "[0,16]") + "}", 16);
  const auto f = SafetensorsFile::open(p);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].shape, (std::vector<std::int64_t>{2, 2}));
}

TEST(SafetensorsErrors, FileTooShortOrMissing) {
  auto dir = test::scratch_dir();
  write_bytes(dir / "empty.safetensors", "");
  expect_open_error(dir / "empty.safetensors", {"empty.safetensors", "too short"});
  write_bytes(dir / "five.safetensors", std::string("\x02\0\0\0\0", 5));
  expect_open_error(dir / "five.safetensors", {"five.safetensors", "is 5 bytes, too short"});
  expect_error([&] { SafetensorsFile::open(dir / "missing.safetensors"); },
               {"missing.safetensors", "cannot open"});
}

TEST(SafetensorsErrors, HeaderLength) {
  auto dir = test::scratch_dir();
  write_bytes(dir / "a.safetensors", u64le(100) + "{}");
  expect_open_error(dir / "a.safetensors", {"a.safetensors", "header length 100 is larger"});
  write_bytes(dir / "b.safetensors", u64le(200'000'000) + "{}");
  expect_open_error(dir / "b.safetensors", {"header length 200000000 exceeds the limit"});
  write_bytes(dir / "c.safetensors", u64le(~0ull) + "{}");
  expect_open_error(dir / "c.safetensors", {"exceeds the limit"});
}

TEST(SafetensorsErrors, HeaderNotJsonObject) {
  auto dir = test::scratch_dir();
  expect_open_error(st_file(dir, "{\"w\": {"), {"bad.safetensors", "header is not valid JSON"});
  expect_open_error(st_file(dir, "{\"w\": \"\xff\xfe\"}"), {"not valid JSON"});  // not UTF-8
  expect_open_error(st_file(dir, ""), {"not valid JSON"});
  expect_open_error(st_file(dir, "[1, 2]"), {"header is not a JSON object but array"});
  expect_open_error(st_file(dir, std::string(100000, '[') + std::string(100000, ']')),
                    {"nested deeper than"});
  expect_open_error(st_file(dir, "{\"w\": 5}"),
                    {"tensor 'w'", "header entry is not a JSON object"});
  const std::string t = tensor("w", "F32", "[1]", "[0,4]");
  expect_open_error(st_file(dir, "{" + t + "," + t + "}", 4), {"tensor 'w' more than once"});
}

TEST(SafetensorsErrors, Dtype) {
  auto dir = test::scratch_dir();
  expect_open_error(
      st_file(dir, "{" + tensor("layer.w", "F8_E4M3", "[4]", "[0,4]") + "}", 4),
      {"bad.safetensors", "tensor 'layer.w'", "unknown safetensors dtype \"F8_E4M3\""});
  expect_open_error(st_file(dir, "{\"w\":{\"dtype\":7,\"shape\":[],\"data_offsets\":[0,4]}}", 4),
                    {"tensor 'w'", "non-string \"dtype\""});
  expect_error([] { parse_dtype("f32"); }, {"unknown safetensors dtype \"f32\""});
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_STREQ(dtype_name(DType::BOOL), "BOOL");
}

TEST(SafetensorsErrors, Shape) {
  auto dir = test::scratch_dir();
  expect_open_error(st_file(dir, "{" + tensor("w", "F32", "[2,-1]", "[0,8]") + "}", 8),
                    {"tensor 'w'", "negative dimension"});
  expect_open_error(st_file(dir, "{" + tensor("w", "F32", "[2.5]", "[0,8]") + "}", 8),
                    {"tensor 'w'", "not an integer"});
  expect_open_error(st_file(dir, "{" + tensor("w", "F32", "3", "[0,12]") + "}", 12),
                    {"tensor 'w'", "non-array \"shape\""});
  expect_open_error(
      st_file(dir, "{" + tensor("w", "F32", "[1099511627776,1099511627776]", "[0,8]") + "}", 8),
      {"tensor 'w'", "overflows"});
  expect_open_error(
      st_file(dir, "{" + tensor("w", "U8", "[18446744073709551615]", "[0,8]") + "}", 8),
      {"tensor 'w'", "too large"});
}

TEST(SafetensorsErrors, DataOffsets) {
  auto dir = test::scratch_dir();
  for (const std::string off : {"[0]", "[0,4,8]", "[-4,0]", "[0,4.0]", "\"0,4\"", "[0,\"4\"]"}) {
    expect_open_error(st_file(dir, "{" + tensor("w", "F32", "[1]", off) + "}", 8),
                      {"tensor 'w'", "\"data_offsets\" must be two non-negative integers"});
  }
  expect_open_error(st_file(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4),
                    {"tensor 'w'", "got nothing"});
  expect_open_error(st_file(dir, "{" + tensor("w", "F32", "[1]", "[8,4]") + "}", 8),
                    {"tensor 'w'", "decreasing"});
  expect_open_error(st_file(dir, "{" + tensor("w", "F32", "[2,2]", "[0,12]") + "}", 12),
                    {"tensor 'w'", "span 12 bytes but dtype F32 with shape [2, 2] needs 16"});
  expect_open_error(st_file(dir,
                            "{" + tensor("w", "F32", "[2]", "[0,8]") + "," +
                                tensor("v", "F32", "[2]", "[4,12]") + "}",
                            12),
                    {"bad.safetensors", "tensor 'v'", "overlaps tensor 'w'"});
  // An empty tensor sits between two others (as writers place it), not inside one: the
  // safetensors library's Metadata::validate refuses [4,4] here as well.
  auto ok = st_file(dir,
                    "{" + tensor("w", "F32", "[2]", "[0,8]") + "," +
                        tensor("e", "F32", "[0,5]", "[8,8]") + "," +
                        tensor("s", "I8", "[]", "[8,9]") + "}",
                    9);
  const auto f = SafetensorsFile::open(ok);
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.find("s")->data.size(), 1u);
  EXPECT_TRUE(f.find("e")->data.empty());
  expect_open_error(st_file(dir,
                            "{" + tensor("w", "F32", "[2]", "[0,8]") + "," +
                                tensor("e", "F32", "[0,5]", "[4,4]") + "}",
                            8),
                    {"bad.safetensors", "tensor 'e'", "overlaps tensor 'w'"});
}

// The format stores tensors back to back from the start of the data buffer to the end of the
// file; the safetensors library (Metadata::validate, read_metadata) refuses any byte that belongs
// to no tensor, so a file with such bytes is not a safetensors file and is refused here too.
TEST(SafetensorsErrors, BytesOutsideEveryTensor) {
  auto dir = test::scratch_dir();
  expect_open_error(st_file(dir,
                            "{" + tensor("w", "F32", "[1]", "[0,4]") + "," +
                                tensor("v", "F32", "[1]", "[8,12]") + "}",
                            12),
                    {"bad.safetensors", "bytes [4, 8) of the data buffer belong to no tensor",
                     "before tensor 'v'"});
  expect_open_error(st_file(dir, "{" + tensor("w", "F32", "[1]", "[4,8]") + "}", 8),
                    {"bytes [0, 4)", "before tensor 'w'"});
  expect_open_error(st_file(dir, "{" + tensor("w", "F32", "[1]", "[0,4]") + "}", 6),
                    {"bytes [4, 6)", "after tensor 'w'"});
  expect_open_error(st_file(dir, "{}", 3), {"bytes [0, 3)", "after the header"});
  // The same layouts without the stray bytes open.
  EXPECT_EQ(SafetensorsFile::open(st_file(dir,
                                          "{" + tensor("v", "F32", "[1]", "[4,8]") + "," +
                                              tensor("w", "F32", "[1]", "[0,4]") + "}",
                                          8))
                .tensors()
                .size(),
            2u);
  EXPECT_TRUE(SafetensorsFile::open(st_file(dir, "{}", 0)).tensors().empty());
}

TEST(SafetensorsErrors, TruncatedData) {
  auto dir = test::scratch_dir();
  std::vector<float> v(64, 1.0f);
  write_safetensors(dir / "good.safetensors",
                    {{"w", DType::F32, {8, 8}, std::as_bytes(std::span<const float>(v))}});
  const std::string full = read_text_file(dir / "good.safetensors");
  write_bytes(dir / "cut.safetensors", full.substr(0, full.size() - 10));
  expect_open_error(dir / "cut.safetensors",
                    {"cut.safetensors", "tensor 'w'", "end beyond the data buffer"});
  // Every truncation point gives an Error, never a crash or an out-of-bounds view.
  for (std::size_t n = 0; n < full.size(); ++n) {
    write_bytes(dir / "cut.safetensors", full.substr(0, n));
    EXPECT_THROW(SafetensorsFile::open(dir / "cut.safetensors"), Error) << n;
  }
}

TEST(SafetensorsErrors, CorruptBytesNeverCrash) {
  auto dir = test::scratch_dir();
  std::vector<std::int16_t> v(10, 3);
  write_safetensors(dir / "good.safetensors",
                    {{"a", DType::I16, {2, 5}, std::as_bytes(std::span<const std::int16_t>(v))},
                     {"b", DType::I16, {5, 2}, std::as_bytes(std::span<const std::int16_t>(v))}},
                    {{"k", "v"}});
  const std::string full = read_text_file(dir / "good.safetensors");
  std::mt19937 rng(5);
  int opened = 0;
  for (int iter = 0; iter < 500; ++iter) {
    std::string bytes = full;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < flips; ++i) {
      bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    write_bytes(dir / "fuzz.safetensors", bytes);
    try {
      const auto f = SafetensorsFile::open(dir / "fuzz.safetensors");
      ++opened;
      // Every view handed out lies inside the one mapping of the file.
      const std::byte* lo = nullptr;
      const std::byte* hi = nullptr;
      for (const auto& t : f.tensors()) {
        if (t.data.empty()) continue;
        if (!lo || t.data.data() < lo) lo = t.data.data();
        if (!hi || t.data.data() + t.data.size() > hi) hi = t.data.data() + t.data.size();
      }
      if (lo) {
        ASSERT_LE(static_cast<std::size_t>(hi - lo), bytes.size() - 8);
      }
    } catch (const Error&) {
    }
  }
  EXPECT_GT(opened, 0);  // flips landing in the data leave a valid file
}

TEST(SafetensorsErrors, Metadata) {
  auto dir = test::scratch_dir();
  expect_open_error(st_file(dir, "{\"__metadata__\":{\"format\":\"pt\",\"step\":5}}"),
                    {"bad.safetensors", "__metadata__ value for key 'step' is not a string"});
  expect_open_error(st_file(dir, "{\"__metadata__\":[\"a\"]}"),
                    {"__metadata__ is not a JSON object"});
}

TEST(SafetensorsErrors, WriterRejectsBadInput) {
  auto dir = test::scratch_dir();
  std::vector<float> v(4);
  auto data = std::as_bytes(std::span<const float>(v));
  const auto p = dir / "w.safetensors";
  expect_error(
      [&] {
        write_safetensors(p, {{"w", DType::F32, {5}, data}});
      },
      {"tensor 'w'", "16 bytes of data given", "needs 20"});
  expect_error(
      [&] {
        write_safetensors(p, {{"w", DType::F32, {-4}, data}});
      },
      {"tensor 'w'", "negative dimension"});
  expect_error(
      [&] {
        write_safetensors(p, {{"w", DType::F32, {4}, data}, {"w", DType::F32, {4}, data}});
      },
      {"tensor 'w' is given more than once"});
  expect_error(
      [&] {
        write_safetensors(p, {{"__metadata__", DType::F32, {4}, data}});
      },
      {"reserved"});
  expect_error([&] { write_safetensors(p, {{"", DType::F32, {4}, data}}); }, {"empty name"});
  EXPECT_FALSE(fs::exists(p));
}

class IndexErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::scratch_dir();
    std::vector<float> v(4, 2.0f);
    write_safetensors(dir_ / "model-00001-of-00001.safetensors",
                      {{"w", DType::F32, {4}, std::as_bytes(std::span<const float>(v))}});
  }
  fs::path index(const std::string& text) {
    write_text_atomic(dir_ / "model.safetensors.index.json", text);
    return dir_;
  }
  void expect_index_error(const std::string& text, std::initializer_list<std::string> parts) {
    SCOPED_TRACE(text);
    expect_error([&] { SafetensorsCheckpoint::open(index(text)); }, parts);
  }
  fs::path dir_;
};

TEST_F(IndexErrors, ValidIndexOpens) {
  auto c = SafetensorsCheckpoint::open(
      index(R"({"weight_map": {"w": "model-00001-of-00001.safetensors"}})"));
  EXPECT_EQ(c.names(), std::vector<std::string>{"w"});
}

TEST_F(IndexErrors, Malformed) {
  expect_index_error(R"({"weight_map": {"w": )",
                     {"model.safetensors.index.json", "not valid JSON"});
  expect_index_error(R"([1])", {"not a JSON object"});
  expect_index_error(R"({"metadata": {}})", {"no \"weight_map\""});
  expect_index_error(R"({"weight_map": ["w"]})", {"\"weight_map\" is not a JSON object"});
  expect_index_error(R"({"weight_map": {"w": 1}})", {"tensor 'w' is not a string"});
}

TEST_F(IndexErrors, ShardNamesMustBePlainFileNames) {
  for (const std::string shard : {"../model-00001-of-00001.safetensors", "sub/model.safetensors",
                                  "a\\\\b.safetensors", "/etc/passwd", "..", ""}) {
    expect_index_error(R"({"weight_map": {"w": ")" + shard + "\"}}",
                       {"tensor 'w'", "not a plain file name"});
  }
}

TEST_F(IndexErrors, MissingShardOrTensor) {
  expect_index_error(
      R"({"weight_map": {"w": "model-00001-of-00001.safetensors", "v": "model-00002-of-00002.safetensors"}})",
      {"shard file model-00002-of-00002.safetensors is missing"});
  expect_index_error(
      R"({"weight_map": {"w": "model-00001-of-00001.safetensors", "lm_head.weight": "model-00001-of-00001.safetensors"}})",
      {"tensor 'lm_head.weight' is listed in weight_map but absent from shard "
       "model-00001-of-00001.safetensors"});
  // A corrupt shard is reported by its own name.
  write_bytes(dir_ / "model-00002-of-00002.safetensors", "xyz");
  expect_index_error(R"({"weight_map": {"v": "model-00002-of-00002.safetensors"}})",
                     {"model-00002-of-00002.safetensors", "too short"});
}

TEST_F(IndexErrors, NoCheckpoint) {
  auto empty = dir_ / "empty";
  fs::create_directories(empty);
  expect_error([&] { SafetensorsCheckpoint::open(empty); },
               {"no model.safetensors or model.safetensors.index.json"});
  expect_error([&] { SafetensorsCheckpoint::open(dir_ / "nope"); }, {"no such checkpoint"});
}
