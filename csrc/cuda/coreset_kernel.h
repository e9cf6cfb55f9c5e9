// Host-callable launcher of csrc/cuda/coreset_kernel.cu (plain C++ types only).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

/// Greedy k-center (farthest point sampling) on device buffers; the whole loop stays on the device:
/// step s reads the centre chosen by step s-1 from `keys` (no host synchronisation per step).
/// @param bank     [N, D] row-major, element type `dtype` (0 f32, 1 f16, 2 bf16); arithmetic in fp32
/// @param N        rows (< 2^31)          @param D  features (>= 1)
/// @param n        centres to choose, 1 <= n <= N     @param start  first centre row
/// @param mind     workspace [N] float32 (running squared min distance; chosen rows hold -1)
/// @param keys     workspace [n] uint64 (packed (squared distance, ~index) of each step's argmax)
/// @param out_idx  [n] int64 chosen rows     @param out_d  [n] float32 distances (out_d[0] = +inf)
/// @return the first launch error (cudaSuccess otherwise); never synchronises.
cudaError_t coreset_launch(const void* bank, int dtype, int64_t N, int64_t D, int64_t n, int64_t start, float* mind,
                           unsigned long long* keys, int64_t* out_idx, float* out_d, cudaStream_t stream);

}  // namespace fastad::cuda
