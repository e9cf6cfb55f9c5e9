// CPU exact k-NN entry. On AVX2/FMA CPUs it runs knn_f32_avx2 (csrc/cpu/dist_gemm_avx2.cpp: packed
// GEMM micro-kernel with the top-k fused into its epilogue); otherwise, or with FASTAD_FORCE_GENERIC=1,
// the portable knn_f32 below: the shared blocked sweep (cpu/dist_sweep.h) with a top-k heap handler.
// Both re-rank l2/sqeuclidean winners with exact distances.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/dist_kernels.h"
#include "cpu/dist_sweep.h"
#include "cpu/topk.h"
#include "cpu/vec_ops.h"
#include "common/checks.h"

namespace fastad::cpu {

namespace {

/// knn's result handler for sweep_scores: a bounded top-k heap per query row of the block, then the
/// exact re-rank (l2 / sqeuclidean) and the conversion of scores to distances.
class KnnHandler {
 public:
  KnnHandler(const float* q, const float* b, const float* qnorm, int64_t D, int64_t k, Metric metric,
             bool exclude_self, float* out_d, int64_t* out_i)
      : q_(q), b_(b), qnorm_(qnorm), D_(D), k_(k), metric_(metric), exclude_self_(exclude_self), out_d_(out_d),
        out_i_(out_i), heaps_(kSweepQueryBlock * k) {}

  void begin(int64_t i0, int64_t ni) {
    i0_ = i0;
    tk_.clear();
    for (int64_t r = 0; r < ni; ++r) tk_.emplace_back(heaps_.data() + r * k_, k_);
  }

  void add(int64_t r, int64_t j, float s) {
    TopK& h = tk_[r];
    if (s <= h.threshold() && !(exclude_self_ && j == i0_ + r)) h.push(s, j);
  }

  void end(int64_t i0, int64_t ni) {
    const bool l2 = metric_ == Metric::L2 || metric_ == Metric::SqEuclidean;
    for (int64_t r = 0; r < ni; ++r) {
      const int64_t i = i0 + r;
      const int64_t got = tk_[r].finish();
      float* od = out_d_ + i * k_;
      int64_t* oi = out_i_ + i * k_;
      const float qinv = qnorm_[i] > 0.f ? 1.f / std::sqrt(qnorm_[i]) : 0.f;
      if (l2) {
        // re-rank the winners with exact distances (the expansion loses accuracy on non-centred data)
        for (int64_t c = 0; c < got; ++c) tk_[r].buf[c].s = exact_sq_dist(q_ + i * D_, b_ + tk_[r].buf[c].i * D_, D_);
        std::sort(tk_[r].buf, tk_[r].buf + got, better);
      }
      const float qadd = l2 ? 0.f : qnorm_[i];
      for (int64_t c = 0; c < got; ++c) {
        const float s = tk_[r].buf[c].s;
        float d;
        switch (metric_) {
          case Metric::L2: d = std::sqrt(std::max(s + qadd, 0.f)); break;
          case Metric::SqEuclidean: d = std::max(s + qadd, 0.f); break;
          case Metric::Cosine: d = std::max(1.f + s * qinv, 0.f); break;
          default: d = -s; break;
        }
        od[c] = d;
        oi[c] = tk_[r].buf[c].i;
      }
      const float pad = metric_ == Metric::IP ? -std::numeric_limits<float>::infinity()
                                              : std::numeric_limits<float>::infinity();
      for (int64_t c = got; c < k_; ++c) {
        od[c] = pad;
        oi[c] = -1;
      }
    }
  }

 private:
  const float *q_, *b_, *qnorm_;
  int64_t D_, k_;
  Metric metric_;
  bool exclude_self_;
  float* out_d_;
  int64_t* out_i_;
  std::vector<ScoreIdx> heaps_;
  std::vector<TopK> tk_;
  int64_t i0_ = 0;
};

}  // namespace

/// Exact k-NN over row-major float32 buffers (the portable path: sweep_scores + KnnHandler).
/// @param q        queries, Q * D floats
/// @param b        bank, N * D floats
/// @param bnorm    squared L2 norm of every bank row, N floats (used by l2 / sqeuclidean / cosine)
/// @param qnorm    squared L2 norm of every query row, Q floats
/// @param out_d    distances, Q * k floats, best first; +inf (ip: -inf) in unfilled slots
/// @param out_i    bank row indices, Q * k int64, -1 in unfilled slots
/// @param exclude_self  skip bank row i for query i
void knn_f32(const float* q, const float* b, const float* bnorm, const float* qnorm, int64_t Q, int64_t N,
             int64_t D, int64_t k, Metric metric, bool exclude_self, float* out_d, int64_t* out_i) {
  // Inverse norms for cosine (a zero row has cosine similarity 0 with everything).
  std::vector<float> binv;
  if (metric == Metric::Cosine) {
    binv.resize(N);
    inverse_norms(bnorm, N, binv.data());
  }
  sweep_scores(q, b, bnorm, binv.data(), Q, N, D, metric,
               [&] { return KnnHandler(q, b, qnorm, D, k, metric, exclude_self, out_d, out_i); });
}

namespace {

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& query, const at::Tensor& bank, int64_t k,
                                           c10::string_view metric_name, const std::optional<at::Tensor>& bank_norms,
                                           bool exclude_self) {
  check_query_bank("knn", query, bank);
  const Metric metric = parse_metric("knn", metric_name);
  TORCH_CHECK(k >= 1, "knn: k must be >= 1, got ", k);
  const int64_t Q = query.size(0), N = bank.size(0), D = query.size(1);
  TORCH_CHECK(!exclude_self || Q <= N, "knn: exclude_self=True needs query row i to be bank row i, so Q <= N; got Q=",
              Q, " and N=", N);
  if (bank_norms) check_bank_norms("knn", *bank_norms, N, bank);

  auto out_d = at::empty({Q, k}, query.options().dtype(at::kFloat));
  auto out_i = at::empty({Q, k}, query.options().dtype(at::kLong));
  if (Q == 0) return {out_d, out_i};

  const at::Tensor q = as_f32_contiguous(query), b = as_f32_contiguous(bank);
  const at::Tensor qn = row_sq_norms(q);
  check_finite_norms("knn", "query", qn);
  // The AVX2 path computes (centred) bank norms while packing and checks them for NaN/Inf there.
#if FASTAD_HAVE_AVX2
  if (use_avx2_path()) {
    if (N == 0) {
      out_d.fill_(metric == Metric::IP ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity());
      out_i.fill_(-1);
    } else {
      knn_f32_avx2(q.data_ptr<float>(), b.data_ptr<float>(), Q, N, D, k, metric, exclude_self, out_d.data_ptr<float>(),
                   out_i.data_ptr<int64_t>());
    }
    return {out_d, out_i};
  }
#endif
  at::Tensor bn;
  if (bank_norms) {
    bn = bank_norms->contiguous();
  } else {
    bn = row_sq_norms(b);
    check_finite_norms("knn", "bank", bn);
  }
  knn_f32(q.data_ptr<float>(), b.data_ptr<float>(), bn.data_ptr<float>(), qn.data_ptr<float>(), Q, N, D, k, metric,
          exclude_self, out_d.data_ptr<float>(), out_i.data_ptr<int64_t>());
  return {out_d, out_i};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) { m.impl("knn", &knn_cpu); }

}  // namespace fastad::cpu
