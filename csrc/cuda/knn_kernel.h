// Host-callable launchers of csrc/cuda/knn_kernel.cu (plain C++ types only).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

constexpr int64_t kMaxK = 1024;  // largest k the CUDA selection supports

/// Exact k-NN on device buffers (row-major).
/// @param q, b       query [Q, D] and bank [N, D] of element type `dtype` (0 f32, 1 f16, 2 bf16)
/// @param bnorm      squared bank row norms [N] float32, or nullptr to compute them into bnorm_buf
/// @param out_d      [Q, k] float32 distances, best first   @param out_i  [Q, k] int64 indices
/// @param scratch    [scratch_rows, N] float32 score tile    @param qnorm_buf [Q] float32
/// @param bnorm_buf  [N] float32 (used when bnorm is nullptr)
cudaError_t knn_launch(const void* q, const void* b, int dtype, const float* bnorm, int64_t Q, int64_t N, int64_t D,
                       int64_t k, int metric, bool exclude_self, float* out_d, int64_t* out_i, float* scratch,
                       int64_t scratch_rows, float* qnorm_buf, float* bnorm_buf, cudaStream_t stream);

}  // namespace fastad::cuda
