// Host-callable launchers of csrc/cuda/mahalanobis_kernel.cu (plain C++ types only).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

/// out[n * P + p] = || (x[n, p] - mean[p]) @ tril(L[p]) ||^2 (float32 accumulation).
/// x [N, P, d] (dtype code xdt: 0 f32, 1 f16, 2 bf16), mean [P, d] float32, L [P, d, d] (code ldt), all
/// contiguous device buffers. cholesky: L[p] is instead the covariance's lower Cholesky factor C and
/// out = || C^{-1} (x[n, p] - mean[p]) ||^2.
cudaError_t mahalanobis_launch(const void* x, int xdt, const float* mean, const void* L, int ldt, int64_t N,
                               int64_t P, int64_t d, float* out, bool cholesky, cudaStream_t stream);

/// y = x[:, p] - shift[p] (float64); sum[p] += sum_n y; tril(sumsq[p]) += tril(sum_n y y^T) (float64).
/// x [N, P, d] (code xdt: 0 f32, 1 f16, 2 bf16, 3 f64), shift [P, d] float64, contiguous device buffers.
/// row_start (nullable): int64 [P] on the device; rows i < row_start[p] of sumsq[p] are not touched.
cudaError_t gaussian_accumulate_launch(const void* x, int xdt, const double* shift, int64_t N, int64_t P, int64_t d,
                                       double* sum, double* sumsq, bool packed, const int64_t* row_start,
                                       cudaStream_t stream);

/// gaussian_covariance: for j <= i, out[p, i, j] = (sumsq[p, i, j] - (n m[p, i]) m[p, j]) * scale (+ reg when
/// i == j), float64 without FMA contraction (the CPU kernel's roundings), rounded once (out f32 or f64);
/// sumsq dense [P, d, d] or packed [P, d (d + 1) / 2]; the strict upper triangle of out is not written.
/// row_start (nullable): int64 [P] on the device; rows i < row_start[p] of out[p] are not written.
cudaError_t gaussian_covariance_launch(const double* sumsq, const double* m, int64_t P, int64_t d, bool packed,
                                       double n, double scale, double reg, void* out, bool f32,
                                       const int64_t* row_start, cudaStream_t stream);

}  // namespace fastad::cuda
