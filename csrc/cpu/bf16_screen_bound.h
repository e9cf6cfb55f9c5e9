// The per-pair error bound of the bf16 screen, shared by every screened op (knn and group_min in
// dist_bf16_screen_avx2.cpp, MuSc's mutual_scores in musc_screen_avx2.cpp); the derivations are written
// at the top of those files (knn: the fp32 path centres as the screen does; MuSc: the fp32 path works on
// the raw rows, the screen on centred ones, which changes X and Z and adds a per-query term W).
//
// From the three fp32 sums of a row's bf16 conversion (|v|^2, |v'|^2, |v' - v|^2; v the fp32 row as the
// screen sees it, v' its bf16 rounding), inflated by 1 / (1 - (D + 2) u) plus D 2^-125 (underflowed
// squares) and by 1 + 2^-20 (the double -> float casts): R >= max(|v|, |v'|) and f >= |v' - v| (norms()).
// knn: per query P = R, e = f (query_terms); per bank row X = 4 g R + 2 f, Y = 2 R, Z = 2 g R^2 + D 2^-124
// (bank_terms). For a pair with screen score s' the fp32 path's score lies in [lo, up] = s' -+ E,
// E = (P X + e Y + Z [+ W])(1 + 2^-16) + 2^-21 |s'| (lo_up8).
// Included only by files compiled with -mavx2 -mfma (*_avx2.cpp).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastad::cpu::screen {

struct Bound {
  double g, infl, absn;  // gamma_D, the inflation of an fp32 sum of D squares, its absolute slack

  explicit Bound(int64_t D) {
    constexpr double u = 0x1p-24;
    const double d = static_cast<double>(D);
    g = d * u / (1.0 - d * u);
    infl = (1.0 + 0x1p-20) / (1.0 - (d + 2) * u);
    absn = d * 0x1p-125;
  }
  double inflate(float s) const { return static_cast<double>(s) * infl + absn; }

  /// From one row's three sums: R >= max(|v|, |v'|) and f >= |v' - v|.
  void norms(const float* sums3, double* R, double* f) const {
    *R = std::sqrt(std::max(inflate(sums3[0]), inflate(sums3[1]))) * (1 + 0x1p-20);
    *f = std::sqrt(inflate(sums3[2])) * (1 + 0x1p-20);
  }

  /// Query-side terms from one row's three sums: P (norm bound) and e (rounding-error norm bound).
  void query_terms(const float* sums3, float* P, float* e) const {
    double R, f;
    norms(sums3, &R, &f);
    *P = static_cast<float>(R);
    *e = static_cast<float>(f);
  }

  /// knn's bank-side terms from one row's three sums (D: the depth).
  void bank_terms(const float* sums3, int64_t D, float* X, float* Y, float* Z) const {
    double R, f;
    norms(sums3, &R, &f);
    *X = static_cast<float>(4 * g * R + 2 * f);
    *Y = static_cast<float>(2 * R);
    *Z = static_cast<float>(2 * g * R * R + static_cast<double>(D) * 0x1p-124);
  }
};

/// lo = s - E and up = s + E of 8 pairs (one query row: pv = P, ev = e broadcast; X, Y, Z of 8 bank rows).
inline void lo_up8(__m256 s, __m256 pv, __m256 ev, const float* X, const float* Y, const float* Z, __m256& lo,
                   __m256& up) {
  const __m256 slack = _mm256_set1_ps(1.f + 0x1p-16f), rel = _mm256_set1_ps(0x1p-21f);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 t = _mm256_fmadd_ps(pv, _mm256_loadu_ps(X), _mm256_fmadd_ps(ev, _mm256_loadu_ps(Y), _mm256_loadu_ps(Z)));
  const __m256 e = _mm256_fmadd_ps(t, slack, _mm256_mul_ps(rel, _mm256_and_ps(s, absmask)));
  lo = _mm256_sub_ps(s, e);
  up = _mm256_add_ps(s, e);
}

/// The same with a per-query additive term: E = (P X + e Y + (Z + W))(1 + 2^-16) + 2^-21 |s| (wv = W broadcast).
inline void lo_up8(__m256 s, __m256 pv, __m256 ev, __m256 wv, const float* X, const float* Y, const float* Z,
                   __m256& lo, __m256& up) {
  const __m256 slack = _mm256_set1_ps(1.f + 0x1p-16f), rel = _mm256_set1_ps(0x1p-21f);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 t = _mm256_fmadd_ps(pv, _mm256_loadu_ps(X),
                                   _mm256_fmadd_ps(ev, _mm256_loadu_ps(Y), _mm256_add_ps(_mm256_loadu_ps(Z), wv)));
  const __m256 e = _mm256_fmadd_ps(t, slack, _mm256_mul_ps(rel, _mm256_and_ps(s, absmask)));
  lo = _mm256_sub_ps(s, e);
  up = _mm256_add_ps(s, e);
}

}  // namespace fastad::cpu::screen
