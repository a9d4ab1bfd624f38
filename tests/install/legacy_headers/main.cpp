// Every public header of uniattn 0.1 by its old path; each names one of its declarations, so a
// forwarding header that lost its target fails to compile.
#include "uniattn/calibrate.h"
#include "uniattn/checkpoint.h"
#include "uniattn/config.h"
#include "uniattn/data.h"
#include "uniattn/eval.h"
#include "uniattn/file_io.h"
#include "uniattn/generate.h"
#include "uniattn/gguf.h"
#include "uniattn/jsonl.h"
#include "uniattn/kv_cache.h"
#include "uniattn/mc_data.h"
#include "uniattn/model.h"
#include "uniattn/safetensors.h"
#include "uniattn/sampling.h"
#include "uniattn/superblock.h"
#include "uniattn/tokenizer.h"
#include "uniattn/train.h"
#include "uniattn/train_config.h"

#include <cstdio>

int main() {
  // One declaration from each stage the old headers forward to.
  [[maybe_unused]] auto* load = &uniattn::load_model;
  [[maybe_unused]] auto* calibrate = &uniattn::calibrate;
  [[maybe_unused]] auto* train = &uniattn::train;
  [[maybe_unused]] auto* mc = &uniattn::load_mc_jsonl;
  uniattn::UniAttnSpec spec = uniattn::UniAttnSpec::from_range(uniattn::Variant::UniAttn, 2, 2, 4, 4);
  std::printf("legacy headers: %s\n", spec.describe().c_str());
  return spec.num_followers() == 1 ? 0 : 1;
}
