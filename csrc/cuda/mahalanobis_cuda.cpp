// CUDA entries of fastad::mahalanobis, fastad::gaussian_accumulate, fastad::gaussian_covariance, fastad::gather_maps,
// fastad::cholesky_lower: checks, layouts, launch.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/tril.h>
#include <ATen/ops/upsample_nearest2d.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/mahalanobis_checks.h"
#include "cuda/mahalanobis_kernel.h"

namespace fastad::cuda {

int dtype_code(const at::Tensor& t);  // knn_cuda.cpp: 0 f32, 1 f16, 2 bf16

namespace {

at::Tensor mahalanobis_cuda(const at::Tensor& x_, const at::Tensor& mean_, const at::Tensor& factor_, bool cholesky) {
  const MahaShape s = check_mahalanobis_args(x_, mean_, factor_);
  c10::cuda::CUDAGuard guard(x_.device());
  auto out = s.per_position ? at::empty({s.N, s.P}, x_.options().dtype(at::kFloat))
                            : at::empty({s.N}, x_.options().dtype(at::kFloat));
  if (s.N == 0 || s.P == 0) return out;
  const at::Tensor x = x_.contiguous(), L = factor_.contiguous(), m = mean_.to(at::kFloat).contiguous();
  cudaError_t err = mahalanobis_launch(x.data_ptr(), dtype_code(x), m.data_ptr<float>(), L.data_ptr(), dtype_code(L),
                                       s.N, s.P, s.d, out.data_ptr<float>(), cholesky,
                                       c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "mahalanobis: CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

void gaussian_accumulate_cuda(const at::Tensor& x_, const at::Tensor& shift_, const at::Tensor& sum,
                              const at::Tensor& sumsq, const std::optional<at::Tensor>& row_start) {
  const MahaShape s = check_gaussian_accumulate_args(x_, shift_, sum, sumsq, row_start);
  if (s.N == 0 || s.P == 0) return;
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), sh = shift_.to(at::kDouble).contiguous();
  const at::Tensor rs = row_start.has_value() ? row_start->contiguous() : at::Tensor();
  const int xdt = x.scalar_type() == at::kDouble ? 3 : dtype_code(x);
  cudaError_t err = gaussian_accumulate_launch(x.data_ptr(), xdt, sh.data_ptr<double>(), s.N, s.P, s.d,
                                               sum.data_ptr<double>(), sumsq.data_ptr<double>(), s.packed,
                                               rs.defined() ? rs.data_ptr<int64_t>() : nullptr,
                                               c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "gaussian_accumulate: CUDA kernel failed: ", cudaGetErrorString(err));
  // (NaN/Inf: the Python accumulator checks batches; the CUDA op propagates them into the sums.)
}

void gaussian_covariance_cuda(const at::Tensor& sumsq_, const at::Tensor& m_, double n, double scale, double reg,
                              at::Tensor& out) {
  const MahaShape s = check_gaussian_covariance_args(sumsq_, m_, n, scale, reg, out);
  if (s.P == 0 || s.d == 0) return;
  c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor sumsq = sumsq_.contiguous(), m = m_.contiguous();
  cudaError_t err = gaussian_covariance_launch(sumsq.data_ptr<double>(), m.data_ptr<double>(), s.P, s.d, s.packed, n,
                                               scale, reg, out.data_ptr(), out.scalar_type() == at::kFloat,
                                               c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "gaussian_covariance: CUDA kernel failed: ", cudaGetErrorString(err));
}

// ATen ops: nearest resize, concatenation, channel subset, position-major copy into out.
void gather_maps_cuda(at::TensorList maps, const at::Tensor& channels, const at::Tensor& out) {
  const MapsShape s = check_gather_maps_args(maps, channels, out);
  if (s.N == 0) return;
  c10::cuda::CUDAGuard guard(out.device());
  std::vector<at::Tensor> parts;
  for (int64_t l = 0; l < s.L; ++l) parts.push_back(l == 0 ? maps[l] : at::upsample_nearest2d(maps[l], {s.h, s.w}));
  const at::Tensor emb = at::cat(parts, 1).index_select(1, channels);  // [N, C, h, w]
  out.copy_(emb.flatten(2).transpose(1, 2));
}

// ATen's batched Cholesky (cuSOLVER) of the symmetric matrices whose lower triangles a holds, written back in
// place (lower factor, zero strict upper triangle) with LAPACK's info, as the CPU kernel.
at::Tensor cholesky_lower_cuda(at::Tensor& a) {
  const MahaShape s = check_cholesky_lower_args(a);
  c10::cuda::CUDAGuard guard(a.device());
  if (s.P == 0 || s.d == 0)
    return at::zeros(s.per_position ? std::vector<int64_t>{s.P} : std::vector<int64_t>{}, a.options().dtype(at::kLong));
  const at::Tensor low = at::tril(a);
  const auto res = at::linalg_cholesky_ex(low.add(at::tril(a, -1).transpose(-1, -2)));
  a.copy_(std::get<0>(res));
  return std::get<1>(res).to(at::kLong);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) {
  m.impl("cholesky_lower", &cholesky_lower_cuda);
  m.impl("mahalanobis", &mahalanobis_cuda);
  m.impl("gaussian_accumulate", &gaussian_accumulate_cuda);
  m.impl("gather_maps", &gather_maps_cuda);
  m.impl("gaussian_covariance", &gaussian_covariance_cuda);
}

}  // namespace fastad::cuda
