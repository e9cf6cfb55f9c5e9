// CPU group minimum: for each query, the minimum distance to each of G consecutive groups of bank rows.
// Fast path: the AVX2 distance GEMM with a per-group-min epilogue (csrc/cpu/dist_gemm_avx2.cpp).
// Portable path: a blocked dot-product tile (as knn_kernel.cpp) followed by segment minima; the
// Q x N distance matrix is never materialised (one [kQueryBlock x kBankBlock] tile per thread).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/dist_kernels.h"
#include "cpu/vec_ops.h"
#include "ops/checks.h"

namespace fastad::cpu {

namespace {

constexpr int64_t kQueryBlock = 64;  // query rows per tile and per parallel task
constexpr int64_t kBankBlock = 512;  // bank rows per tile (tile = 64 * 512 * 4 B = 128 KiB)
constexpr float kInf = std::numeric_limits<float>::infinity();

/// Portable group minimum over row-major float32 buffers.
/// @param bnorm   squared bank row norms [N]        @param qnorm  squared query row norms [Q]
/// @param exclude group id to skip per query [Q] (-1: none), or nullptr
/// @param out     [Q, G] distances (ip: max inner product); a skipped group holds +inf (ip: -inf)
void group_min_f32(const float* q, const float* b, const float* bnorm, const float* qnorm, int64_t Q, int64_t N,
                   int64_t D, int64_t gs, Metric metric, const int64_t* exclude, float* out) {
  const int64_t G = N / gs;
  std::vector<float> binv;
  if (metric == Metric::Cosine) {
    binv.resize(N);
    inverse_norms(bnorm, N, binv.data());
  }
  const int64_t nqb = (Q + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, nqb, 1, [&](int64_t qb0, int64_t qb1) {
    std::vector<float> tile(kQueryBlock * kBankBlock);
    std::vector<int64_t> arg(kQueryBlock * G);  // winning bank row per (query, group)
    for (int64_t qb = qb0; qb < qb1; ++qb) {
      const int64_t i0 = qb * kQueryBlock, ni = std::min(kQueryBlock, Q - i0);
      std::fill(out + i0 * G, out + (i0 + ni) * G, kInf);  // best score (smaller is better) per group
      for (int64_t j0 = 0; j0 < N; j0 += kBankBlock) {
        const int64_t nj = std::min(kBankBlock, N - j0);
        dot_tile(q + i0 * D, ni, b + j0 * D, nj, D, tile.data(), kBankBlock);
        for (int64_t r = 0; r < ni; ++r) {
          const int64_t ex = exclude ? exclude[i0 + r] : -1;
          const float* t = tile.data() + r * kBankBlock;
          float* o = out + (i0 + r) * G;
          int64_t* a = arg.data() + r * G;
          for (int64_t c = 0; c < nj; ++c) {
            const int64_t j = j0 + c, g = j / gs;
            if (g == ex) continue;
            float s;
            switch (metric) {
              case Metric::L2:
              case Metric::SqEuclidean: s = bnorm[j] - 2.f * t[c]; break;
              case Metric::Cosine: s = -t[c] * binv[j]; break;
              default: s = -t[c]; break;
            }
            if (s < o[g]) o[g] = s, a[g] = j;  // equal scores keep the smaller index
          }
        }
      }
      for (int64_t r = 0; r < ni; ++r) {
        const int64_t i = i0 + r;
        const float qinv = qnorm[i] > 0.f ? 1.f / std::sqrt(qnorm[i]) : 0.f;
        float* o = out + i * G;
        const int64_t* a = arg.data() + r * G;
        for (int64_t g = 0; g < G; ++g) {
          const float s = o[g];
          if (s == kInf) {  // skipped group (scores of finite inputs are finite)
            o[g] = metric == Metric::IP ? -kInf : kInf;
            continue;
          }
          switch (metric) {
            // l2/sqeuclidean: the exact distance to the group's winner (the expansion cancels on
            // non-centred data)
            case Metric::L2: o[g] = std::sqrt(exact_sq_dist(q + i * D, b + a[g] * D, D)); break;
            case Metric::SqEuclidean: o[g] = exact_sq_dist(q + i * D, b + a[g] * D, D); break;
            case Metric::Cosine: o[g] = std::max(1.f + s * qinv, 0.f); break;
            default: o[g] = -s; break;
          }
        }
      }
    }
  });
}

at::Tensor group_min_cpu(const at::Tensor& query, const at::Tensor& bank, int64_t group_size,
                         c10::string_view metric_name, const std::optional<at::Tensor>& exclude_group) {
  check_group_min_args(query, bank, group_size, exclude_group);
  const Metric metric = parse_metric("group_min", metric_name);
  const int64_t Q = query.size(0), N = bank.size(0), D = query.size(1), G = N / group_size;
  at::Tensor ex;
  if (exclude_group) {
    ex = exclude_group->contiguous();
    const int64_t* pe = ex.data_ptr<int64_t>();
    for (int64_t i = 0; i < Q; ++i)
      TORCH_CHECK(pe[i] >= -1 && pe[i] < G, "group_min: exclude_group values must be group ids in [0, G) or -1, with G = ",
                  G, "; got ", pe[i], " for query ", i);
  }
  auto out = at::empty({Q, G}, query.options().dtype(at::kFloat));
  if (Q == 0 || G == 0) return out;
  const at::Tensor q = as_f32_contiguous(query), b = as_f32_contiguous(bank);
  const at::Tensor qn = row_sq_norms(q);
  check_finite_norms("group_min", "query", qn);
  const int64_t* pex = exclude_group ? ex.data_ptr<int64_t>() : nullptr;
#if FASTAD_HAVE_AVX2
  if (use_avx2_path()) {  // computes centred bank norms while packing, and checks them for NaN/Inf
    group_min_f32_avx2(q.data_ptr<float>(), b.data_ptr<float>(), Q, N, D, group_size, metric, pex,
                       out.data_ptr<float>());
    return out;
  }
#endif
  const at::Tensor bn = row_sq_norms(b);
  check_finite_norms("group_min", "bank", bn);
  group_min_f32(q.data_ptr<float>(), b.data_ptr<float>(), bn.data_ptr<float>(), qn.data_ptr<float>(), Q, N, D,
                group_size, metric, pex, out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) { m.impl("group_min", &group_min_cpu); }

}  // namespace fastad::cpu
