// AVX2/FMA/F16C micro-kernels of the Gaussian ops (see cpu/mahalanobis.h): the width-generic kernels of
// cpu/mahalanobis_simd.h instantiated with 8-lane ymm traits (16-column panels, 6-row tiles: 12
// accumulators + 2 factor vectors + 1 broadcast of the 16 ymm registers) and this file's loaders; and
// the triangular solve of cholesky=True. For CPUs without AVX-512 (Zen 2/3, older Intel); on AVX-512
// machines FASTAD_FORCE_AVX2=1 selects it (tests).
//
// Includes no torch or standard-library headers besides <cstdint>: any inline function emitted here
// is AVX2 code. Called only when use_avx2_path() (cpuid avx2 + fma).
#include <immintrin.h>

#include <cstdint>

#include "cpu/mahalanobis_simd.h"

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

struct V256 {
  using reg = __m256;
  static constexpr int64_t W = 8;
  static inline reg zero() { return _mm256_setzero_ps(); }
  static inline reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  static inline reg load_row(const float* p) { return _mm256_loadu_ps(p); }
  static inline void storeu(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline void prefetch_l2(const char* p) { _mm_prefetch(p, _MM_HINT_T1); }
  static inline reg fnmadd(reg a, reg b, reg c) { return _mm256_fnmadd_ps(a, b, c); }
  static inline reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static inline reg set1(float x) { return _mm256_set1_ps(x); }
  static inline float sqrt1(float x) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(x))); }
  static inline reg bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static inline float reduce(reg v) { return hsum(v); }
  /// the first m <= nc columns of a 16-column panel, as LoadF32 / LoadHalf take them (a count)
  static inline int64_t cols(int64_t, int64_t m) { return m; }
  static inline void prefetch_row(const char* p, int64_t) { _mm_prefetch(p, _MM_HINT_T0); }
};

}  // namespace

void maha_rows_avx2(const float* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  maha_simd::rows_impl<V256, LoadF32>(L, d, xc, ld, nrows, out);
}
void maha_rows_avx2_f16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  maha_simd::rows_impl<V256, LoadF16>(L, d, xc, ld, nrows, out);
}
void maha_rows_avx2_bf16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  maha_simd::rows_impl<V256, LoadBF16>(L, d, xc, ld, nrows, out);
}

int64_t cholesky_lower_avx2(float* a, int64_t d, float* scratch, int64_t r0) {
  return maha_simd::cholesky_lower<V256>(a, d, scratch, r0);
}
int64_t cholesky_scratch_avx2(int64_t d) { return maha_simd::chol_scratch_floats<V256>(d); }

void syrk_lower_avx2(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt, RowPrefetch* pf,
                     int64_t r0) {
  maha_simd::syrk_lower<V256>(y, ld, n, d, tile, ldt, pf, r0);
}

void center_rows_avx2(const float* x, int64_t rs, const float* shift, int64_t nr, int64_t d, float* y, int64_t ld,
                      double* cs) {
  // rows are rs floats apart (PaDiM: P d, ~0.5 MB): each on its own page, which the hardware prefetcher
  // does not cross; prefetch kAhead rows ahead
  constexpr int64_t kAhead = 6;
  const int64_t dv = d / 8 * 8, bytes = d * 4;
  for (int64_t r = 0; r < nr; ++r) {
    if (r + kAhead < nr) {
      const char* pa = reinterpret_cast<const char*>(x + (r + kAhead) * rs);
      for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(pa + b, _MM_HINT_T0);
      _mm_prefetch(pa + bytes - 1, _MM_HINT_T0);
    }
    const float* xr = x + r * rs;
    float* yr = y + r * ld;
    int64_t j = 0;
    for (; j < dv; j += 8) {
      const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(xr + j), _mm256_loadu_ps(shift + j));
      _mm256_storeu_ps(yr + j, v);
      _mm256_storeu_pd(cs + j, _mm256_add_pd(_mm256_loadu_pd(cs + j), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
      _mm256_storeu_pd(cs + j + 4, _mm256_add_pd(_mm256_loadu_pd(cs + j + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
    }
    for (; j < d; ++j) {
      yr[j] = xr[j] - shift[j];
      cs[j] += static_cast<double>(yr[j]);
    }
    for (; j < ld; ++j) yr[j] = 0.0f;
  }
}

void tile_add_f64_avx2(const float* tile, int64_t ldt, int64_t d, double* s2, bool packed, int64_t r0) {
  for (int64_t i = r0; i < d; ++i) {
    const float* t = tile + i * ldt;
    double* o = s2 + (packed ? i * (i + 1) / 2 : i * d);
    const int64_t n = i + 1;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
      _mm256_storeu_pd(o + j, _mm256_add_pd(_mm256_loadu_pd(o + j), _mm256_cvtps_pd(_mm_loadu_ps(t + j))));
    for (; j < n; ++j) o[j] += static_cast<double>(t[j]);
  }
}

void gather_maps_image_avx2(const float* const* planes, const int32_t* const* srcs, const int64_t* next, int64_t C,
                            int64_t P, float* out) {
  int64_t p0 = 0;
  constexpr int64_t kAhead = 128;  // positions prefetched ahead: 152 interleaved plane streams are more than
                                  // the hardware prefetcher follows
  for (; p0 + 8 <= P; p0 += 8) {
    if ((p0 & 15) == 0) {
      const int64_t pa = p0 + kAhead < P ? p0 + kAhead : p0 + kAhead - P;  // past the end: the next image's
      if (pa == p0 + kAhead || next != nullptr)
        for (int64_t k = 0; k < C; ++k)
          _mm_prefetch(reinterpret_cast<const char*>(planes[k] + (pa == p0 + kAhead ? 0 : next[k]) +
                                                     (srcs[k] == nullptr ? pa : srcs[k][pa])),
                       _MM_HINT_T0);
    }
    // A layer at half the grid (nearest x 2) maps 8 positions of one output row to 4 source cells, each
    // twice: then one 4-float load and a lane permute replace the 8-lane gather (slow on Zen 2). Decided
    // once per block and source table (the channels of a layer share it).
    const __m256i dup2 = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const int32_t* dup_sp = nullptr;
    bool dup_ok = false;
    int64_t k0 = 0;
    for (; k0 + 8 <= C; k0 += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const float* a = planes[k0 + i];
        const int32_t* sp = srcs[k0 + i];
        if (sp == nullptr) {
          r[i] = _mm256_loadu_ps(a + p0);
          continue;
        }
        const __m256i ix = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + p0));
        if (sp != dup_sp) {
          dup_sp = sp;
          const __m256i want = _mm256_add_epi32(_mm256_set1_epi32(sp[p0]), dup2);
          dup_ok = _mm256_movemask_epi8(_mm256_cmpeq_epi32(ix, want)) == -1;
        }
        r[i] = dup_ok ? _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(a + sp[p0])), dup2)
                      : _mm256_i32gather_ps(a, ix, 4);
      }
      // 8 x 8 transpose: r[i][j] (channel k0 + i, position p0 + j) -> c[j][i]
      const __m256 u0 = _mm256_unpacklo_ps(r[0], r[1]), u1 = _mm256_unpackhi_ps(r[0], r[1]),
                   u2 = _mm256_unpacklo_ps(r[2], r[3]), u3 = _mm256_unpackhi_ps(r[2], r[3]),
                   u4 = _mm256_unpacklo_ps(r[4], r[5]), u5 = _mm256_unpackhi_ps(r[4], r[5]),
                   u6 = _mm256_unpacklo_ps(r[6], r[7]), u7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE),
                   v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xEE),
                   v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xEE),
                   v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xEE);
      float* o = out + p0 * C + k0;
      _mm256_storeu_ps(o, _mm256_permute2f128_ps(v0, v4, 0x20));
      _mm256_storeu_ps(o + C, _mm256_permute2f128_ps(v1, v5, 0x20));
      _mm256_storeu_ps(o + 2 * C, _mm256_permute2f128_ps(v2, v6, 0x20));
      _mm256_storeu_ps(o + 3 * C, _mm256_permute2f128_ps(v3, v7, 0x20));
      _mm256_storeu_ps(o + 4 * C, _mm256_permute2f128_ps(v0, v4, 0x31));
      _mm256_storeu_ps(o + 5 * C, _mm256_permute2f128_ps(v1, v5, 0x31));
      _mm256_storeu_ps(o + 6 * C, _mm256_permute2f128_ps(v2, v6, 0x31));
      _mm256_storeu_ps(o + 7 * C, _mm256_permute2f128_ps(v3, v7, 0x31));
    }
    for (; k0 < C; ++k0)
      for (int64_t p = p0; p < p0 + 8; ++p)
        out[p * C + k0] = srcs[k0] == nullptr ? planes[k0][p] : planes[k0][srcs[k0][p]];
  }
  for (; p0 < P; ++p0)
    for (int64_t k = 0; k < C; ++k) out[p0 * C + k] = srcs[k] == nullptr ? planes[k][p0] : planes[k][srcs[k][p0]];
}

// ---- triangular solve with the covariance's Cholesky factor (cholesky=True) ------------------------
namespace {

// Image lanes: a group of 16 centred rows is stored transposed (zt[j * 16 + l] = xc[l, j]), so the
// forward substitution C z = xc runs on vectors of 16 images with broadcast factor entries, and the
// dependent diagonal block stays in registers (no lane extraction). One micro tile = KB <= 6 rows of C
// (k0 .. k0 + KB) x 16 images: 12 accumulators, per column j < k0 two loads of z_j and KB broadcasts of
// C[k0 + c, j] for 2 KB FMAs (the GEMM part, d^2 / 2 multiply-adds per image); then the KB x KB
// diagonal block by substitution (z_{k0+c} = (xc - acc - sum_{c' < c} C[k0+c, k0+c'] z_{k0+c'}) / C[k0+c, k0+c]).
template <int KB>
inline void solve_tile(const float* C, int64_t d, int64_t k0, float* zt) {
  __m256 a0[KB], a1[KB];
  const float* cr[KB];
#pragma GCC unroll 6
  for (int c = 0; c < KB; ++c) {
    a0[c] = a1[c] = _mm256_setzero_ps();
    cr[c] = C + (k0 + c) * d;
  }
  for (int64_t j = 0; j < k0; ++j) {
    const __m256 z0 = _mm256_loadu_ps(zt + j * 16), z1 = _mm256_loadu_ps(zt + j * 16 + 8);
#pragma GCC unroll 6
    for (int c = 0; c < KB; ++c) {
      const __m256 b = _mm256_broadcast_ss(cr[c] + j);
      a0[c] = _mm256_fmadd_ps(b, z0, a0[c]);
      a1[c] = _mm256_fmadd_ps(b, z1, a1[c]);
    }
  }
#pragma GCC unroll 6
  for (int c = 0; c < KB; ++c) {
    float* zr = zt + (k0 + c) * 16;
    __m256 r0 = _mm256_sub_ps(_mm256_loadu_ps(zr), a0[c]), r1 = _mm256_sub_ps(_mm256_loadu_ps(zr + 8), a1[c]);
#pragma GCC unroll 6
    for (int q = 0; q < c; ++q) {  // a0[q], a1[q] hold z_{k0+q} by now
      const __m256 b = _mm256_broadcast_ss(cr[c] + k0 + q);
      r0 = _mm256_fnmadd_ps(b, a0[q], r0);
      r1 = _mm256_fnmadd_ps(b, a1[q], r1);
    }
    const __m256 dg = _mm256_broadcast_ss(cr[c] + k0 + c);
    a0[c] = _mm256_div_ps(r0, dg);
    a1[c] = _mm256_div_ps(r1, dg);
    _mm256_storeu_ps(zr, a0[c]);
    _mm256_storeu_ps(zr + 8, a1[c]);
  }
}

}  // namespace

void maha_solve_avx2(const float* C, int64_t d, float* zt, int64_t ngroups, float* out) {
  // row blocks of C outermost (its KB x k0 block stays in L1 while every group passes over it)
  for (int64_t k0 = 0; k0 < d; k0 += 6) {
    const int64_t kb = d - k0 < 6 ? d - k0 : 6;
    for (int64_t g = 0; g < ngroups; ++g) {
      float* z = zt + g * d * 16;
      switch (kb) {
        case 6: solve_tile<6>(C, d, k0, z); break;
        case 5: solve_tile<5>(C, d, k0, z); break;
        case 4: solve_tile<4>(C, d, k0, z); break;
        case 3: solve_tile<3>(C, d, k0, z); break;
        case 2: solve_tile<2>(C, d, k0, z); break;
        default: solve_tile<1>(C, d, k0, z); break;
      }
    }
  }
  for (int64_t g = 0; g < ngroups; ++g) {
    const float* z = zt + g * d * 16;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; ++j) {
      const __m256 v0 = _mm256_loadu_ps(z + j * 16), v1 = _mm256_loadu_ps(z + j * 16 + 8);
      s0 = _mm256_fmadd_ps(v0, v0, s0);
      s1 = _mm256_fmadd_ps(v1, v1, s1);
    }
    _mm256_storeu_ps(out + g * 16, s0);
    _mm256_storeu_ps(out + g * 16 + 8, s1);
  }
}

}  // namespace fastad::cpu
