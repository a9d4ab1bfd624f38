// What the instruction-record and chat-record tokenisers share: cutting an example to max_len
// tokens and the keep/drop bookkeeping of TokenizeStats.
#pragma once
#include <utility>
#include <vector>

#include "uniattn/data/records.h"

namespace uniattn {

// Keeps the first max_len tokens of ex (ids and loss mask) and marks it truncated when it had more.
inline void truncate_example(TokenizedExample& ex, int64_t max_len) {
  if (static_cast<int64_t>(ex.ids.size()) <= max_len) return;
  ex.ids.resize(max_len);
  ex.loss_mask.resize(max_len);
  ex.truncated = true;
}

// Appends ex to out, counting it in st: kept, or dropped when (after truncation) no token is a
// target. st.records is the caller's to count.
inline void keep_if_targeted(std::vector<TokenizedExample>& out, TokenizedExample&& ex,
                             TokenizeStats& st) {
  if (ex.truncated) ++st.truncated;
  if (ex.target_tokens() == 0) {
    ++st.dropped_no_target;
    return;
  }
  ++st.kept;
  out.push_back(std::move(ex));
}

}  // namespace uniattn
