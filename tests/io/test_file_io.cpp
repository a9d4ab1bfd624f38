#include <fstream>

#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

using namespace uniattn;

TEST(FileIO, AtomicWriteReplacesWholeFile) {
  auto dir = test::scratch_dir();
  write_text_atomic(dir / "a.txt", "first");
  write_text_atomic(dir / "a.txt", "second");
  EXPECT_EQ(read_text_file(dir / "a.txt"), "second");
  // No temporaries are left behind.
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) n += e.is_regular_file();
  EXPECT_EQ(n, 1);
}

TEST(FileIO, FailedWriteKeepsOldFile) {
  auto dir = test::scratch_dir();
  write_text_atomic(dir / "a.txt", "keep me");
  EXPECT_THROW(write_file_atomic(dir / "a.txt", [](std::FILE*) { fail("disk on fire"); }), Error);
  EXPECT_EQ(read_text_file(dir / "a.txt"), "keep me");
}

TEST(FileIO, MappedSliceIsBoundsChecked) {
  auto dir = test::scratch_dir();
  write_text_atomic(dir / "b.bin", "0123456789");
  auto f = MappedFile::open(dir / "b.bin");
  EXPECT_EQ(f->size(), 10u);
  EXPECT_EQ(static_cast<char>(f->slice(2, 3, "x")[0]), '2');
  EXPECT_THROW(f->slice(8, 3, "tensor t"), Error);
  EXPECT_THROW(f->slice(~0ull, 2, "tensor t"), Error);
  try {
    f->slice(5, 100, "tensor 'w'");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'w'"), std::string::npos);
  }
  EXPECT_THROW(MappedFile::open(dir / "missing.bin"), Error);
}
