// CUDA group minimum, simple and correct version: one block per (query, group) pair; each warp takes
// bank rows of the group in turn, its lanes stride over D (coalesced loads) and reduce by shuffles;
// the block then reduces the warps' minima. Distances are computed directly (sum of squared
// differences), so no norm expansion and no cancellation on non-centred data.
#include "cuda/cuda_utils.cuh"
#include "cuda/group_min_kernel.h"

namespace fastad::cuda {

namespace {

constexpr int kWarps = 8;  // warps per block (256 threads)

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__global__ void group_min_kernel(const T* __restrict__ q, const T* __restrict__ b, int64_t Q, int64_t G, int64_t gs,
                                 int64_t D, int metric, const int64_t* __restrict__ exclude, float* __restrict__ out) {
  __shared__ float wbest[kWarps];
  const int64_t pair = blockIdx.x;  // query * G + group
  const int64_t i = pair / G, g = pair % G;
  if (i >= Q) return;
  const float inf = __int_as_float(0x7f800000);
  if (exclude && exclude[i] == g) {
    if (threadIdx.x == 0) out[pair] = metric == kIP ? -inf : inf;
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* qr = q + i * D;
  float qq = 0.f;  // |q|^2 (cosine)
  if (metric == kCosine) {
    for (int64_t t = lane; t < D; t += 32) {
      const float v = to_f(qr[t]);
      qq += v * v;
    }
    qq = warp_sum(qq);
  }
  float best = inf;  // smaller is better
  for (int64_t j = g * gs + warp; j < (g + 1) * gs; j += kWarps) {
    const T* br = b + j * D;
    float acc = 0.f, bb = 0.f;
    for (int64_t t = lane; t < D; t += 32) {
      const float x = to_f(qr[t]), y = to_f(br[t]);
      if (metric == kL2 || metric == kSqEuclidean) {
        acc += (x - y) * (x - y);
      } else {
        acc += x * y;
        bb += y * y;
      }
    }
    acc = warp_sum(acc);
    float s;
    if (metric == kL2 || metric == kSqEuclidean) {
      s = acc;
    } else if (metric == kCosine) {
      bb = warp_sum(bb);
      s = (qq > 0.f && bb > 0.f) ? -acc * rsqrtf(qq) * rsqrtf(bb) : 0.f;
    } else {
      s = -acc;
    }
    best = fminf(best, s);
  }
  if (lane == 0) wbest[warp] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = wbest[0];
    for (int w = 1; w < kWarps; ++w) m = fminf(m, wbest[w]);
    float d;
    if (metric == kL2) {
      d = sqrtf(m);
    } else if (metric == kSqEuclidean) {
      d = m;
    } else if (metric == kCosine) {
      d = fmaxf(1.f + m, 0.f);
    } else {
      d = -m;
    }
    out[pair] = d;
  }
}

template <typename T>
cudaError_t launch_typed(const void* q, const void* b, int64_t Q, int64_t G, int64_t gs, int64_t D, int metric,
                         const int64_t* exclude, float* out, cudaStream_t stream) {
  const int64_t pairs = Q * G;
  if (pairs == 0) return cudaSuccess;
  group_min_kernel<T><<<(unsigned)pairs, kWarps * 32, 0, stream>>>(static_cast<const T*>(q), static_cast<const T*>(b),
                                                                     Q, G, gs, D, metric, exclude, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t group_min_launch(const void* q, const void* b, int dtype, int64_t Q, int64_t G, int64_t gs, int64_t D,
                             int metric, const int64_t* exclude, float* out, cudaStream_t stream) {
  if (Q * G >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;  // grid.x limit
  switch (dtype) {
    case kF16: return launch_typed<__half>(q, b, Q, G, gs, D, metric, exclude, out, stream);
    case kBF16: return launch_typed<__nv_bfloat16>(q, b, Q, G, gs, D, metric, exclude, out, stream);
    default: return launch_typed<float>(q, b, Q, G, gs, D, metric, exclude, out, stream);
  }
}

}  // namespace fastad::cuda
