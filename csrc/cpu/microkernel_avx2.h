// The one AVX2/FMA GEMM micro-kernel of the CPU kernels, and the packing it reads.
//
// Include ONLY from files compiled with -mavx2 -mfma (*_avx2.cpp, see CMakeLists.txt): the knn /
// group_min distance sweep (dist_gemm_avx2.cpp) and MuSc's Gram tile (gram_avx2.cpp).
//
// Layout (BLIS style):
//   * A ("query" side) is packed into kMR-row panels laid out [k][kMR]: panel p holds rows
//     [p * kMR, p * kMR + kMR) over the whole depth D, i.e. D * kMR floats;
//   * B ("bank" side) is packed into kNR-row panels laid out [k][kNR] (D * kNR floats per panel,
//     32-byte aligned: the micro-kernel uses aligned loads);
//   * micro_6x16 accumulates a kMR x kNR tile over any depth slice [pc, pc + kc) of both panels
//     (pass A + pc * kMR, B + pc * kNR) in 12 ymm registers.
// Both packers optionally subtract a centre vector c (knn's centring); c == nullptr packs as is.
// Both read float32 rows or float16 rows (F16, cpu/f16.h: converted exactly to float32 with F16C while
// packing, so a float16 bank is never upcast as a whole and packs to the same floats as its upcast).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/f16.h"

namespace fastad::cpu::mk {

constexpr int64_t kMR = 6;   // A rows per micro-tile (6 x 2 ymm accumulators)
constexpr int64_t kNR = 16;  // B rows per micro-tile (2 ymm)

inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                       __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

namespace detail {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const F16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline float load1(const float* p) { return *p; }
inline float load1(const F16* p) { return _cvtsh_ss(p->bits); }

template <bool kCentre, class T>
inline __m256 load_row8(const T* src, const float* c, int64_t k) {
  const __m256 x = load8(src + k);
  if constexpr (kCentre) return _mm256_sub_ps(x, _mm256_loadu_ps(c + k));
  return x;
}

template <bool kCentre, class T>
inline float at(const T* src, const float* c, int64_t k) {
  if constexpr (kCentre) return load1(src + k) - c[k];
  return load1(src + k);
}

template <bool kCentre, class T>
inline void pack_b_panel(const T* b, int64_t rows, int64_t D, const float* c, float* dst) {
  for (int64_t r0 = 0; r0 < kNR; r0 += 8) {
    const int64_t rg = std::clamp<int64_t>(rows - r0, 0, 8);
    float* d = dst + r0;
    const T* src = b + r0 * D;
    if (rg == 8) {
      int64_t k = 0;
      for (; k + 8 <= D; k += 8) {
        __m256 x0 = load_row8<kCentre>(src + 0 * D, c, k), x1 = load_row8<kCentre>(src + 1 * D, c, k);
        __m256 x2 = load_row8<kCentre>(src + 2 * D, c, k), x3 = load_row8<kCentre>(src + 3 * D, c, k);
        __m256 x4 = load_row8<kCentre>(src + 4 * D, c, k), x5 = load_row8<kCentre>(src + 5 * D, c, k);
        __m256 x6 = load_row8<kCentre>(src + 6 * D, c, k), x7 = load_row8<kCentre>(src + 7 * D, c, k);
        transpose8(x0, x1, x2, x3, x4, x5, x6, x7);
        _mm256_store_ps(d + (k + 0) * kNR, x0);
        _mm256_store_ps(d + (k + 1) * kNR, x1);
        _mm256_store_ps(d + (k + 2) * kNR, x2);
        _mm256_store_ps(d + (k + 3) * kNR, x3);
        _mm256_store_ps(d + (k + 4) * kNR, x4);
        _mm256_store_ps(d + (k + 5) * kNR, x5);
        _mm256_store_ps(d + (k + 6) * kNR, x6);
        _mm256_store_ps(d + (k + 7) * kNR, x7);
      }
      for (; k < D; ++k)
        for (int64_t r = 0; r < 8; ++r) d[k * kNR + r] = at<kCentre>(src + r * D, c, k);
    } else {
      for (int64_t k = 0; k < D; ++k)
        for (int64_t r = 0; r < 8; ++r) d[k * kNR + r] = r < rg ? at<kCentre>(src + r * D, c, k) : 0.f;
    }
  }
}

template <bool kCentre, class T>
inline void pack_a_panel(const T* a, int64_t rows, int64_t D, const float* c, float* dst) {
  for (int64_t r = 0; r < kMR; ++r) {
    if (r < rows) {
      const T* src = a + r * D;
      for (int64_t k = 0; k < D; ++k) dst[k * kMR + r] = at<kCentre>(src, c, k);
    } else {
      for (int64_t k = 0; k < D; ++k) dst[k * kMR + r] = 0.f;
    }
  }
}

}  // namespace detail

/// Packs `rows` (<= kNR) rows of b (D floats each, row stride D), minus c (nullptr: nothing), into
/// one panel dst[k * kNR + r] (dst 32-byte aligned); missing rows are 0.
template <class T>
inline void pack_b_panel(const T* b, int64_t rows, int64_t D, const float* c, float* dst) {
  if (c)
    detail::pack_b_panel<true>(b, rows, D, c, dst);
  else
    detail::pack_b_panel<false>(b, rows, D, c, dst);
}

/// Packs `rows` (<= kMR) rows of a (row stride D), minus c (nullptr: nothing), into one panel
/// dst[k * kMR + r]; missing rows are 0.
template <class T>
inline void pack_a_panel(const T* a, int64_t rows, int64_t D, const float* c, float* dst) {
  if (c)
    detail::pack_a_panel<true>(a, rows, D, c, dst);
  else
    detail::pack_a_panel<false>(a, rows, D, c, dst);
}

/// C[r * ldc + j] (r < 6, j < 16) = (accumulate ? C : 0) + sum_{p < kc} A[p * 6 + r] * B[p * 16 + j].
/// The whole 6 x 16 tile is written (C needs room for it). B must be 32-byte aligned.
__attribute__((always_inline)) inline void micro_6x16(int64_t kc, const float* __restrict__ A,
                                                      const float* __restrict__ B, float* C, int64_t ldc,
                                                      bool accumulate) {
  __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  if (accumulate) {
    c00 = _mm256_loadu_ps(C + 0 * ldc), c01 = _mm256_loadu_ps(C + 0 * ldc + 8);
    c10 = _mm256_loadu_ps(C + 1 * ldc), c11 = _mm256_loadu_ps(C + 1 * ldc + 8);
    c20 = _mm256_loadu_ps(C + 2 * ldc), c21 = _mm256_loadu_ps(C + 2 * ldc + 8);
    c30 = _mm256_loadu_ps(C + 3 * ldc), c31 = _mm256_loadu_ps(C + 3 * ldc + 8);
    c40 = _mm256_loadu_ps(C + 4 * ldc), c41 = _mm256_loadu_ps(C + 4 * ldc + 8);
    c50 = _mm256_loadu_ps(C + 5 * ldc), c51 = _mm256_loadu_ps(C + 5 * ldc + 8);
  } else {
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
    __m256 a = _mm256_broadcast_ss(A + 0);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(A + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10);
    c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(A + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20);
    c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(A + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30);
    c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(A + 4);
    c40 = _mm256_fmadd_ps(a, b0, c40);
    c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(A + 5);
    c50 = _mm256_fmadd_ps(a, b0, c50);
    c51 = _mm256_fmadd_ps(a, b1, c51);
    A += kMR;
    B += kNR;
  }
  _mm256_storeu_ps(C + 0 * ldc, c00), _mm256_storeu_ps(C + 0 * ldc + 8, c01);
  _mm256_storeu_ps(C + 1 * ldc, c10), _mm256_storeu_ps(C + 1 * ldc + 8, c11);
  _mm256_storeu_ps(C + 2 * ldc, c20), _mm256_storeu_ps(C + 2 * ldc + 8, c21);
  _mm256_storeu_ps(C + 3 * ldc, c30), _mm256_storeu_ps(C + 3 * ldc + 8, c31);
  _mm256_storeu_ps(C + 4 * ldc, c40), _mm256_storeu_ps(C + 4 * ldc + 8, c41);
  _mm256_storeu_ps(C + 5 * ldc, c50), _mm256_storeu_ps(C + 5 * ldc + 8, c51);
}

}  // namespace fastad::cpu::mk
