// SentencePiece models (tokenizer.model) through libsentencepiece.
#include <sentencepiece_processor.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>

#include "internal.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn {

namespace {

constexpr std::size_t kMaxModelBytes = std::size_t{1} << 30;

class SpmTokenizer final : public tok::TemplatedTokenizer {
 public:
  SpmTokenizer(std::string source, std::string model)
      : source_(std::move(source)), model_(std::move(model)) {
    const auto status = guarded("not a valid SentencePiece model",
                                [&] { return sp_.LoadFromSerializedProto(model_); });
    UNIATTN_CHECK(status.ok(), source_, ": not a valid SentencePiece model: ", status.ToString());
    size_ = sp_.GetPieceSize();
    UNIATTN_CHECK(size_ > 0 && size_ <= tok::kMaxVocab, source_, ": SentencePiece model has ",
                  size_, " pieces");
    for (int32_t id = 0; id < size_; ++id) {
      if (sp_.IsControl(id) && !sp_.IdToPiece(id).empty()) {
        controls_[static_cast<unsigned char>(sp_.IdToPiece(id)[0])].push_back(id);
      }
    }
    for (auto& list : controls_) {
      std::stable_sort(list.begin(), list.end(), [&](int32_t a, int32_t b) {
        return sp_.IdToPiece(a).size() > sp_.IdToPiece(b).size();
      });
    }
    auto opt = [](int id) { return id >= 0 ? std::optional<int32_t>(id) : std::nullopt; };
    bos_ = opt(sp_.bos_id());
    eos_ = opt(sp_.eos_id());
    pad_ = opt(sp_.pad_id());
    adds_bos_ = bos_.has_value();  // the convention of LLaMA/Gemma SentencePiece models
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos,
                              bool parse_special) const override {
    tok::check_utf8(text, source_ + ": encode");
    std::vector<int32_t> out;
    if (add_bos) {
      if (has_template_) {
        out = prefix_;
      } else if (bos_) {
        out.push_back(*bos_);
      }
    }
    // SentencePiece itself never reads control pieces ("<s>") from text; when asked to, they are
    // cut out first and the text between them is encoded piece by piece.
    std::size_t seg = 0, i = 0;
    while (parse_special && i < text.size()) {
      int32_t hit = -1;
      for (int32_t id : controls_[static_cast<unsigned char>(text[i])]) {
        const std::string& p = sp_.IdToPiece(id);
        if (text.substr(i, p.size()) == p) {
          hit = id;
          break;
        }
      }
      if (hit < 0) {
        ++i;
        continue;
      }
      encode_segment(text.substr(seg, i - seg), out);
      out.push_back(hit);
      seg = i = i + sp_.IdToPiece(hit).size();
    }
    encode_segment(text.substr(seg), out);
    if (add_bos && has_template_) out.insert(out.end(), suffix_.begin(), suffix_.end());
    return out;
  }

  void set_template(std::vector<int32_t> prefix, std::vector<int32_t> suffix) override {
    for (const auto* ids : {&prefix, &suffix}) {
      for (int32_t id : *ids) {
        UNIATTN_CHECK(id >= 0 && id < size_, source_, ": template token id ", id,
                      " is outside the vocabulary [0, ", size_, ")");
      }
    }
    has_template_ = true;
    prefix_ = std::move(prefix);
    suffix_ = std::move(suffix);
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (run.empty()) return;
      std::string s;
      const auto status = guarded("decode failed", [&] { return sp_.Decode(run, &s); });
      UNIATTN_CHECK(status.ok(), source_, ": decode failed: ", status.ToString());
      out += s;
      run.clear();
    };
    for (int32_t id : ids) {
      UNIATTN_CHECK(id >= 0 && id < size_, source_, ": decode: token id ", id,
                    " is outside the vocabulary [0, ", size_, ")");
      if (sp_.IsControl(id)) {
        flush();
        if (!skip_special) out += sp_.IdToPiece(id);
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  std::string token_text(int32_t id) const override {
    UNIATTN_CHECK(id >= 0 && id < size_, source_, ": token id ", id,
                  " is outside the vocabulary [0, ", size_, ")");
    return sp_.IdToPiece(id);
  }
  int32_t vocab_size() const override { return size_; }
  std::optional<int32_t> find_token(std::string_view piece) const override {
    const int id = sp_.PieceToId(piece);
    if (id < 0 || id >= size_ || sp_.IdToPiece(id) != piece) return std::nullopt;
    return id;
  }

  void save(const std::filesystem::path& dir) const override {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    UNIATTN_CHECK(!ec, "tokenizer save: cannot create directory ", dir, ": ", ec.message());
    write_text_atomic(dir / "tokenizer.model", model_);
    nlohmann::ordered_json cfg;
    cfg["add_bos_token"] = adds_bos_;
    if (bos_) cfg["bos_token"] = sp_.IdToPiece(*bos_);
    if (eos_) cfg["eos_token"] = sp_.IdToPiece(*eos_);
    if (pad_) cfg["pad_token"] = sp_.IdToPiece(*pad_);
    if (sp_.unk_id() >= 0) cfg["unk_token"] = sp_.IdToPiece(sp_.unk_id());
    write_text_atomic(dir / "tokenizer_config.json", cfg.dump(2));
  }

 private:
  void encode_segment(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::vector<int> ids;
    const auto status = guarded("encode failed", [&] { return sp_.Encode(text, &ids); });
    UNIATTN_CHECK(status.ok(), source_, ": encode failed: ", status.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }

  // libsentencepiece reports most problems through its Status, but some of its parts throw
  // (darts-clone, building the piece trie: "zero-length key" for a piece of NUL bytes); any such
  // exception becomes our error naming the file.
  template <typename F>
  sentencepiece::util::Status guarded(const char* what, F&& f) const {
    try {
      return f();
    } catch (const std::exception& e) {
      fail(source_, ": ", what, ": ", e.what());
    }
  }

  std::string source_;
  std::string model_;  // the serialized model, written back by save()
  sentencepiece::SentencePieceProcessor sp_;
  int32_t size_ = 0;
  std::array<std::vector<int32_t>, 256> controls_;  // control pieces by first byte, longest first
  // What encode(add_bos = true) puts around the text when set (else bos_ before it).
  bool has_template_ = false;
  std::vector<int32_t> prefix_, suffix_;
};

}  // namespace

namespace tok {
std::unique_ptr<Tokenizer> make_spm_from_proto(std::string source, std::string model) {
  return std::make_unique<SpmTokenizer>(std::move(source), std::move(model));
}
}  // namespace tok

std::unique_ptr<Tokenizer> make_spm_tokenizer(const SpmVocab& vocab) {
  auto t = tok::make_spm_from_proto("SentencePiece vocab", tok::serialize_spm_model(vocab));
  t->set_adds_bos(vocab.add_bos);
  return t;
}

std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file) {
  UNIATTN_CHECK(std::filesystem::is_regular_file(model_file), model_file.string(),
                ": SentencePiece model file not found");
  return std::make_unique<SpmTokenizer>(model_file.string(),
                                        read_text_file(model_file, kMaxModelBytes));
}

}  // namespace uniattn
