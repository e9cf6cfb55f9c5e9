// AVX2/FMA Gram tile (compiled with -mavx2 -mfma; called only after the runtime CPU check).
// GotoBLAS-style blocking: for each kGramKC slice of the inner dimension, B is packed into
// kGramNR-wide micro-panels and A into kGramMR-high micro-panels (kGramMC rows at a time); a
// 6 x 16 register-blocked micro-kernel (12 ymm accumulators, 2 B loads + 6 broadcasts per k)
// accumulates each output tile.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/gram.h"

namespace fastad::cpu {

namespace {

// Packs rows [0, nb) of b (row stride d), columns [k0, k0 + kc), into micro-panels of kGramNR rows:
// dst[panel][k][col]; rows past nb are zero.
void pack_b_panels(const float* b, int64_t nb, int64_t d, int64_t k0, int64_t kc, float* dst) {
  for (int64_t j0 = 0; j0 < nb; j0 += kGramNR) {
    const int64_t nj = std::min(kGramNR, nb - j0);
    float* p = dst + (j0 / kGramNR) * kc * kGramNR;
    for (int64_t jj = 0; jj < kGramNR; ++jj) {
      if (jj < nj) {
        const float* src = b + (j0 + jj) * d + k0;
        for (int64_t k = 0; k < kc; ++k) p[k * kGramNR + jj] = src[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) p[k * kGramNR + jj] = 0.f;
      }
    }
  }
}

// Packs rows [i0, i0 + mi) of a, columns [k0, k0 + kc), into micro-panels of kGramMR rows.
void pack_a_panels(const float* a, int64_t i0, int64_t mi, int64_t d, int64_t k0, int64_t kc, float* dst) {
  for (int64_t r0 = 0; r0 < mi; r0 += kGramMR) {
    const int64_t nr = std::min(kGramMR, mi - r0);
    float* p = dst + (r0 / kGramMR) * kc * kGramMR;
    for (int64_t rr = 0; rr < kGramMR; ++rr) {
      if (rr < nr) {
        const float* src = a + (i0 + r0 + rr) * d + k0;
        for (int64_t k = 0; k < kc; ++k) p[k * kGramMR + rr] = src[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) p[k * kGramMR + rr] = 0.f;
      }
    }
  }
}

// C[6 x 16] (+)= Ap[kc x 6]^T * Bp[kc x 16]; writes the valid mr x nr corner of the tile to c (ldc).
inline void micro_6x16(const float* ap, const float* bp, int64_t kc, float* c, int64_t ldc, int64_t mr, int64_t nr,
                       bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
    __m256 a = _mm256_broadcast_ss(ap + 0);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(ap + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10);
    c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(ap + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20);
    c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(ap + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30);
    c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(ap + 4);
    c40 = _mm256_fmadd_ps(a, b0, c40);
    c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(ap + 5);
    c50 = _mm256_fmadd_ps(a, b0, c50);
    c51 = _mm256_fmadd_ps(a, b1, c51);
    ap += kGramMR;
    bp += kGramNR;
  }
  alignas(32) float t[kGramMR * kGramNR];
  _mm256_store_ps(t + 0, c00), _mm256_store_ps(t + 8, c01);
  _mm256_store_ps(t + 16, c10), _mm256_store_ps(t + 24, c11);
  _mm256_store_ps(t + 32, c20), _mm256_store_ps(t + 40, c21);
  _mm256_store_ps(t + 48, c30), _mm256_store_ps(t + 56, c31);
  _mm256_store_ps(t + 64, c40), _mm256_store_ps(t + 72, c41);
  _mm256_store_ps(t + 80, c50), _mm256_store_ps(t + 88, c51);
  for (int64_t r = 0; r < mr; ++r) {
    float* dst = c + r * ldc;
    const float* src = t + r * kGramNR;
    if (accumulate)
      for (int64_t j = 0; j < nr; ++j) dst[j] += src[j];
    else
      for (int64_t j = 0; j < nr; ++j) dst[j] = src[j];
  }
}

}  // namespace

void gram_avx2(const float* a, int64_t na, const float* b, int64_t nb, int64_t d, float* out, int64_t ldo,
               GramScratch& s) {
  if (na == 0 || nb == 0) return;
  if (d == 0) {
    for (int64_t r = 0; r < na; ++r) std::fill(out + r * ldo, out + r * ldo + nb, 0.f);
    return;
  }
  const int64_t nb_pad = (nb + kGramNR - 1) / kGramNR * kGramNR;
  if ((int64_t)s.pack_b.size() < nb_pad * kGramKC) s.pack_b.resize(nb_pad * kGramKC);
  if ((int64_t)s.pack_a.size() < kGramMC * kGramKC) s.pack_a.resize(kGramMC * kGramKC);
  for (int64_t k0 = 0; k0 < d; k0 += kGramKC) {
    const int64_t kc = std::min(kGramKC, d - k0);
    const bool acc = k0 > 0;
    pack_b_panels(b, nb, d, k0, kc, s.pack_b.data());
    for (int64_t i0 = 0; i0 < na; i0 += kGramMC) {
      const int64_t mi = std::min(kGramMC, na - i0);
      pack_a_panels(a, i0, mi, d, k0, kc, s.pack_a.data());
      for (int64_t j0 = 0; j0 < nb; j0 += kGramNR) {
        const float* bp = s.pack_b.data() + (j0 / kGramNR) * kc * kGramNR;
        const int64_t nr = std::min(kGramNR, nb - j0);
        for (int64_t r0 = 0; r0 < mi; r0 += kGramMR) {
          const float* ap = s.pack_a.data() + (r0 / kGramMR) * kc * kGramMR;
          micro_6x16(ap, bp, kc, out + (i0 + r0) * ldo + j0, ldo, std::min(kGramMR, mi - r0), nr, acc);
        }
      }
    }
  }
}

}  // namespace fastad::cpu
