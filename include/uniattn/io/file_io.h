// Small file primitives shared by the checkpoint readers and writers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>

namespace uniattn {

// A read-only memory-mapped file. Readers take spans into it and must bounds-check every offset
// they read against size().
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }
  // The bytes [offset, offset + length); throws uniattn::Error (naming `what`) if out of range.
  std::span<const std::byte> slice(std::uint64_t offset, std::uint64_t length,
                                   const std::string& what) const;

 private:
  MappedFile() = default;
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// Writes a file atomically: `write` fills a temporary file next to `path`, which is flushed,
// fsync'ed and renamed over `path`. On any failure the temporary is removed and `path` is untouched.
void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(std::FILE*)>& write);
void write_text_atomic(const std::filesystem::path& path, const std::string& text);
// Removes a file or a directory tree (no error if absent). Use this instead of
// std::filesystem::remove_all: libtorch.so exports its own copy of std::filesystem, and in a
// process that loads it, calls to remove_all bind to that copy, which crashes.
void remove_tree(const std::filesystem::path& path);

std::string read_text_file(const std::filesystem::path& path, std::size_t max_bytes = 64u << 20);

// 64-bit FNV-1a (Fowler, Noll, Vo; http://www.isthe.com/chongo/tech/comp/fnv/) of n bytes at p,
// continuing from `h`: what calibration and training fingerprint their inputs with so that a
// resumed run can tell whether its inputs changed. Not a cryptographic hash.
inline constexpr std::uint64_t kFnv1aOffsetBasis = 14695981039346656037ull;
std::uint64_t fnv1a(std::uint64_t h, const void* p, std::size_t n);
// fnv1a over a whole file's bytes (memory-mapped); throws uniattn::Error if it cannot be read.
std::uint64_t fnv1a_file(const std::filesystem::path& path, std::uint64_t h = kFnv1aOffsetBasis);

}  // namespace uniattn
