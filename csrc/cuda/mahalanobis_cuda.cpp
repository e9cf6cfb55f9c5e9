// CUDA entries of fastad::mahalanobis, fastad::gaussian_accumulate, fastad::gaussian_covariance, fastad::gather_maps,
// fastad::cholesky_lower: checks, layouts, launch.
#include <ATen/ATen.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/linalg_solve_triangular.h>
#include <ATen/ops/tril.h>
#include <ATen/ops/upsample_nearest2d.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <vector>

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
                              at::Tensor& out, const std::optional<at::Tensor>& row_start) {
  const MahaShape s = check_gaussian_covariance_args(sumsq_, m_, n, scale, reg, out, row_start);
  if (s.P == 0 || s.d == 0) return;
  c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor sumsq = sumsq_.contiguous(), m = m_.contiguous();
  const at::Tensor rs = row_start.has_value() ? row_start->contiguous() : at::Tensor();
  cudaError_t err = gaussian_covariance_launch(sumsq.data_ptr<double>(), m.data_ptr<double>(), s.P, s.d, s.packed, n,
                                               scale, reg, out.data_ptr(), out.scalar_type() == at::kFloat,
                                               rs.defined() ? rs.data_ptr<int64_t>() : nullptr,
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
// row_start / row_src: groups of equal row_start r in ascending order; a group's leading factor rows are its
// sources' C11 (finished earlier), the rest by blocks: C21 = A21 C11^{-T}, C22 = chol(A22 - C21 C21^T).
at::Tensor cholesky_lower_cuda(at::Tensor& a, const std::optional<at::Tensor>& row_start,
                               const std::optional<at::Tensor>& row_src) {
  const MahaShape s = check_cholesky_lower_args(a, row_start, row_src);
  c10::cuda::CUDAGuard guard(a.device());
  if (s.P == 0 || s.d == 0)
    return at::zeros(s.per_position ? std::vector<int64_t>{s.P} : std::vector<int64_t>{}, a.options().dtype(at::kLong));
  auto full_chol = [](const at::Tensor& m) {  // [k, n, n] lower triangles -> (C, info)
    return at::linalg_cholesky_ex(at::tril(m).add(at::tril(m, -1).transpose(-1, -2)));
  };
  if (!row_start.has_value()) {
    const auto res = full_chol(a);
    a.copy_(std::get<0>(res));
    return std::get<1>(res).to(at::kLong);
  }
  const at::Tensor a3 = s.per_position ? a : a.unsqueeze(0);
  const at::Tensor rs = row_start->cpu().contiguous(), rsrc = row_src->cpu().contiguous();
  const int64_t* r = rs.data_ptr<int64_t>();
  const int64_t* q = rsrc.data_ptr<int64_t>();
  std::map<int64_t, std::vector<int64_t>> groups;
  for (int64_t p = 0; p < s.P; ++p) groups[r[p]].push_back(p);
  at::Tensor info = at::zeros({s.P}, a.options().dtype(at::kLong));
  for (const auto& [r0, ps] : groups) {
    const at::Tensor idx = at::tensor(ps, at::kLong).to(a.device());
    at::Tensor F = a3.index_select(0, idx);
    at::Tensor inf;
    if (r0 == 0) {
      const auto res = full_chol(F);
      F = std::get<0>(res);
      inf = std::get<1>(res).to(at::kLong);
    } else {
      std::vector<int64_t> sv;
      for (int64_t p : ps) sv.push_back(q[p]);
      const at::Tensor sidx = at::tensor(sv, at::kLong).to(a.device());
      const at::Tensor C11 = a3.index_select(0, sidx).narrow(1, 0, r0).narrow(2, 0, r0);
      const at::Tensor sinf = info.index_select(0, sidx);
      at::Tensor rest = at::zeros({F.size(0)}, info.options());
      if (r0 < s.d) {
        const at::Tensor A21 = F.narrow(1, r0, s.d - r0).narrow(2, 0, r0);
        // C21 C11^T = A21 (C11 lower, so C11^T upper, solved from the right)
        const at::Tensor C21 = at::linalg_solve_triangular(C11.transpose(-1, -2), A21, /*upper=*/true, /*left=*/false);
        const at::Tensor A22 = at::tril(F.narrow(1, r0, s.d - r0).narrow(2, r0, s.d - r0));
        const at::Tensor S = A22.add(at::tril(A22, -1).transpose(-1, -2)).sub(C21.matmul(C21.transpose(-1, -2)));
        const auto res = at::linalg_cholesky_ex(S);
        const at::Tensor i22 = std::get<1>(res).to(at::kLong);
        rest = at::where(i22 > 0, i22 + r0, i22);
        F = at::zeros_like(F);
        F.narrow(1, r0, s.d - r0).narrow(2, 0, r0).copy_(C21);
        F.narrow(1, r0, s.d - r0).narrow(2, r0, s.d - r0).copy_(std::get<0>(res));
      } else {
        F = at::zeros_like(F);
      }
      F.narrow(1, 0, r0).narrow(2, 0, r0).copy_(C11);
      inf = at::where(sinf != 0, sinf, rest);
      // a copy from a failed source keeps its matrix as it was (as the CPU kernel)
      F = at::where((sinf != 0).view({-1, 1, 1}), a3.index_select(0, idx), F);
    }
    a3.index_copy_(0, idx, F);
    info.index_copy_(0, idx, inf);
  }
  return s.per_position ? info : info.squeeze(0);
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
