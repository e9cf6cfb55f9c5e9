// AVX-512 micro-kernels of the Gaussian ops (see cpu/mahalanobis.h).
//
// Like dist_micro_avx512.cpp this file includes no torch or standard-library headers besides
// <cstdint>: any inline function emitted here is AVX-512 code. Called only when use_avx512_micro().
#include <immintrin.h>

#include <cstdint>

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

// One 6-row tile x one 32-column panel: acc = xc[6, j0:] @ tril(L)[j0:, j0:j0+32]; returns the panel's
// squared sums added into ss[6] (zmm partials).
template <typename Ld, typename T>
inline void tile_panel(const T* L, int64_t d, int64_t j0, const float* x0, int64_t ld, __m512* ss, bool first) {
  const int64_t nc = d - j0 < 32 ? d - j0 : 32;
  const uint32_t cm = low_bits(nc);
  __m512 c0[6], c1[6];
#pragma GCC unroll 6
  for (int r = 0; r < 6; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  const int64_t kd = j0 + nc;  // end of the diagonal block
  for (int64_t k = j0; k < kd; ++k) {  // diagonal block: columns j0 + c <= k only
    __m512 b0, b1;
    Ld::load(L + k * d + j0, cm & low_bits(k - j0 + 1), nc, b0, b1);
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) {
      const __m512 a = _mm512_set1_ps(x0[r * ld + k]);
      c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
    }
  }
  if (nc == 32) {
    // The first tile of a row block brings the panel in from memory: rows d * sizeof(T) apart, two
    // cache lines each (one for half precision), which the hardware prefetcher follows poorly.
    constexpr int64_t kAhead = 12;
    for (int64_t k = kd; k < d; ++k) {
      if (first && k + kAhead < d) {
        const char* pf = reinterpret_cast<const char*>(L + (k + kAhead) * d + j0);
        _mm_prefetch(pf, _MM_HINT_T0);
        if (sizeof(T) == 4) _mm_prefetch(pf + 64, _MM_HINT_T0);
      }
      __m512 b0, b1;
      Ld::load_full(L + k * d + j0, b0, b1);
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) {
        const __m512 a = _mm512_set1_ps(x0[r * ld + k]);
        c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
      }
    }
  }  // (nc < 32: the last panel, whose rows all lie in the diagonal block)
#pragma GCC unroll 6
  for (int r = 0; r < 6; ++r) {
    ss[r] = _mm512_fmadd_ps(c0[r], c0[r], ss[r]);
    ss[r] = _mm512_fmadd_ps(c1[r], c1[r], ss[r]);
  }
}

// Panels outermost (one panel of the factor, (d - j0) x 32, stays in L1/L2 while every tile of the row
// block passes over it), tiles inside; per-row squared sums kept as zmm partials in `part`.
template <typename Ld, typename T>
void rows_impl(const T* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  __m512 part[48];
  for (int64_t r0 = 0; r0 < nrows; r0 += 48) {
    const int64_t nr = nrows - r0 < 48 ? nrows - r0 : 48;
    for (int64_t r = 0; r < nr; ++r) part[r] = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < d; j0 += 32)
      for (int64_t t = 0; t < nr; t += 6) tile_panel<Ld>(L, d, j0, xc + (r0 + t) * ld, ld, part + t, t == 0);
    for (int64_t r = 0; r < nr; ++r) out[r0 + r] = _mm512_reduce_add_ps(part[r]);
  }
}

}  // namespace

void maha_rows_avx512(const float* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  rows_impl<LoadF32>(L, d, xc, ld, nrows, out);
}
void maha_rows_avx512_f16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  rows_impl<LoadF16>(L, d, xc, ld, nrows, out);
}
void maha_rows_avx512_bf16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  rows_impl<LoadBF16>(L, d, xc, ld, nrows, out);
}

// Lower SYRK tile: rows i0..i0+5 (features) x columns j0..j0+31 for every j0 <= i0 + 5, over the
// samples in blocks of kSyrkKc: per sample 6 broadcasts of y[k, i0 + r] and 2 loads of y[k, j0 : j0 + 32]
// for 12 FMAs. Blocking the samples keeps the column panel (kSyrkKc x 128 B) and the broadcast rows in
// L1 while every row block passes over them (the whole chunk, 256 rows x d, does not fit); the tile is
// re-read and re-written once per sample block (12 loads + 12 stores per 12 kSyrkKc FMAs).
constexpr int64_t kSyrkKc = 64;

void syrk_lower_avx512(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt) {
  for (int64_t k0 = 0; k0 < n || k0 == 0; k0 += kSyrkKc) {
    const int64_t kn = n - k0 < kSyrkKc ? n - k0 : kSyrkKc;
    const float* yb = y + k0 * ld;
    for (int64_t j0 = 0; j0 < d; j0 += 32) {
      for (int64_t i0 = j0 / 6 * 6; i0 < d; i0 += 6) {  // row blocks that reach column block j0
        const int64_t ni = d - i0 < 6 ? d - i0 : 6;
        __m512 c0[6], c1[6];
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
        // (constant-index loops with a guard, fully unrolled: the accumulators stay in registers; a
        // loop to the runtime bound ni would index them from memory)
        if (k0 > 0) {
#pragma GCC unroll 6
          for (int r = 0; r < 6; ++r)
            if (r < ni) {
              c0[r] = _mm512_loadu_ps(tile + (i0 + r) * ldt + j0);
              c1[r] = _mm512_loadu_ps(tile + (i0 + r) * ldt + j0 + 16);
            }
        }
        const float* yk = yb;
        for (int64_t k = 0; k < kn; ++k, yk += ld) {
          const __m512 b0 = _mm512_load_ps(yk + j0), b1 = _mm512_load_ps(yk + j0 + 16);
#pragma GCC unroll 6
          for (int r = 0; r < 6; ++r) {
            const __m512 a = _mm512_set1_ps(yk[i0 + r]);  // rows past d read the zero padding
            c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
          }
        }
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) {
          if (r >= ni) break;
          // the tile is ldt >= round_up(d, 32) wide, so the full 32-column store stays inside row i0 + r
          _mm512_storeu_ps(tile + (i0 + r) * ldt + j0, c0[r]);
          _mm512_storeu_ps(tile + (i0 + r) * ldt + j0 + 16, c1[r]);
        }
      }
    }
  }
}

}  // namespace fastad::cpu
