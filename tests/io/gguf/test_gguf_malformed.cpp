// Malformed GGUF files: each defect gives its own uniattn::Error message, nothing crashes or reads
// out of bounds. Files are built byte by byte here (one defect each) or cut/corrupted from the
// gguf-py-written fixtures.
#include <cstring>
#include <fstream>
#include <optional>
#include <random>

#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/io/gguf.h"

using namespace uniattn;
namespace fs = std::filesystem;

namespace {

// Little-endian byte sink.
struct Bytes {
  std::string b;
  void u8(uint8_t v) { b.push_back(static_cast<char>(v)); }
  void u32(uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); }
  void u64(uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); }
  void str(const std::string& s, std::optional<uint64_t> len = {}) {
    u64(len.value_or(s.size()));
    b += s;
  }
  void pad(std::size_t align) { b.resize((b.size() + align - 1) / align * align, '\0'); }
};

// A small valid file: one string KV and tensor "w" (F32, ne = {8, 2}); the fields default to
// valid values and each test breaks one.
struct Spec {
  std::string magic = "GGUF";
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors, n_kv;
  std::optional<uint64_t> key_len;  // length prefix written for the first key
  uint32_t value_type = 8;          // STRING
  bool extra_kv = false;            // a second KV, written raw by `extra`
  std::function<void(Bytes&)> extra;
  uint32_t n_dims = 2;
  std::vector<uint64_t> ne = {8, 2};
  uint32_t type = 0;  // F32
  uint64_t offset = 0;
  bool duplicate_tensor = false;
  std::size_t data_bytes = 64;
  std::optional<std::size_t> truncate_to;
};

std::string build(const Spec& s) {
  Bytes o;
  o.b += s.magic;
  o.u32(s.version);
  o.u64(s.n_tensors.value_or(s.duplicate_tensor ? 2 : 1));
  o.u64(s.n_kv.value_or(s.extra_kv ? 2 : 1));
  o.str("general.architecture", s.key_len);
  o.u32(s.value_type);
  o.str("test");
  if (s.extra_kv) s.extra(o);
  for (int i = 0; i < (s.duplicate_tensor ? 2 : 1); ++i) {
    o.str("w");
    o.u32(s.n_dims);
    for (uint32_t d = 0; d < s.n_dims; ++d) o.u64(d < s.ne.size() ? s.ne[d] : 1);
    o.u32(s.type);
    o.u64(s.offset + static_cast<uint64_t>(i) * 64);
  }
  o.pad(32);
  o.b.append(s.data_bytes * (s.duplicate_tensor ? 2 : 1), '\0');
  if (s.truncate_to) o.b.resize(*s.truncate_to);
  return o.b;
}

fs::path write(const std::string& bytes, const std::string& name = "x.gguf") {
  auto p = test::scratch_dir() / name;
  std::ofstream(p, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return p;
}

// Opens the file; expects uniattn::Error whose message contains every substring.
void expect_error(const std::string& bytes, std::initializer_list<std::string> subs) {
  auto p = write(bytes);
  try {
    GgufFile::open(p);
    ADD_FAILURE() << "expected an error containing '" << *subs.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& s : subs) EXPECT_NE(msg.find(s), std::string::npos) << msg;
    EXPECT_NE(msg.find(p.string()), std::string::npos) << "message should name the file: " << msg;
  }
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in) << p;
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST(GgufMalformed, TheBuilderMakesAValidFile) {
  // Otherwise the tests below could pass for the wrong reason.
  auto f = GgufFile::open(write(build({})));
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].torch_shape(), (std::vector<int64_t>{2, 8}));
  EXPECT_EQ(f.get_string("general.architecture"), "test");
  EXPECT_EQ(f.dequantize(f.tensors()[0]), std::vector<float>(16, 0.0f));
}

TEST(GgufMalformed, BadMagic) {
  Spec s;
  s.magic = "GGML";
  expect_error(build(s), {"not a GGUF file", "bad magic"});
}

TEST(GgufMalformed, TruncatedHeader) {
  expect_error(build({}).substr(0, 2), {"truncated GGUF file", "the magic"});
  expect_error(build({}).substr(0, 12), {"truncated GGUF file", "tensor count"});
  // Cut inside the metadata: the counts no longer fit the remaining bytes.
  expect_error(build({}).substr(0, 30), {"tensor count 1 is impossible"});
}

TEST(GgufMalformed, UnsupportedOrBigEndianVersion) {
  Spec s;
  s.version = 7;
  expect_error(build(s), {"unsupported GGUF version 7"});
  s.version = 3u << 24;  // a big-endian writer
  expect_error(build(s), {"big-endian"});
}

TEST(GgufMalformed, StringLengthPastEndOfFile) {
  Spec s;
  s.key_len = 1u << 30;
  expect_error(build(s),
               {"string length 1073741824", "metadata key #0", "runs past the end of the file"});
}

TEST(GgufMalformed, AbsurdCounts) {
  Spec s;
  s.n_tensors = uint64_t{1} << 40;
  expect_error(build(s), {"tensor count 1099511627776 is impossible"});
  Spec k;
  k.n_kv = ~uint64_t{0};
  expect_error(build(k), {"metadata key/value count 18446744073709551615 is impossible"});
}

TEST(GgufMalformed, UnknownAndUnsupportedTensorTypes) {
  Spec s;
  s.type = 99;
  expect_error(build(s), {"tensor 'w' has unknown ggml type 99"});
  s.type = 16;
  expect_error(build(s), {"tensor 'w' has ggml type 16 (IQ2_XXS)", "cannot dequantize"});
}

TEST(GgufMalformed, TensorDataPastEndOfFile) {
  Spec s;
  s.data_bytes = 60;  // the tensor needs 64
  expect_error(build(s), {"tensor 'w'", "extends past the end of the file", "truncated"});
  Spec far;
  far.offset = uint64_t{1} << 62;  // aligned, but far beyond the file
  expect_error(build(far), {"tensor 'w'", "extends past the end of the file"});
}

TEST(GgufMalformed, TooManyDimensions) {
  Spec s;
  s.n_dims = 5;
  expect_error(build(s), {"tensor 'w' has 5 dimensions"});
}

TEST(GgufMalformed, MisalignedOffset) {
  Spec s;
  s.offset = 4;
  expect_error(build(s), {"tensor 'w'", "data offset 4 is misaligned"});
}

TEST(GgufMalformed, BadShapes) {
  Spec zero;
  zero.ne = {8, 0};
  expect_error(build(zero), {"tensor 'w' has invalid dimension ne[1] = 0"});
  Spec big;
  big.ne = {uint64_t{1} << 40, uint64_t{1} << 40};
  expect_error(build(big), {"tensor 'w'", "element count overflows"});
  Spec row;
  row.type = 2;  // Q4_0
  row.ne = {33, 2};
  expect_error(build(row), {"row length ne[0] = 33 is not a multiple of the Q4_0 block size 32"});
}

TEST(GgufMalformed, DuplicateNamesAndKeys) {
  Spec s;
  s.duplicate_tensor = true;
  expect_error(build(s), {"duplicate tensor name 'w'"});
  Spec k;
  k.extra_kv = true;
  k.extra = [](Bytes& o) {
    o.str("general.architecture");
    o.u32(8);
    o.str("again");
  };
  expect_error(build(k), {"duplicate metadata key 'general.architecture'"});
}

TEST(GgufMalformed, BadMetadataValues) {
  Spec s;
  s.value_type = 13;
  expect_error(build(s), {"'general.architecture' has unknown value type 13"});

  auto with_extra = [](std::function<void(Bytes&)> fn) {
    Spec x;
    x.extra_kv = true;
    x.extra = std::move(fn);
    return build(x);
  };
  expect_error(with_extra([](Bytes& o) {
                 o.str("nested");
                 o.u32(9);
                 o.u32(9);
                 o.u64(1);
               }),
               {"'nested' is an array of arrays"});
  expect_error(with_extra([](Bytes& o) {
                 o.str("huge");
                 o.u32(9);
                 o.u32(8);
                 o.u64(uint64_t{1} << 50);
               }),
               {"'huge' claims 1125899906842624 STRING elements"});
  expect_error(with_extra([](Bytes& o) {
                 o.str("flag");
                 o.u32(7);
                 o.u8(2);
               }),
               {"'flag' has bool byte 2"});
  expect_error(with_extra([](Bytes& o) {
                 o.str("general.alignment");
                 o.u32(4);
                 o.u32(48);
               }),
               {"general.alignment 48 must be a power of two"});
  expect_error(with_extra([](Bytes& o) {
                 o.str("general.alignment");
                 o.u32(8);
                 o.str("32");
               }),
               {"general.alignment is STRING, not an integer"});
}

TEST(GgufMalformed, EmptyArrayIsFine) {
  Spec x;
  x.extra_kv = true;
  x.extra = [](Bytes& o) {
    o.str("empty");
    o.u32(9);
    o.u32(5);
    o.u64(0);
  };
  auto f = GgufFile::open(write(build(x)));
  EXPECT_TRUE(f.at("empty").as_int_array().empty());
}

TEST(GgufMalformed, EveryTruncationOfARealFileFailsCleanly) {
  // Cut the gguf-py-written metadata fixture at every length up to the end of its tensor data
  // (gguf-py pads the file after it): all must throw uniattn::Error.
  const std::string full = slurp(test::data_dir() / "gguf" / "metadata.gguf");
  ASSERT_GT(full.size(), 100u);
  const GgufTensorInfo t = GgufFile::open(write(full)).tensors().at(0);
  const std::size_t end = t.offset + t.nbytes;
  ASSERT_LE(end, full.size());
  int errors = 0;
  for (std::size_t n = 0; n < end; ++n) {
    try {
      GgufFile::open(write(full.substr(0, n)));
      ADD_FAILURE() << "truncation to " << n << " bytes was accepted";
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_EQ(errors, static_cast<int>(end));
  EXPECT_NO_THROW(GgufFile::open(write(full.substr(0, end))));
}

TEST(GgufMalformed, RandomCorruptionNeverCrashes) {
  // Flip random header bytes of the types fixture (fixed seed); each result must either open
  // (and then dequantise within bounds) or throw uniattn::Error.
  const std::string full = slurp(test::data_dir() / "gguf" / "types.gguf");
  auto good = GgufFile::open(write(full, "good.gguf"));
  const std::size_t header = good.data_offset();
  std::mt19937 rng(42);
  int opened = 0, rejected = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string bad = full;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) bad[rng() % header] = static_cast<char>(rng() & 0xff);
    try {
      auto f = GgufFile::open(write(bad));
      for (const auto& t : f.tensors()) {
        if (t.numel() <= (int64_t{1} << 22)) f.dequantize(t);
      }
      ++opened;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_EQ(opened + rejected, 300);
  EXPECT_GT(rejected, 0);
}
