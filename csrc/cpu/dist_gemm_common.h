// Pieces shared by the distance GEMM drivers of knn / group_min: the fp32 one (dist_gemm_avx2.cpp) and
// the bf16 one (dist_bf16_gemm.h: dist_bf16_knn_avx2.cpp, dist_bf16_screen_avx2.cpp):
//   * ABuf: a growable 64-byte aligned buffer (thread_local instances in each file);
//   * superblock_rows: how many queries are packed at once;
//   * KnnEpilogue: the running top-k of alpha_j * dot + beta_j behind a vector threshold test;
//   * finish_knn_row: sort / exact re-rank / score -> distance / padding of one query's winners.
// Included only by files compiled with -mavx2 -mfma (*_avx2.cpp).
#pragma once
#include <immintrin.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>

#include "common/metric.h"
#include "cpu/topk.h"

namespace fastad::cpu::gemm {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kQueryPackBytes = 16ll << 20;  // packed query superblock <= 16 MiB
constexpr int64_t kSortedMaxK = 32;              // k <= 32: sorted buffer; larger k: binary heap

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/// A growable 64-byte aligned buffer of T, reused across calls (keep instances thread_local).
template <class T>
struct ABuf {
  T* p = nullptr;
  size_t cap = 0;
  ABuf() = default;
  ABuf(const ABuf&) = delete;
  ~ABuf() { std::free(p); }
  T* get(size_t n) {
    if (n > cap) {
      std::free(p);
      p = static_cast<T*>(std::aligned_alloc(64, static_cast<size_t>(round_up(int64_t(n * sizeof(T)), 64))));
      TORCH_CHECK(p != nullptr, "fastad: out of memory allocating a ", n * sizeof(T), "-byte CPU tile");
      cap = n;
    }
    return p;
  }
};

/// Queries per superblock: packed queries (row_bytes each) <= kQueryPackBytes and <= qmax_cap rows,
/// equal-sized blocks, a multiple of mr.
inline int64_t superblock_rows(int64_t Q, int64_t row_bytes, int64_t mr,
                               int64_t qmax_cap = std::numeric_limits<int64_t>::max()) {
  const int64_t qmax = std::clamp<int64_t>(kQueryPackBytes / row_bytes / mr * mr, mr, std::max(mr, qmax_cap));
  const int64_t nsb = (Q + qmax - 1) / qmax;
  return round_up((Q + nsb - 1) / nsb, mr);
}

/// Running top-k per query for one bank chunk: buf[qi * k ...], cnt[qi]. Within a chunk a query sees
/// bank indices in increasing order, so a new candidate only enters when strictly below the threshold.
/// The tile holds raw dots; the score alpha_j * dot + beta_j is formed (one FMA) in the compare pass.
struct KnnEpilogue {
  ScoreIdx* buf;
  int64_t* cnt;
  int64_t k;
  int64_t s0;  // global index of the superblock's first query
  bool exclude_self;
  bool heap;

  float threshold(const ScoreIdx* h, int64_t n) const { return n < k ? kInf : (heap ? h[0].s : h[k - 1].s); }

  void insert(ScoreIdx* h, int64_t& n, float s, int64_t j) const {
    const ScoreIdx cand{s, j};
    if (heap) {
      auto worse_first = [](const ScoreIdx& a, const ScoreIdx& b) { return better(a, b); };
      if (n < k) {
        h[n++] = cand;
        std::push_heap(h, h + n, worse_first);
      } else {
        std::pop_heap(h, h + n, worse_first);
        h[n - 1] = cand;
        std::push_heap(h, h + n, worse_first);
      }
      return;
    }
    int64_t p = n < k ? n : k - 1;  // slot freed at the end
    while (p > 0 && better(cand, h[p - 1])) {
      h[p] = h[p - 1];
      --p;
    }
    h[p] = cand;
    if (n < k) ++n;
  }

  static constexpr bool kScales = true;  // receives raw dots: applies alpha_j * dot + beta_j itself

  // Always inlined into the sweeps, as it was when it lived in dist_gemm_avx2.cpp alone.
  __attribute__((always_inline)) void operator()(int64_t i0, int64_t mc, int64_t j0, int64_t nc, const float* S,
                                                 int64_t ld, const float* alpha, const float* beta) const {
    alignas(32) float sv[8];
    for (int64_t r = 0; r < mc; ++r) {
      const int64_t qi = i0 + r;
      const int64_t self = exclude_self ? s0 + qi : -1;
      ScoreIdx* h = buf + qi * k;
      int64_t& n = cnt[qi];
      const float* row = S + r * ld;
      float thr = threshold(h, n);
      __m256 tv = _mm256_set1_ps(thr);
      for (int64_t jj = 0; jj < nc; jj += 8) {
        const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(alpha + jj), _mm256_loadu_ps(row + jj), _mm256_loadu_ps(beta + jj));
        unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, tv, _CMP_LT_OQ)));
        if (!m) continue;
        _mm256_store_ps(sv, v);
        while (m) {
          const int64_t l = __builtin_ctz(m), cc = jj + l;
          m &= m - 1;
          if (cc >= nc) break;
          const float s = sv[l];
          if (!(s < thr) || j0 + cc == self) continue;
          insert(h, n, s, j0 + cc);
          thr = threshold(h, n);
        }
        tv = _mm256_set1_ps(thr);
      }
    }
  }
};

/// Writes one query's k results from its n candidates (scores s, bank rows i; distinct rows, no NaN):
/// the min(k, n) best under (s, i), for l2 / sqeuclidean re-scored by sq(i) (an exact squared distance)
/// and re-sorted, converted to distances (cosine: qinv = 1 / |q|) and padded with +inf (ip: -inf), -1.
template <class Sq>
inline void finish_knn_row(ScoreIdx* cand, int64_t n, int64_t k, Metric metric, float qinv, Sq sq, float* od,
                           int64_t* oi) {
  const int64_t got = std::min(k, n);
  std::partial_sort(cand, cand + got, cand + n, better);
  if (metric == Metric::L2 || metric == Metric::SqEuclidean) {
    for (int64_t t = 0; t < got; ++t) cand[t].s = sq(cand[t].i);
    std::sort(cand, cand + got, better);
  }
  for (int64_t t = 0; t < got; ++t) {
    const float s = cand[t].s;
    float d;
    switch (metric) {
      case Metric::L2: d = std::sqrt(s); break;
      case Metric::SqEuclidean: d = s; break;
      case Metric::Cosine: d = std::max(1.f + s * qinv, 0.f); break;
      default: d = -s; break;
    }
    od[t] = d;
    oi[t] = cand[t].i;
  }
  const float pad = metric == Metric::IP ? -kInf : kInf;
  for (int64_t t = got; t < k; ++t) od[t] = pad, oi[t] = -1;
}

}  // namespace fastad::cpu::gemm
