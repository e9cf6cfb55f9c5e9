// CUDA kernels of the Gaussian ops (fastad::mahalanobis, fastad::gaussian_accumulate).
//
// mahalanobis: one block per (position, tile of kRows images): the centred rows go to shared memory,
// each thread owns output columns j (strided by the block size) and walks k = j .. d-1 of the lower
// factor, reusing every factor element for the kRows images (coalesced reads along j); the squared
// column values are reduced in the block. No whitened tensor is written.
// cholesky=True (maha_solve_kernel): a warp per image substitutes through the Cholesky factor.
// gaussian_accumulate: one block per (position, 32 x 32 tile of the lower triangle), the centred
// rows staged in shared memory 32 samples at a time, float64 products and sums (sumsq dense [P, d, d] or
// packed lower triangles [P, d (d + 1) / 2]).
#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/cuda_utils.cuh"
#include "cuda/mahalanobis_kernel.h"

namespace fastad::cuda {

namespace {

constexpr int kRows = 8;
constexpr int kThreads = 256;

__device__ __forceinline__ double to_d(float v) { return v; }
__device__ __forceinline__ double to_d(double v) { return v; }
__device__ __forceinline__ double to_d(__half v) { return __half2float(v); }
__device__ __forceinline__ double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(double v) { return static_cast<float>(v); }

template <typename T, typename F>
__global__ void maha_kernel(const T* __restrict__ x, const float* __restrict__ mean, const F* __restrict__ L,
                            int64_t N, int64_t P, int64_t d, float* __restrict__ out) {
  extern __shared__ float sm[];  // kRows * d centred rows, then kThreads * kRows partial sums
  float* xc = sm;
  float* red = sm + kRows * d;
  const int64_t p = blockIdx.x;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int rows = static_cast<int>(N - n0 < kRows ? N - n0 : kRows);
  for (int64_t i = threadIdx.x; i < kRows * d; i += blockDim.x) {
    const int r = static_cast<int>(i / d);
    const int64_t k = i % d;
    xc[i] = r < rows ? to_f(x[((n0 + r) * P + p) * d + k]) - mean[p * d + k] : 0.f;
  }
  __syncthreads();
  const F* Lp = L + p * d * d;
  float ss[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) ss[r] = 0.f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float z[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) z[r] = 0.f;
    for (int64_t k = j; k < d; ++k) {
      const float l = to_f(Lp[k * d + j]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) z[r] = fmaf(xc[r * d + k], l, z[r]);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) ss[r] = fmaf(z[r], z[r], ss[r]);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) red[r * blockDim.x + threadIdx.x] = ss[r];
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s)
#pragma unroll
      for (int r = 0; r < kRows; ++r) red[r * blockDim.x + threadIdx.x] += red[r * blockDim.x + threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x < rows) out[(n0 + threadIdx.x) * P + p] = red[threadIdx.x * blockDim.x];
}

template <typename T, typename F>
cudaError_t maha_typed(const T* x, const float* mean, const F* L, int64_t N, int64_t P, int64_t d, float* out,
                       cudaStream_t stream) {
  const size_t smem = (static_cast<size_t>(kRows) * d + static_cast<size_t>(kThreads) * kRows) * sizeof(float);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(maha_kernel<T, F>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>(P), static_cast<unsigned>((N + kRows - 1) / kRows));
  maha_kernel<T, F><<<grid, kThreads, smem, stream>>>(x, mean, L, N, P, d, out);
  return cudaGetLastError();
}

// cholesky=True: one block per (position, tile of kRows images), one warp per image: the centred row in
// shared memory is overwritten by z = C^{-1} (x - mean) one entry at a time (z_k = (xc_k - C[k, :k] . z[:k])
// / C[k, k], the dot product split over the lanes and reduced by shuffles); then |z|^2 the same way.
template <typename T, typename F>
__global__ void maha_solve_kernel(const T* __restrict__ x, const float* __restrict__ mean, const F* __restrict__ C,
                                  int64_t N, int64_t P, int64_t d, float* __restrict__ out) {
  extern __shared__ float sm[];  // kRows * d centred rows, solved in place
  const int64_t p = blockIdx.x;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = n0 + warp;
  if (warp >= kRows || n >= N) return;
  float* z = sm + warp * d;
  for (int64_t k = lane; k < d; k += 32) z[k] = to_f(x[(n * P + p) * d + k]) - mean[p * d + k];
  __syncwarp();
  const F* Cp = C + p * d * d;
  for (int64_t k = 0; k < d; ++k) {
    float acc = 0.f;
    for (int64_t j = lane; j < k; j += 32) acc = fmaf(to_f(Cp[k * d + j]), z[j], acc);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) z[k] = (z[k] - acc) / to_f(Cp[k * d + k]);
    __syncwarp();
  }
  float ss = 0.f;
  for (int64_t k = lane; k < d; k += 32) ss = fmaf(z[k], z[k], ss);
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (lane == 0) out[n * P + p] = ss;
}

template <typename T, typename F>
cudaError_t maha_solve_typed(const T* x, const float* mean, const F* C, int64_t N, int64_t P, int64_t d, float* out,
                             cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(kRows) * d * sizeof(float);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(maha_solve_kernel<T, F>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>(P), static_cast<unsigned>((N + kRows - 1) / kRows));
  maha_solve_kernel<T, F><<<grid, kRows * 32, smem, stream>>>(x, mean, C, N, P, d, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t maha_x(const T* x, const float* mean, const void* L, int ldt, int64_t N, int64_t P, int64_t d, float* out,
                   bool cholesky, cudaStream_t s) {
  switch (ldt) {
    case kF32:
      return cholesky ? maha_solve_typed(x, mean, static_cast<const float*>(L), N, P, d, out, s)
                      : maha_typed(x, mean, static_cast<const float*>(L), N, P, d, out, s);
    case kF16:
      return cholesky ? maha_solve_typed(x, mean, static_cast<const __half*>(L), N, P, d, out, s)
                      : maha_typed(x, mean, static_cast<const __half*>(L), N, P, d, out, s);
    default:
      return cholesky ? maha_solve_typed(x, mean, static_cast<const __nv_bfloat16*>(L), N, P, d, out, s)
                      : maha_typed(x, mean, static_cast<const __nv_bfloat16*>(L), N, P, d, out, s);
  }
}

constexpr int kTile = 32;

template <typename T>
__global__ void syrk_kernel(const T* __restrict__ x, const double* __restrict__ shift, int64_t N, int64_t P,
                            int64_t d, double* __restrict__ sumsq, bool packed, const int64_t* __restrict__ row_start) {
  // blockIdx.x: lower-triangle tile index t -> (ti, tj) with tj <= ti; positions blockIdx.y, + gridDim.y, ...
  // (gridDim.y is at most 65535: any P)
  int64_t t = blockIdx.x, ti = 0;
  while (t > ti) t -= ++ti;
  const int64_t tj = t;
  __shared__ double ya[kTile][kTile + 1], yb[kTile][kTile + 1];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;  // 32 x 8 threads
  for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
    // rows above row_start[p] are not formed (a tile wholly above: skipped by the whole block, uniformly)
    const int64_t r0 = row_start != nullptr ? row_start[p] : 0;
    if ((ti + 1) * kTile <= r0) continue;
    double acc[4] = {0, 0, 0, 0};
    for (int64_t n0 = 0; n0 < N; n0 += kTile) {
      for (int q = ty; q < kTile; q += 8) {
        const int64_t n = n0 + q;
        const int64_t ia = ti * kTile + tx, ib = tj * kTile + tx;
        ya[q][tx] = (n < N && ia < d) ? to_d(x[(n * P + p) * d + ia]) - shift[p * d + ia] : 0.0;
        yb[q][tx] = (n < N && ib < d) ? to_d(x[(n * P + p) * d + ib]) - shift[p * d + ib] : 0.0;
      }
      __syncthreads();
      for (int q = 0; q < kTile; ++q) {
        const double b = yb[q][tx];
#pragma unroll
        for (int u = 0; u < 4; ++u) acc[u] += ya[q][ty + 8 * u] * b;
      }
      __syncthreads();
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t i = ti * kTile + ty + 8 * u, j = tj * kTile + tx;
      if (i < d && j < d && j <= i && i >= r0)
        sumsq[packed ? p * (d * (d + 1) / 2) + i * (i + 1) / 2 + j : (p * d + i) * d + j] += acc[u];
    }
  }
}

template <typename T>
__global__ void colsum_kernel(const T* __restrict__ x, const double* __restrict__ shift, int64_t N, int64_t P,
                              int64_t d, double* __restrict__ sum) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= P * d) return;
  const int64_t p = i / d, k = i % d;
  double s = 0;
  for (int64_t n = 0; n < N; ++n) s += to_d(x[(n * P + p) * d + k]) - shift[i];
  sum[i] += s;
}

template <typename T>
cudaError_t acc_typed(const T* x, const double* shift, int64_t N, int64_t P, int64_t d, double* sum, double* sumsq,
                      bool packed, const int64_t* row_start, cudaStream_t stream) {
  const int64_t nt = (d + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(nt * (nt + 1) / 2), static_cast<unsigned>(std::min<int64_t>(P, 65535)));
  syrk_kernel<T><<<grid, kTile * 8, 0, stream>>>(x, shift, N, P, d, sumsq, packed, row_start);
  const int64_t total = P * d;
  colsum_kernel<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(x, shift, N, P, d, sum);
  return cudaGetLastError();
}

}  // namespace

cudaError_t mahalanobis_launch(const void* x, int xdt, const float* mean, const void* L, int ldt, int64_t N,
                               int64_t P, int64_t d, float* out, bool cholesky, cudaStream_t s) {
  switch (xdt) {
    case kF32: return maha_x(static_cast<const float*>(x), mean, L, ldt, N, P, d, out, cholesky, s);
    case kF16: return maha_x(static_cast<const __half*>(x), mean, L, ldt, N, P, d, out, cholesky, s);
    default: return maha_x(static_cast<const __nv_bfloat16*>(x), mean, L, ldt, N, P, d, out, cholesky, s);
  }
}

cudaError_t gaussian_accumulate_launch(const void* x, int xdt, const double* shift, int64_t N, int64_t P, int64_t d,
                                       double* sum, double* sumsq, bool packed, const int64_t* row_start,
                                       cudaStream_t s) {
  switch (xdt) {
    case kF32: return acc_typed(static_cast<const float*>(x), shift, N, P, d, sum, sumsq, packed, row_start, s);
    case kF16: return acc_typed(static_cast<const __half*>(x), shift, N, P, d, sum, sumsq, packed, row_start, s);
    case kBF16: return acc_typed(static_cast<const __nv_bfloat16*>(x), shift, N, P, d, sum, sumsq, packed, row_start, s);
    default: return acc_typed(static_cast<const double*>(x), shift, N, P, d, sum, sumsq, packed, row_start, s);
  }
}

// gaussian_covariance: one thread per lower-triangle entry of a position (positions blockIdx.y, + gridDim.y, ...:
// any P), row found from the packed index; explicit __dmul_rn / __dsub_rn / __dadd_rn keep nvcc from
// contracting into FMAs.
template <typename T>
__global__ void covariance_kernel(const double* __restrict__ s2, const double* __restrict__ m, int64_t P, int64_t d,
                                  bool packed, double n, double scale, double reg, T* __restrict__ out,
                                  const int64_t* __restrict__ row_start) {
  const int64_t tri = d * (d + 1) / 2;
  for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
    const double* mp = m + p * d;
    for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < tri;
         k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      int64_t i = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(k) + 1.0) - 1.0) / 2.0);
      while (i * (i + 1) / 2 > k) --i;
      while ((i + 1) * (i + 2) / 2 <= k) ++i;
      const int64_t j = k - i * (i + 1) / 2;
      if (row_start != nullptr && i < row_start[p]) continue;  // rows above row_start are not written
      const double sij = s2[p * (packed ? tri : d * d) + (packed ? k : i * d + j)];
      double v = __dmul_rn(__dsub_rn(sij, __dmul_rn(__dmul_rn(n, mp[i]), mp[j])), scale);
      if (i == j) v = __dadd_rn(v, reg);
      out[p * d * d + i * d + j] = static_cast<T>(v);
    }
  }
}

cudaError_t gaussian_covariance_launch(const double* sumsq, const double* m, int64_t P, int64_t d, bool packed,
                                       double n, double scale, double reg, void* out, bool f32,
                                       const int64_t* row_start, cudaStream_t s) {
  const int64_t tri = d * (d + 1) / 2;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((tri + 255) / 256, 1024)),
                  static_cast<unsigned>(std::min<int64_t>(P, 65535)));  // (gridDim.y's limit; the kernel strides)
  if (f32)
    covariance_kernel<float><<<grid, 256, 0, s>>>(sumsq, m, P, d, packed, n, scale, reg, static_cast<float*>(out),
                                                  row_start);
  else
    covariance_kernel<double><<<grid, 256, 0, s>>>(sumsq, m, P, d, packed, n, scale, reg, static_cast<double*>(out),
                                                   row_start);
  return cudaGetLastError();
}

}  // namespace fastad::cuda
