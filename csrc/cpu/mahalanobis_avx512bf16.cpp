// AVX-512 BF16 Mahalanobis rows (vdpbf16ps): a bfloat16 factor times bfloat16 centred rows with
// float32 accumulation: each instruction does two multiply-adds per lane, twice the FP32 FMA rate.
// Factor rows k and k+1 (32 columns each, read in place from the row-major factor, masked on the
// diagonal block) are interleaved into (k, k+1) pairs with unpacklo/hi_epi16; that permutes the
// columns inside the 32-column panel, which the sum of squares does not see.
// Compiled with -mavx512f -mavx512bf16 -mavx512bw (CMakeLists: *_avx512bf16.cpp); called only when
// maha_use_bf16_dot() (cpuid avx512_bf16). No torch or standard-library headers (see mahalanobis_avx512.cpp).
#include <immintrin.h>

#include <cstdint>

namespace fastad::cpu {

namespace {

inline uint32_t low_bits(int64_t n) { return n >= 32 ? 0xffffffffu : (n <= 0 ? 0u : ((1u << n) - 1u)); }

inline void tile_panel(const uint16_t* L, int64_t d, int64_t j0, const uint16_t* x0, int64_t ld, __m512* ss) {
  const int64_t nc = d - j0 < 32 ? d - j0 : 32;
  const uint32_t cm = low_bits(nc);
  __m512 c0[6], c1[6];
#pragma GCC unroll 6
  for (int r = 0; r < 6; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int64_t k = j0; k < d; k += 2) {
    const bool diag = k < j0 + nc;
    const uint32_t m0 = diag ? cm & low_bits(k - j0 + 1) : cm;
    const uint32_t m1 = k + 1 >= d ? 0u : (diag ? cm & low_bits(k - j0 + 2) : cm);
    const __m512i r0 = _mm512_maskz_loadu_epi16(m0, L + k * d + j0);
    const __m512i r1 = m1 ? _mm512_maskz_loadu_epi16(m1, L + (k + 1) * d + j0) : _mm512_setzero_si512();
    const __m512bh b0 = (__m512bh)_mm512_unpacklo_epi16(r0, r1);
    const __m512bh b1 = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) {
      int32_t pair;
      __builtin_memcpy(&pair, x0 + r * ld + k, 4);  // (x[k], x[k+1]); x[d] is a zero pad for odd d
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

}  // namespace

// xcb: nrows rows of bf16 centred values, ld (even) apart, zero-padded to an even length.
void maha_rows_bf16_avx512(const uint16_t* L, int64_t d, const uint16_t* xcb, int64_t ld, int64_t nrows, float* out) {
  __m512 part[48];
  for (int64_t r0 = 0; r0 < nrows; r0 += 48) {
    const int64_t nr = nrows - r0 < 48 ? nrows - r0 : 48;
    for (int64_t r = 0; r < nr; ++r) part[r] = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < d; j0 += 32)
      for (int64_t t = 0; t < nr; t += 6) tile_panel(L, d, j0, xcb + (r0 + t) * ld, ld, part + t);
    for (int64_t r = 0; r < nr; ++r) out[r0 + r] = _mm512_reduce_add_ps(part[r]);
  }
}

// Rounds nr rows of d float32 values (ld floats apart) to bfloat16 (round to nearest even, vcvtne2ps2bf16)
// into rows of ldb (even) uint16, zero-padding each row from d to ldb.
void maha_rows_to_bf16(const float* xc, int64_t ld, int64_t nr, int64_t d, uint16_t* out, int64_t ldb) {
  for (int64_t r = 0; r < nr; ++r) {
    const float* x = xc + r * ld;
    uint16_t* o = out + r * ldb;
    int64_t k = 0;
    for (; k + 32 <= d; k += 32) {
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(x + k));
      _mm512_storeu_si512(o + k, (__m512i)v);
    }
    if (k < d) {
      const __mmask16 m0 = static_cast<__mmask16>(d - k >= 16 ? 0xffff : ((1u << (d - k)) - 1u));
      const __mmask16 m1 = static_cast<__mmask16>(d - k <= 16 ? 0 : (d - k >= 32 ? 0xffff : ((1u << (d - k - 16)) - 1u)));
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, x + k + 16), _mm512_maskz_loadu_ps(m0, x + k));
      _mm512_storeu_si512(o + k, (__m512i)v);  // 32 entries: ldb >= round_up(d, 32)
      k += 32;
    }
  }
}

}  // namespace fastad::cpu
