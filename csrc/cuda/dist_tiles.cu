// Bank centring, centred row norms and the cuBLAS tile GEMM shared by knn and group_min (see
// dist_tiles.h for the design).
#include "cuda/cuda_utils.cuh"
#include "cuda/dist_tiles.h"

#include <algorithm>
#include <cstdlib>

namespace fastad::cuda {

namespace {

constexpr int kMeanThreads = 256;    // columns per block
constexpr int64_t kMeanRows = 1024;  // rows summed per block before one atomicAdd per column

template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ x, int64_t N, int64_t D, float scale, float* __restrict__ mu) {
  const int64_t c = blockIdx.x * (int64_t)kMeanThreads + threadIdx.x;
  if (c >= D) return;
  const int64_t r0 = blockIdx.y * kMeanRows, r1 = r0 + kMeanRows < N ? r0 + kMeanRows : N;
  float s = 0.f;
  for (int64_t r = r0; r < r1; ++r) s += to_f(x[r * D + c]);
  atomicAdd(mu + c, s * scale);
}

__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ float round_as(float v, const float*) { return v; }
__device__ __forceinline__ float round_as(float v, const __half*) { return __half2float(__float2half_rn(v)); }
__device__ __forceinline__ float round_as(float v, const __nv_bfloat16*) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

// One warp per row: lanes stride over D (coalesced), shuffle-reduce the squared norm.
template <typename T>
__global__ void centre_rows_kernel(const T* __restrict__ x, int64_t R, int64_t D, const float* __restrict__ mu,
                                   T* __restrict__ out, float* __restrict__ sqnorm) {
  const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= R) return;
  const T* xr = x + row * D;
  float s = 0.f;
  for (int64_t t = lane; t < D; t += 32) {
    float v = to_f(xr[t]) - (mu ? mu[t] : 0.f);
    if (out) {
      v = round_as(v, xr);
      store_as(out + row * D + t, v);
    }
    s = fmaf(v, v, s);
  }
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) sqnorm[row] = s;
}

template <typename T>
cudaError_t centre_typed(const void* x, int64_t R, int64_t D, const float* mu, void* out, float* sqnorm,
                         cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  const int warps = 8;
  centre_rows_kernel<T><<<(unsigned)((R + warps - 1) / warps), warps * 32, 0, stream>>>(
      static_cast<const T*>(x), R, D, mu, static_cast<T*>(out), sqnorm);
  return cudaGetLastError();
}

template <typename T>
cudaError_t mean_typed(const void* x, int64_t N, int64_t D, float* mu, cudaStream_t stream) {
  cudaError_t e = cudaMemsetAsync(mu, 0, sizeof(float) * D, stream);
  if (e != cudaSuccess || N == 0) return e;
  dim3 grid((unsigned)((D + kMeanThreads - 1) / kMeanThreads), (unsigned)((N + kMeanRows - 1) / kMeanRows));
  column_sum_kernel<T><<<grid, kMeanThreads, 0, stream>>>(static_cast<const T*>(x), N, D, 1.f / (float)N, mu);
  return cudaGetLastError();
}

}  // namespace

cudaError_t column_mean(const void* x, int dtype, int64_t N, int64_t D, float* mu, cudaStream_t stream) {
  switch (dtype) {
    case kF16: return mean_typed<__half>(x, N, D, mu, stream);
    case kBF16: return mean_typed<__nv_bfloat16>(x, N, D, mu, stream);
    default: return mean_typed<float>(x, N, D, mu, stream);
  }
}

cudaError_t centre_rows(const void* x, int dtype, int64_t R, int64_t D, const float* mu, void* out, float* sqnorm,
                        cudaStream_t stream) {
  switch (dtype) {
    case kF16: return centre_typed<__half>(x, R, D, mu, out, sqnorm, stream);
    case kBF16: return centre_typed<__nv_bfloat16>(x, R, D, mu, out, sqnorm, stream);
    default: return centre_typed<float>(x, R, D, mu, out, sqnorm, stream);
  }
}

cublasStatus_t tile_dot(cublasHandle_t handle, int dtype, const void* q, int64_t Qt, const void* b, int64_t Nc,
                        int64_t D, float* S, cudaStream_t stream) {
  // Row-major S[Qt, Nc] is column-major S^T[Nc, Qt] = B[Nc, D] . Q^T[D, Qt]; row-major B and Q are
  // column-major B^T [D, Nc] and Q^T [D, Qt], so op(A) = transpose of B^T, op(B) = Q^T as stored.
  cublasStatus_t st = cublasSetStream(handle, stream);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  const float one = 1.f, zero = 0.f;
  const cudaDataType t = dtype == kF16 ? CUDA_R_16F : dtype == kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  cublasMath_t old_mode = CUBLAS_DEFAULT_MATH;
  if (dtype == kF32) {  // no TF32 for float32 inputs, whatever torch's global setting is
    if ((st = cublasGetMathMode(handle, &old_mode)) != CUBLAS_STATUS_SUCCESS) return st;
    if ((st = cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) return st;
  }
  st = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)Nc, (int)Qt, (int)D, &one, b, t, (int)D, q, t, (int)D,
                    &zero, S, CUDA_R_32F, (int)Nc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (dtype == kF32) {
    const cublasStatus_t st2 = cublasSetMathMode(handle, old_mode);
    if (st == CUBLAS_STATUS_SUCCESS) st = st2;
  }
  return st;
}

int64_t chunk_rows_cap(int64_t D, int dtype) {
  return std::min<int64_t>(kChunkRows, std::max<int64_t>(256, kTileBudgetBytes / (D * dtype_bytes(dtype))));
}

int64_t env_rows(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  return (end && *end == '\0' && x > 0) ? (int64_t)x : fallback;
}

int64_t tile_rows(int64_t Q, int64_t Nc, int64_t D, int dtype) {
  return std::max<int64_t>(
      1, std::min<int64_t>({Q, kTileBudgetBytes / (4 * Nc), std::max<int64_t>(1, kTileBudgetBytes / (D * dtype_bytes(dtype)))}));
}

namespace {

int64_t align256(int64_t x) { return (x + 255) / 256 * 256; }

}  // namespace

int64_t ScoreTiles::workspace_bytes(int64_t Q, int64_t Nc, int64_t Qt, int64_t D, int dtype, int metric) {
  const int64_t es = dtype_bytes(dtype);
  int64_t w = align256(4 * D) + align256(4 * Nc) + align256(4 * std::max<int64_t>(Q, 1)) + align256(4 * Qt) +
              align256(4 * Qt * Nc);
  if (centred(metric, dtype)) w += align256(es * Nc * D) + align256(es * Qt * D);
  return w;
}

ScoreTiles::ScoreTiles(void* workspace, cublasHandle_t handle, const void* q, const void* b, int dtype, int metric,
                       int64_t Q, int64_t N, int64_t Nc, int64_t Qt, int64_t D, cudaStream_t stream)
    : handle_(handle), q_(static_cast<const char*>(q)), b_(static_cast<const char*>(b)), dtype_(dtype),
      metric_(metric), Q_(Q), N_(N), D_(D), es_(dtype_bytes(dtype)), centre_(centred(metric, dtype)),
      stream_(stream) {
  char* p = static_cast<char*>(workspace);  // same order and sizes as workspace_bytes
  auto take = [&p](int64_t bytes) {
    char* r = p;
    p += align256(bytes);
    return r;
  };
  mu_ = reinterpret_cast<float*>(take(4 * D));
  bn_ = reinterpret_cast<float*>(take(4 * Nc));
  qn_ = reinterpret_cast<float*>(take(4 * std::max<int64_t>(Q, 1)));
  qtn_ = reinterpret_cast<float*>(take(4 * Qt));
  S_ = reinterpret_cast<float*>(take(4 * Qt * Nc));
  bcopy_ = centre_ ? take(es_ * Nc * D) : nullptr;
  qcopy_ = centre_ ? take(es_ * Qt * D) : nullptr;
}

cudaError_t ScoreTiles::begin() {
  cudaError_t e = cudaSuccess;
  if (centre_ && N_ > 0 && (e = column_mean(b_, dtype_, N_, D_, mu_, stream_)) != cudaSuccess) return e;
  if (metric_ == kCosine) e = centre_rows(q_, dtype_, Q_, D_, nullptr, nullptr, qn_, stream_);
  return e;
}

cudaError_t ScoreTiles::load_chunk(int64_t j0, int64_t nc, const float* bank_sqnorms) {
  nc_ = nc;
  chunk_ = b_ + j0 * D_ * es_;
  chunk_norms_ = bn_;
  if (nc == 0) return cudaSuccess;
  if (centre_) {
    chunk_ = bcopy_;
    return centre_rows(b_ + j0 * D_ * es_, dtype_, nc, D_, mu_, bcopy_, bn_, stream_);
  }
  if (metric_ == kCosine && bank_sqnorms) {
    chunk_norms_ = bank_sqnorms + j0;
    return cudaSuccess;
  }
  if (metric_ == kL2 || metric_ == kSqEuclidean || metric_ == kCosine)
    return centre_rows(chunk_, dtype_, nc, D_, nullptr, nullptr, bn_, stream_);
  return cudaSuccess;
}

cudaError_t ScoreTiles::dot(int64_t q0, int64_t qt) {
  const void* qg = q_ + q0 * D_ * es_;
  if (centre_) {
    cudaError_t e = centre_rows(qg, dtype_, qt, D_, mu_, qcopy_, qtn_, stream_);
    if (e != cudaSuccess) return e;
    qg = qcopy_;
  }
  return tile_dot(handle_, dtype_, qg, qt, chunk_, nc_, D_, S_, stream_) == CUBLAS_STATUS_SUCCESS ? cudaSuccess
                                                                                                 : cudaErrorUnknown;
}

}  // namespace fastad::cuda
