// AVX2/FMA/F16C body of the coreset (greedy k-center) step; compiled with -mavx2 -mfma -mf16c and
// called only after fastad::cpu_has_avx2_fma() (see coreset_kernel.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/coreset.h"

namespace fastad::cpu {

namespace {

// 8 consecutive elements of a row converted to fp32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p, std::integral_constant<int, kCoresetF16>) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const uint16_t* p, std::integral_constant<int, kCoresetBF16>) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

inline float to_f32(float x) { return x; }
inline float half_to_f32(uint16_t h) { return _cvtsh_ss(h); }
inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Squared distance of one row x (D elements) to c, four independent 8-lane accumulators.
template <int DT, typename T>
inline float sq_dist(const T* x, const float* c, int64_t D) {
  auto ld = [](const T* p) {
    if constexpr (DT == kCoresetF32) return load8(p);
    else return load8(p, std::integral_constant<int, DT>{});
  };
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 32 <= D; t += 32) {
    const __m256 d0 = _mm256_sub_ps(ld(x + t), _mm256_loadu_ps(c + t));
    const __m256 d1 = _mm256_sub_ps(ld(x + t + 8), _mm256_loadu_ps(c + t + 8));
    const __m256 d2 = _mm256_sub_ps(ld(x + t + 16), _mm256_loadu_ps(c + t + 16));
    const __m256 d3 = _mm256_sub_ps(ld(x + t + 24), _mm256_loadu_ps(c + t + 24));
    a0 = _mm256_fmadd_ps(d0, d0, a0);
    a1 = _mm256_fmadd_ps(d1, d1, a1);
    a2 = _mm256_fmadd_ps(d2, d2, a2);
    a3 = _mm256_fmadd_ps(d3, d3, a3);
  }
  for (; t + 8 <= D; t += 8) {
    const __m256 d0 = _mm256_sub_ps(ld(x + t), _mm256_loadu_ps(c + t));
    a0 = _mm256_fmadd_ps(d0, d0, a0);
  }
  float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; t < D; ++t) {
    float v;
    if constexpr (DT == kCoresetF32) v = to_f32(x[t]);
    else if constexpr (DT == kCoresetF16) v = half_to_f32(x[t]);
    else v = bf16_to_f32(x[t]);
    const float d = v - c[t];
    s += d * d;
  }
  return s;
}

template <int DT, typename T>
CoresetBest update(const T* bank, int64_t D, int64_t r0, int64_t r1, const CoresetStep& st, int64_t* skipped,
                   bool* bad) {
  return coreset_update_rows(
      r0, r1, st, [&](int64_t r) { return sq_dist<DT>(bank + r * D, st.c, D); }, skipped, bad);
}

template <int DT, typename T>
void row_dists(const T* bank, int64_t D, const int64_t* rows, int64_t count, const float* c, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = sq_dist<DT>(bank + rows[i] * D, c, D);
}

}  // namespace

CoresetBest coreset_update_avx2(const void* bank, int dtype, int64_t D, int64_t r0, int64_t r1,
                                const CoresetStep& st, int64_t* skipped, bool* bad) {
  switch (dtype) {
    case kCoresetF16: return update<kCoresetF16>(static_cast<const uint16_t*>(bank), D, r0, r1, st, skipped, bad);
    case kCoresetBF16: return update<kCoresetBF16>(static_cast<const uint16_t*>(bank), D, r0, r1, st, skipped, bad);
    default: return update<kCoresetF32>(static_cast<const float*>(bank), D, r0, r1, st, skipped, bad);
  }
}

void coreset_row_dists_avx2(const void* bank, int dtype, int64_t D, const int64_t* rows, int64_t count,
                            const float* c, float* out) {
  switch (dtype) {
    case kCoresetF16: return row_dists<kCoresetF16>(static_cast<const uint16_t*>(bank), D, rows, count, c, out);
    case kCoresetBF16: return row_dists<kCoresetBF16>(static_cast<const uint16_t*>(bank), D, rows, count, c, out);
    default: return row_dists<kCoresetF32>(static_cast<const float*>(bank), D, rows, count, c, out);
  }
}

float coreset_sq_dist32_avx2(const float* q, const float* ac, int64_t Kp) {
  return sq_dist<kCoresetF32>(q, ac, Kp);
}

int64_t coreset_leaf_test_avx2(const CoresetLeafArgs& a, int64_t p0, int64_t p1, uint32_t active, int64_t* cand,
                               int64_t cap, int64_t* counts) {
  // coreset_summary_bound on 8 positions at once (same operations; the sum of squares may round in
  // another order, which coreset_margin(Kp) covers). First test per (group of 8, centre): the first J0
  // axes (a lower bound of the sum over all Kp) with the group's terms (its largest sa, its residual-norm
  // range), without branches; then, for the pairs where some row passed, every axis with each row's terms.
  const int64_t Kp = a.Kp;
  const __m256 lo_k = _mm256_set1_ps(a.lo_k), sc2 = _mm256_set1_ps(a.sc2), fin = _mm256_set1_ps(a.fin);
  const __m256 tiny = _mm256_set1_ps(a.tiny), zero = _mm256_setzero_ps();
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const std::integral_constant<int, kCoresetF16> f16;
  auto pass = [&](__m256 dd, __m256 sa, __m256 s_c, __m256 B2, __m256 m) {  // bound below the running min
    const __m256 s = _mm256_sub_ps(_mm256_sub_ps(_mm256_mul_ps(_mm256_sqrt_ps(dd), lo_k), sa), s_c);
    const __m256 A = _mm256_max_ps(s, zero);
    const __m256 bound = _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(A, A), sc2), B2), fin), tiny);
    return _mm256_movemask_ps(_mm256_cmp_ps(bound, m, _CMP_NGE_UQ));
  };
  // first test's factors, rounded up: 1 / (fin sc2) and 1 / lo_k^2 (float64, then up), and 1 + 2^-21
  const __m256 inv_fs = _mm256_set1_ps(static_cast<float>(1.0 / (static_cast<double>(a.fin) * a.sc2)) * 1.0000002f);
  const __m256 ilk2 = _mm256_set1_ps(static_cast<float>(1.0 / (static_cast<double>(a.lo_k) * a.lo_k)) * 1.000001f);
  const __m256 up = _mm256_set1_ps(1.0000005f);
  for (int i = 0; i < CoresetFilter::kMaxBatch; ++i) counts[i] = 0;
  int cl[CoresetFilter::kMaxBatch];
  int nc = 0;
  for (uint32_t bits = active; bits != 0; bits &= bits - 1) cl[nc++] = __builtin_ctz(bits);
  constexpr int64_t kChunk = 8;  // groups per first pass
  struct Hit {
    int64_t g;
    int ci, bits;
    __m256 d2;
  };
  alignas(32) Hit hits[kChunk * CoresetFilter::kMaxBatch];
  int64_t total = 0;
  auto run = [&](auto J0c) {  // J0 = 8 as a constant (the common case: Kp >= 8) keeps the group in registers
    const int64_t J0 = J0c;
    for (int64_t g0 = p0 / 8; g0 < p1 / 8; g0 += kChunk) {
      const int64_t g1 = std::min(p1 / 8, g0 + kChunk);
      int64_t n = 0;
      for (int64_t g = g0; g < g1; ++g) {
        const __m256 m = _mm256_loadu_ps(a.mind + g * 8);
        const int live = _mm256_movemask_ps(_mm256_cmp_ps(m, zero, _CMP_GE_OQ));  // chosen, padding: < 0
        if (live == 0) continue;
        const uint16_t* h = a.hs1 + g * J0 * 8;
        __m256 hv[8];
        for (int64_t j = 0; j < J0; ++j) hv[j] = load8(h + j * 8, f16);
        // bound without the residual term: (sqrt(d2) lo_k - sa_g - s_c)^2 sc2 fin - tiny >= m exactly when
        // d2 >= ((R + sa_g + s_c) / lo_k)^2 with R = sqrt((m + tiny) / (fin sc2)); every factor below rounds the
        // threshold up (a few float roundings of positive terms, each <= 2^-24 relative), so d2 >= thr proves it
        const float* gbp = a.gb + g * 4;
        const __m256 R = _mm256_mul_ps(_mm256_sqrt_ps(_mm256_mul_ps(_mm256_add_ps(m, tiny), inv_fs)), up);
        for (int t = 0; t < nc; ++t) {
          const int ci = cl[t];
          const CoresetCentreSummary& cs = a.cs[ci];
          __m256 a0 = zero, a1 = zero;
          int64_t j = 0;
          for (; j + 2 <= J0; j += 2) {
            const __m256 d0 = _mm256_sub_ps(hv[j], _mm256_broadcast_ss(cs.ac + j));
            const __m256 d1 = _mm256_sub_ps(hv[j + 1], _mm256_broadcast_ss(cs.ac + j + 1));
            a0 = _mm256_fmadd_ps(d0, d0, a0);
            a1 = _mm256_fmadd_ps(d1, d1, a1);
          }
          for (; j < J0; ++j) {
            const __m256 d0 = _mm256_sub_ps(hv[j], _mm256_broadcast_ss(cs.ac + j));
            a0 = _mm256_fmadd_ps(d0, d0, a0);
          }
          const __m256 d2 = _mm256_add_ps(a0, a1);
          const __m256 x = _mm256_add_ps(R, _mm256_set1_ps((gbp[0] + cs.s_c) * 1.0000002f));
          const __m256 thr = _mm256_mul_ps(_mm256_mul_ps(x, x), ilk2);
          const int bits = live & _mm256_movemask_ps(_mm256_cmp_ps(d2, thr, _CMP_NGE_UQ));
          hits[n].g = g;
          hits[n].ci = ci;
          hits[n].bits = bits;
          hits[n].d2 = d2;
          n += bits != 0;
        }
      }
      for (int64_t t = 0; t < n; ++t) {
        const Hit& ht = hits[t];
        const int64_t p = ht.g * 8;
        const CoresetCentreSummary& cs = a.cs[ht.ci];
        const __m256 m = _mm256_loadu_ps(a.mind + p);
        const __m256 eg = _mm256_sub_ps(
            _mm256_sub_ps(_mm256_and_ps(_mm256_sub_ps(_mm256_loadu_ps(a.en + p), _mm256_set1_ps(cs.en_c)), absmask),
                          _mm256_loadu_ps(a.se + p)),
            _mm256_set1_ps(cs.se_c));
        const __m256 B2 = _mm256_mul_ps(_mm256_max_ps(eg, zero), _mm256_max_ps(eg, zero));
        __m256 d2f = ht.d2;
        if (J0 < Kp) {
          const uint16_t* h = a.hs2 + ht.g * (Kp - J0) * 8;
          const float* ac = cs.ac + J0;
          __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
          int64_t j = 0;
          for (; j + 4 <= Kp - J0; j += 4) {
            const __m256 d0 = _mm256_sub_ps(load8(h + j * 8, f16), _mm256_broadcast_ss(ac + j));
            const __m256 d1 = _mm256_sub_ps(load8(h + j * 8 + 8, f16), _mm256_broadcast_ss(ac + j + 1));
            const __m256 d2 = _mm256_sub_ps(load8(h + j * 8 + 16, f16), _mm256_broadcast_ss(ac + j + 2));
            const __m256 d3 = _mm256_sub_ps(load8(h + j * 8 + 24, f16), _mm256_broadcast_ss(ac + j + 3));
            a0 = _mm256_fmadd_ps(d0, d0, a0);
            a1 = _mm256_fmadd_ps(d1, d1, a1);
            a2 = _mm256_fmadd_ps(d2, d2, a2);
            a3 = _mm256_fmadd_ps(d3, d3, a3);
          }
          for (; j < Kp - J0; ++j) {
            const __m256 d0 = _mm256_sub_ps(load8(h + j * 8, f16), _mm256_broadcast_ss(ac + j));
            a0 = _mm256_fmadd_ps(d0, d0, a0);
          }
          d2f = _mm256_add_ps(d2f, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        }
        int bits = ht.bits & pass(d2f, _mm256_loadu_ps(a.sa + p), _mm256_set1_ps(cs.s_c), B2, m);
        int64_t* out = cand + ht.ci * cap;
        int64_t k = counts[ht.ci];
        total += __builtin_popcount(bits);
        while (bits != 0) {
          out[k++] = p + __builtin_ctz(bits);
          bits &= bits - 1;
        }
        counts[ht.ci] = k;
      }
    }
  };
  if (Kp >= 8) run(std::integral_constant<int64_t, 8>{});
  else run(Kp);
  return total;
}

}  // namespace fastad::cpu
