// The portable (non-SIMD) distance sweep shared by knn and group_min: blocked dot-product tiles of
// [kSweepQueryBlock x kSweepBankBlock] with the metric's score, each (query row, bank row, score)
// handed to a result handler that does the selection. This is faiss's exhaustive_L2sqr_blas +
// BlockResultHandler split: one sweep, pluggable selection (top-k heap for knn, per-group minimum for
// group_min). The Q x N distance matrix is never materialised: each thread owns one 128 KiB tile.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/metric.h"
#include "cpu/vec_ops.h"

namespace fastad::cpu {

/// Query rows per tile and per parallel task, and bank rows per tile (tile = 64 * 512 * 4 B = 128 KiB).
constexpr int64_t kSweepQueryBlock = 64;
constexpr int64_t kSweepBankBlock = 512;

/// The sweep's score of bank row j for a tile entry t = <q_i, b_j>: smaller is better, and it ranks
/// bank rows for a fixed query as the metric does (l2 / sqeuclidean: |b|^2 - 2 <q, b>; cosine:
/// -<q, b> / |b|; ip: -<q, b>). Handlers turn the winners' scores into distances.
inline float sweep_score(Metric metric, float t, const float* bnorm, const float* binv, int64_t j) {
  switch (metric) {
    case Metric::L2:
    case Metric::SqEuclidean: return bnorm[j] - 2.f * t;
    case Metric::Cosine: return -t * binv[j];
    default: return -t;
  }
}

/// Runs the sweep over row-major float32 buffers, in parallel over query blocks.
/// @param q, b      queries Q * D and bank N * D floats
/// @param bnorm     squared bank row norms, N floats (read for l2 / sqeuclidean)
/// @param binv      inverse bank row norms, N floats (read for cosine; may be nullptr otherwise)
/// @param make_handler  called once per parallel task; returns a handler with
///        begin(i0, ni): a block of query rows [i0, i0 + ni) starts;
///        add(r, j, s): score s of bank row j for query row i0 + r (bank rows arrive in increasing j);
///        end(i0, ni): the block is complete (finish and write its outputs).
template <class MakeHandler>
void sweep_scores(const float* q, const float* b, const float* bnorm, const float* binv, int64_t Q, int64_t N,
                  int64_t D, Metric metric, MakeHandler make_handler) {
  const int64_t nqb = (Q + kSweepQueryBlock - 1) / kSweepQueryBlock;
  at::parallel_for(0, nqb, 1, [&](int64_t qb0, int64_t qb1) {
    std::vector<float> tile(kSweepQueryBlock * kSweepBankBlock);
    auto h = make_handler();
    for (int64_t qb = qb0; qb < qb1; ++qb) {
      const int64_t i0 = qb * kSweepQueryBlock, ni = std::min(kSweepQueryBlock, Q - i0);
      h.begin(i0, ni);
      for (int64_t j0 = 0; j0 < N; j0 += kSweepBankBlock) {
        const int64_t nj = std::min(kSweepBankBlock, N - j0);
        dot_tile(q + i0 * D, ni, b + j0 * D, nj, D, tile.data(), kSweepBankBlock);
        for (int64_t r = 0; r < ni; ++r) {
          const float* t = tile.data() + r * kSweepBankBlock;
          for (int64_t c = 0; c < nj; ++c) h.add(r, j0 + c, sweep_score(metric, t[c], bnorm, binv, j0 + c));
        }
      }
      h.end(i0, ni);
    }
  });
}

}  // namespace fastad::cpu
