// CUDA entry for fastad::group_min: argument checks, output allocation, stream/guard, launch.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/group_min_kernel.h"
#include "common/checks.h"

namespace fastad::cuda {

int dtype_code(const at::Tensor& t);  // knn_cuda.cpp

namespace {

at::Tensor group_min_cuda(const at::Tensor& query, const at::Tensor& bank, int64_t group_size,
                          c10::string_view metric_name, const std::optional<at::Tensor>& exclude_group) {
  check_group_min_args(query, bank, group_size, exclude_group);
  const Metric metric = parse_metric("group_min", metric_name);
  const int64_t Q = query.size(0), N = bank.size(0), D = query.size(1), G = N / group_size;
  c10::cuda::CUDAGuard guard(query.device());
  auto out = at::empty({Q, G}, query.options().dtype(at::kFloat));
  if (Q == 0 || G == 0) return out;
  const at::Tensor q = query.contiguous(), b = bank.contiguous();
  at::Tensor ex;
  if (exclude_group) ex = exclude_group->contiguous();
  const int dt = dtype_code(q);
  const GroupMinPlan plan = group_min_plan(Q, G, group_size, D, dt, static_cast<int>(metric));
  auto workspace = at::empty({plan.workspace_bytes}, query.options().dtype(at::kByte));
  cudaError_t err = group_min_launch(at::cuda::getCurrentCUDABlasHandle(), q.data_ptr(), b.data_ptr(), dt, Q, G,
                                     group_size, D, static_cast<int>(metric),
                                     exclude_group ? ex.data_ptr<int64_t>() : nullptr, out.data_ptr<float>(),
                                     workspace.data_ptr(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "group_min: CUDA kernel or cuBLAS call failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) { m.impl("group_min", &group_min_cuda); }

}  // namespace fastad::cuda
