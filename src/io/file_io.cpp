#include "uniattn/io/file_io.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "uniattn/error.h"

namespace uniattn {

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  UNIATTN_CHECK(fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat ", path, ": ", std::strerror(errno));
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<std::size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail("cannot mmap ", path, ": ", std::strerror(errno));
    }
    f->data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

std::span<const std::byte> MappedFile::slice(std::uint64_t offset, std::uint64_t length,
                                             const std::string& what) const {
  UNIATTN_CHECK(offset <= size_ && length <= size_ - offset, path_.string(), ": ", what,
                " spans bytes [", offset, ", ", offset + length, ") but the file has only ", size_,
                " bytes (truncated or corrupt file?)");
  return {data_ + offset, static_cast<std::size_t>(length)};
}

void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(std::FILE*)>& write) {
  auto dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::filesystem::create_directories(dir);
  auto tmp = dir / ("." + path.filename().string() + ".tmp" + std::to_string(::getpid()));
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  UNIATTN_CHECK(f, "cannot create ", tmp, ": ", std::strerror(errno));
  try {
    write(f);
    UNIATTN_CHECK(std::fflush(f) == 0, "cannot write ", tmp, ": ", std::strerror(errno));
    UNIATTN_CHECK(::fsync(::fileno(f)) == 0, "cannot fsync ", tmp, ": ", std::strerror(errno));
    UNIATTN_CHECK(std::ferror(f) == 0, "write error on ", tmp);
  } catch (...) {
    std::fclose(f);
    std::filesystem::remove(tmp);
    throw;
  }
  std::fclose(f);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    fail("cannot rename ", tmp, " to ", path, ": ", ec.message());
  }
  // Make the rename itself durable.
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_text_atomic(const std::filesystem::path& path, const std::string& text) {
  write_file_atomic(path, [&](std::FILE* f) {
    UNIATTN_CHECK(std::fwrite(text.data(), 1, text.size(), f) == text.size(), "cannot write ",
                  path);
  });
}

void remove_tree(const std::filesystem::path& path) {
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0) return;
  auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) {
    return ::remove(p) == 0 ? 0 : -1;
  };
  UNIATTN_CHECK(::nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove ",
                path, ": ", std::strerror(errno));
}

std::string read_text_file(const std::filesystem::path& path, std::size_t max_bytes) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  UNIATTN_CHECK(!ec, "cannot read ", path, ": ", ec.message());
  UNIATTN_CHECK(size <= max_bytes, path, " is ", size, " bytes, more than the limit of ", max_bytes);
  std::ifstream in(path, std::ios::binary);
  UNIATTN_CHECK(in, "cannot open ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::uint64_t fnv1a(std::uint64_t h, const void* p, std::size_t n) {
  const auto* c = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ c[i]) * 1099511628211ull;
  return h;
}

std::uint64_t fnv1a_file(const std::filesystem::path& path, std::uint64_t h) {
  const auto f = MappedFile::open(path);
  return fnv1a(h, f->data(), f->size());
}

}  // namespace uniattn
