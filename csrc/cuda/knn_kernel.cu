// CUDA exact k-NN, simple version: a shared-memory tiled score GEMM into a bounded scratch tile
// ([rows, N] float32, rows chosen by the host glue from a memory budget), then one block per query
// that selects the k best entries by repeated block-wide argmin. Correct for k <= kMaxK.
#include "cuda/cuda_utils.cuh"
#include "cuda/knn_kernel.h"

namespace fastad::cuda {

namespace {

constexpr int kTile = 16;         // GEMM tile edge (threads per block = kTile^2)
constexpr int kSelectThreads = 256;

template <typename T>
__global__ void sq_norms_kernel(const T* __restrict__ x, int64_t n, int64_t d, float* __restrict__ out) {
  const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  float s = 0.f;
  for (int64_t t = lane; t < d; t += 32) {
    const float v = to_f(x[row * d + t]);
    s += v * v;
  }
  for (int o = 16; o > 0; o /= 2) s += __shfl_down_sync(0xffffffffu, s, o);
  if (lane == 0) out[row] = s;
}

// scores[r, j] for queries q0 + r (r < rows) against every bank row j; smaller is better.
template <typename T>
__global__ void score_tile_kernel(const T* __restrict__ q, const T* __restrict__ b, const float* __restrict__ bnorm,
                                  int64_t q0, int64_t rows, int64_t N, int64_t D, int metric, bool exclude_self,
                                  float* __restrict__ scores) {
  __shared__ float qs[kTile][kTile + 1];
  __shared__ float bs[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t r = blockIdx.y * (int64_t)kTile + ty;  // query row within the tile
  const int64_t j = blockIdx.x * (int64_t)kTile + tx;  // bank row
  const int64_t bj_load = blockIdx.x * (int64_t)kTile + ty;
  float acc = 0.f;
  for (int64_t t0 = 0; t0 < D; t0 += kTile) {
    qs[ty][tx] = (r < rows && t0 + tx < D) ? to_f(q[(q0 + r) * D + t0 + tx]) : 0.f;
    bs[ty][tx] = (bj_load < N && t0 + tx < D) ? to_f(b[bj_load * D + t0 + tx]) : 0.f;
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kTile; ++u) acc += qs[ty][u] * bs[tx][u];
    __syncthreads();
  }
  if (r >= rows || j >= N) return;
  float s;
  if (metric == kL2 || metric == kSqEuclidean) {
    s = bnorm[j] - 2.f * acc;
  } else if (metric == kCosine) {
    s = bnorm[j] > 0.f ? -acc * rsqrtf(bnorm[j]) : 0.f;
  } else {
    s = -acc;
  }
  if (exclude_self && j == q0 + r) s = __int_as_float(0x7fc00000);  // NaN marks "not a candidate"
  scores[r * N + j] = s;
}

__global__ void select_kernel(float* __restrict__ scores, const float* __restrict__ qnorm, int64_t q0, int64_t rows,
                              int64_t N, int64_t k, int metric, float* __restrict__ out_d,
                              int64_t* __restrict__ out_i) {
  __shared__ float ss[kSelectThreads];
  __shared__ int64_t si[kSelectThreads];
  const int64_t r = blockIdx.x;
  if (r >= rows) return;
  float* row = scores + r * N;
  const int64_t qi = q0 + r;
  const float qn = qnorm[qi];
  for (int64_t c = 0; c < k; ++c) {
    float bs = __int_as_float(0x7f800000);  // +inf
    int64_t bi = -1;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const float s = row[j];
      if (s == s && (bi < 0 || better(s, j, bs, bi))) {
        bs = s;
        bi = j;
      }
    }
    ss[threadIdx.x] = bs;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) {
        const float os = ss[threadIdx.x + w];
        const int64_t oi = si[threadIdx.x + w];
        if (oi >= 0 && (si[threadIdx.x] < 0 || better(os, oi, ss[threadIdx.x], si[threadIdx.x]))) {
          ss[threadIdx.x] = os;
          si[threadIdx.x] = oi;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      const int64_t best = si[0];
      const float s = ss[0];
      float d;
      if (best < 0) {
        d = metric == kIP ? -__int_as_float(0x7f800000) : __int_as_float(0x7f800000);
      } else if (metric == kL2) {
        d = sqrtf(fmaxf(s + qn, 0.f));
      } else if (metric == kSqEuclidean) {
        d = fmaxf(s + qn, 0.f);
      } else if (metric == kCosine) {
        d = fmaxf(1.f + s * (qn > 0.f ? rsqrtf(qn) : 0.f), 0.f);
      } else {
        d = -s;
      }
      out_d[qi * k + c] = d;
      out_i[qi * k + c] = best;
      if (best >= 0) row[best] = __int_as_float(0x7fc00000);
    }
    __syncthreads();
  }
}

template <typename T>
cudaError_t knn_typed(const T* q, const T* b, const float* bnorm_in, int64_t Q, int64_t N, int64_t D, int64_t k,
                      int metric, bool exclude_self, float* out_d, int64_t* out_i, float* scratch,
                      int64_t scratch_rows, float* qnorm, float* bnorm_buf, cudaStream_t stream) {
  const int warps = 8;
  sq_norms_kernel<T><<<(unsigned)((Q + warps - 1) / warps), warps * 32, 0, stream>>>(q, Q, D, qnorm);
  const float* bnorm = bnorm_in;
  if (!bnorm && N > 0) {
    sq_norms_kernel<T><<<(unsigned)((N + warps - 1) / warps), warps * 32, 0, stream>>>(b, N, D, bnorm_buf);
    bnorm = bnorm_buf;
  }
  for (int64_t q0 = 0; q0 < Q; q0 += scratch_rows) {
    const int64_t rows = Q - q0 < scratch_rows ? Q - q0 : scratch_rows;
    if (N > 0) {
      dim3 block(kTile, kTile), grid((unsigned)((N + kTile - 1) / kTile), (unsigned)((rows + kTile - 1) / kTile));
      score_tile_kernel<T><<<grid, block, 0, stream>>>(q, b, bnorm, q0, rows, N, D, metric, exclude_self, scratch);
    }
    select_kernel<<<(unsigned)rows, kSelectThreads, 0, stream>>>(scratch, qnorm, q0, rows, N, k, metric, out_d,
                                                                 out_i);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t knn_launch(const void* q, const void* b, int dtype, const float* bnorm, int64_t Q, int64_t N, int64_t D,
                       int64_t k, int metric, bool exclude_self, float* out_d, int64_t* out_i, float* scratch,
                       int64_t scratch_rows, float* qnorm_buf, float* bnorm_buf, cudaStream_t stream) {
  switch (dtype) {
    case kF16:
      return knn_typed(static_cast<const __half*>(q), static_cast<const __half*>(b), bnorm, Q, N, D, k, metric,
                       exclude_self, out_d, out_i, scratch, scratch_rows, qnorm_buf, bnorm_buf, stream);
    case kBF16:
      return knn_typed(static_cast<const __nv_bfloat16*>(q), static_cast<const __nv_bfloat16*>(b), bnorm, Q, N, D,
                       k, metric, exclude_self, out_d, out_i, scratch, scratch_rows, qnorm_buf, bnorm_buf, stream);
    default:
      return knn_typed(static_cast<const float*>(q), static_cast<const float*>(b), bnorm, Q, N, D, k, metric,
                       exclude_self, out_d, out_i, scratch, scratch_rows, qnorm_buf, bnorm_buf, stream);
  }
}

}  // namespace fastad::cuda
