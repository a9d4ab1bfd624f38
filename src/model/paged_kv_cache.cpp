#include "uniattn/model/paged_kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "decoder_layer.h"
#include "forward_state.h"
#include "layers.h"
#include "uniattn/error.h"
#include "uniattn/model/layer_role.h"

namespace uniattn {

PagedKVCache::PagedKVCache(const ModelConfig& c, int64_t num_blocks, int64_t block_size,
                           at::ScalarType dtype, at::Device device, int64_t num_sliding_blocks)
    : block_size_(block_size), group_(c.num_layers, 0), k_(c.num_layers), v_(c.num_layers) {
  UNIATTN_CHECK(num_blocks > 0 && block_size > 0 && num_sliding_blocks >= 0,
                "paged KV cache: num_blocks (", num_blocks, ") and block_size (", block_size,
                ") must be positive, num_sliding_blocks (", num_sliding_blocks, ") >= 0");
  const bool split = num_sliding_blocks > 0 && mixes_windows(c);
  num_blocks_[0] = num_blocks;
  num_blocks_[1] = split ? num_sliding_blocks : 0;
  auto opts = at::TensorOptions().dtype(dtype).device(device);
  for (const LayerRole& r : layer_roles(c)) {
    const int g = split && c.layer_is_sliding(r.layer) ? 1 : 0;
    group_[r.layer] = g;
    const int64_t slots = num_blocks_[g] * block_size + 1;  // + scratch_slot(g)
    if (r.keeps_k) k_[r.layer] = at::zeros({slots, c.num_kv_heads, c.head_dim}, opts);
    if (r.keeps_v) v_[r.layer] = at::zeros({slots, c.num_kv_heads, c.head_dim}, opts);
  }
  if (split) {
    bytes_per_block_[0] = bytes_per_block(c, block_size, dtype, false);
    bytes_per_block_[1] = bytes_per_block(c, block_size, dtype, true);
    kept_window_[1] = c.sliding_window;
  } else {
    bytes_per_block_[0] = bytes_per_block(c, block_size, dtype);
    kept_window_[0] = kept_window(c);
  }
  auto freq = at::TensorOptions().dtype(at::kFloat).device(device);
  inv_freq_global_ = rope_inv_freq(c.rope, c.head_dim).to(freq);
  inv_freq_local_ = rope_inv_freq(c.rope_local, c.head_dim).to(freq);
}

int64_t PagedKVCache::kept_window(const ModelConfig& c) {
  bool all_sliding = c.sliding_window > 0 && c.num_layers > 0;
  for (int64_t l = 0; l < c.num_layers; ++l) all_sliding = all_sliding && c.layer_is_sliding(l);
  return all_sliding ? c.sliding_window : 0;
}

bool PagedKVCache::mixes_windows(const ModelConfig& c) {
  bool sliding = false, global = false;
  for (int64_t l = 0; l < c.num_layers; ++l) (c.layer_is_sliding(l) ? sliding : global) = true;
  return c.sliding_window > 0 && sliding && global;
}

namespace {
int64_t planes_bytes(const ModelConfig& c, int64_t block_size, at::ScalarType dtype,
                     int sliding_filter) {  // -1: every layer; 0 / 1: global / sliding ones
  int64_t planes = 0;
  for (const LayerRole& r : layer_roles(c))
    if (sliding_filter < 0 || int(c.layer_is_sliding(r.layer)) == sliding_filter)
      planes += int64_t(r.keeps_k) + int64_t(r.keeps_v);
  return planes * block_size * c.num_kv_heads * c.head_dim * at::elementSize(dtype);
}
}  // namespace

int64_t PagedKVCache::bytes_per_block(const ModelConfig& c, int64_t block_size,
                                      at::ScalarType dtype) {
  return planes_bytes(c, block_size, dtype, -1);
}

int64_t PagedKVCache::bytes_per_block(const ModelConfig& c, int64_t block_size,
                                      at::ScalarType dtype, bool sliding_layers) {
  return planes_bytes(c, block_size, dtype, sliding_layers ? 1 : 0);
}

namespace {

at::Tensor write_and_gather(const at::Tensor& pool, const PagedStep& s, const at::Tensor& x,
                            int64_t layer, const char* what) {
  UNIATTN_CHECK(pool.defined(), "paged KV cache: layer ", layer, " keeps no ", what);
  const auto& g = s.group[s.cache->group_of(layer)];
  const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3);
  auto rows = x.transpose(1, 2).reshape({b * t, h, d}).index_select(0, s.write_rows);
  pool.index_copy_(0, g.write_slots, rows.to(pool.scalar_type()));
  const int64_t l = g.read_slots.size(1);
  return pool.index_select(0, g.read_slots.reshape({-1})).view({b, l, h, d}).transpose(1, 2);
}

int64_t slot_of(const std::vector<int32_t>& table, int64_t pos, int64_t block_size,
                int64_t num_blocks, size_t row) {
  const auto blk = static_cast<size_t>(pos / block_size);
  UNIATTN_CHECK(blk < table.size(), "paged batch: row ", row, "'s block table has ", table.size(),
                " blocks; position ", pos, " needs ", blk + 1);
  const int64_t id = table[blk];
  UNIATTN_CHECK(id >= 0 && id < num_blocks, "paged batch: row ", row, " names block ", id,
                " outside the pool of ", num_blocks);
  return id * block_size + pos % block_size;
}

void check_batch(const PagedKVCache& cache, const PagedBatch& pb) {
  const size_t b = pb.query_lens.size();
  UNIATTN_CHECK(pb.context_lens.size() == b && pb.block_tables.size() == b,
                "paged batch: context_lens, query_lens and block_tables differ in length");
  UNIATTN_CHECK(cache.num_groups() == 1 || pb.sliding_block_tables.size() == b,
                "paged batch: the cache keeps sliding layers in blocks of their own, so each row "
                "needs a sliding block table (",
                pb.sliding_block_tables.size(), " for ", b, " rows)");
}

// Group g's slots to write and read: row i's keys from cache.first_key(context_lens[i], g) on.
// `max_len` gets the keys read per row, at most.
PagedStep::Group group_step(const PagedKVCache& cache, const PagedBatch& pb, int g, int64_t t,
                            at::Device dev, int64_t& max_len) {
  const size_t b = pb.query_lens.size();
  max_len = 1;
  std::vector<int64_t> starts(b);
  for (size_t i = 0; i < b; ++i) {
    starts[i] = cache.first_key(pb.context_lens[i], g);
    max_len = std::max(max_len, pb.context_lens[i] + pb.query_lens[i] - starts[i]);
  }
  const int64_t bs = cache.block_size(), nb = cache.num_blocks(g);
  std::vector<int64_t> wslots, read(b * max_len, 0);
  for (size_t i = 0; i < b; ++i) {
    const int64_t ctx = pb.context_lens[i], len = ctx + pb.query_lens[i];
    const auto& table = pb.table(i, g);
    for (int64_t j = 0; j < pb.query_lens[i]; ++j)
      wslots.push_back(slot_of(table, ctx + j, bs, nb, i));
    // Padding keys (past the row's length) read the row's first key slot; the mask hides them.
    for (int64_t j = 0; j < max_len; ++j)
      read[i * max_len + j] = slot_of(table, std::min(starts[i] + j, len - 1), bs, nb, i);
  }
  PrefillRows rows{pb.query_lens, {}};
  for (size_t i = 0; i < b; ++i)
    rows.key_lens.push_back(pb.context_lens[i] + pb.query_lens[i] - starts[i]);
  auto opts = at::TensorOptions().dtype(at::kLong);
  return {at::tensor(wslots, opts).to(dev),
          at::tensor(read, opts).view({static_cast<int64_t>(b), max_len}).to(dev),
          at::tensor(starts, opts).to(dev), std::move(rows)};
}

// The slots of every group, and the positions [B, T] of the new tokens; max_len[g] as above.
PagedStep build_step(PagedKVCache& cache, const PagedBatch& pb, int64_t t, at::Device dev,
                     at::Tensor& positions, int64_t (&max_len)[2]) {
  check_batch(cache, pb);
  const size_t b = pb.query_lens.size();
  std::vector<int64_t> wrows, pos(b * t);
  for (size_t i = 0; i < b; ++i) {
    UNIATTN_CHECK(pb.query_lens[i] >= 1 && pb.query_lens[i] <= t && pb.context_lens[i] >= 0,
                  "paged batch: row ", i, " has query_len ", pb.query_lens[i], " (input has ", t,
                  " columns) and context_len ", pb.context_lens[i]);
    for (int64_t j = 0; j < t; ++j) pos[i * t + j] = pb.context_lens[i] + j;
    for (int64_t j = 0; j < pb.query_lens[i]; ++j) wrows.push_back(static_cast<int64_t>(i) * t + j);
  }
  auto opts = at::TensorOptions().dtype(at::kLong);
  positions = at::tensor(pos, opts).view({static_cast<int64_t>(b), t}).to(dev);
  PagedStep s;
  s.cache = &cache;
  s.write_rows = at::tensor(wrows, opts).to(dev);
  for (int g = 0; g < cache.num_groups(); ++g)
    s.group[g] = group_step(cache, pb, g, t, dev, max_len[g]);
  return s;
}

// bool [B, 1, T, L]: a real query (t < query_len) sees the keys at positions <= its own (and
// within the window); key j of row i is at position key_start[i] + j. A padding query sees key 0
// only, so its softmax row stays finite.
at::Tensor paged_mask(const at::Tensor& positions, const at::Tensor& key_start,
                      const at::Tensor& query_lens, int64_t max_len, int64_t window) {
  const auto dev = positions.device();
  auto opts = at::TensorOptions().dtype(at::kLong).device(dev);
  const int64_t b = positions.size(0), t = positions.size(1);
  auto q = positions.unsqueeze(2);                           // [B, T, 1]
  auto j = at::arange(max_len, opts).view({1, 1, max_len});  // [1, 1, L]
  auto kpos = key_start.view({b, 1, 1}) + j;                 // [B, 1, L]
  auto m = kpos <= q;
  if (window > 0) m = m & (kpos > q - window);
  auto pad = at::arange(t, opts).view({1, t}) >= query_lens.view({b, 1});  // [B, T]
  m = at::where(pad.unsqueeze(2), j == 0, m);
  return m.unsqueeze(1);
}

}  // namespace

at::Tensor PagedStep::write_k(int64_t layer, const at::Tensor& x) const {
  return write_and_gather(cache->k_pool(layer), *this, x, layer, "K");
}

at::Tensor PagedStep::write_v(int64_t layer, const at::Tensor& x) const {
  return write_and_gather(cache->v_pool(layer), *this, x, layer, "V");
}

PagedDecodeInputs PagedDecodeInputs::to(at::Device device) const {
  auto move = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  return {move(block_tables), move(seqlens), move(write_slots), move(sliding_block_tables),
          move(sliding_write_slots)};
}

namespace {
// Group g's block tables [rows, width] (-1 past each table's end) and the slots of the rows' new
// tokens (scratch_slot(g) for padding rows). Every block the kernels read (from the oldest kept
// key on) or write must be in the group's pool.
std::pair<at::Tensor, at::Tensor> decode_tables(const PagedKVCache& cache, const PagedBatch& pb,
                                                int g, int64_t rows, int64_t width) {
  const int64_t bs = cache.block_size(), nb = cache.num_blocks(g);
  auto tables = at::full({rows, width}, -1, at::TensorOptions().dtype(at::kInt));
  auto slots = at::full({rows}, cache.scratch_slot(g), at::TensorOptions().dtype(at::kLong));
  auto t = tables.accessor<int32_t, 2>();
  auto w = slots.accessor<int64_t, 1>();
  for (size_t i = 0; i < pb.query_lens.size(); ++i) {
    const int64_t ctx = pb.context_lens[i];
    const auto& bt = pb.table(i, g);
    UNIATTN_CHECK(int64_t(bt.size()) <= width, "paged decode: row ", i, "'s block table has ",
                  bt.size(), " blocks, more than max_blocks = ", width);
    for (int64_t pos = cache.first_key(ctx, g) / bs * bs; pos <= ctx; pos += bs)
      slot_of(bt, pos, bs, nb, i);
    for (size_t j = 0; j < bt.size(); ++j) t[int64_t(i)][int64_t(j)] = bt[j];
    w[int64_t(i)] = slot_of(bt, ctx, bs, nb, i);
  }
  return {tables, slots};
}
}  // namespace

PagedDecodeInputs paged_decode_inputs(const PagedKVCache& cache, const PagedBatch& pb, int64_t rows,
                                      int64_t max_blocks) {
  check_batch(cache, pb);
  const size_t b = pb.query_lens.size();
  UNIATTN_CHECK(rows >= int64_t(b), "paged decode: ", rows, " rows cannot hold a batch of ", b);
  if (max_blocks <= 0) {  // the longest table of any group
    for (size_t i = 0; i < b; ++i)
      for (int g = 0; g < cache.num_groups(); ++g)
        max_blocks = std::max<int64_t>(max_blocks, int64_t(pb.table(i, g).size()));
  }
  max_blocks = std::max<int64_t>(max_blocks, 1);
  PagedDecodeInputs in;
  in.seqlens = at::zeros({rows}, at::TensorOptions().dtype(at::kInt));
  auto seqlens = in.seqlens.accessor<int32_t, 1>();
  for (size_t i = 0; i < b; ++i) {
    const int64_t ctx = pb.context_lens[i];
    UNIATTN_CHECK(pb.query_lens[i] == 1 && ctx >= 0 && ctx < INT32_MAX, "paged decode: row ", i,
                  " has query_len ", pb.query_lens[i], " and context_len ", ctx,
                  " (one new token per row, a context below 2^31)");
    seqlens[int64_t(i)] = static_cast<int32_t>(ctx + 1);
  }
  std::tie(in.block_tables, in.write_slots) = decode_tables(cache, pb, 0, rows, max_blocks);
  if (cache.num_groups() == 2)
    std::tie(in.sliding_block_tables, in.sliding_write_slots) =
        decode_tables(cache, pb, 1, rows, max_blocks);
  return in;
}

at::Tensor paged_decode_forward(CausalLM& model, const at::Tensor& tokens, PagedKVCache& cache,
                                const PagedDecodeInputs& in) {
  auto& m = *model;
  const auto& c = m.config();
  const int64_t b = tokens.size(0);
  UNIATTN_CHECK(tokens.dim() == 2 && tokens.size(1) == 1 && in.block_tables.dim() == 2 &&
                    in.block_tables.size(0) == b && in.seqlens.numel() == b &&
                    in.write_slots.numel() == b,
                "paged_decode_forward: tokens ", tokens.sizes(), " (one per row), block_tables ",
                in.block_tables.sizes(), ", seqlens ", in.seqlens.sizes(), " and write_slots ",
                in.write_slots.sizes(), " must agree in rows");
  UNIATTN_CHECK(cache.num_groups() == 1 ||
                    (in.sliding_block_tables.defined() && in.sliding_block_tables.size(0) == b &&
                     in.sliding_write_slots.numel() == b),
                "paged_decode_forward: the cache keeps sliding layers in blocks of their own: "
                "sliding_block_tables and sliding_write_slots must have one row per token");
  const PagedDecode pd{
      &cache, {in.block_tables, in.sliding_block_tables}, {in.write_slots, in.sliding_write_slots}};
  ForwardState s;
  s.tokens = 1;
  s.paged_decode = &pd;
  s.cache_seqlens = in.seqlens;
  s.shared.resize(c.num_layers);
  const auto positions = (in.seqlens.to(at::kLong) - 1).clamp_min(0).view({b, 1});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const bool sliding = c.layer_is_sliding(l);
    auto& tables = sliding ? s.rope_sliding : s.rope_global;
    if (!tables.first.defined())
      tables = rope_tables(cache.inv_freq(sliding), positions, m.dtype());
  }
  auto x = m.embed(tokens);
  at::Tensor pending;
  for (int64_t l = 0; l < c.num_layers; ++l)
    std::tie(x, pending) = m.layer(l)->forward_deferred(x, pending, s);
  return m.logits(x + pending, false);
}

namespace {
// A decode batch (one token per row) through paged_decode_forward.
at::Tensor decode_batch(CausalLM& model, const at::Tensor& input_ids, PagedKVCache& cache,
                        const PagedBatch& pb) {
  const auto in = paged_decode_inputs(cache, pb, int64_t(pb.query_lens.size()), 0);
  const auto dev = input_ids.device();
  return paged_decode_forward(model, input_ids, cache, in.to(dev));
}
}  // namespace

at::Tensor paged_forward(CausalLM& model, const at::Tensor& input_ids, PagedKVCache& cache,
                         const PagedBatch& pb, bool last_only) {
  auto& m = *model;
  const auto& c = m.config();
  UNIATTN_CHECK(input_ids.dim() == 2 && input_ids.size(0) == int64_t(pb.query_lens.size()),
                "paged_forward: input_ids ", input_ids.sizes(), " do not match a batch of ",
                pb.query_lens.size(), " rows");
  if (input_ids.size(1) == 1) return decode_batch(model, input_ids, cache, pb);
  const auto dev = input_ids.device();
  at::Tensor positions;
  int64_t max_len[2] = {0, 0};
  const PagedStep step = build_step(cache, pb, input_ids.size(1), dev, positions, max_len);
  const int sg = cache.num_groups() - 1;  // the sliding layers' group
  // One upload of the query lengths, for both masks and the last-token gather.
  const auto query_lens = at::tensor(pb.query_lens, at::TensorOptions().dtype(at::kLong)).to(dev);
  auto s = m.begin(input_ids, nullptr, ForwardOptions{});
  s->paged = &step;
  s->unpadded = false;
  s->causal_global = s->causal_sliding = false;
  if (s->mask_global.defined()) {
    s->mask_global = paged_mask(positions, step.group[0].key_start, query_lens, max_len[0], 0);
    s->rope_global = rope_tables(cache.inv_freq(false), positions, m.dtype());
  }
  if (s->mask_sliding.defined()) {
    s->mask_sliding =
        paged_mask(positions, step.group[sg].key_start, query_lens, max_len[sg], c.sliding_window);
    s->rope_sliding = rope_tables(cache.inv_freq(true), positions, m.dtype());
  }
  auto x = m.embed(input_ids);
  at::Tensor pending;
  for (int64_t l = 0; l < c.num_layers; ++l)
    std::tie(x, pending) = m.layer(l)->forward_deferred(x, pending, *s);
  x = x + pending;
  if (last_only) {
    const auto last = query_lens - 1;
    x = x.gather(1, last.view({-1, 1, 1}).expand({x.size(0), 1, x.size(2)}));
  }
  return m.logits(x, false);
}

}  // namespace uniattn
