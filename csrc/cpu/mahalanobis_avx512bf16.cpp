// AVX-512 BF16 Mahalanobis rows (vdpbf16ps): a bfloat16 factor times bfloat16 centred rows with
// float32 accumulation: each instruction does two multiply-adds per lane, twice the FP32 FMA rate.
// Compiled with -mavx512f -mavx512bf16 (CMakeLists: *_avx512bf16.cpp); called only when
// maha_use_bf16_dot() (cpuid avx512_bf16). No torch or standard-library headers (see mahalanobis_avx512.cpp).
#include <immintrin.h>

#include <cstdint>

namespace fastad::cpu {

void maha_rows_bf16_avx512(const uint16_t* packed, const uint16_t* xcb, int64_t ld, int64_t nrows, int64_t d,
                           float* out) {
  for (int64_t r0 = 0; r0 < nrows; r0 += 6) {
    const uint16_t* x0 = xcb + r0 * ld;
    __m512 ss[6];
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) ss[r] = _mm512_setzero_ps();
    const uint16_t* pk = packed;
    for (int64_t j0 = 0; j0 < d; j0 += 32) {
      __m512 c0[6], c1[6];
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
      for (int64_t k = j0; k < d; k += 2) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(pk), b1 = (__m512bh)_mm512_load_si512(pk + 32);
        pk += 64;
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) {
          int32_t pair;
          __builtin_memcpy(&pair, x0 + r * ld + k, 4);
          const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
          c0[r] = _mm512_dpbf16_ps(c0[r], a, b0);
          c1[r] = _mm512_dpbf16_ps(c1[r], a, b1);
        }
      }
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) {
        ss[r] = _mm512_fmadd_ps(c0[r], c0[r], ss[r]);
        ss[r] = _mm512_fmadd_ps(c1[r], c1[r], ss[r]);
      }
    }
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) out[r0 + r] = _mm512_reduce_add_ps(ss[r]);
  }
}

}  // namespace fastad::cpu
