// AVX2/FMA/F16C micro-kernels of the Gaussian ops (see cpu/mahalanobis.h): the AVX-512 kernels'
// triangular blocking (mahalanobis_avx512.cpp) with 16-column panels (two ymm) and 6-row tiles, i.e.
// 12 accumulators + 2 factor vectors + 1 broadcast of the 16 ymm registers. For CPUs without AVX-512
// (Zen 2/3, older Intel); on AVX-512 machines FASTAD_FORCE_AVX2=1 selects it (tests).
//
// Includes no torch or standard-library headers besides <cstdint>: any inline function emitted here
// is AVX2 code. Called only when use_avx2_path() (cpuid avx2 + fma).
#include <immintrin.h>

#include <cstdint>

namespace fastad::cpu {

namespace {

alignas(32) const int32_t kMaskTbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/// The first m lanes (clamped to 0..8) set.
inline __m256i lane_mask(int64_t m) {
  m = m < 0 ? 0 : (m > 8 ? 8 : m);
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTbl + 8 - m));
}

// 16 consecutive factor entries of one row -> two float32 vectors; load(): entries >= m are zero (and
// not read for float32).
struct LoadF32 {
  static inline void load(const float* p, int64_t m, int64_t, __m256& lo, __m256& hi) {
    lo = _mm256_maskload_ps(p, lane_mask(m));
    hi = _mm256_maskload_ps(p + 8, lane_mask(m - 8));
  }
  static inline void load_full(const float* p, __m256& lo, __m256& hi) {
    lo = _mm256_loadu_ps(p);
    hi = _mm256_loadu_ps(p + 8);
  }
};
// Half-precision rows: full 16-entry loads, masked after widening; the last, partial panel (nc < 16: a
// full load could run past the end of the factor) goes through a zero-padded stack buffer.
template <typename W>
struct LoadHalf {
  static inline void load(const uint16_t* p, int64_t m, int64_t nc, __m256& lo, __m256& hi) {
    if (nc < 16) {
      uint16_t tmp[16];
      for (int64_t c = 0; c < 16; ++c) tmp[c] = c < nc ? p[c] : uint16_t(0);
      load_full(tmp, lo, hi);
    } else {
      load_full(p, lo, hi);
    }
    lo = _mm256_and_ps(lo, _mm256_castsi256_ps(lane_mask(m)));
    hi = _mm256_and_ps(hi, _mm256_castsi256_ps(lane_mask(m - 8)));
  }
  static inline void load_full(const uint16_t* p, __m256& lo, __m256& hi) {
    lo = W::widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    hi = W::widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  }
};
struct WidenF16 {
  static inline __m256 widen(__m128i v) { return _mm256_cvtph_ps(v); }
};
struct WidenBF16 {  // bf16 -> f32 is a 16-bit shift
  static inline __m256 widen(__m128i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16)); }
};
using LoadF16 = LoadHalf<WidenF16>;
using LoadBF16 = LoadHalf<WidenBF16>;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One 6-row tile x one 16-column panel: acc = xc[6, j0:] @ tril(L)[j0:, j0:j0+16]; the squares of the
// panel's entries are added into ss[6].
template <typename Ld, typename T>
inline void tile_panel(const T* L, int64_t d, int64_t j0, const float* x0, int64_t ld, __m256* ss, bool first) {
  const int64_t nc = d - j0 < 16 ? d - j0 : 16;
  __m256 c0[6], c1[6];
#pragma GCC unroll 6
  for (int r = 0; r < 6; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  const int64_t kd = j0 + nc;  // end of the diagonal block
  for (int64_t k = j0; k < kd; ++k) {  // diagonal block: columns j0 + c <= k only
    __m256 b0, b1;
    Ld::load(L + k * d + j0, k - j0 + 1, nc, b0, b1);
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) {
      const __m256 a = _mm256_broadcast_ss(x0 + r * ld + k);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
  }
  if (nc == 16) {
    constexpr int64_t kAhead = 12;  // rows d * sizeof(T) apart: prefetch ahead on the tile that brings the panel in
    for (int64_t k = kd; k < d; ++k) {
      if (first && k + kAhead < d) _mm_prefetch(reinterpret_cast<const char*>(L + (k + kAhead) * d + j0), _MM_HINT_T0);
      __m256 b0, b1;
      Ld::load_full(L + k * d + j0, b0, b1);
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) {
        const __m256 a = _mm256_broadcast_ss(x0 + r * ld + k);
        c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
      }
    }
  }  // (nc < 16: the last panel, whose rows all lie in the diagonal block)
#pragma GCC unroll 6
  for (int r = 0; r < 6; ++r) {
    ss[r] = _mm256_fmadd_ps(c0[r], c0[r], ss[r]);
    ss[r] = _mm256_fmadd_ps(c1[r], c1[r], ss[r]);
  }
}

// Panels outermost (one (d - j0) x 16 panel stays in L1/L2 while every tile of the 48-row block passes
// over it), tiles inside; per-row squared sums kept as ymm partials.
template <typename Ld, typename T>
void rows_impl(const T* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  __m256 part[48];
  for (int64_t r0 = 0; r0 < nrows; r0 += 48) {
    const int64_t nr = nrows - r0 < 48 ? nrows - r0 : 48;
    for (int64_t r = 0; r < nr; ++r) part[r] = _mm256_setzero_ps();
    for (int64_t j0 = 0; j0 < d; j0 += 16)
      for (int64_t t = 0; t < nr; t += 6) tile_panel<Ld>(L, d, j0, xc + (r0 + t) * ld, ld, part + t, t == 0);
    for (int64_t r = 0; r < nr; ++r) out[r0 + r] = hsum(part[r]);
  }
}

}  // namespace

void maha_rows_avx2(const float* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  rows_impl<LoadF32>(L, d, xc, ld, nrows, out);
}
void maha_rows_avx2_f16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  rows_impl<LoadF16>(L, d, xc, ld, nrows, out);
}
void maha_rows_avx2_bf16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  rows_impl<LoadBF16>(L, d, xc, ld, nrows, out);
}

// Lower SYRK tile: rows i0..i0+5 (features) x columns j0..j0+15 for every j0 <= i0 + 5, over the
// samples in blocks of kSyrkKc (as syrk_lower_avx512): per sample 6 broadcasts of y[k, i0 + r] and 2
// loads of y[k, j0 : j0 + 16] for 12 FMAs.
constexpr int64_t kSyrkKc = 64;

void syrk_lower_avx2(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt) {
  for (int64_t k0 = 0; k0 < n || k0 == 0; k0 += kSyrkKc) {
    const int64_t kn = n - k0 < kSyrkKc ? n - k0 : kSyrkKc;
    const float* yb = y + k0 * ld;
    for (int64_t j0 = 0; j0 < d; j0 += 16) {
      for (int64_t i0 = j0 / 6 * 6; i0 < d; i0 += 6) {  // row blocks that reach column block j0
        const int64_t ni = d - i0 < 6 ? d - i0 : 6;
        __m256 c0[6], c1[6];
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
        // (constant-index loops with a guard, fully unrolled: the accumulators stay in registers; a
        // loop to the runtime bound ni would index them from memory)
        if (k0 > 0) {
#pragma GCC unroll 6
          for (int r = 0; r < 6; ++r)
            if (r < ni) {
              c0[r] = _mm256_loadu_ps(tile + (i0 + r) * ldt + j0);
              c1[r] = _mm256_loadu_ps(tile + (i0 + r) * ldt + j0 + 8);
            }
        }
        const float* yk = yb;
        for (int64_t k = 0; k < kn; ++k, yk += ld) {
          const __m256 b0 = _mm256_loadu_ps(yk + j0), b1 = _mm256_loadu_ps(yk + j0 + 8);
#pragma GCC unroll 6
          for (int r = 0; r < 6; ++r) {
            const __m256 a = _mm256_broadcast_ss(yk + i0 + r);  // rows past d read the zero padding
            c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
          }
        }
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) {
          if (r >= ni) break;
          // the tile is ldt >= round_up(d, 32) wide, so the full 16-column store stays inside row i0 + r
          _mm256_storeu_ps(tile + (i0 + r) * ldt + j0, c0[r]);
          _mm256_storeu_ps(tile + (i0 + r) * ldt + j0 + 8, c1[r]);
        }
      }
    }
  }
}

}  // namespace fastad::cpu
