// CUDA kernels of MuSc: lnamd, snamd, mutual-scoring minima and the interval mean.
// Mutual scoring: for image i, one cuBLAS GEMM against a batch of other images gives the float32
// tile T[L, b * L] (fp32 SGEMM, no TF32: TF32 would break the 1e-5 parity with the official scores);
// two epilogue kernels read it back for the row minima (i vs each j) and, in self mode, the column
// minima (each j vs i), so each image pair's Gram block is computed once, as on the CPU. The tile
// (kMusCTileBytes) stays within the L2-sized-to-HBM range where its write + two reads cost a few
// percent of the GEMM.
#include "cuda/cuda_utils.cuh"
#include "cuda/dist_tiles.h"
#include "cuda/musc_kernel.h"

#include <algorithm>

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

// Sum of (x[(h + dh) * H + (w + dw)) * s1 + c] - m) * rstd over |dh|, |dw| <= rad inside the H x H grid
// (zero padding). m = 0, rstd = 1 gives the plain sum exactly.
__device__ __forceinline__ float box_at(const float* __restrict__ xb, int64_t H, int64_t s1, int64_t h, int64_t w,
                                        int64_t rad, int64_t c, float m = 0.f, float rstd = 1.f) {
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
  return acc;
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
    const float acc = box_at(xb, H, s1, h, w, rad, c, m, rstd);
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


// Epilogues of the mutual-scoring tile T[L, b * L] = z_i . [z_j0 .. z_j0+b-1]^T (cuBLAS, fp32, no TF32).
// Squared distances are n_p + n_q - 2 T (clamped at 0); same_position windows mask far pairs (inf).
__device__ __forceinline__ bool outside_window(int64_t p, int64_t q, int64_t H, int64_t hw) {
  const int64_t dh = p / H - q / H, dw = p % H - q % H;
  return dh > hw || -dh > hw || dw > hw || -dw > hw;
}

// Row minima: one warp per (p, jb), reading T's row segment [p, jb * L, L) (coalesced).
// minima[(i * Nref + slot0 + jb) * L + p] = min_q d2(p of image i, q of image j0 + jb).
__global__ void tile_row_min_kernel(const float* __restrict__ T, int64_t L, int64_t b, const float* __restrict__ ni,
                                    const float* __restrict__ nj, const float* __restrict__ wi,
                                    const float* __restrict__ wj, int64_t H, int64_t window, int64_t i,
                                    int64_t slot0, int64_t Nref, float* __restrict__ minima) {
  const int64_t w = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (w >= L * b) return;
  const int64_t p = w / b, jb = w % b;
  const float* row = T + p * (b * L) + jb * L;
  const float* nq = nj + jb * L;
  const float* wq = wj ? wj + jb * L : nullptr;
  const float np = ni[p], two_wp = 2.f * (wi ? wi[p] : 1.f);
  const int64_t hw = window > 0 ? (window - 1) / 2 : 0;
  float m = __int_as_float(0x7f800000);
  for (int64_t q = lane; q < L; q += 32) {
    if (window > 0 && outside_window(p, q, H, hw)) continue;
    m = fminf(m, fmaxf(np + nq[q] - two_wp * (wq ? wq[q] : 1.f) * row[q], 0.f));
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) m = fminf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) minima[(i * Nref + slot0 + jb) * L + p] = m;
}

// Column minima (self mode): for column q of image j = j0 + jb, the minimum over the L rows p of
// image i. Block (32, kColSlices): 32 consecutive columns (coalesced), rows split in kColSlices.
// minima[(j * Nref + i) * L + q] (image i is slot i of image j > i).
constexpr int kColSlices = 8;
__global__ void tile_col_min_kernel(const float* __restrict__ T, int64_t L, int64_t b, const float* __restrict__ ni,
                                    const float* __restrict__ nj, const float* __restrict__ wi,
                                    const float* __restrict__ wj, int64_t H, int64_t window, int64_t i, int64_t j0,
                                    int64_t Nref, float* __restrict__ minima) {
  __shared__ float red[kColSlices][33];
  const int64_t cc = blockIdx.x * 32ll + threadIdx.x;  // column of T: jb * L + q
  const bool valid = cc < b * L;
  const int64_t jb = valid ? cc / L : 0, q = valid ? cc % L : 0;
  const int64_t hw = window > 0 ? (window - 1) / 2 : 0;
  const float nq = valid ? nj[cc] : 0.f, wq = valid && wj ? wj[cc] : 1.f;
  float m = __int_as_float(0x7f800000);
  if (valid)
    for (int64_t p = threadIdx.y; p < L; p += kColSlices) {
      if (window > 0 && outside_window(p, q, H, hw)) continue;
      m = fminf(m, fmaxf(ni[p] + nq - 2.f * (wi ? wi[p] : 1.f) * wq * T[p * (b * L) + cc], 0.f));
    }
  red[threadIdx.y][threadIdx.x] = m;
  __syncthreads();
  if (threadIdx.y == 0 && valid) {
#pragma unroll
    for (int s = 1; s < kColSlices; ++s) m = fminf(m, red[s][threadIdx.x]);
    minima[((j0 + jb) * Nref + i) * L + q] = m;
  }
}

// ---- lnamd_mutual_scores with one Gram per image pair for every r (as the CPU kernel) -------------
// LNAMD's r x r mean is linear, so with y the LayerNorm-ed tokens and v_r(p) = sum_{a in W_r(p)} y_a,
// <z_r(p), z_r(q)> = w_r(p) w_r(q) sum_{a in W_r(p), b in W_r(q)} <y_a, y_b>, w_r = 1 / |v_r|: the
// Gram of y, box-filtered over both patch grids, serves every r. The box filter is separable: q's
// grid (w then h) inside one row segment of the tile in shared memory, then p's grid (w then h)
// over tile rows, columns coalesced; zero padding past the grid edges (missing terms are skipped).

// y[b, p, :] = (x[b, p, :] - mean_b) * rstd_b, contiguous [B, L, C].
__global__ void ln_apply_kernel(const float* __restrict__ x, int64_t B, int64_t L, int64_t C, int64_t s0, int64_t s1,
                                const float* __restrict__ stats, float* __restrict__ y) {
  const int64_t n = B * L * C;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = t / (L * C), rem = t % (L * C), p = rem / C, c = rem % C;
    y[t] = (x[b * s0 + p * s1 + c] - stats[2 * b]) * stats[2 * b + 1];
  }
}

// Per token p of image b: v = box_r sum of y around p (r = 1: y_p); w[b, p] = 1 / |v| (0 if v = 0),
// nz[b, p] = |v * w|^2 accumulated in double from the rounded products (as the CPU kernel).
__global__ void box_scale_kernel(const float* __restrict__ y, int64_t L, int64_t H, int64_t C, int64_t r,
                                 float* __restrict__ w, float* __restrict__ nz) {
  __shared__ double sh[32];
  const int64_t bp = blockIdx.x, b = bp / L, p = bp % L, h = p / H, ww = p % H, rad = (r - 1) / 2;
  const float* yb = y + b * L * C;
  double ss = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = box_at(yb, H, C, h, ww, rad, c);
    ss += (double)v * v;
  }
  const double nrm = sqrt(block_sum(ss, sh));
  const float inv = nrm > 0.0 ? (float)(1.0 / nrm) : 0.f;
  double s2 = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float zc = box_at(yb, H, C, h, ww, rad, c) * inv;
    s2 += (double)zc * zc;
  }
  const double n2 = block_sum(s2, sh);
  if (threadIdx.x == 0) {
    w[bp] = inv;
    nz[bp] = (float)n2;
  }
}

// q-direction box sum of every row segment [p, jb * L, L) of T[L, b * L] (one block per segment;
// dynamic shared memory 2 L floats): U[p, jb * L + q] = sum_{a in W_r(q)} T[p, jb * L + a].
__global__ void qbox_kernel(const float* __restrict__ T, int64_t L, int64_t H, int64_t b, int64_t rad,
                            float* __restrict__ U) {
  extern __shared__ float seg[];
  float* s1 = seg + L;
  const int64_t p = blockIdx.x / b, jb = blockIdx.x % b;
  const float* src = T + p * (b * L) + jb * L;
  for (int64_t q = threadIdx.x; q < L; q += blockDim.x) seg[q] = src[q];
  __syncthreads();
  for (int64_t q = threadIdx.x; q < L; q += blockDim.x) {
    const int64_t w = q % H;
    float acc = seg[q];
    for (int64_t d = 1; d <= rad; ++d) {
      if (w - d >= 0) acc += seg[q - d];
      if (w + d < H) acc += seg[q + d];
    }
    s1[q] = acc;
  }
  __syncthreads();
  float* dst = U + p * (b * L) + jb * L;
  for (int64_t q = threadIdx.x; q < L; q += blockDim.x) {
    const int64_t h = q / H;
    float acc = s1[q];
    for (int64_t d = 1; d <= rad; ++d) {
      if (h - d >= 0) acc += s1[q - d * H];
      if (h + d < H) acc += s1[q + d * H];
    }
    dst[q] = acc;
  }
}

// p-direction box sum over the rows of in[L, ncols] along one grid axis: out[p, c] = sum over the
// valid neighbours p' = p + d * step (|d| <= rad) of in[p', c]; step 1: along w (same grid row), step H:
// along h. Threads run along c (coalesced); the r reads per output hit L2 (neighbouring rows).
__global__ void pbox_kernel(const float* __restrict__ in, int64_t L, int64_t H, int64_t ncols, int64_t rad,
                            int64_t step, float* __restrict__ out) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, p = blockIdx.y;
  if (c >= ncols) return;
  const int64_t pos = step == 1 ? p % H : p / H;
  float acc = in[p * ncols + c];
  for (int64_t d = 1; d <= rad; ++d) {
    if (pos - d >= 0) acc += in[(p - d * step) * ncols + c];
    if (pos + d < H) acc += in[(p + d * step) * ncols + c];
  }
  out[p * ncols + c] = acc;
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

int64_t mutual_tile_images(int64_t L, int64_t Nref) {
  const int64_t per = 4 * L * L;  // bytes of one image pair's tile
  return std::max<int64_t>(1, std::min<int64_t>(std::max<int64_t>(Nref, 1), kMusCTileBytes / std::max<int64_t>(per, 1)));
}

cudaError_t mutual_minima_launch(cublasHandle_t handle, const float* zq, const float* zp, int64_t Nq, int64_t Np,
                                 int64_t L, int64_t C, int64_t H, int64_t window, float* norms, float* tile,
                                 float* minima, cudaStream_t stream) {
  const int64_t Nref = Np > 0 ? Np : Nq - 1;
  if (Nq == 0 || L == 0 || Nref <= 0) return cudaSuccess;
  const int warps = 8;
  row_sq_norms_kernel<<<(unsigned)((Nq * L + warps - 1) / warps), warps * 32, 0, stream>>>(zq, Nq * L, C, norms);
  if (Np > 0)
    row_sq_norms_kernel<<<(unsigned)((Np * L + warps - 1) / warps), warps * 32, 0, stream>>>(zp, Np * L, C,
                                                                                              norms + Nq * L);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const int64_t B = mutual_tile_images(L, Nref);
  const float* np_ = norms + Nq * L;
  for (int64_t i = 0; i < Nq; ++i) {
    const float* zi = zq + i * L * C;
    // self mode: images j > i (each pair once: row minima for i, column minima for j); pool: all.
    const int64_t jbeg = Np > 0 ? 0 : i + 1, jend = Np > 0 ? Np : Nq;
    for (int64_t j0 = jbeg; j0 < jend; j0 += B) {
      const int64_t b = std::min<int64_t>(B, jend - j0);
      const float* zj = Np > 0 ? zp + j0 * L * C : zq + j0 * L * C;
      const float* nj = Np > 0 ? np_ + j0 * L : norms + j0 * L;
      if (tile_dot(handle, kF32, zi, L, zj, b * L, C, tile, stream) != CUBLAS_STATUS_SUCCESS)
        return cudaErrorUnknown;  // reported by the entry as a cuBLAS failure
      const int64_t slot0 = Np > 0 ? j0 : j0 - 1;  // j > i: slot j - 1 in i's list
      tile_row_min_kernel<<<(unsigned)((L * b + warps - 1) / warps), warps * 32, 0, stream>>>(
          tile, L, b, norms + i * L, nj, nullptr, nullptr, H, window, i, slot0, Nref, minima);
      if (Np == 0) {
        dim3 block(32, kColSlices);
        tile_col_min_kernel<<<(unsigned)((b * L + 31) / 32), block, 0, stream>>>(
            tile, L, b, norms + i * L, nj, nullptr, nullptr, H, window, i, j0, Nref, minima);
      }
      if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
  }
  return cudaGetLastError();
}

cudaError_t ln_features_launch(const float* x, int64_t B, int64_t L, int64_t C, int64_t s0, int64_t s1, float* stats,
                               float* y, cudaStream_t stream) {
  if (B == 0 || L == 0) return cudaSuccess;
  lnamd_stats_kernel<<<(unsigned)B, kStatThreads, 0, stream>>>(x, L, C, s0, s1, stats);
  const int64_t n = B * L * C, blocks = std::min<int64_t>((n + 255) / 256, 1 << 16);
  ln_apply_kernel<<<(unsigned)blocks, 256, 0, stream>>>(x, B, L, C, s0, s1, stats, y);
  return cudaGetLastError();
}

cudaError_t box_scales_launch(const float* y, int64_t B, int64_t H, int64_t C, int64_t r, float* w, float* nz,
                              cudaStream_t stream) {
  if (B == 0 || H == 0) return cudaSuccess;
  box_scale_kernel<<<(unsigned)(B * H * H), kThreads, 0, stream>>>(y, H * H, H, C, r, w, nz);
  return cudaGetLastError();
}

cudaError_t lnamd_minima_launch(cublasHandle_t handle, const float* yq, const float* yp, int64_t Nq, int64_t Np,
                                int64_t L, int64_t C, int64_t H, int64_t window, const int64_t* r_list, int64_t R,
                                const float* w, const float* nz, float* T, float* U, float* V, float* minima,
                                cudaStream_t stream) {
  const int64_t Nref = Np > 0 ? Np : Nq - 1, Ntot = Nq + Np;
  if (Nq == 0 || L == 0 || Nref <= 0) return cudaSuccess;
  const int warps = 8, threads = 256;
  const int64_t B = mutual_tile_images(L, Nref);
  cudaError_t e = cudaSuccess;
  for (int64_t i = 0; i < Nq; ++i) {
    const float* yi = yq + i * L * C;
    const int64_t jbeg = Np > 0 ? 0 : i + 1, jend = Np > 0 ? Np : Nq;  // as mutual_minima_launch
    for (int64_t j0 = jbeg; j0 < jend; j0 += B) {
      const int64_t b = std::min<int64_t>(B, jend - j0), ncols = b * L;
      const float* yj = Np > 0 ? yp + j0 * L * C : yq + j0 * L * C;
      if (tile_dot(handle, kF32, yi, L, yj, ncols, C, T, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
      const int64_t jt = Np > 0 ? Nq + j0 : j0;        // first image j in the [Ntot] token layout
      const int64_t slot0 = Np > 0 ? j0 : j0 - 1;      // j > i: slot j - 1 in i's list
      for (int64_t ri = 0; ri < R; ++ri) {
        const int64_t rad = (r_list[ri] - 1) / 2;
        const float* S = T;
        if (rad > 0) {
          qbox_kernel<<<(unsigned)(L * b), threads, (size_t)(2 * L * sizeof(float)), stream>>>(T, L, H, b, rad, U);
          const dim3 grid((unsigned)((ncols + threads - 1) / threads), (unsigned)L);
          pbox_kernel<<<grid, threads, 0, stream>>>(U, L, H, ncols, rad, 1, V);
          pbox_kernel<<<grid, threads, 0, stream>>>(V, L, H, ncols, rad, H, U);
          S = U;
        }
        const float* wr = w + ri * Ntot * L;
        const float* nr = nz + ri * Ntot * L;
        float* mr = minima + ri * Nq * Nref * L;
        tile_row_min_kernel<<<(unsigned)((L * b + warps - 1) / warps), warps * 32, 0, stream>>>(
            S, L, b, nr + i * L, nr + jt * L, wr + i * L, wr + jt * L, H, window, i, slot0, Nref, mr);
        if (Np == 0) {
          dim3 block(32, kColSlices);
          tile_col_min_kernel<<<(unsigned)((ncols + 31) / 32), block, 0, stream>>>(
              S, L, b, nr + i * L, nr + jt * L, wr + i * L, wr + jt * L, H, window, i, j0, Nref, mr);
        }
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
      }
    }
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
