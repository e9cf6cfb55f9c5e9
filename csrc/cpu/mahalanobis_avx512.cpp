// AVX-512 micro-kernels of the Gaussian ops (see cpu/mahalanobis.h for the layouts).
//
// Like dist_micro_avx512.cpp this file includes no torch or standard-library headers besides
// <cstdint>: any inline function emitted here is AVX-512 code. Called only when use_avx512_micro().
#include <immintrin.h>

#include <cstdint>

namespace fastad::cpu {

// Mahalanobis rows: per 6 rows, per 32-column panel of the packed factor, z[6 x 32] = xc[6, j0:] @
// panel in 12 zmm accumulators (one 32-float packed row = 2 aligned loads + 6 broadcasts per 12 FMAs),
// then squared and summed into 6 more zmm: the whitened tile never leaves the registers.
void maha_rows_avx512(const float* packed, const float* xc, int64_t ld, int64_t nrows, int64_t d, float* out) {
  for (int64_t r0 = 0; r0 < nrows; r0 += 6) {
    const float* x0 = xc + r0 * ld;
    __m512 ss[6];
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) ss[r] = _mm512_setzero_ps();
    const float* pk = packed;
    for (int64_t j0 = 0; j0 < d; j0 += 32) {
      __m512 c0[6], c1[6];
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
      for (int64_t k = j0; k < d; ++k) {
        const __m512 b0 = _mm512_load_ps(pk), b1 = _mm512_load_ps(pk + 16);
        pk += 32;
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) {
          const __m512 a = _mm512_set1_ps(x0[r * ld + k]);
          c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
          c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
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

// Lower SYRK tile: rows i0..i0+5 (features) x columns j0..j0+31 for every j0 <= i0 + 5, over n samples:
// per sample 6 broadcasts of y[k, i0 + r] and 2 loads of y[k, j0 : j0 + 32] for 12 FMAs.
void syrk_lower_avx512(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt) {
  for (int64_t i0 = 0; i0 < d; i0 += 6) {
    const int64_t ni = d - i0 < 6 ? d - i0 : 6;
    const int64_t jmax = i0 + ni - 1;  // last column needed by these rows
    for (int64_t j0 = 0; j0 <= jmax; j0 += 32) {
      __m512 c0[6], c1[6];
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
      const float* yk = y;
      for (int64_t k = 0; k < n; ++k, yk += ld) {
        const __m512 b0 = _mm512_load_ps(yk + j0), b1 = _mm512_load_ps(yk + j0 + 16);
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) {
          const __m512 a = _mm512_set1_ps(yk[i0 + r]);  // rows past d read the zero padding
          c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
          c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
        }
      }
      for (int64_t r = 0; r < ni; ++r) {
        // the tile is ldt >= round_up(d, 32) wide, so the full 32-column store stays inside row i0 + r
        _mm512_storeu_ps(tile + (i0 + r) * ldt + j0, c0[r]);
        _mm512_storeu_ps(tile + (i0 + r) * ldt + j0 + 16, c1[r]);
      }
    }
  }
}

}  // namespace fastad::cpu
