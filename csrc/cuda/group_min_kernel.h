// Host-callable launcher of csrc/cuda/group_min_kernel.cu (plain C++ types only).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

/// Per-group minimum distance on device buffers (row-major), simple version: one thread block per
/// (query, group) pair, one warp per bank row (lanes split D, coalesced), direct (non-expanded) distances.
/// @param q, b      query [Q, D] and bank [N = G * gs, D] of element type `dtype` (0 f32, 1 f16, 2 bf16)
/// @param exclude   [Q] int64 group id to skip per query (values outside [0, G) skip nothing), or nullptr
/// @param out       [Q, G] float32 (metric codes as fastad::Metric; "ip": maximum inner product)
cudaError_t group_min_launch(const void* q, const void* b, int dtype, int64_t Q, int64_t G, int64_t gs, int64_t D,
                             int metric, const int64_t* exclude, float* out, cudaStream_t stream);

}  // namespace fastad::cuda
