// Device helpers shared by the .cu files. No torch headers here (they make nvcc 20x slower).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

// Element types the kernels accept, as passed from the host glue.
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
// Same order as fastad::Metric.
enum MetricCode : int { kL2 = 0, kSqEuclidean = 1, kCosine = 2, kIP = 3 };

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// (score, index) ordering used by every selection: smaller score first, then smaller index.
__device__ __forceinline__ bool better(float s, int64_t i, float t, int64_t j) {
  return s < t || (s == t && i < j);
}

}  // namespace fastad::cuda
