// Host-callable launchers of csrc/cuda/group_min_kernel.cu (plain C++ types only).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

/// Chunk/tile plan: groups per bank chunk, query rows per tile, workspace bytes.
struct GroupMinPlan {
  int64_t groups_per_chunk = 0, Qt = 0, workspace_bytes = 0;
};
GroupMinPlan group_min_plan(int64_t Q, int64_t G, int64_t gs, int64_t D, int dtype, int metric);

/// Per-group minimum distance on device buffers (row-major): cuBLAS inner products of a query tile
/// and a chunk of whole groups into a bounded tile (dist_tiles.h), then one warp per (query, group)
/// takes the best score; l2/sqeuclidean winners get their exact fp32 distance on the original rows.
/// @param q, b      query [Q, D] and bank [N = G * gs, D] of element type `dtype` (0 f32, 1 f16, 2 bf16)
/// @param exclude   [Q] int64 group id to skip per query (values outside [0, G) skip nothing), or nullptr
/// @param out       [Q, G] float32 (metric codes as fastad::Metric; "ip": maximum inner product)
/// @param workspace group_min_plan(...).workspace_bytes bytes
cudaError_t group_min_launch(cublasHandle_t handle, const void* q, const void* b, int dtype, int64_t Q, int64_t G,
                             int64_t gs, int64_t D, int metric, const int64_t* exclude, float* out, void* workspace,
                             cudaStream_t stream);

}  // namespace fastad::cuda
