// Multiple-choice JSONL files (ARC, MMLU, MedMCQA, MedQA as scripts/prepare_eval_data.py writes).
#include "fuzz_util.h"
#include "uniattn/data/mc_data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  if (size < 1) return 0;
  const auto path = fuzz::write_input("mc.jsonl", fuzz::as_text(data + 1, size - 1));
  fuzz::expect_ok_or_error([&] { (void)load_mc_jsonl(path, data[0] % 4); });
  return 0;
}
