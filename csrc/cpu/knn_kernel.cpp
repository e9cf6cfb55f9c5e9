// CPU exact k-NN entry. On AVX2/FMA CPUs it runs knn_f32_avx2 (csrc/cpu/dist_gemm_avx2.cpp: packed
// GEMM micro-kernel with the top-k fused into its epilogue); otherwise, or with FASTAD_FORCE_GENERIC=1,
// the portable knn_f32 below: the shared blocked sweep (cpu/dist_sweep.h) with a top-k heap handler.
// Both re-rank l2/sqeuclidean winners with exact distances.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>
#include <limits>
#include <vector>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

/// Raises naming op, arg and the first row of the 16-bit float matrix t (bfloat16 or float16, contiguous)
/// that holds a NaN or Inf (exponent bits all ones).
void check_finite_16bit_rows(const char* op, const char* arg, const at::Tensor& t) {
  const uint16_t* p = static_cast<const uint16_t*>(t.const_data_ptr());
  const unsigned e = t.scalar_type() == at::kBFloat16 ? 0x7f80u : 0x7c00u;
  const int64_t rows = t.size(0), d = t.size(1);
  std::atomic<int64_t> bad{rows};
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      unsigned acc = 0;
      for (int64_t c = 0; c < d; ++c) acc |= ((p[r * d + c] & e) == e);
      if (acc) {
        int64_t cur = bad.load();
        while (r < cur && !bad.compare_exchange_weak(cur, r)) {
        }
        return;
      }
    }
  });
  TORCH_CHECK(bad.load() == rows, op, ": ", arg, " must hold finite values, but row ", bad.load(), " contains NaN or Inf");
}

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

#if FASTAD_HAVE_AVX2
  // bfloat16 inputs: the bf16 GEMM (AVX512-BF16, fp32 accumulation) on the inputs as given, no upcast.
  if (query.scalar_type() == at::kBFloat16 && bank.scalar_type() == at::kBFloat16 && N > 0 && use_bf16_gemm()) {
    const at::Tensor q16 = query.contiguous(), b16 = bank.contiguous();
    check_finite_16bit_rows("knn", "query", q16);
    check_finite_16bit_rows("knn", "bank", b16);
    knn_bf16_avx2(reinterpret_cast<const uint16_t*>(q16.data_ptr<at::BFloat16>()),
                  reinterpret_cast<const uint16_t*>(b16.data_ptr<at::BFloat16>()), Q, N, D, k, metric, exclude_self,
                  out_d.data_ptr<float>(), out_i.data_ptr<int64_t>());
    return {out_d, out_i};
  }
  // float16 inputs: the fp32 GEMM converting each packed panel (F16C), no float32 copy of the bank;
  // the same results as on the upcast inputs (the bank's NaN / Inf are caught while packing).
  if (query.scalar_type() == at::kHalf && bank.scalar_type() == at::kHalf && N > 0 && use_avx2_path()) {
    const at::Tensor q16 = query.contiguous(), b16 = bank.contiguous();
    check_finite_16bit_rows("knn", "query", q16);
    knn_f16_avx2(static_cast<const F16*>(q16.const_data_ptr()), static_cast<const F16*>(b16.const_data_ptr()), Q, N,
                 D, k, metric, exclude_self, out_d.data_ptr<float>(), out_i.data_ptr<int64_t>());
    return {out_d, out_i};
  }
#endif
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

// knn_screen: exact float32 k-NN through the bf16 screen (dist_bf16_screen_avx2.cpp), identical answers to knn.
// screen "bf16": whenever the bf16 GEMM can run (use_bf16_gemm()); "auto": only where it measured faster
// (AVX512-BF16 hardware, D >= kScreenAutoMinD, k * 64 <= N); otherwise, and for other metrics, dtypes
// or when the screen declines, the knn path.
constexpr int64_t kScreenAutoMinD = 96;  // measured (k=9, N=16384, Q=784): D=64 1.0x, D=128 1.31x the fp32 path

std::tuple<at::Tensor, at::Tensor> knn_screen_cpu(const at::Tensor& query, const at::Tensor& bank, int64_t k,
                                                  c10::string_view metric_name,
                                                  const std::optional<at::Tensor>& bank_norms, bool exclude_self,
                                                  c10::string_view screen) {
  TORCH_CHECK(screen == "bf16" || screen == "auto", "knn_screen: screen must be 'bf16' or 'auto', got '",
              std::string(screen), "'");
  check_query_bank("knn", query, bank);
  const Metric metric = parse_metric("knn", metric_name);
  TORCH_CHECK(k >= 1, "knn: k must be >= 1, got ", k);
  const int64_t Q = query.size(0), N = bank.size(0), D = query.size(1);
  if (bank_norms) check_bank_norms("knn", *bank_norms, N, bank);  // a cache the screen does not need
  bool on = query.scalar_type() == at::kFloat && bank.scalar_type() == at::kFloat && Q > 0 && N > 0 &&
            (metric == Metric::L2 || metric == Metric::SqEuclidean) && k < N && (!exclude_self || Q <= N);
  if (screen == "auto") on = on && use_bf16_micro() && D >= kScreenAutoMinD && k * 64 <= N;
  else on = on && use_bf16_gemm();
#if FASTAD_HAVE_AVX2
  if (on) {
    const at::Tensor q = query.contiguous(), b = bank.contiguous();
    check_finite_norms("knn", "query", row_sq_norms(q));
    auto out_d = at::empty({Q, k}, query.options().dtype(at::kFloat));
    auto out_i = at::empty({Q, k}, query.options().dtype(at::kLong));
    if (knn_f32_screen_bf16(q.data_ptr<float>(), b.data_ptr<float>(), Q, N, D, k, metric, exclude_self,
                            out_d.data_ptr<float>(), out_i.data_ptr<int64_t>()))
      return {out_d, out_i};
  }
#endif
  return knn_cpu(query, bank, k, metric_name, bank_norms, exclude_self);
}

}  // namespace

bool use_bf16_micro() {
#if FASTAD_HAVE_AVX512 && (defined(__x86_64__) || defined(__i386__))
  static const bool cpu_ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  const char* emu = std::getenv("FASTAD_BF16_EMULATE");
  if (emu && emu[0] && emu[0] != '0') return false;
  return cpu_ok && use_avx2_path();
#else
  return false;
#endif
}

bool amx_usable() {
#if FASTAD_HAVE_AMX && defined(__x86_64__) && defined(__linux__)
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 24)) || !(d & (1u << 22))) return false;  // amx-tile, amx-bf16
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // osxsave
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;  // XTILECFG, XTILEDATA enabled by the OS
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

int bf16_amx_mode() {
  const char* emu = std::getenv("FASTAD_AMX_EMULATE");
  if (emu && emu[0] && emu[0] != '0') return 2;
  if (!use_bf16_micro() || !amx_usable()) return 0;
  const char* on = std::getenv("FASTAD_AMX");
  if (on && on[0]) return on[0] != '0' ? 1 : 0;  // forced on (no self-check) or off
  const AmxCheck::Verdict v = amx_hw_check().verdict;
  return v == AmxCheck::kIdentical || v == AmxCheck::kWithinBound ? 1 : 0;
}

bool use_bf16_gemm() {
  if (use_bf16_micro()) return true;
  const char* emu = std::getenv("FASTAD_BF16_EMULATE");
  return emu && emu[0] && emu[0] != '0' && use_avx2_path();
}

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("knn", &knn_cpu);
  m.impl("knn_screen", &knn_screen_cpu);
}

}  // namespace fastad::cpu
