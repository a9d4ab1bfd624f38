// Dequantisation of every supported ggml type against gguf-py
// (tests/fixtures/make_gguf_fixtures.py).
//
// Comparisons are bit-exact: our kernels evaluate the same float32 expressions in the same order
// as gguf.quants.dequantize (one rounding per operation, no FMA contraction), so any difference
// is a bug, not rounding. NaNs compare equal if both are NaN (numpy may quiet the payload).
#include <bit>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/io/gguf.h"

using namespace uniattn;
namespace fs = std::filesystem;

namespace {

fs::path gguf_dir() { return test::data_dir() / "gguf"; }

std::vector<float> read_f32(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << p;
  in.seekg(0, std::ios::end);
  const auto n = static_cast<std::size_t>(in.tellg()) / 4;
  in.seekg(0);
  std::vector<float> v(n);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * 4));
  return v;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  EXPECT_TRUE(in) << "cannot open " << p;
  return nlohmann::json::parse(in);
}

// Counts elements that differ in bits (both-NaN counts as equal) and reports the first few.
void expect_same(const std::vector<float>& got, const std::vector<float>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool same = (std::isnan(got[i]) && std::isnan(want[i])) ||
                      std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(want[i]);
    if (!same && ++bad <= 5) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements differ";
}

}  // namespace

TEST(GgufDequant, EveryTypeMatchesGgufPy) {
  auto f = GgufFile::open(gguf_dir() / "types.gguf");
  auto manifest = read_json(gguf_dir() / "types.json");
  ASSERT_GE(manifest.size(), 17u);
  EXPECT_EQ(f.tensors().size(), manifest.size());
  for (auto& [name, m] : manifest.items()) {
    SCOPED_TRACE(name);
    const GgufTensorInfo* t = f.find(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(static_cast<uint32_t>(t->type), m["type_id"].get<uint32_t>());
    EXPECT_STREQ(ggml_type_name(t->type), m["type"].get<std::string>().c_str());
    EXPECT_EQ(t->torch_shape(), m["shape"].get<std::vector<int64_t>>());
    auto want = read_f32(gguf_dir() / m["expected"].get<std::string>());
    EXPECT_EQ(t->numel(), static_cast<int64_t>(want.size()));
    EXPECT_EQ(t->nbytes, static_cast<uint64_t>(t->numel() / ggml_block_size(t->type) *
                                               ggml_type_size(t->type)));
    EXPECT_EQ(f.raw(*t).size(), t->nbytes);
    expect_same(f.dequantize(*t), want, name);
  }
}

TEST(GgufDequant, CoversEveryTypeTheReaderSupports) {
  // Guards against a type silently dropping out of the fixture.
  auto manifest = read_json(gguf_dir() / "types.json");
  std::set<std::string> seen;
  for (auto& [name, m] : manifest.items()) seen.insert(m["type"].get<std::string>());
  for (const char* t : {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K",
                        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"}) {
    EXPECT_TRUE(seen.count(t)) << t;
  }
}

TEST(GgufDequant, HalfConversionIsExactForAllBitPatterns) {
  // Direct check of the scalar converters on the 65536 patterns gguf-py converted.
  auto want_h = read_f32(gguf_dir() / "all_F16.f32");
  auto want_b = read_f32(gguf_dir() / "all_BF16.f32");
  ASSERT_EQ(want_h.size(), 65536u);
  ASSERT_EQ(want_b.size(), 65536u);
  std::vector<float> h(65536), b(65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    h[i] = half_to_float(static_cast<uint16_t>(i));
    b[i] = bf16_to_float(static_cast<uint16_t>(i));
  }
  expect_same(h, want_h, "half_to_float");
  expect_same(b, want_b, "bf16_to_float");
  // Spot checks of the classes the table covers.
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_to_float(0x7c00), INFINITY);
  EXPECT_TRUE(std::signbit(half_to_float(0x8000)));
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
}

TEST(GgufDequant, RowRangesMatchTheWholeTensor) {
  auto f = GgufFile::open(gguf_dir() / "types.gguf");
  for (const char* name : {"t_Q4_K", "t_Q5_0", "big_Q8_0", "t_F32"}) {
    SCOPED_TRACE(name);
    const auto& t = f.tensor(name);
    auto all = f.dequantize(t);
    const int64_t rows = t.num_rows(), cols = t.ne[0];
    ASSERT_GE(rows, 2);
    std::vector<float> part(static_cast<std::size_t>(cols * (rows - 1)));
    f.dequantize_rows(t, 1, rows - 1, part.data());
    std::vector<float> want(all.begin() + cols, all.end());
    expect_same(part, want, name);
  }
  const auto& t = f.tensor("t_Q4_K");
  std::vector<float> buf(static_cast<std::size_t>(t.numel()));
  EXPECT_THROW(f.dequantize_rows(t, 2, 2, buf.data()), Error);
  EXPECT_THROW(f.dequantize_rows(t, -1, 1, buf.data()), Error);
}

TEST(GgufDequant, LargeTensorUsesThreadsAndStaysExact) {
  // 1M elements: split over threads; the result must not depend on the split.
  auto f = GgufFile::open(gguf_dir() / "types.gguf");
  const auto& t = f.tensor("big_Q8_0");
  EXPECT_EQ(t.numel(), 512 * 2048);
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  f.dequantize_into(t, out.data());
  expect_same(out, read_f32(gguf_dir() / "big_Q8_0.f32"), "big_Q8_0");
}

TEST(GgufDequant, ForeignTensorInfoIsRejected) {
  auto f = GgufFile::open(gguf_dir() / "types.gguf");
  GgufTensorInfo fake = f.tensor("t_F32");
  fake.nbytes *= 1000;  // would read far outside the tensor
  try {
    f.dequantize(fake);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not belong to this file"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(f.tensor("no_such_tensor"), Error);
  EXPECT_EQ(f.find("no_such_tensor"), nullptr);
}

TEST(GgufDequant, TypeTables) {
  EXPECT_EQ(ggml_block_size(GgmlType::Q4_K), 256);
  EXPECT_EQ(ggml_type_size(GgmlType::Q4_K), 144);
  EXPECT_EQ(ggml_type_size(GgmlType::Q6_K), 210);
  EXPECT_EQ(ggml_type_size(GgmlType::Q8_0), 34);
  EXPECT_STREQ(ggml_type_name(static_cast<GgmlType>(16)), "IQ2_XXS");
  EXPECT_STREQ(ggml_type_name(static_cast<GgmlType>(999)), "unknown");
  EXPECT_THROW(ggml_block_size(static_cast<GgmlType>(16)), Error);
  EXPECT_THROW(ggml_block_size(GgmlType::Q8_1), Error);
}
