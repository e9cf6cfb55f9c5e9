// CUDA greedy k-center (farthest point sampling): fastad::coreset.
//
// Per step one kernel streams the whole bank once: a warp per row computes sum((x - c)^2) in fp32
// (vector loads when aligned), lane 0 updates the running min and keeps its best (distance, row) as a
// packed 64-bit key; the block reduces its warps' keys in shared memory and issues ONE atomicMax into
// keys[step]. The next step's kernel decodes its centre from keys[step], so the host only enqueues
// launches: no device-to-host copy or synchronisation between steps.
//
// Key packing: (float bits of the squared distance << 32) | (0xffffffff - row). Non-negative floats
// order like their bit patterns, so the largest key is the largest distance and, among equal
// distances, the smallest row (the CPU kernel's tie rule). Chosen rows (mind = -1) never compete.
#include "cuda/coreset_kernel.h"
#include "cuda/cuda_utils.cuh"

#include <algorithm>

namespace fastad::cuda {

namespace {

constexpr int kCoresetThreads = 256;      // threads per block (8 warps, one row per warp at a time)
constexpr int kCoresetBlocksPerSM = 8;    // grid = SMs * this (grid-stride over rows)
constexpr float kChosen = -1.f;           // mind of an already chosen row

__device__ __forceinline__ unsigned long long pack_key(float d2, int64_t row) {
  return (static_cast<unsigned long long>(__float_as_uint(d2)) << 32) |
         static_cast<unsigned long long>(0xffffffffu - static_cast<unsigned int>(row));
}
__device__ __forceinline__ int64_t key_row(unsigned long long key) {
  return static_cast<int64_t>(0xffffffffu - static_cast<unsigned int>(key & 0xffffffffull));
}
__device__ __forceinline__ float key_d2(unsigned long long key) {
  return __uint_as_float(static_cast<unsigned int>(key >> 32));
}

// Squared distance of row x to centre c, partial sum of one lane (scalar loads, any D / alignment).
template <typename T>
__device__ __forceinline__ float lane_sq_dist(const T* __restrict__ x, const T* __restrict__ c, int64_t D,
                                              int lane) {
  float s = 0.f;
#pragma unroll 4
  for (int64_t t = lane; t < D; t += 32) {
    const float d = to_f(x[t]) - to_f(__ldg(c + t));
    s = fmaf(d, d, s);
  }
  return s;
}

// Vector loads of 16 bytes: 4 floats or 8 halves/bf16 per load (needs D * sizeof(T) % 16 == 0 and a
// 16-byte aligned bank, checked by the launcher).
__device__ __forceinline__ float vec_sq(const float4 a, const float4 b) {
  float s = 0.f, d;
  d = a.x - b.x; s = fmaf(d, d, s);
  d = a.y - b.y; s = fmaf(d, d, s);
  d = a.z - b.z; s = fmaf(d, d, s);
  d = a.w - b.w; s = fmaf(d, d, s);
  return s;
}
template <typename T>
__device__ __forceinline__ float vec_sq16(const uint4 a, const uint4 b) {
  const T* pa = reinterpret_cast<const T*>(&a);
  const T* pb = reinterpret_cast<const T*>(&b);
  float s = 0.f;
#pragma unroll
  for (int u = 0; u < 8; ++u) {
    const float d = to_f(pa[u]) - to_f(pb[u]);
    s = fmaf(d, d, s);
  }
  return s;
}
template <typename T>
__device__ __forceinline__ float lane_sq_dist_vec(const T* __restrict__ x, const T* __restrict__ c, int64_t D,
                                                  int lane) {
  const int64_t nv = D * static_cast<int64_t>(sizeof(T)) / 16;
  float s = 0.f;
  if constexpr (sizeof(T) == 4) {
    const float4* xv = reinterpret_cast<const float4*>(x);
    const float4* cv = reinterpret_cast<const float4*>(c);
#pragma unroll 4
    for (int64_t t = lane; t < nv; t += 32) s += vec_sq(xv[t], __ldg(cv + t));
  } else {
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    const uint4* cv = reinterpret_cast<const uint4*>(c);
#pragma unroll 4
    for (int64_t t = lane; t < nv; t += 32) s += vec_sq16<T>(xv[t], __ldg(cv + t));
  }
  return s;
}

__global__ void coreset_init_kernel(float* __restrict__ mind, int64_t N, unsigned long long* __restrict__ keys,
                                    int64_t start) {
  for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < N; r += (int64_t)gridDim.x * blockDim.x)
    mind[r] = __int_as_float(0x7f800000);  // +inf
  if (blockIdx.x == 0 && threadIdx.x == 0) keys[0] = pack_key(0.f, start);
}

// One greedy step: centre = row of keys[step - 1]; updates mind and atomically maximises keys[step].
template <typename T, bool kVec>
__global__ void __launch_bounds__(kCoresetThreads)
    coreset_step_kernel(const T* __restrict__ bank, int64_t N, int64_t D, float* __restrict__ mind,
                        unsigned long long* __restrict__ keys, int64_t step) {
  __shared__ unsigned long long warp_best[kCoresetThreads / 32];
  const int64_t c = key_row(keys[step - 1]);
  const T* crow = bank + c * D;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t warps_total = (int64_t)gridDim.x * (kCoresetThreads / 32);
  unsigned long long best = 0;  // 0 = no candidate (every real key is > 0: row < 2^31)
  for (int64_t r = blockIdx.x * (int64_t)(kCoresetThreads / 32) + warp; r < N; r += warps_total) {
    float s = kVec ? lane_sq_dist_vec(bank + r * D, crow, D, lane) : lane_sq_dist(bank + r * D, crow, D, lane);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      const float old = mind[r];
      float m;
      if (r == c) {
        m = kChosen;
      } else {
        m = (old == kChosen) ? kChosen : fminf(old, s);
      }
      if (m != old) mind[r] = m;
      if (m >= 0.f) {
        const unsigned long long k = pack_key(m, r);
        best = k > best ? k : best;
      }
    }
  }
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long b = warp_best[0];
#pragma unroll
    for (int w = 1; w < kCoresetThreads / 32; ++w) b = warp_best[w] > b ? warp_best[w] : b;
    if (b != 0) atomicMax(keys + step, b);
  }
}

__global__ void coreset_finish_kernel(const unsigned long long* __restrict__ keys, int64_t n,
                                      int64_t* __restrict__ out_idx, float* __restrict__ out_d) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    out_idx[i] = key_row(keys[i]);
    out_d[i] = i == 0 ? __int_as_float(0x7f800000) : sqrtf(fmaxf(key_d2(keys[i]), 0.f));
  }
}

template <typename T>
cudaError_t coreset_typed(const T* bank, int64_t N, int64_t D, int64_t n, int64_t start, float* mind,
                          unsigned long long* keys, int64_t* out_idx, float* out_d, cudaStream_t stream) {
  int dev = 0, sms = 1;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(keys, 0, sizeof(unsigned long long) * n, stream);
  if (err != cudaSuccess) return err;
  const int64_t rows_per_block = kCoresetThreads / 32;
  const int blocks = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>((N + rows_per_block - 1) / rows_per_block, (int64_t)sms * kCoresetBlocksPerSM)));
  coreset_init_kernel<<<blocks, kCoresetThreads, 0, stream>>>(mind, N, keys, start);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const bool vec = (D * static_cast<int64_t>(sizeof(T))) % 16 == 0 && reinterpret_cast<uintptr_t>(bank) % 16 == 0;
  for (int64_t s = 1; s < n; ++s) {
    if (vec)
      coreset_step_kernel<T, true><<<blocks, kCoresetThreads, 0, stream>>>(bank, N, D, mind, keys, s);
    else
      coreset_step_kernel<T, false><<<blocks, kCoresetThreads, 0, stream>>>(bank, N, D, mind, keys, s);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  const int fblocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 1024));
  coreset_finish_kernel<<<fblocks, 256, 0, stream>>>(keys, n, out_idx, out_d);
  return cudaGetLastError();
}

}  // namespace

cudaError_t coreset_launch(const void* bank, int dtype, int64_t N, int64_t D, int64_t n, int64_t start, float* mind,
                           unsigned long long* keys, int64_t* out_idx, float* out_d, cudaStream_t stream) {
  switch (dtype) {
    case kF16:
      return coreset_typed(static_cast<const __half*>(bank), N, D, n, start, mind, keys, out_idx, out_d, stream);
    case kBF16:
      return coreset_typed(static_cast<const __nv_bfloat16*>(bank), N, D, n, start, mind, keys, out_idx, out_d,
                           stream);
    default:
      return coreset_typed(static_cast<const float*>(bank), N, D, n, start, mind, keys, out_idx, out_d, stream);
  }
}

}  // namespace fastad::cuda
