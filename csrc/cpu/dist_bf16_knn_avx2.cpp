// k-NN on bfloat16 inputs through the bf16 GEMM (dist_bf16_gemm.h: AVX512-BF16 vdpbf16ps micro-kernel,
// fp32 accumulation, or its scalar emulation), no upcast of the inputs: the bank is packed block by
// block into bf16 pair panels, as the fp32 sweep of dist_gemm_avx2.cpp does in fp32, and the running
// top-k of alpha_j * dot + beta_j is the fp32 path's KnnEpilogue (dist_gemm_common.h); l2 / sqeuclidean
// winners are re-ranked with exact fp32 distances of the bf16 values (no centring).
// Compiled with -mavx2 -mfma (*_avx2.cpp); used only when use_bf16_gemm().
#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/dist_bf16_gemm.h"
#include "cpu/dist_gemm_common.h"
#include "cpu/dist_kernels.h"
#include "cpu/topk.h"

namespace fastad::cpu {

namespace {

using namespace bf16gemm;  // NOLINT: the driver's constants and buffers

inline float bf16f(uint16_t h) { return bf16emu::bits_f32(static_cast<uint32_t>(h) << 16); }

// |x - y|^2 of two bf16 rows in fp32 (values exact in fp32; direct differences; fixed order).
inline float sq_dist_bf16(const uint16_t* x, const uint16_t* y, int64_t d) {
  __m256 a0 = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m256 vx = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + t))), 16));
    const __m256 vy = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + t))), 16));
    const __m256 v = _mm256_sub_ps(vx, vy);
    a0 = _mm256_fmadd_ps(v, v, a0);
  }
  alignas(32) float s8[8];
  _mm256_store_ps(s8, a0);
  float s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
  for (; t < d; ++t) {
    const float v = bf16f(x[t]) - bf16f(y[t]);
    s = std::fma(v, v, s);
  }
  return s;
}

// |x|^2 of a bf16 row, summed in float64 (the products are exact), rounded once to float32.
inline float sq_norm_bf16(const uint16_t* x, int64_t d) {
  double s[4] = {0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 4 <= d; t += 4)
    for (int u = 0; u < 4; ++u) {
      const double v = bf16f(x[t + u]);
      s[u] += v * v;
    }
  for (; t < d; ++t) {
    const double v = bf16f(x[t]);
    s[0] += v * v;
  }
  return static_cast<float>((s[0] + s[1]) + (s[2] + s[3]));
}

// The bank side of the native bf16 knn: packs a bank block and its alpha_j, beta_j (as the fp32 sweep
// does), then hands each finished tile to the fp32 path's top-k epilogue.
struct Bf16KnnEpi {
  const uint16_t* b;
  int64_t D;
  Metric metric;
  gemm::KnnEpilogue topk;
  float *alpha, *beta;

  bool pack(int64_t j0, int64_t nc, uint32_t* Bp) {
    const int64_t D2 = (D + 1) / 2;
    for (int64_t p = 0; p * NR < nc; ++p)
      panelize<NR>(b + (j0 + p * NR) * D, D, std::min(NR, nc - p * NR), D, Bp + p * NR * D2);
    for (int64_t jj = 0; jj < round_up(nc, 8); ++jj) {
      if (jj >= nc) {
        alpha[jj] = 0.f, beta[jj] = kInf;
        continue;
      }
      switch (metric) {
        case Metric::L2:
        case Metric::SqEuclidean: alpha[jj] = -2.f, beta[jj] = sq_norm_bf16(b + (j0 + jj) * D, D); break;
        case Metric::Cosine: {
          const float n = sq_norm_bf16(b + (j0 + jj) * D, D);
          alpha[jj] = n > 0.f ? -1.f / std::sqrt(n) : 0.f, beta[jj] = 0.f;
          break;
        }
        default: alpha[jj] = -1.f, beta[jj] = 0.f; break;
      }
    }
    return true;
  }

  bool operator()(int64_t i0, int64_t mc, int64_t j0, int64_t nc, const float* S, int64_t ld) {
    topk(i0, mc, j0, nc, S, ld, alpha, beta);
    return true;
  }
};

}  // namespace

void knn_bf16_avx2(const uint16_t* q, const uint16_t* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                   bool exclude_self, float* out_d, int64_t* out_i) {
  const Kern kern = current_kern();
  const int64_t D2 = (D + 1) / 2;
  const int64_t QS = superblock_rows(Q, D2);
  for (int64_t s0 = 0; s0 < Q; s0 += QS) {
    const int64_t qs = std::min(QS, Q - s0), panels = (qs + MR - 1) / MR;
    uint32_t* A = tl_qpack.get(panels * MR * D2);
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        panelize<MR>(q + (s0 + p * MR) * D, D, std::min(MR, qs - p * MR), D, A + p * MR * D2);
    });
    std::vector<ScoreIdx> st(static_cast<size_t>(qs * k));
    std::vector<int64_t> cnt(static_cast<size_t>(qs), 0);
    for_query_ranges(qs, [&](int64_t qa, int64_t qb) {
      Bf16KnnEpi epi{b, D, metric, gemm::KnnEpilogue{st.data(), cnt.data(), k, s0, exclude_self, k > gemm::kSortedMaxK},
                     tl_f1.get(kNC), tl_f2.get(kNC)};
      sweep_bf16(kern, A, qa, qb, 0, N, D, epi);
    });
    at::parallel_for(0, qs, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t gi = s0 + r;
        const uint16_t* qrow = q + gi * D;
        float qinv = 0.f;
        if (metric == Metric::Cosine) {
          const float qn = sq_norm_bf16(qrow, D);
          qinv = qn > 0.f ? 1.f / std::sqrt(qn) : 0.f;
        }
        gemm::finish_knn_row(st.data() + r * k, cnt[r], k, metric, qinv,
                             [&](int64_t j) { return sq_dist_bf16(qrow, b + j * D, D); }, out_d + gi * k,
                             out_i + gi * k);
      }
    });
  }
}

}  // namespace fastad::cpu
