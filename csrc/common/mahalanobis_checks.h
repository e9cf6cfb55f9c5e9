// Argument checks of the Gaussian ops (mahalanobis, gaussian_accumulate, gaussian_covariance, cholesky_lower, gather_maps), shared by the CPU and
// CUDA entry functions. Messages name the op, the argument, what was expected and what was given.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace fastad {

/// Shapes of a mahalanobis call: N rows, P Gaussians (1 when x is [N, d]), d features.
struct MahaShape {
  int64_t N = 0, P = 1, d = 0;
  bool per_position = false;  // x is [N, P, d]
  bool packed = false;        // gaussian_accumulate: sumsq packed lower triangles [P, d (d + 1) / 2]
};

/// x [N, d] or [N, P, d] (fp32/fp16/bf16); mean [d] / [P, d] (fp32/fp16/bf16); factor [d, d] / [P, d, d]
/// (fp32/fp16/bf16, square); all on one device; d >= 1.
MahaShape check_mahalanobis_args(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& factor);

/// x [N, d] / [N, P, d] (fp32/fp16/bf16/fp64); shift [d] / [P, d] (fp32 or fp64); sum [d] / [P, d] and
/// sumsq [d, d] / [P, d, d] float64, or packed lower triangles [d (d + 1) / 2] / [P, d (d + 1) / 2] (row i at
/// i (i + 1) / 2; sets packed), contiguous; all on one device. row_start (optional): int64 [P] ([1] for
/// [N, d] x) on x's device, values in [0, d] (read here: a CUDA tensor is copied to the host).
/// row_start of a Gaussian op: int64 [P] on t's device, values in [0, d] (read on the host).
void check_row_start(const char* op, const at::Tensor& row_start, const MahaShape& s, const char* name,
                     const at::Tensor& t);

MahaShape check_gaussian_accumulate_args(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& sum,
                                         const at::Tensor& sumsq, const std::optional<at::Tensor>& row_start);

/// gaussian_covariance: m [d] / [P, d] float64 (sets P, d, per_position); sumsq float64 [d, d] / [P, d, d]
/// or packed [d (d + 1) / 2] / [P, d (d + 1) / 2] (sets packed); out float32 / float64 [d, d] / [P, d, d],
/// contiguous; all on out's device; n, scale, reg finite.
MahaShape check_gaussian_covariance_args(const at::Tensor& sumsq, const at::Tensor& m, double n, double scale,
                                         double reg, const at::Tensor& out,
                                         const std::optional<at::Tensor>& row_start);

/// cholesky_lower: a float32 [d, d] / [P, d, d], square, contiguous; returns P (1 for [d, d]) and d.
MahaShape check_cholesky_lower_args(const at::Tensor& a, const std::optional<at::Tensor>& row_start,
                                    const std::optional<at::Tensor>& row_src);

/// Shapes of a gather_maps call (checked): L layer maps [N, C_l, h_l, w_l]; C kept channels; the first
/// layer's h x w grid.
struct MapsShape {
  int64_t L = 0, N = 0, C = 0, h = 0, w = 0;
  std::vector<int64_t> cl, hl, wl;  // per layer: channels and grid
};

/// maps: L >= 1 float32 4-D tensors on out's device with equal N and C_l, h_l, w_l >= 1; channels int64
/// [C >= 1] in [0, sum C_l); out [N, h * w, C] float32, contiguous.
MapsShape check_gather_maps_args(at::TensorList maps, const at::Tensor& channels, const at::Tensor& out);

}  // namespace fastad
