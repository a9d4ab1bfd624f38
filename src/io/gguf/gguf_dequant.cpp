// Block dequantisation for the ggml tensor types, written from the published block layouts.
//
// Each kernel evaluates the same float32 expression, in the same order, as the reference
// dequantisers (e.g. Q4_1: (d * q) + m; K-quants: (d * scale) * q - (dmin * min)), so results
// are bit-identical to them: every step is a single IEEE-rounded float operation and the build
// uses no FMA contraction (ISO C++ mode, no -ffast-math).
#include <bit>
#include <cstring>

#include "dequant.h"

namespace uniattn::gguf_detail {
namespace {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes little-endian");

using u8 = uint8_t;

inline uint16_t load_u16(const u8* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t load_u32(const u8* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline float load_f16(const u8* p) { return half_to_float(load_u16(p)); }

// ---- legacy 32-element blocks ------------------------------------------------------------------
// Element j (< 16) is the low nibble of qs[j], element j + 16 the high nibble.

void q4_0(const u8* b, float* y) {  // d:f16, qs[16]
  const float d = load_f16(b);
  const u8* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0f) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void q4_1(const u8* b, float* y) {  // d:f16, m:f16, qs[16]
  const float d = load_f16(b), m = load_f16(b + 2);
  const u8* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0f) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

// 5-bit blocks: bit j of the little-endian u32 qh is the fifth bit of element j.
void q5_0(const u8* b, float* y) {  // d:f16, qh:u32, qs[16]
  const float d = load_f16(b);
  const uint32_t qh = load_u32(b + 2);
  const u8* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void q5_1(const u8* b, float* y) {  // d:f16, m:f16, qh:u32, qs[16]
  const float d = load_f16(b), m = load_f16(b + 2);
  const uint32_t qh = load_u32(b + 4);
  const u8* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

void q8_0(const u8* b, float* y) {  // d:f16, qs:int8[32]
  const float d = load_f16(b);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(static_cast<int8_t>(b[2 + j]));
}

// ---- K-quants: 256-element super-blocks -----------------------------------------------------

// Q4_K/Q5_K pack eight 6-bit scales and eight 6-bit mins into 12 bytes: bytes 0-3 hold the low
// 6 bits of scales 0-3 (top 2 bits: high bits of scales 4-7), bytes 4-7 the same for the mins,
// bytes 8-11 the low nibbles of scales 4-7 (low) and mins 4-7 (high).
void unpack_k_scales(const u8* s, u8* sc, u8* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 0x3f;
    mn[j] = s[j + 4] & 0x3f;
    sc[j + 4] = static_cast<u8>((s[j + 8] & 0x0f) | ((s[j] >> 6) << 4));
    mn[j + 4] = static_cast<u8>((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}

void q2_k(const u8* b, float* y) {  // scales[16] (lo: scale, hi: min), qs[64], d:f16, dmin:f16
  const u8* scales = b;
  const u8* qs = b + 16;
  const float d = load_f16(b + 80), dmin = load_f16(b + 82);
  // Output element h*128 + s*32 + l is bits 2s..2s+1 of qs[h*32 + l]; one scale per 16 elements.
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int half = 0; half < 2; ++half) {
        const int sb = h * 8 + s * 2 + half;
        const float dl = d * static_cast<float>(scales[sb] & 0x0f);
        const float ml = dmin * static_cast<float>(scales[sb] >> 4);
        for (int l = half * 16; l < half * 16 + 16; ++l) {
          const int q = (qs[h * 32 + l] >> (2 * s)) & 3;
          y[h * 128 + s * 32 + l] = dl * static_cast<float>(q) - ml;
        }
      }
    }
  }
}

void q3_k(const u8* b, float* y) {  // hmask[32], qs[64], scales[12], d:f16
  const u8* hmask = b;
  const u8* qs = b + 32;
  const u8* sp = b + 96;
  const float d = load_f16(b + 108);
  // Sixteen 6-bit signed scales (offset 32): low nibbles from bytes 0-7 (scales 0-7 in the low
  // nibbles, 8-15 in the high ones), the top 2 bits from bytes 8-11, 2 bits per scale.
  float dl[16];
  for (int i = 0; i < 16; ++i) {
    const int lo = (i < 8) ? (sp[i] & 0x0f) : (sp[i - 8] >> 4);
    const int hi = (sp[8 + (i % 4)] >> (2 * (i / 4))) & 3;
    dl[i] = d * static_cast<float>((lo | (hi << 4)) - 32);
  }
  // Element h*128 + s*32 + l: 2 low bits from qs[h*32 + l] >> 2s; the third bit is bit (h*4 + s)
  // of hmask[l], and a *clear* bit subtracts 4.
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int l = 0; l < 32; ++l) {
        const int k = h * 128 + s * 32 + l;
        const int ql = (qs[h * 32 + l] >> (2 * s)) & 3;
        const int hb = (hmask[l] >> (h * 4 + s)) & 1;
        y[k] = dl[k / 16] * static_cast<float>(ql - (hb ? 0 : 4));
      }
    }
  }
}

void q4_k(const u8* b, float* y) {  // d:f16, dmin:f16, scales[12], qs[128]
  const float d = load_f16(b), dmin = load_f16(b + 2);
  u8 sc[8], mn[8];
  unpack_k_scales(b + 4, sc, mn);
  const u8* qs = b + 16;
  // Sub-block j (32 elements) is nibble (j % 2) of qs[(j / 2) * 32 + l].
  for (int j = 0; j < 8; ++j) {
    const float dl = d * static_cast<float>(sc[j]);
    const float ml = dmin * static_cast<float>(mn[j]);
    const u8* q = qs + (j / 2) * 32;
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      y[j * 32 + l] = dl * static_cast<float>((q[l] >> shift) & 0x0f) - ml;
    }
  }
}

void q5_k(const u8* b, float* y) {  // d:f16, dmin:f16, scales[12], qh[32], qs[128]
  const float d = load_f16(b), dmin = load_f16(b + 2);
  u8 sc[8], mn[8];
  unpack_k_scales(b + 4, sc, mn);
  const u8* qh = b + 16;
  const u8* qs = b + 48;
  // As Q4_K, plus a fifth bit: bit j of qh[l] for sub-block j.
  for (int j = 0; j < 8; ++j) {
    const float dl = d * static_cast<float>(sc[j]);
    const float ml = dmin * static_cast<float>(mn[j]);
    const u8* q = qs + (j / 2) * 32;
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
      y[j * 32 + l] = dl * static_cast<float>(v) - ml;
    }
  }
}

void q6_k(const u8* b, float* y) {  // ql[128], qh[64], scales:int8[16], d:f16
  const u8* ql = b;
  const u8* qh = b + 128;
  const u8* sc = b + 192;
  const float d = load_f16(b + 208);
  // Each 128-element half h: element r gets its low 4 bits from nibble (r / 64) of
  // ql[h*64 + r % 64] and its high 2 bits from bits 2*(r / 32) of qh[h*32 + r % 32].
  for (int h = 0; h < 2; ++h) {
    for (int r = 0; r < 128; ++r) {
      const int k = h * 128 + r;
      const int lo = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
      const int hi = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 3;
      const float dl = d * static_cast<float>(static_cast<int8_t>(sc[k / 16]));
      y[k] = dl * static_cast<float>((lo | (hi << 4)) - 32);
    }
  }
}

void q8_k(const u8* b, float* y) {  // d:f32, qs:int8[256], bsums:int16[16] (unused here)
  float d;
  std::memcpy(&d, b, 4);
  for (int j = 0; j < 256; ++j) y[j] = d * static_cast<float>(static_cast<int8_t>(b[4 + j]));
}

void f16(const u8* b, float* y) { *y = load_f16(b); }
void bf16(const u8* b, float* y) { *y = bf16_to_float(load_u16(b)); }

template <void (*Kernel)(const u8*, float*), int kBlock, int kBytes>
void run(const std::byte* src, int64_t n_blocks, float* dst) {
  const u8* p = reinterpret_cast<const u8*>(src);
  for (int64_t i = 0; i < n_blocks; ++i) Kernel(p + i * kBytes, dst + i * kBlock);
}

}  // namespace

void dequantize_blocks(GgmlType type, const std::byte* src, int64_t n_blocks, float* dst) {
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<std::size_t>(n_blocks) * 4);
      return;
    case GgmlType::F16:
      return run<f16, 1, 2>(src, n_blocks, dst);
    case GgmlType::BF16:
      return run<bf16, 1, 2>(src, n_blocks, dst);
    case GgmlType::Q4_0:
      return run<q4_0, 32, 18>(src, n_blocks, dst);
    case GgmlType::Q4_1:
      return run<q4_1, 32, 20>(src, n_blocks, dst);
    case GgmlType::Q5_0:
      return run<q5_0, 32, 22>(src, n_blocks, dst);
    case GgmlType::Q5_1:
      return run<q5_1, 32, 24>(src, n_blocks, dst);
    case GgmlType::Q8_0:
      return run<q8_0, 32, 34>(src, n_blocks, dst);
    case GgmlType::Q2_K:
      return run<q2_k, 256, 84>(src, n_blocks, dst);
    case GgmlType::Q3_K:
      return run<q3_k, 256, 110>(src, n_blocks, dst);
    case GgmlType::Q4_K:
      return run<q4_k, 256, 144>(src, n_blocks, dst);
    case GgmlType::Q5_K:
      return run<q5_k, 256, 176>(src, n_blocks, dst);
    case GgmlType::Q6_K:
      return run<q6_k, 256, 210>(src, n_blocks, dst);
    case GgmlType::Q8_K:
      return run<q8_k, 256, 292>(src, n_blocks, dst);
    default:
      return;  // rejected when the file was opened
  }
}

}  // namespace uniattn::gguf_detail
