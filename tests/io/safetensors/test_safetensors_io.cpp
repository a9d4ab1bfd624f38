// Reads files written by the Python `safetensors` package and compares every value with the
// fixture's manifest; writes files in C++ and has the Python package load and check them.
#include <signal.h>
#include <sys/resource.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/safetensors.h"

using namespace uniattn;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path st_data() { return test::data_dir() / "safetensors"; }

json load_json(const fs::path& p) { return json::parse(read_text_file(p)); }

// Reference decoders for the 16-bit float formats, written from the IEEE-754 / bfloat16 layouts.
double half_to_double(std::uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double v;
  if (exp == 0) {
    v = std::ldexp(mant, -24);
  } else if (exp == 31) {
    v = mant ? std::nan("") : INFINITY;
  } else {
    v = std::ldexp(mant + 1024, exp - 25);
  }
  return sign ? -v : v;
}

double bf16_to_double(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

template <typename T>
T load(const std::byte* p) {  // data is little-endian, as is every host uniattn targets
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool is_float(DType d) {
  return d == DType::F64 || d == DType::F32 || d == DType::F16 || d == DType::BF16;
}

double float_at(const TensorView& t, std::size_t i) {
  const std::byte* p = t.data.data() + i * dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::F64:
      return load<double>(p);
    case DType::F32:
      return load<float>(p);
    case DType::F16:
      return half_to_double(load<std::uint16_t>(p));
    case DType::BF16:
      return bf16_to_double(load<std::uint16_t>(p));
    default:
      ADD_FAILURE() << "not a float dtype";
      return 0;
  }
}

std::int64_t int_at(const TensorView& t, std::size_t i) {
  const std::byte* p = t.data.data() + i * dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::I64:
      return load<std::int64_t>(p);
    case DType::I32:
      return load<std::int32_t>(p);
    case DType::I16:
      return load<std::int16_t>(p);
    case DType::I8:
      return load<std::int8_t>(p);
    case DType::U8:
      return load<std::uint8_t>(p);
    case DType::BOOL:
      return load<std::uint8_t>(p);
    default:
      ADD_FAILURE() << "not an integer dtype";
      return 0;
  }
}

json encode_double(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

// Compares a tensor with a manifest entry {"dtype", "shape", "values"}: exact, bit for bit for
// floats (so -0.0 differs from 0.0), any NaN matching "nan".
void expect_matches(const TensorView& t, const json& want) {
  SCOPED_TRACE("tensor " + t.name);
  EXPECT_EQ(dtype_name(t.dtype), want.at("dtype").get<std::string>());
  ASSERT_EQ(t.shape, want.at("shape").get<std::vector<std::int64_t>>());
  const auto& values = want.at("values");
  ASSERT_EQ(t.data.size(), values.size() * dtype_size(t.dtype));
  for (std::size_t i = 0; i < values.size(); ++i) {
    const json& v = values[i];
    if (is_float(t.dtype)) {
      const double a = float_at(t, i);
      if (v.is_string()) {
        const auto s = v.get<std::string>();
        if (s == "nan") {
          ASSERT_TRUE(std::isnan(a)) << "index " << i;
        } else {
          ASSERT_EQ(a, s == "inf" ? INFINITY : -INFINITY) << "index " << i;
        }
      } else {
        ASSERT_EQ(std::bit_cast<std::uint64_t>(a), std::bit_cast<std::uint64_t>(v.get<double>()))
            << "index " << i << ": " << a << " vs " << v.get<double>();
      }
    } else {
      ASSERT_EQ(int_at(t, i), v.get<std::int64_t>()) << "index " << i;
    }
  }
}

std::map<std::string, std::string> json_metadata(const json& manifest) {
  return manifest.at("metadata").get<std::map<std::string, std::string>>();
}

// Owns the bytes of tensors built in a test, plus their manifest entries.
struct Built {
  std::vector<std::vector<std::byte>> storage;
  std::vector<TensorToWrite> tensors;
  json manifest = {{"metadata", json::object()}, {"tensors", json::object()}};

  template <typename T>
  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
           const std::vector<T>& raw, const json& values) {
    auto& buf = storage.emplace_back(raw.size() * sizeof(T));
    if (!raw.empty()) std::memcpy(buf.data(), raw.data(), buf.size());
    tensors.push_back({name, dtype, shape, std::span<const std::byte>(buf)});
    manifest["tensors"][name] = {
        {"dtype", dtype_name(dtype)}, {"shape", shape}, {"values", values}};
  }
};

Built build_all_dtypes() {
  Built b;
  b.storage.reserve(64);  // spans point into storage; keep it from reallocating
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal;
  {
    std::vector<double> v{0.1, -0.0, 1e300, -5e-324, INFINITY, std::nan("")};
    json j = json::array();
    for (double x : v) j.push_back(encode_double(x));
    b.add("w.f64", DType::F64, {2, 3}, v, j);
  }
  {
    std::vector<float> v;
    json j = json::array();
    for (int i = 0; i < 35; ++i) v.push_back(static_cast<float>(normal(rng)));
    v.push_back(-INFINITY);
    for (float x : v) j.push_back(encode_double(x));
    b.add("w.f32", DType::F32, {4, 3, 3}, v, j);
  }
  {
    // Known half bit patterns (1, -2, 65504, 2^-24, -0, inf, 1/3) plus random finite ones.
    std::vector<std::uint16_t> v{0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x7C00, 0x3555};
    while (v.size() < 20) {
      auto h = static_cast<std::uint16_t>(rng());
      if (((h >> 10) & 0x1f) != 31) v.push_back(h);
    }
    json j = json::array();
    for (auto h : v) j.push_back(encode_double(half_to_double(h)));
    EXPECT_EQ(j[0], 1.0);
    EXPECT_EQ(j[2], 65504.0);
    EXPECT_EQ(j[3], std::ldexp(1.0, -24));
    b.add("w.f16", DType::F16, {4, 5}, v, j);
  }
  {
    std::vector<std::uint16_t> v;
    json j = json::array();
    for (int i = 0; i < 12; ++i) {
      const float f = static_cast<float>(normal(rng) * 100);
      v.push_back(static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(f) >> 16));
      j.push_back(encode_double(bf16_to_double(v.back())));
    }
    b.add("w.bf16", DType::BF16, {3, 4}, v, j);
  }
  b.add<std::int64_t>("i.i64", DType::I64, {3}, {INT64_MIN, INT64_MAX, -7},
                      {INT64_MIN, INT64_MAX, -7});
  b.add<std::int32_t>("i.i32", DType::I32, {2}, {INT32_MIN, 99}, {INT32_MIN, 99});
  b.add<std::int16_t>("i.i16", DType::I16, {2, 1}, {-300, 32767}, {-300, 32767});
  b.add<std::int8_t>("i.i8", DType::I8, {3}, {-128, 0, 127}, {-128, 0, 127});
  b.add<std::uint8_t>("i.u8", DType::U8, {4}, {0, 1, 128, 255}, {0, 1, 128, 255});
  b.add<std::uint8_t>("mask", DType::BOOL, {5}, {1, 0, 0, 1, 1}, {1, 0, 0, 1, 1});
  b.add<float>("scalar", DType::F32, {}, {2.75f}, {2.75});
  b.add<float>("empty", DType::F32, {0, 4}, {}, json::array());
  return b;
}

fs::path python() {
  if (const char* p = std::getenv("UNIATTN_PYTHON")) return p;
  return test::source_dir() / ".venv" / "bin" / "python";
}

// Runs the fixture script in verify mode; returns its exit status (0 = Python agrees).
int python_verify(const fs::path& target, const json& manifest, const json* shards = nullptr) {
  const fs::path dir = target.parent_path();
  const fs::path expect = dir / "expected.json";
  write_text_atomic(expect, manifest.dump());
  std::string cmd = "\"" + python().string() + "\" \"" +
                    (test::source_dir() / "tests/fixtures/make_safetensors_fixtures.py").string() +
                    "\" --verify \"" + target.string() + "\" --expect \"" + expect.string() + "\"";
  if (shards) {
    write_text_atomic(dir / "shards.json", shards->dump());
    cmd += " --shards \"" + (dir / "shards.json").string() + "\"";
  }
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::vector<std::string> sorted_keys(const json& obj) {
  std::vector<std::string> out;
  for (const auto& [k, v] : obj.items()) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(SafetensorsRead, EveryDtypeFromPython) {
  const json want = load_json(st_data() / "dtypes.expected.json");
  const auto f = SafetensorsFile::open(st_data() / "dtypes.safetensors");
  EXPECT_EQ(f.metadata(), json_metadata(want));
  ASSERT_EQ(f.tensors().size(), want["tensors"].size());
  for (const auto& [name, w] : want["tensors"].items()) {
    const TensorView* t = f.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->name, name);
    expect_matches(*t, w);
  }
  EXPECT_EQ(f.find("no.such.tensor"), nullptr);
  // tensors() is in buffer order.
  for (std::size_t i = 1; i < f.tensors().size(); ++i)
    EXPECT_LE(f.tensors()[i - 1].data.data(), f.tensors()[i].data.data());
}

TEST(SafetensorsRead, NumpyFileWithoutMetadata) {
  const json want = load_json(st_data() / "numpy.expected.json");
  const auto f = SafetensorsFile::open(st_data() / "numpy.safetensors");
  EXPECT_TRUE(f.metadata().empty());
  ASSERT_EQ(f.tensors().size(), 2u);
  for (const auto& [name, w] : want["tensors"].items()) expect_matches(*f.find(name), w);
}

TEST(SafetensorsRead, ShardedCheckpoint) {
  const json want = load_json(st_data() / "sharded.expected.json");
  const fs::path dir = st_data() / "sharded";
  for (const fs::path& p : {dir, dir / "model.safetensors.index.json"}) {
    const auto c = SafetensorsCheckpoint::open(p);
    EXPECT_EQ(c.files().size(), 3u);
    EXPECT_EQ(c.names(), sorted_keys(want["tensors"]));
    EXPECT_EQ(c.metadata(), json_metadata(want));
    for (const auto& [name, w] : want["tensors"].items()) {
      EXPECT_TRUE(c.contains(name));
      expect_matches(c.at(name), w);
    }
    EXPECT_FALSE(c.contains("model.missing"));
    try {
      c.at("model.missing");
      ADD_FAILURE() << "at() did not throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no tensor 'model.missing'"), std::string::npos);
    }
  }
}

TEST(SafetensorsRead, SingleFileAsCheckpoint) {
  const json want = load_json(st_data() / "dtypes.expected.json");
  const auto c = SafetensorsCheckpoint::open(st_data() / "dtypes.safetensors");
  EXPECT_EQ(c.names(), sorted_keys(want["tensors"]));
  EXPECT_EQ(c.metadata(), json_metadata(want));
  expect_matches(c.at("bf16.mat"), want["tensors"]["bf16.mat"]);
  // Views stay valid in a copy after the original is gone.
  std::optional<SafetensorsCheckpoint> tmp = SafetensorsCheckpoint::open(st_data() / "sharded");
  const SafetensorsCheckpoint copy = *tmp;
  tmp.reset();
  expect_matches(copy.at("model.embed.weight"),
                 load_json(st_data() / "sharded.expected.json")["tensors"]["model.embed.weight"]);
}

TEST(SafetensorsWrite, SingleFileLoadsInPython) {
  auto dir = test::scratch_dir();
  Built b = build_all_dtypes();
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "ü \"quoted\""}};
  b.manifest["metadata"] = meta;
  write_safetensors(dir / "out.safetensors", b.tensors, meta);
  EXPECT_EQ(python_verify(dir / "out.safetensors", b.manifest), 0);

  const auto f = SafetensorsFile::open(dir / "out.safetensors");
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), b.tensors.size());
  for (std::size_t i = 0; i < b.tensors.size(); ++i) {
    EXPECT_EQ(f.tensors()[i].name, b.tensors[i].name) << "written in the given order";
    expect_matches(f.tensors()[i], b.manifest["tensors"][b.tensors[i].name]);
    // The data buffer is 8-byte aligned in the file, so offsets of 8-byte-multiple tensors are.
  }
  std::ifstream in(dir / "out.safetensors", std::ios::binary);
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(SafetensorsWrite, EmptyFileAndNoMetadata) {
  auto dir = test::scratch_dir();
  write_safetensors(dir / "none.safetensors", {});
  json manifest = {{"metadata", json::object()}, {"tensors", json::object()}};
  EXPECT_EQ(python_verify(dir / "none.safetensors", manifest), 0);
  const auto f = SafetensorsFile::open(dir / "none.safetensors");
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.metadata().empty());
}

TEST(SafetensorsWrite, ShardedCheckpointLoadsInPython) {
  auto dir = test::scratch_dir();
  Built b;
  b.storage.reserve(16);
  auto floats = [](int n, float base) {
    std::vector<float> v;
    json j = json::array();
    for (int i = 0; i < n; ++i) {
      v.push_back(base + 0.5f * static_cast<float>(i));
      j.push_back(v.back());
    }
    return std::pair(v, j);
  };
  auto [a, ja] = floats(10, 1);   // 40 bytes
  auto [bb, jb] = floats(5, -3);  // 20 bytes
  b.add("a", DType::F32, {10}, a, ja);
  b.add("b", DType::F32, {5}, bb, jb);
  b.add<std::int64_t>("c", DType::I64, {2, 2}, {1, -2, 3, -4}, {1, -2, 3, -4});  // 32 bytes
  std::vector<std::uint16_t> d(40);
  json jd = json::array();
  for (int i = 0; i < 40; ++i) {
    d[i] = static_cast<std::uint16_t>(0x3F80 + i);  // bf16 values from 1.0 upwards
    jd.push_back(bf16_to_double(d[i]));
  }
  b.add("d", DType::BF16, {5, 8}, d, jd);                          // 80 bytes: larger than a shard
  b.add<std::uint8_t>("e", DType::U8, {3}, {7, 8, 9}, {7, 8, 9});  // 3 bytes
  const std::map<std::string, std::string> meta{{"format", "pt"}};
  b.manifest["metadata"] = meta;

  // Greedy packing into 64-byte shards: {a, b} = 60, {c} = 32 (+80 would overflow), {d} alone
  // although it exceeds the limit, {e}.
  write_checkpoint(dir / "ckpt", b.tensors, 64, meta);
  const json shards = {{"model-00001-of-00004.safetensors", {"a", "b"}},
                       {"model-00002-of-00004.safetensors", {"c"}},
                       {"model-00003-of-00004.safetensors", {"d"}},
                       {"model-00004-of-00004.safetensors", {"e"}}};
  EXPECT_EQ(python_verify(dir / "ckpt", b.manifest, &shards), 0);
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "model.safetensors"));

  const auto c = SafetensorsCheckpoint::open(dir / "ckpt");
  EXPECT_EQ(c.files().size(), 4u);
  EXPECT_EQ(c.names(), (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  EXPECT_EQ(c.metadata(), meta);
  for (const auto& t : b.tensors) expect_matches(c.at(t.name), b.manifest["tensors"][t.name]);
  const json index = load_json(dir / "ckpt" / "model.safetensors.index.json");
  EXPECT_EQ(index["metadata"]["total_size"], 40 + 20 + 32 + 80 + 3);

  // Rewriting as one shard replaces the index by model.safetensors.
  write_checkpoint(dir / "ckpt", b.tensors, 1000, meta);
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "model.safetensors.index.json"));
  EXPECT_EQ(python_verify(dir / "ckpt", b.manifest), 0);
  const auto c1 = SafetensorsCheckpoint::open(dir / "ckpt");
  EXPECT_EQ(c1.files().size(), 1u);
  EXPECT_EQ(c1.files()[0].path().filename(), "model.safetensors");
  for (const auto& t : b.tensors) expect_matches(c1.at(t.name), b.manifest["tensors"][t.name]);

  // And back to shards: the stale model.safetensors must go, or it would shadow the index.
  write_checkpoint(dir / "ckpt", b.tensors, 64, meta);
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "model.safetensors"));
  EXPECT_EQ(SafetensorsCheckpoint::open(dir / "ckpt").files().size(), 4u);
}

TEST(SafetensorsWrite, PythonVerifierCatchesAWrongValue) {
  // The oracle must be able to fail: claim a value the file does not hold.
  auto dir = test::scratch_dir();
  Built b = build_all_dtypes();
  write_safetensors(dir / "out.safetensors", b.tensors);
  b.manifest["tensors"]["i.u8"]["values"][3] = 254;
  EXPECT_NE(python_verify(dir / "out.safetensors", b.manifest), 0);
}

std::vector<char> file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::size_t count_entries(const fs::path& dir) {
  return static_cast<std::size_t>(
      std::distance(fs::directory_iterator(dir), fs::directory_iterator{}));
}

TEST(SafetensorsWrite, FailureMidwayKeepsExistingFile) {
  auto dir = test::scratch_dir();
  Built b = build_all_dtypes();
  const fs::path path = dir / "keep.safetensors";
  write_safetensors(path, b.tensors);
  const auto before = file_bytes(path);

  // A big tensor hits a file-size limit partway through its data: the write fails with EFBIG
  // after the header and some data reached the temporary file.
  std::vector<std::byte> big(1 << 20, std::byte{1});
  std::vector<TensorToWrite> large{{"big", DType::U8, {1 << 20}, big}};
  auto* old_handler = ::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 64 << 10;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  bool threw = false;
  try {
    write_safetensors(path, large);
  } catch (const Error&) {
    threw = true;
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(threw);
  EXPECT_EQ(file_bytes(path), before);
  EXPECT_EQ(count_entries(dir), 1u) << "the temporary file was removed";
  EXPECT_EQ(SafetensorsFile::open(path).tensors().size(), b.tensors.size());

  // Invalid input is rejected before anything is written.
  std::vector<TensorToWrite> bad = b.tensors;
  bad.back().shape = {5, 4};  // "empty" has no bytes
  EXPECT_THROW(write_safetensors(path, bad), Error);
  EXPECT_THROW(write_checkpoint(dir / "ckpt", bad, 16), Error);
  EXPECT_EQ(file_bytes(path), before);
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "model-00001-of-00002.safetensors"));
}
