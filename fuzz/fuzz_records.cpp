// Instruction data: a JSON array or JSON Lines of records (first byte picks the file name
// extension and whether the alpaca or tulu template's required fields are checked).
#include "fuzz_util.h"
#include "uniattn/data/records.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  if (size < 1) return 0;
  const auto path = fuzz::write_input(data[0] & 1 ? "data.jsonl" : "data.json",
                                      fuzz::as_text(data + 1, size - 1));
  const auto tmpl = data[0] & 2 ? PromptTemplate::alpaca() : PromptTemplate::tulu();
  fuzz::expect_ok_or_error([&] {
    auto recs = load_records(path, data[0] & 4 ? &tmpl : nullptr);
    for (const auto& r : recs) fuzz::expect_ok_or_error([&] { (void)tmpl.render_prompt(r); });
  });
  return 0;
}
