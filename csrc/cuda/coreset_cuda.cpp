// CUDA entry for fastad::coreset: argument checks, outputs and workspaces, stream/guard, launch.
// The device loop is in csrc/cuda/coreset_kernel.cu (no host synchronisation per step).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/coreset_kernel.h"
#include "common/checks.h"

namespace fastad::cuda {

int dtype_code(const at::Tensor& t);  // knn_cuda.cpp: 0 f32, 1 f16, 2 bf16

namespace {

std::tuple<at::Tensor, at::Tensor> coreset_cuda(const at::Tensor& bank, int64_t n, int64_t start,
                                                const std::optional<at::Tensor>& progress, c10::string_view method) {
  check_coreset_args("coreset", bank, n, start);
  // method="pruned" is accepted and runs this exhaustive device loop (same indices by definition): one
  // step is a single coalesced pass at the memory floor of the GPU, with no host synchronisation.
  coreset_method_is_pruned("coreset", method);
  int64_t* prog = coreset_progress_ptr("coreset", progress);  // CPU counter: set once the loop is enqueued
  c10::cuda::CUDAGuard guard(bank.device());
  const int64_t N = bank.size(0), D = bank.size(1);
  const at::Tensor b = bank.contiguous();
  auto out_idx = at::empty({n}, b.options().dtype(at::kLong));
  auto out_d = at::empty({n}, b.options().dtype(at::kFloat));
  auto mind = at::empty({N}, b.options().dtype(at::kFloat));
  auto keys = at::empty({n}, b.options().dtype(at::kLong));  // raw storage for the packed uint64 keys
  cudaError_t err = coreset_launch(b.data_ptr(), dtype_code(b), N, D, n, start, mind.data_ptr<float>(),
                                   reinterpret_cast<unsigned long long*>(keys.data_ptr<int64_t>()),
                                   out_idx.data_ptr<int64_t>(), out_d.data_ptr<float>(),
                                   c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "coreset: CUDA kernel launch failed: ", cudaGetErrorString(err));
  if (prog) *prog = n;  // the device loop reports no steps (no host synchronisation per step)
  return {out_idx, out_d};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) { m.impl("coreset", &coreset_cuda); }

}  // namespace fastad::cuda
