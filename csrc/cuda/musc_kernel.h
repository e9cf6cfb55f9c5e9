// Host-callable launchers of csrc/cuda/musc_kernel.cu (plain C++ types only; float32 buffers).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

constexpr int64_t kMusCMaxK = 256;     // largest k of the interval mean (k = int(0.3 (N - 1)): N <= 854)
constexpr int64_t kMusCMaxR = 8;       // largest len(r_list) of snamd
constexpr int64_t kMusCMaxWindow = 15; // largest r of snamd (window of shared weights)
constexpr int64_t kMusCTileBytes = 256ll << 20;  // mutual-scoring GEMM tile budget

/// lnamd of B images: x [B, L, C] with strides (s0, s1, 1), L = H * H; out [B, L, C] contiguous.
/// @param stats  2 * B floats scratch (mean, rstd per image)
cudaError_t lnamd_launch(const float* x, int64_t B, int64_t H, int64_t C, int64_t s0, int64_t s1, int64_t r,
                         float* stats, float* out, cudaStream_t stream);

/// snamd of B images (same layout as lnamd); r_list: R <= kMusCMaxR odd sizes <= kMusCMaxWindow.
cudaError_t snamd_launch(const float* x, int64_t B, int64_t H, int64_t C, int64_t s0, int64_t s1, const int* r_list,
                         int R, float* out, cudaStream_t stream);

/// Images per mutual-scoring tile: the tile is [L, b * L] float32 with b = this (<= Nref).
int64_t mutual_tile_images(int64_t L, int64_t Nref);

/// Minimum squared distances of mutual scoring. zq [Nq, L, C], zp [Np, L, C] (pool mode when Np > 0;
/// else the Nq images score each other), contiguous. window 0 or odd (needs L = H * H).
/// @param norms   (Nq + Np) * L floats scratch
/// @param tile    L * mutual_tile_images(L, Nref) * L floats scratch
/// @param minima  [Nq, Nref, L] floats out, Nref = Np or Nq - 1 (every entry written)
cudaError_t mutual_minima_launch(cublasHandle_t handle, const float* zq, const float* zp, int64_t Nq, int64_t Np,
                                 int64_t L, int64_t C, int64_t H, int64_t window, float* norms, float* tile,
                                 float* minima, cudaStream_t stream);

/// Largest L (patches per image) of the one-Gram-for-every-r path of lnamd_mutual_scores (its
/// q-direction box filter keeps two row segments of L floats in shared memory).
constexpr int64_t kMusCBoxMaxL = 6144;

/// LayerNorm-ed tokens of B images (one mean / rstd per image, as lnamd): x [B, L, C] with strides
/// (s0, s1, 1) -> y [B, L, C] contiguous. @param stats  2 * B floats out (mean, rstd)
cudaError_t ln_features_launch(const float* x, int64_t B, int64_t L, int64_t C, int64_t s0, int64_t s1, float* stats,
                               float* y, cudaStream_t stream);

/// Per token of y [B, H * H, C]: w = 1 / |box_r sum of y around the token| and nz = |that sum * w|^2
/// (the squared norm of the LNAMD vector as rounded); w, nz: B * H * H floats out.
cudaError_t box_scales_launch(const float* y, int64_t B, int64_t H, int64_t C, int64_t r, float* w, float* nz,
                              cudaStream_t stream);

/// Minimum squared distances of lnamd_mutual_scores from ONE Gram per image pair for all R sizes in
/// r_list: tile T = y_i y_j^T, box-filtered over both patch grids per r into U (V: scratch), then
/// d2 = nz_p + nz_q - 2 w_p w_q S and the row / column minima as mutual_minima_launch.
/// yq [Nq, L, C], yp [Np, L, C] (pool mode when Np > 0) LayerNorm-ed, contiguous; w, nz [R, Nq + Np, L]
/// from box_scales_launch; T, U, V: L * mutual_tile_images(L, Nref) * L floats each; minima
/// [R, Nq, Nref, L] out. L = H * H <= kMusCBoxMaxL.
cudaError_t lnamd_minima_launch(cublasHandle_t handle, const float* yq, const float* yp, int64_t Nq, int64_t Np,
                                int64_t L, int64_t C, int64_t H, int64_t window, const int64_t* r_list, int64_t R,
                                const float* w, const float* nz, float* T, float* U, float* V, float* minima,
                                cudaStream_t stream);

/// out[s, p] = mean of the k smallest sqrt(minima[s, :, p]) (k <= kMusCMaxK), s < S.
cudaError_t interval_mean_launch(const float* minima, int64_t S, int64_t Nref, int64_t L, int64_t k, float* out,
                                 cudaStream_t stream);

}  // namespace fastad::cuda
