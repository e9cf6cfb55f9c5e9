// AVX-512 micro-kernels of the Gaussian ops (see cpu/mahalanobis.h): the width-generic kernels of
// cpu/mahalanobis_simd.h instantiated with 16-lane zmm traits (32-column panels) and this file's loaders.
//
// Like dist_micro_avx512.cpp this file includes no torch or standard-library headers besides
// <cstdint>: any inline function emitted here is AVX-512 code. Called only when use_avx512_micro().
#include <immintrin.h>

#include <cstdint>

#include "cpu/mahalanobis_simd.h"

namespace fastad::cpu {

namespace {

// 32 consecutive factor entries of one row -> two float32 vectors (masked: zero outside `m`).
struct LoadF32 {
  static inline void load(const float* p, uint32_t m, int64_t, __m512& lo, __m512& hi) {
    lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p);
    hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), p + 16);
  }
  static inline void load_full(const float* p, __m512& lo, __m512& hi) {
    lo = _mm512_loadu_ps(p);
    hi = _mm512_loadu_ps(p + 16);
  }
};
// Half-precision rows (AVX-512F only, no BW/VL: 16-bit masked loads are not available): full 32-entry
// loads, masked after widening; the last, partial panel (nc < 32: a full load could run past the end of
// the factor) is copied through a zero-padded stack buffer.
template <typename W>
struct LoadHalf {
  static inline void load(const uint16_t* p, uint32_t m, int64_t nc, __m512& lo, __m512& hi) {
    if (nc < 32) {
      uint16_t tmp[32];
      for (int64_t c = 0; c < 32; ++c) tmp[c] = c < nc ? p[c] : uint16_t(0);
      load_full(tmp, lo, hi);
    } else {
      load_full(p, lo, hi);
    }
    lo = _mm512_maskz_mov_ps(static_cast<__mmask16>(m), lo);
    hi = _mm512_maskz_mov_ps(static_cast<__mmask16>(m >> 16), hi);
  }
  static inline void load_full(const uint16_t* p, __m512& lo, __m512& hi) {
    lo = W::widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    hi = W::widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)));
  }
};
struct WidenF16 {
  static inline __m512 widen(__m256i v) { return _mm512_cvtph_ps(v); }
};
struct WidenBF16 {  // bf16 -> f32 is a 16-bit shift
  static inline __m512 widen(__m256i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)); }
};
using LoadF16 = LoadHalf<WidenF16>;
using LoadBF16 = LoadHalf<WidenBF16>;

inline uint32_t low_bits(int64_t n) { return n >= 32 ? 0xffffffffu : ((1u << n) - 1u); }

struct V512 {
  using reg = __m512;
  static constexpr int64_t W = 16;
  static inline reg zero() { return _mm512_setzero_ps(); }
  static inline reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static inline reg load_row(const float* p) { return _mm512_load_ps(p); }  // 64-byte aligned padded rows
  static inline void storeu(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline void prefetch_l2(const char* p) { _mm_prefetch(p, _MM_HINT_T1); }
  static inline reg fnmadd(reg a, reg b, reg c) { return _mm512_fnmadd_ps(a, b, c); }
  static inline reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static inline reg set1(float x) { return _mm512_set1_ps(x); }
  static inline float sqrt1(float x) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(x))); }
  static inline reg bcast(const float* p) { return _mm512_set1_ps(*p); }
  static inline float reduce(reg v) { return _mm512_reduce_add_ps(v); }
  /// the first m <= nc columns of a 32-column panel, as LoadF32 / LoadHalf take them
  static inline uint32_t cols(int64_t nc, int64_t m) { return low_bits(nc) & low_bits(m); }
  /// one panel row: two cache lines for float32 entries, one for 16-bit ones
  static inline void prefetch_row(const char* p, int64_t entry_bytes) {
    _mm_prefetch(p, _MM_HINT_T0);
    if (entry_bytes == 4) _mm_prefetch(p + 64, _MM_HINT_T0);
  }
};

}  // namespace

void maha_rows_avx512(const float* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  maha_simd::rows_impl<V512, LoadF32>(L, d, xc, ld, nrows, out);
}
void maha_rows_avx512_f16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  maha_simd::rows_impl<V512, LoadF16>(L, d, xc, ld, nrows, out);
}
void maha_rows_avx512_bf16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  maha_simd::rows_impl<V512, LoadBF16>(L, d, xc, ld, nrows, out);
}

int64_t cholesky_lower_avx512(float* a, int64_t d, float* scratch, int64_t r0) {
  return maha_simd::cholesky_lower<V512>(a, d, scratch, r0);
}
int64_t cholesky_scratch_avx512(int64_t d) { return maha_simd::chol_scratch_floats<V512>(d); }

void syrk_lower_avx512(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt, RowPrefetch* pf,
                       int64_t r0) {
  maha_simd::syrk_lower<V512>(y, ld, n, d, tile, ldt, pf, r0);
}

}  // namespace fastad::cpu
