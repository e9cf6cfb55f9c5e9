// Scalar emulation of the bf16 instructions used by the bf16 distance GEMM, rounding exactly as the
// hardware does (so that tests on a CPU without AVX512-BF16 check the same numbers, and tests on a CPU
// with it check the hardware against this, bit for bit: tests/ops/test_knn_bf16.py).
//
// vcvtneps2bf16 (float32 -> bf16): denormal inputs -> signed zero (DAZ), NaN -> quiet NaN, otherwise
// round to nearest even (overflow -> inf).
// vdpbf16ps, one lane: acc = step(step(acc, a[2p+1], b[2p+1]), a[2p], b[2p]) where step(t, x, y) is the
// exact t + x * y (bf16 x bf16 products are exact in float32 unless they under/overflow) rounded once to
// nearest even, then flushed to a signed zero when the exact value is below 2^-126 in magnitude
// (tininess detected before rounding); denormal inputs count as zero. Measured on AMD Zen 4 (the odd
// element is added first: acc = 1, products 2^-24 (even) and 2^-23 (odd) gives 1 + 2^-22, the other
// order 1 + 2^-23; a fused three-way sum would round 1 + 2^-24 + 2^-24 to 1 + 2^-23, the hardware gives 1).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastad::cpu::bf16emu {

inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

/// float32 -> bf16 bits as vcvtneps2bf16.
inline uint16_t to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7f800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);  // zero / denormal (DAZ)
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// bf16 bits -> float32 with DAZ (a denormal bf16 reads as a signed zero).
inline float from_bf16_daz(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  return (u & 0x7f800000u) == 0 ? bits_f32(u & 0x80000000u) : bits_f32(u);
}

/// t + x * y rounded once to nearest even, with denormal inputs read as zero (DAZ) and a result whose
/// exact value is below 2^-126 in magnitude flushed to a signed zero (FTZ, tininess before rounding).
/// x * y must be exact in double (x, y float32: 24 + 24 significant bits).
inline float fma_ftz(float t, float x, float y) {
  const auto daz = [](float v) { return (f32_bits(v) & 0x7f800000u) == 0 ? bits_f32(f32_bits(v) & 0x80000000u) : v; };
  t = daz(t), x = daz(x), y = daz(y);
  const float r = std::fma(x, y, t);
  if (!std::isfinite(r)) return r;
  // Exact value t + x*y = s + e (TwoSum in double; x*y is exact in double: 8 x 8 significant bits).
  const double p = static_cast<double>(x) * static_cast<double>(y), td = t;
  const double s = p + td, bb = s - p, e = (p - (s - bb)) + (td - bb);
  constexpr double kMinNormal = 1.1754943508222875e-38;  // 2^-126
  const double as = std::fabs(s);
  const bool tiny = as < kMinNormal || (as == kMinNormal && e != 0.0 && std::signbit(e) != std::signbit(s));
  if (tiny && (s != 0.0 || e != 0.0)) return std::copysign(0.f, static_cast<float>(s != 0.0 ? s : e));
  return r;
}

/// One multiply-add step of vdpbf16ps: t + x * y (bf16 x, y), rounded to nearest even, DAZ / FTZ.
inline float dp_step(float t, uint16_t xb, uint16_t yb) { return fma_ftz(t, from_bf16_daz(xb), from_bf16_daz(yb)); }

/// The emulated micro-kernel: same operands and outputs as micro_bf16_avx512 (dist_kernels.h).
inline void micro_bf16_emu(int panels, int64_t kc2, const uint32_t* A, int64_t panel_stride, const uint32_t* B,
                           float* C, int64_t ldc, bool accumulate) {
  for (int r = 0; r < 6 * panels; ++r) {
    const uint32_t* a = A + (r / 6) * panel_stride + r % 6;
    for (int j = 0; j < 16; ++j) {
      float acc = accumulate ? C[r * ldc + j] : 0.f;
      for (int64_t p = 0; p < kc2; ++p) {
        const uint32_t av = a[p * 6], bv = B[p * 16 + j];
        acc = dp_step(acc, static_cast<uint16_t>(av >> 16), static_cast<uint16_t>(bv >> 16));
        acc = dp_step(acc, static_cast<uint16_t>(av & 0xffffu), static_cast<uint16_t>(bv & 0xffffu));
      }
      C[r * ldc + j] = acc;
    }
  }
}

/// The emulated row conversion: same outputs as bf16_rows_avx512 (dist_kernels.h), except that the
/// three sums are accumulated in another order (they feed an error bound that allows for it).
inline void bf16_rows_emu(const float* x, int64_t rows, int64_t D, const float* c, uint16_t* out, int64_t ldo,
                          float* sums) {
  for (int64_t r = 0; r < rows; ++r) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f;
    for (int64_t k = 0; k < D; ++k) {
      const float v = c ? x[r * D + k] - c[k] : x[r * D + k];
      const uint16_t h = to_bf16(v);
      out[r * ldo + k] = h;
      const float w = bits_f32(static_cast<uint32_t>(h) << 16), e = w - v;
      s0 = std::fma(v, v, s0), s1 = std::fma(w, w, s1), s2 = std::fma(e, e, s2);
    }
    for (int64_t k = D; k < ldo; ++k) out[r * ldo + k] = 0;
    if (sums) sums[3 * r] = s0, sums[3 * r + 1] = s1, sums[3 * r + 2] = s2;
  }
}

}  // namespace fastad::cpu::bf16emu
