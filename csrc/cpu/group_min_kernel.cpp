// CPU group minimum: for each query, the minimum distance to each of G consecutive groups of bank rows.
// Fast path: the AVX2 distance GEMM with a per-group-min epilogue (csrc/cpu/dist_gemm_avx2.cpp).
// Portable path: the shared blocked sweep (cpu/dist_sweep.h) with a per-group-minimum handler.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu/dist_kernels.h"
#include "cpu/dist_sweep.h"
#include "cpu/vec_ops.h"
#include "common/checks.h"

namespace fastad::cpu {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

/// group_min's result handler for sweep_scores: the best score and its bank row per (query row, group),
/// then the winner's exact distance (l2 / sqeuclidean) or the score's conversion.
class GroupMinHandler {
 public:
  GroupMinHandler(const float* q, const float* b, const float* qnorm, int64_t D, int64_t gs, int64_t G, Metric metric,
                  const int64_t* exclude, float* out)
      : q_(q), b_(b), qnorm_(qnorm), D_(D), gs_(gs), G_(G), metric_(metric), exclude_(exclude), out_(out),
        arg_(kSweepQueryBlock * G) {}

  void begin(int64_t i0, int64_t ni) {
    i0_ = i0;
    std::fill(out_ + i0 * G_, out_ + (i0 + ni) * G_, kInf);  // best score (smaller is better) per group
  }

  void add(int64_t r, int64_t j, float s) {
    const int64_t g = j / gs_;
    if (exclude_ && g == exclude_[i0_ + r]) return;
    float& o = out_[(i0_ + r) * G_ + g];
    if (s < o) o = s, arg_[r * G_ + g] = j;  // equal scores keep the smaller index
  }

  void end(int64_t i0, int64_t ni) {
    for (int64_t r = 0; r < ni; ++r) {
      const int64_t i = i0 + r;
      const float qinv = qnorm_[i] > 0.f ? 1.f / std::sqrt(qnorm_[i]) : 0.f;
      float* o = out_ + i * G_;
      const int64_t* a = arg_.data() + r * G_;
      for (int64_t g = 0; g < G_; ++g) {
        const float s = o[g];
        if (s == kInf) {  // skipped group (scores of finite inputs are finite)
          o[g] = metric_ == Metric::IP ? -kInf : kInf;
          continue;
        }
        switch (metric_) {
          // l2/sqeuclidean: the exact distance to the group's winner (the expansion cancels on
          // non-centred data)
          case Metric::L2: o[g] = std::sqrt(exact_sq_dist(q_ + i * D_, b_ + a[g] * D_, D_)); break;
          case Metric::SqEuclidean: o[g] = exact_sq_dist(q_ + i * D_, b_ + a[g] * D_, D_); break;
          case Metric::Cosine: o[g] = std::max(1.f + s * qinv, 0.f); break;
          default: o[g] = -s; break;
        }
      }
    }
  }

 private:
  const float *q_, *b_, *qnorm_;
  int64_t D_, gs_, G_;
  Metric metric_;
  const int64_t* exclude_;
  float* out_;
  std::vector<int64_t> arg_;  // winning bank row per (query row of the block, group)
  int64_t i0_ = 0;
};

/// Portable group minimum over row-major float32 buffers (sweep_scores + GroupMinHandler).
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
  sweep_scores(q, b, bnorm, binv.data(), Q, N, D, metric,
               [&] { return GroupMinHandler(q, b, qnorm, D, gs, G, metric, exclude, out); });
}

// exclude_group made contiguous with its values checked to be group ids in [0, G) or -1 (undefined when absent).
at::Tensor checked_exclude(const std::optional<at::Tensor>& exclude_group, int64_t Q, int64_t G) {
  if (!exclude_group) return at::Tensor();
  at::Tensor ex = exclude_group->contiguous();
  const int64_t* pe = ex.data_ptr<int64_t>();
  for (int64_t i = 0; i < Q; ++i)
    TORCH_CHECK(pe[i] >= -1 && pe[i] < G, "group_min: exclude_group values must be group ids in [0, G) or -1, with G = ",
                G, "; got ", pe[i], " for query ", i);
  return ex;
}

at::Tensor group_min_cpu(const at::Tensor& query, const at::Tensor& bank, int64_t group_size,
                         c10::string_view metric_name, const std::optional<at::Tensor>& exclude_group) {
  check_group_min_args(query, bank, group_size, exclude_group);
  const Metric metric = parse_metric("group_min", metric_name);
  const int64_t Q = query.size(0), N = bank.size(0), D = query.size(1), G = N / group_size;
  const at::Tensor ex = checked_exclude(exclude_group, Q, G);
  auto out = at::empty({Q, G}, query.options().dtype(at::kFloat));
  if (Q == 0 || G == 0) return out;
  const int64_t* pex = exclude_group ? ex.data_ptr<int64_t>() : nullptr;
#if FASTAD_HAVE_AVX2
  // float16 inputs: converted per packed panel, no float32 copy of the bank (as knn)
  if (query.scalar_type() == at::kHalf && bank.scalar_type() == at::kHalf && use_avx2_path()) {
    const at::Tensor q16 = query.contiguous(), b16 = bank.contiguous();
    check_finite_16bit_rows("group_min", "query", q16);
    group_min_f16_avx2(static_cast<const F16*>(q16.const_data_ptr()), static_cast<const F16*>(b16.const_data_ptr()),
                       Q, N, D, group_size, metric, pex, out.data_ptr<float>());
    return out;
  }
#endif
  const at::Tensor q = as_f32_contiguous(query), b = as_f32_contiguous(bank);
  const at::Tensor qn = row_sq_norms(q);
  check_finite_norms("group_min", "query", qn);
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

// group_min_screen: group_min through the bf16 screen (dist_bf16_screen_avx2.cpp), identical outputs. screen
// "bf16": whenever the bf16 GEMM can run; "auto": AVX512-BF16 hardware, D >= 96 and group_size >= 64;
// otherwise, for other metrics or dtypes, or when the screen declines, the group_min path.
at::Tensor group_min_screen_cpu(const at::Tensor& query, const at::Tensor& bank, int64_t group_size,
                                c10::string_view metric_name, const std::optional<at::Tensor>& exclude_group,
                                c10::string_view screen) {
  TORCH_CHECK(screen == "bf16" || screen == "auto", "group_min_screen: screen must be 'bf16' or 'auto', got '",
              std::string(screen), "'");
  check_group_min_args(query, bank, group_size, exclude_group);
  const Metric metric = parse_metric("group_min", metric_name);
  const int64_t Q = query.size(0), N = bank.size(0), D = query.size(1), G = N / group_size;
  bool on = query.scalar_type() == at::kFloat && bank.scalar_type() == at::kFloat && Q > 0 && G > 0 &&
            (metric == Metric::L2 || metric == Metric::SqEuclidean);
  if (screen == "auto") on = on && use_bf16_micro() && D >= 96 && group_size >= 64;
  else on = on && use_bf16_gemm();
#if FASTAD_HAVE_AVX2
  if (on) {
    const at::Tensor ex = checked_exclude(exclude_group, Q, G);
    const at::Tensor q = query.contiguous(), b = bank.contiguous();
    check_finite_norms("group_min", "query", row_sq_norms(q));
    auto out = at::empty({Q, G}, query.options().dtype(at::kFloat));
    if (group_min_f32_screen_bf16(q.data_ptr<float>(), b.data_ptr<float>(), Q, N, D, group_size, metric,
                                  exclude_group ? ex.data_ptr<int64_t>() : nullptr, out.data_ptr<float>()))
      return out;
  }
#endif
  return group_min_cpu(query, bank, group_size, metric_name, exclude_group);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("group_min", &group_min_cpu);
  m.impl("group_min_screen", &group_min_screen_cpu);
}

}  // namespace fastad::cpu
