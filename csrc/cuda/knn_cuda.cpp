// CUDA entry for fastad::knn: argument checks, output allocation, stream/guard, launch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/knn_kernel.h"
#include "ops/checks.h"

namespace fastad::cuda {

// Score tile budget: the simple kernel materialises at most this many bytes of [rows, N] scores.
constexpr int64_t kScratchBytes = 256ll << 20;

int dtype_code(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf ? 1 : t.scalar_type() == at::kBFloat16 ? 2 : 0;
}

namespace {

std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& query, const at::Tensor& bank, int64_t k,
                                            c10::string_view metric_name,
                                            const std::optional<at::Tensor>& bank_norms, bool exclude_self) {
  check_query_bank("knn", query, bank);
  const Metric metric = parse_metric("knn", metric_name);
  TORCH_CHECK(k >= 1, "knn: k must be >= 1, got ", k);
  TORCH_CHECK(k <= kMaxK, "knn: the CUDA kernel supports k <= ", kMaxK, ", got k=", k);
  const int64_t Q = query.size(0), N = bank.size(0), D = query.size(1);
  TORCH_CHECK(!exclude_self || Q <= N, "knn: exclude_self=True needs query row i to be bank row i, so Q <= N; got Q=",
              Q, " and N=", N);
  if (bank_norms) check_bank_norms("knn", *bank_norms, N, bank);
  c10::cuda::CUDAGuard guard(query.device());
  auto out_d = at::empty({Q, k}, query.options().dtype(at::kFloat));
  auto out_i = at::empty({Q, k}, query.options().dtype(at::kLong));
  if (Q == 0) return {out_d, out_i};
  const at::Tensor q = query.contiguous(), b = bank.contiguous();
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(Q, kScratchBytes / (4 * std::max<int64_t>(N, 1))));
  auto f32 = query.options().dtype(at::kFloat);
  auto scratch = at::empty({rows * std::max<int64_t>(N, 1)}, f32);
  auto qn = at::empty({Q}, f32);
  auto bn = at::empty({std::max<int64_t>(N, 1)}, f32);
  const at::Tensor bnorm = bank_norms ? bank_norms->contiguous() : at::Tensor();
  cudaError_t err = knn_launch(q.data_ptr(), b.data_ptr(), dtype_code(q), bank_norms ? bnorm.data_ptr<float>() : nullptr,
                               Q, N, D, k, static_cast<int>(metric), exclude_self, out_d.data_ptr<float>(),
                               out_i.data_ptr<int64_t>(), scratch.data_ptr<float>(), rows, qn.data_ptr<float>(),
                               bn.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "knn: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {out_d, out_i};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) { m.impl("knn", &knn_cuda); }

}  // namespace fastad::cuda
