// CUDA kernels of MuSc: lnamd, snamd, mutual-scoring minima (one register-blocked 64 x 64 pair tile
// per block, row and column minima by integer atomicMin on non-negative floats) and the interval
// mean. Exact float32 (no tensor cores: TF32 would break the 1e-5 parity with the official scores).
#include "cuda/cuda_utils.cuh"
#include "cuda/musc_kernel.h"

namespace fastad::cuda {

namespace {

constexpr int kThreads = 128;   // threads per token block (lnamd / snamd)
constexpr int kStatThreads = 256;

template <typename T>
__device__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = (blockDim.x + 31) / 32;
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  T t = 0;
  for (int w = 0; w < nw; ++w) t += sh[w];
  return t;
}

__global__ void lnamd_stats_kernel(const float* __restrict__ x, int64_t L, int64_t C, int64_t s0, int64_t s1,
                                   float* __restrict__ stats) {
  __shared__ double sh[32];
  const int64_t b = blockIdx.x, n = L * C;
  const float* xb = x + b * s0;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += xb[(i / C) * s1 + i % C];
  const double mean = block_sum(s, sh) / (double)n;
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = xb[(i / C) * s1 + i % C] - mean;
    v += d * d;
  }
  const double var = block_sum(v, sh) / (double)n;
  if (threadIdx.x == 0) {
    stats[2 * b] = (float)mean;
    stats[2 * b + 1] = (float)(1.0 / sqrt(var + 1e-5));
  }
}

__global__ void lnamd_pool_kernel(const float* __restrict__ x, int64_t L, int64_t H, int64_t C, int64_t s0,
                                  int64_t s1, int64_t r, const float* __restrict__ stats, float* __restrict__ out) {
  __shared__ double sh[32];
  const int64_t bp = blockIdx.x, b = bp / L, p = bp % L, h = p / H, w = p % H, rad = (r - 1) / 2;
  const float m = stats[2 * b], rstd = stats[2 * b + 1];
  const float inv = 1.f / (float)(r * r);
  const float* xb = x + b * s0;
  float* o = out + bp * C;
  double ss = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.f;
    for (int64_t dh = -rad; dh <= rad; ++dh) {
      const int64_t h2 = h + dh;
      if (h2 < 0 || h2 >= H) continue;
      for (int64_t dw = -rad; dw <= rad; ++dw) {
        const int64_t w2 = w + dw;
        if (w2 < 0 || w2 >= H) continue;
        acc += (xb[(h2 * H + w2) * s1 + c] - m) * rstd;
      }
    }
    const float v = r > 1 ? acc * inv : acc;
    o[c] = v;
    ss += (double)v * v;
  }
  const float nrm = (float)sqrt(block_sum(ss, sh));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = o[c] / nrm;
}

struct RListArg {
  int n;
  int r[kMusCMaxR];
};

__global__ void snamd_kernel(const float* __restrict__ x, int64_t L, int64_t H, int64_t C, int64_t s0, int64_t s1,
                             RListArg rl, float* __restrict__ out) {
  __shared__ double sh[32];
  __shared__ float wgt[kMusCMaxWindow * kMusCMaxWindow];
  const int64_t bp = blockIdx.x, b = bp / L, p = bp % L, h = p / H, w = p % H;
  int rmax = 1;
  for (int t = 0; t < rl.n; ++t) rmax = rl.r[t] > rmax ? rl.r[t] : rmax;
  const int radm = (rmax - 1) / 2, side = 2 * radm + 1;
  const float* xb = x + b * s0;
  const float* xc = xb + p * s1;
  double cn = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) cn += (double)xc[c] * xc[c];
  const float pad_w = expf(-(float)sqrt(block_sum(cn, sh)));
  for (int dh = -radm; dh <= radm; ++dh)
    for (int dw = -radm; dw <= radm; ++dw) {
      const int64_t h2 = h + dh, w2 = w + dw;
      float wv = pad_w;
      if (h2 >= 0 && h2 < H && w2 >= 0 && w2 < H) {
        const float* xn = xb + (h2 * H + w2) * s1;
        double s = 0.0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
          const double d = (double)xn[c] - xc[c];
          s += d * d;
        }
        wv = expf(-(float)sqrt(block_sum(s, sh)));
      }
      if (threadIdx.x == 0) wgt[(dh + radm) * side + (dw + radm)] = wv;
    }
  __syncthreads();
  float* o = out + bp * C;
  double ss = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    double acc = 0.0;
    for (int t = 0; t < rl.n; ++t) {
      const int rad = (rl.r[t] - 1) / 2;
      double fr = 0.0, wsum = 0.0;
      for (int dh = -rad; dh <= rad; ++dh)
        for (int dw = -rad; dw <= rad; ++dw) {
          const double wv = wgt[(dh + radm) * side + (dw + radm)];
          wsum += wv;
          const int64_t h2 = h + dh, w2 = w + dw;
          if (h2 < 0 || h2 >= H || w2 < 0 || w2 >= H) continue;
          fr += wv * xb[(h2 * H + w2) * s1 + c];
        }
      acc += fr / wsum;
    }
    acc /= rl.n;
    o[c] = (float)acc;
    ss += acc * acc;
  }
  const double nrm = sqrt(block_sum(ss, sh));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = (float)((double)o[c] / nrm);
}

__global__ void row_sq_norms_kernel(const float* __restrict__ x, int64_t n, int64_t d, float* __restrict__ out) {
  const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  float s = 0.f;
  for (int64_t t = lane; t < d; t += 32) s += x[row * d + t] * x[row * d + t];
  for (int o = 16; o > 0; o /= 2) s += __shfl_down_sync(0xffffffffu, s, o);
  if (lane == 0) out[row] = s;
}

__global__ void fill_kernel(int* __restrict__ p, int64_t n, int v) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    p[i] = v;
}

// One kPairBM x kPairBN tile of one image pair per block (blockIdx.y: pair index, offset pair0).
// 16 x 16 threads, each accumulating kPairTM x kPairTN dot products (rows ty + 16 u, columns
// tx + 16 v) from kPairBK-deep shared slices; the epilogue forms squared distances and takes the
// tile's row minima (warp shuffles over the 16 tx lanes) and column minima (shared memory), merged
// into the global minima by integer atomicMin (valid for non-negative floats).
constexpr int kPairBM = 64, kPairBN = 64, kPairBK = 16, kPairTM = 4, kPairTN = 4;

__global__ void __launch_bounds__(256) pair_tile_kernel(const float* __restrict__ zq, const float* __restrict__ zp,
                                                        const float* __restrict__ norms, int64_t Nq, int64_t Np,
                                                        int64_t L, int64_t C, int64_t H, int64_t window,
                                                        int64_t pair0, float* __restrict__ minima) {
  __shared__ float As[kPairBK][kPairBM + 4];  // +4: fewer bank conflicts on the transposing stores
  __shared__ float Bs[kPairBK][kPairBN + 4];
  __shared__ float colred[16][kPairBN + 1];
  const int64_t pair = pair0 + blockIdx.y;
  int64_t i, j;
  if (Np > 0) {
    i = pair / Np;
    j = Nq + pair % Np;
  } else {
    i = pair / Nq;
    j = pair % Nq;
    if (i >= j) return;  // uniform over the block
  }
  const int64_t Nref = Np > 0 ? Np : Nq - 1;
  const float* A = zq + i * L * C;
  const float* B = j < Nq ? zq + j * L * C : zp + (j - Nq) * L * C;
  const int64_t tpc = (L + kPairBN - 1) / kPairBN;
  const int64_t p0 = (blockIdx.x / tpc) * kPairBM, q0 = (blockIdx.x % tpc) * kPairBN;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
  float acc[kPairTM][kPairTN];
#pragma unroll
  for (int u = 0; u < kPairTM; ++u)
#pragma unroll
    for (int v = 0; v < kPairTN; ++v) acc[u][v] = 0.f;
  for (int64_t c0 = 0; c0 < C; c0 += kPairBK) {
#pragma unroll
    for (int l = 0; l < (kPairBM * kPairBK) / 256; ++l) {
      const int e = tid + 256 * l, row = e / kPairBK, kk = e % kPairBK;
      const int64_t pa = p0 + row, qb = q0 + row, cc = c0 + kk;
      As[kk][row] = (pa < L && cc < C) ? A[pa * C + cc] : 0.f;
      Bs[kk][row] = (qb < L && cc < C) ? B[qb * C + cc] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kPairBK; ++kk) {
      float a[kPairTM], b[kPairTN];
#pragma unroll
      for (int u = 0; u < kPairTM; ++u) a[u] = As[kk][ty + 16 * u];
#pragma unroll
      for (int v = 0; v < kPairTN; ++v) b[v] = Bs[kk][tx + 16 * v];
#pragma unroll
      for (int u = 0; u < kPairTM; ++u)
#pragma unroll
        for (int v = 0; v < kPairTN; ++v) acc[u][v] = fmaf(a[u], b[v], acc[u][v]);
    }
    __syncthreads();
  }
  const float inf = __int_as_float(0x7f800000);
  const int64_t hw = window > 0 ? (window - 1) / 2 : 0;
  float cmin[kPairTN];
#pragma unroll
  for (int v = 0; v < kPairTN; ++v) cmin[v] = inf;
#pragma unroll
  for (int u = 0; u < kPairTM; ++u) {
    const int64_t p = p0 + ty + 16 * u;
    const float np = p < L ? norms[i * L + p] : 0.f;
    float rmin = inf;
#pragma unroll
    for (int v = 0; v < kPairTN; ++v) {
      const int64_t q = q0 + tx + 16 * v;
      float d2 = inf;
      if (p < L && q < L) {
        d2 = fmaxf(np + norms[j * L + q] - 2.f * acc[u][v], 0.f);
        if (window > 0) {
          const int64_t dh = p / H - q / H, dw = p % H - q % H;
          if (dh > hw || -dh > hw || dw > hw || -dw > hw) d2 = inf;
        }
      }
      rmin = fminf(rmin, d2);
      cmin[v] = fminf(cmin[v], d2);
    }
    // row minimum over the 16 tx lanes (a half warp: lanes differ in bits 0-3 only)
#pragma unroll
    for (int o = 8; o > 0; o /= 2) rmin = fminf(rmin, __shfl_xor_sync(0xffffffffu, rmin, o));
    if (tx == 0 && p < L) {
      const int64_t slot = Np > 0 ? j - Nq : j - 1;
      atomicMin(reinterpret_cast<int*>(minima + (i * Nref + slot) * L + p), __float_as_int(rmin));
    }
  }
  if (Np == 0) {  // column minima: patch q of image j against image i
#pragma unroll
    for (int v = 0; v < kPairTN; ++v) colred[ty][tx + 16 * v] = cmin[v];
    __syncthreads();
    if (tid < kPairBN) {
      const int64_t q = q0 + tid;
      float m = inf;
      for (int r = 0; r < 16; ++r) m = fminf(m, colred[r][tid]);
      if (q < L) atomicMin(reinterpret_cast<int*>(minima + (j * Nref + i) * L + q), __float_as_int(m));
    }
  }
}

__global__ void interval_mean_kernel(const float* __restrict__ minima, int64_t S, int64_t Nref, int64_t L, int64_t k,
                                     float* __restrict__ out) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= S * L) return;
  const int64_t s = t / L, p = t % L;
  float best[kMusCMaxK];
  int cnt = 0;
  const float* m = minima + s * Nref * L + p;
  for (int64_t jj = 0; jj < Nref; ++jj) {
    const float v = m[jj * L];
    if (cnt < k) {
      int pos = cnt++;
      while (pos > 0 && best[pos - 1] > v) {
        best[pos] = best[pos - 1];
        --pos;
      }
      best[pos] = v;
    } else if (v < best[k - 1]) {
      int pos = (int)k - 1;
      while (pos > 0 && best[pos - 1] > v) {
        best[pos] = best[pos - 1];
        --pos;
      }
      best[pos] = v;
    }
  }
  double acc = 0.0;
  for (int u = 0; u < cnt; ++u) acc += sqrtf(fmaxf(best[u], 0.f));
  out[t] = (float)(acc / (double)k);
}

}  // namespace

cudaError_t lnamd_launch(const float* x, int64_t B, int64_t H, int64_t C, int64_t s0, int64_t s1, int64_t r,
                         float* stats, float* out, cudaStream_t stream) {
  const int64_t L = H * H;
  if (B == 0) return cudaSuccess;
  lnamd_stats_kernel<<<(unsigned)B, kStatThreads, 0, stream>>>(x, L, C, s0, s1, stats);
  lnamd_pool_kernel<<<(unsigned)(B * L), kThreads, 0, stream>>>(x, L, H, C, s0, s1, r, stats, out);
  return cudaGetLastError();
}

cudaError_t snamd_launch(const float* x, int64_t B, int64_t H, int64_t C, int64_t s0, int64_t s1, const int* r_list,
                         int R, float* out, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  RListArg rl{};
  rl.n = R;
  for (int t = 0; t < R && t < kMusCMaxR; ++t) rl.r[t] = r_list[t];
  snamd_kernel<<<(unsigned)(B * H * H), kThreads, 0, stream>>>(x, H * H, H, C, s0, s1, rl, out);
  return cudaGetLastError();
}

cudaError_t mutual_minima_launch(const float* zq, const float* zp, int64_t Nq, int64_t Np, int64_t L, int64_t C,
                                 int64_t H, int64_t window, float* norms, float* minima, cudaStream_t stream) {
  const int64_t Nref = Np > 0 ? Np : Nq - 1;
  if (Nq == 0 || L == 0 || Nref <= 0) return cudaSuccess;
  const int warps = 8;
  row_sq_norms_kernel<<<(unsigned)((Nq * L + warps - 1) / warps), warps * 32, 0, stream>>>(zq, Nq * L, C, norms);
  if (Np > 0)
    row_sq_norms_kernel<<<(unsigned)((Np * L + warps - 1) / warps), warps * 32, 0, stream>>>(zp, Np * L, C,
                                                                                              norms + Nq * L);
  const int64_t nmin = Nq * Nref * L;
  fill_kernel<<<(unsigned)((nmin + 255) / 256 < 65535 ? (nmin + 255) / 256 : 65535), 256, 0, stream>>>(
      reinterpret_cast<int*>(minima), nmin, 0x7f800000);
  const int64_t tiles = ((L + kPairBM - 1) / kPairBM) * ((L + kPairBN - 1) / kPairBN);
  const int64_t npairs = Np > 0 ? Nq * Np : Nq * Nq;
  constexpr int64_t kMaxGridY = 65535;
  for (int64_t pair0 = 0; pair0 < npairs; pair0 += kMaxGridY) {
    const int64_t n = npairs - pair0 < kMaxGridY ? npairs - pair0 : kMaxGridY;
    dim3 block(16, 16), grid((unsigned)tiles, (unsigned)n);
    pair_tile_kernel<<<grid, block, 0, stream>>>(zq, zp, norms, Nq, Np, L, C, H, window, pair0, minima);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaGetLastError();
}

cudaError_t interval_mean_launch(const float* minima, int64_t S, int64_t Nref, int64_t L, int64_t k, float* out,
                                 cudaStream_t stream) {
  if (S * L == 0) return cudaSuccess;
  const int threads = 128;
  interval_mean_kernel<<<(unsigned)((S * L + threads - 1) / threads), threads, 0, stream>>>(minima, S, Nref, L, k,
                                                                                            out);
  return cudaGetLastError();
}

}  // namespace fastad::cuda
