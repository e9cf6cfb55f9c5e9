// Host-callable launchers of csrc/cuda/knn_kernel.cu (plain C++ types only).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

constexpr int64_t kMaxK = 1024;       // largest k the CUDA selection supports
constexpr int64_t kSmallK = 32;       // k <= this: register selection (warp list / queues); above: shared-memory sort

/// Chunk/tile plan of knn on given sizes: bank rows per chunk (Nc), query rows per tile (Qt), and
/// the workspace bytes knn_launch needs (all bounded by kTileBudgetBytes-sized pieces).
struct KnnPlan {
  int64_t Nc = 0, Qt = 0, workspace_bytes = 0;
  bool warp_select = true;  // k <= kSmallK: warp-list selection (else per-thread register queues)
  int sel_warps = 8;        // warps per query row of the warp-list selection
};
KnnPlan knn_plan(int64_t Q, int64_t N, int64_t D, int64_t k, int dtype, int metric);

/// Exact k-NN on device buffers (row-major).
/// @param q, b       query [Q, D] and bank [N, D] of element type `dtype` (0 f32, 1 f16, 2 bf16)
/// @param bnorm      squared bank row norms [N] float32 for "cosine", or nullptr (computed); unused by
///                   l2/sqeuclidean (they use the norms of the centred rows) and ip
/// @param out_d      [Q, k] float32 distances, best first   @param out_i  [Q, k] int64 indices (-1 pads)
/// @param workspace  knn_plan(...).workspace_bytes bytes, 256-byte aligned
cudaError_t knn_launch(cublasHandle_t handle, const void* q, const void* b, int dtype, const float* bnorm, int64_t Q,
                       int64_t N, int64_t D, int64_t k, int metric, bool exclude_self, float* out_d, int64_t* out_i,
                       void* workspace, cudaStream_t stream);

}  // namespace fastad::cuda
