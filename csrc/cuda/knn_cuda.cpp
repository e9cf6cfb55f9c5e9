// CUDA entry for fastad::knn: argument checks, output allocation, stream/guard, launch.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/knn_kernel.h"
#include "common/checks.h"

namespace fastad::cuda {

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
  TORCH_CHECK(N < (int64_t(1) << 31), "knn: the CUDA kernel supports banks of fewer than 2^31 rows, got N=", N);
  const at::Tensor q = query.contiguous(), b = bank.contiguous();
  const int dt = dtype_code(q);
  const KnnPlan plan = knn_plan(Q, N, D, k, dt, static_cast<int>(metric));
  auto workspace = at::empty({plan.workspace_bytes}, query.options().dtype(at::kByte));
  const at::Tensor bnorm = bank_norms ? bank_norms->contiguous() : at::Tensor();
  cudaError_t err = knn_launch(at::cuda::getCurrentCUDABlasHandle(), q.data_ptr(), b.data_ptr(), dt,
                               bank_norms ? bnorm.data_ptr<float>() : nullptr, Q, N, D, k, static_cast<int>(metric),
                               exclude_self, out_d.data_ptr<float>(), out_i.data_ptr<int64_t>(),
                               workspace.data_ptr(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "knn: CUDA kernel or cuBLAS call failed: ", cudaGetErrorString(err));
  return {out_d, out_i};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) { m.impl("knn", &knn_cuda); }

}  // namespace fastad::cuda
