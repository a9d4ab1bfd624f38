// The host-side bound of the CUDA-graph decoder (cuda_graph_decoder.cpp), outside the CUDA-only
// class so that it is built and tested in every build.
#pragma once
#include <cstdint>

namespace uniattn {

// Throws uniattn::Error, naming the position and the capacity, unless `n` more tokens fit in a KV
// cache that holds `length` tokens of `max_seq`. CudaGraphDecoder::step calls it before it writes
// anything: the captured step writes K and V at a device-side position that nothing bounds.
void check_decode_room(int64_t length, int64_t max_seq, int64_t n);

}  // namespace uniattn
