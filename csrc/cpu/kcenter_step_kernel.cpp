// CPU coreset_step: ONE greedy k-center step on a bank shard (fastad.distributed.coreset).
//
// The distributed coreset runs the loop of fastad::coreset itself, one step per call, with the chosen
// centre exchanged between processes. So that it chooses the same rows as the single-process op, this
// step calls the very same row update as csrc/cpu/coreset_kernel.cpp (coreset_update_avx2 / _generic:
// d2 = sum((x - c)^2) in fp32, running min, argmax with ties -> the smallest row), with the same ISA
// choice (FASTAD_SIMD=generic forces the portable path in both). Optional triangle-inequality pruning
// (the kernel's test, with `assign` and the new centre's squared distances to the earlier centres) only
// skips rows that cannot change, so the result is the same with or without it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "common/build_info.h"
#include "common/checks.h"
#include "cpu/coreset.h"

namespace fastad::cpu {

namespace {

constexpr int64_t kStepMinRowsPerTask = 2048;

std::tuple<at::Tensor, at::Tensor, at::Tensor> coreset_step_cpu(const at::Tensor& bank, const at::Tensor& centre,
                                                                at::Tensor& min_sq, const std::optional<at::Tensor>& assign,
                                                                const std::optional<at::Tensor>& centre_dists,
                                                                int64_t centre_id) {
  const char* op = "coreset_step";
  TORCH_CHECK(bank.dim() == 2, op, ": bank must be 2-D [N, D], got shape ", shape_str(bank));
  TORCH_CHECK(bank.scalar_type() == at::kFloat || bank.scalar_type() == at::kHalf ||
                  bank.scalar_type() == at::kBFloat16,
              op, ": bank dtype must be float32, float16 or bfloat16, got ", bank.scalar_type());
  const int64_t N = bank.size(0), D = bank.size(1);
  TORCH_CHECK(D >= 1, op, ": feature dimension D must be >= 1, got shape ", shape_str(bank));
  TORCH_CHECK(centre.dim() == 1 && centre.size(0) == D && centre.scalar_type() == at::kFloat, op,
              ": centre must be a float32 [D] tensor with D = ", D, ", got ", centre.scalar_type(), " of shape ",
              shape_str(centre));
  TORCH_CHECK(min_sq.dim() == 1 && min_sq.size(0) == N && min_sq.scalar_type() == at::kFloat &&
                  min_sq.is_contiguous(),
              op, ": min_sq must be a contiguous float32 [N] tensor with N = ", N, ", got ", min_sq.scalar_type(),
              " of shape ", shape_str(min_sq));
  TORCH_CHECK(centre.device().is_cpu() && min_sq.device().is_cpu(), op, ": centre and min_sq must be on the CPU");
  TORCH_CHECK(N < (int64_t(1) << 31), op, ": bank must have fewer than 2^31 rows, got ", N);
  if (assign) {
    TORCH_CHECK(assign->dim() == 1 && assign->size(0) == N && assign->scalar_type() == at::kInt &&
                    assign->is_contiguous() && assign->device().is_cpu(),
                op, ": assign must be a contiguous int32 CPU [N] tensor with N = ", N, ", got ", assign->scalar_type(),
                " of shape ", shape_str(*assign));
  }
  const bool prune = assign.has_value() && centre_dists.has_value();
  if (prune) {
    const at::Tensor& cd = *centre_dists;
    TORCH_CHECK(cd.dim() == 1 && cd.scalar_type() == at::kFloat && cd.is_contiguous() && cd.device().is_cpu() &&
                    centre_id >= 0 && centre_id < cd.size(0),
                op, ": centre_dists must be a contiguous float32 CPU [s] tensor with 0 <= centre_id < s, got ",
                cd.scalar_type(), " of shape ", shape_str(cd), " and centre_id ", centre_id);
    if (N > 0) {  // every assign entry must name a centre position covered by centre_dists
      const auto mx = assign->max().item<int32_t>(), mn = assign->min().item<int32_t>();
      TORCH_CHECK(mn >= 0 && mx < cd.size(0), op, ": assign holds centre positions in [", mn, ", ", mx,
                  "], outside centre_dists' [0, ", cd.size(0), ")");
    }
  }
  auto best_v = at::scalar_tensor(-2.0, bank.options().dtype(at::kFloat));
  auto best_i = at::scalar_tensor(-1, bank.options().dtype(at::kLong));
  auto skipped_t = at::scalar_tensor(0, bank.options().dtype(at::kLong));
  if (N == 0) return {best_v, best_i, skipped_t};

  const at::Tensor b = bank.contiguous(), c = centre.contiguous();
  const int dtype = b.scalar_type() == at::kHalf ? kCoresetF16 : b.scalar_type() == at::kBFloat16 ? kCoresetBF16
                                                                                                  : kCoresetF32;
  const char* simd_env = std::getenv("FASTAD_SIMD");
  const bool force_generic = simd_env != nullptr && std::string_view(simd_env) == "generic";
  const bool avx2 = FASTAD_HAVE_AVX2 && cpu_has_avx2_fma() && !force_generic;
  auto step_fn = avx2 ? &coreset_update_avx2 : &coreset_update_generic;

  at::Tensor scratch;
  if (!assign) scratch = at::empty({N}, b.options().dtype(at::kInt));  // written by the shared update, unused
  CoresetStep st;
  st.c = c.data_ptr<float>();
  st.cid = static_cast<int32_t>(centre_id);
  st.mind = min_sq.data_ptr<float>();
  st.assign = assign ? assign->data_ptr<int32_t>() : scratch.data_ptr<int32_t>();
  st.cc2 = prune ? centre_dists->data_ptr<float>() : nullptr;

  const int64_t tasks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (N + kStepMinRowsPerTask - 1) / kStepMinRowsPerTask));
  std::vector<CoresetBest> partial(tasks);
  std::vector<char> bad(tasks, 0);
  std::vector<int64_t> skipped(tasks, 0);
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = N * t / tasks, r1 = N * (t + 1) / tasks;
      bool bd = false;
      int64_t sk = 0;
      partial[t] = step_fn(b.data_ptr(), dtype, D, r0, r1, st, &sk, &bd);
      bad[t] = bd;
      skipped[t] = sk;
    }
  });
  TORCH_CHECK(std::find(bad.begin(), bad.end(), 1) == bad.end(), op,
              ": bank must hold finite values, but a squared distance was NaN or Inf (the bank contains NaN/Inf, "
              "or values whose squared differences overflow float32)");
  CoresetBest best = partial[0];
  for (int64_t t = 1; t < tasks; ++t)
    if (partial[t].value > best.value) best = partial[t];  // strict: earlier task = smaller row wins ties
  best_v.fill_(static_cast<double>(best.value));
  best_i.fill_(best.index);
  int64_t sk = 0;
  for (int64_t t = 0; t < tasks; ++t) sk += skipped[t];
  skipped_t.fill_(sk);
  return {best_v, best_i, skipped_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) { m.impl("coreset_step", &coreset_step_cpu); }

}  // namespace fastad::cpu
