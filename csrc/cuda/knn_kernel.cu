// CUDA exact k-NN (fastad::knn): bank chunks x query tiles, cuBLAS inner products into a bounded
// float32 tile (csrc/cuda/dist_tiles.h), and a selection kernel that folds each tile into the running
// top-k kept in the output buffers (as scores, smaller is better), then a finishing kernel that turns
// scores into distances (l2/sqeuclidean: exact fp32 distances of the winners, re-sorted).
//
// Selection (faiss's GPU k-selection teaches the shape; our own simpler variants), k <= kSmallK:
// - warp list (k >= 2): 8 warps per query row; each keeps a warp-wide sorted list of k entries (one
//   per lane) over its share of the row: a candidate costs one compare with the list's k-th entry,
//   the rare winners are inserted by ballot + shuffles, the next batch of loads is in flight while a
//   batch is compared; warp 0 merges the lists. Measured on an H200 at k = 9 it costs about what
//   k = 1 costs (the per-thread queues below cost ~12 ms more per 1.6e9 scores at k = 9).
// - per-thread register queues (k = 1, where the queue is a running minimum and measured faster):
//   each thread keeps its own sorted top-K (K = next power of two >= k) over a strided slice, then
//   k rounds of a block-wide argmin merge them.
// FASTAD_CUDA_KNN_SELECT=queue|warp forces one of them (benchmark knob; tests run both).
// k > kSmallK: chunks of kSortN - k bank rows; the previous top-k and the chunk's scores are
// bitonic-sorted in shared memory and the first k kept.
// Ties: smaller score first, then the smaller bank index (as the CPU kernel and the reference).
#include "cuda/cuda_utils.cuh"
#include "cuda/dist_tiles.h"
#include "cuda/knn_kernel.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>

namespace fastad::cuda {

namespace {

constexpr int kSelThreads = 128;   // threads per query row, k <= kSmallK (queue selection)
constexpr int kSelUnroll = 8;      // tile loads in flight per lane (warp-list selection)
constexpr int kSortN = 4096;       // shared-memory sort size, k > kSmallK
constexpr int kSortThreads = 512;
constexpr int kFinishThreads = 256;
constexpr int kNoIdx = INT_MAX;    // empty queue slot (its score is +inf)
constexpr int64_t kF32ChunkRows = 32768;  // most bank rows per chunk for float32 inputs

__device__ __forceinline__ bool better32(float s, int i, float t, int j) { return s < t || (s == t && i < j); }

__device__ __forceinline__ float score_of(float dot, float bnv, int metric) {
  if (metric == kL2 || metric == kSqEuclidean) return bnv - 2.f * dot;
  if (metric == kCosine) return bnv > 0.f ? -dot * rsqrtf(bnv) : 0.f;
  return -dot;
}

// score_of on the norm of tile column c (not read for "ip", whose score ignores it).
__device__ __forceinline__ float tile_score(float dot, const float* __restrict__ bn, int64_t c, int metric) {
  return score_of(dot, metric == kIP ? 0.f : bn[c], metric);
}

template <int K>
__device__ __forceinline__ void queue_push(float (&ts)[K], int (&ti)[K], float s, int j) {
  if (!better32(s, j, ts[K - 1], ti[K - 1])) return;
#pragma unroll
  for (int u = 0; u < K; ++u) {
    if (better32(s, j, ts[u], ti[u])) {
      const float t = ts[u];
      const int tj = ti[u];
      ts[u] = s;
      ti[u] = j;
      s = t;
      j = tj;
    }
  }
}

// Folds S[r, :nc] (bank rows j0 .. j0 + nc) into the running top-k of query q0 + r.
template <int K>
__global__ void __launch_bounds__(kSelThreads)
    select_small_kernel(const float* __restrict__ S, int64_t nc, const float* __restrict__ bn, int metric, int64_t q0,
                        int64_t j0, bool exclude_self, int k, bool first, float* __restrict__ st_s,
                        int64_t* __restrict__ st_i) {
  __shared__ float ws[kSelThreads / 32];
  __shared__ int wi[kSelThreads / 32];
  const int64_t r = blockIdx.x, qi = q0 + r;
  const float inf = __int_as_float(0x7f800000);
  float ts[K];
  int ti[K];
#pragma unroll
  for (int u = 0; u < K; ++u) {
    ts[u] = inf;
    ti[u] = kNoIdx;
  }
  float* ss = st_s + qi * k;
  int64_t* si = st_i + qi * k;
  if (!first)
    for (int c = threadIdx.x; c < k; c += kSelThreads)
      if (si[c] >= 0) queue_push(ts, ti, ss[c], (int)si[c]);
  const float* row = S + r * nc;
  for (int64_t c = threadIdx.x; c < nc; c += kSelThreads) {
    const int64_t j = j0 + c;
    if (exclude_self && j == qi) continue;
    queue_push(ts, ti, tile_score(row[c], bn, c, metric), (int)j);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int c = 0; c < k; ++c) {
    float s = ts[0];
    int j = ti[0];
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      const float os = __shfl_xor_sync(0xffffffffu, s, o);
      const int oj = __shfl_xor_sync(0xffffffffu, j, o);
      if (better32(os, oj, s, j)) {
        s = os;
        j = oj;
      }
    }
    if (lane == 0) {
      ws[warp] = s;
      wi[warp] = j;
    }
    __syncthreads();
    float bs = ws[0];
    int bj = wi[0];
#pragma unroll
    for (int w = 1; w < kSelThreads / 32; ++w)
      if (better32(ws[w], wi[w], bs, bj)) {
        bs = ws[w];
        bj = wi[w];
      }
    __syncthreads();  // ws/wi are rewritten next round
    if (bj != kNoIdx && ti[0] == bj) {
#pragma unroll
      for (int u = 0; u + 1 < K; ++u) {
        ts[u] = ts[u + 1];
        ti[u] = ti[u + 1];
      }
      ts[K - 1] = inf;
      ti[K - 1] = kNoIdx;
    }
    if (threadIdx.x == 0) {
      ss[c] = bj == kNoIdx ? inf : bs;
      si[c] = bj == kNoIdx ? -1 : bj;
    }
  }
}

// Warp-wide sorted list of the k (<= 32) best (score, index) pairs: lane l holds entry l (lanes >= k
// and empty slots hold (+inf, kNoIdx)). Inserts (cs, cj), the same on every lane, in O(1) warp steps.
__device__ __forceinline__ void warp_list_insert(float& ls, int& li, float cs, int cj, int k, int lane) {
  const unsigned ahead = __ballot_sync(0xffffffffu, lane < k && better32(ls, li, cs, cj));
  const int pos = __popc(ahead);  // the list is sorted, so the better entries are a prefix
  if (pos >= k) return;
  const float us = __shfl_up_sync(0xffffffffu, ls, 1);
  const int ui = __shfl_up_sync(0xffffffffu, li, 1);
  if (lane > pos && lane < k) {
    ls = us;
    li = ui;
  } else if (lane == pos) {
    ls = cs;
    li = cj;
  }
}

// Folds S[r, :nc] (bank rows j0 .. j0 + nc) into the running top-k of query q0 + r (k <= 32).
// kSelWarps warps per row each keep a warp list over their share of the row (32 consecutive
// columns per step, coalesced); a candidate costs one compare against the list's k-th entry, and the
// rare winners are inserted one by one (ballot + shuffles). The kernel reads each score once and is
// bound by memory latency, so the loads of the next kSelUnroll steps (scores and bank norms) are
// issued before the current ones are compared, and a whole batch with no winner on any lane costs
// one __any_sync. Warp 0 starts from the previous top-k and finally merges the other warps' lists.
template <int kSelWarps>
__global__ void __launch_bounds__(kSelWarps * 32)
    select_warp_kernel(const float* __restrict__ S, int64_t nc, const float* __restrict__ bn, int metric, int64_t q0,
                       int64_t j0, bool exclude_self, int k, bool first, float* __restrict__ st_s,
                       int64_t* __restrict__ st_i) {
  __shared__ float sh_s[kSelWarps][32];
  __shared__ int sh_i[kSelWarps][32];
  const int64_t r = blockIdx.x, qi = q0 + r;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float inf = __int_as_float(0x7f800000);
  const bool use_bn = metric != kIP;
  float* ss = st_s + qi * k;
  int64_t* si = st_i + qi * k;
  float ls = inf;
  int li = kNoIdx;
  if (warp == 0 && !first && lane < k && si[lane] >= 0) {
    ls = ss[lane];
    li = (int)si[lane];
  }
  float ts = __shfl_sync(0xffffffffu, ls, k - 1);
  int ti = __shfl_sync(0xffffffffu, li, k - 1);
  const float* row = S + r * nc;
  constexpr int64_t kStride = kSelWarps * 32, kStep = kStride * kSelUnroll;
  float nd[kSelUnroll], nb[kSelUnroll];  // the next batch, in flight
#pragma unroll
  for (int u = 0; u < kSelUnroll; ++u) {
    const int64_t c = warp * 32 + u * kStride + lane;
    nd[u] = c < nc ? row[c] : 0.f;
    nb[u] = use_bn && c < nc ? bn[c] : 0.f;
  }
  for (int64_t base = warp * 32; base < nc; base += kStep) {  // warp-uniform bound
    float s[kSelUnroll];
    int j[kSelUnroll];
    bool any = false;
#pragma unroll
    for (int u = 0; u < kSelUnroll; ++u) {
      const int64_t c = base + u * kStride + lane, jj = j0 + c;
      const bool ok = c < nc && !(exclude_self && jj == qi);
      s[u] = ok ? score_of(nd[u], nb[u], metric) : inf;
      j[u] = ok ? (int)jj : kNoIdx;
      any |= better32(s[u], j[u], ts, ti);
    }
    if (base + kStep < nc) {  // warp-uniform: issue the next batch's loads before the compares below
#pragma unroll
      for (int u = 0; u < kSelUnroll; ++u) {
        const int64_t c = base + kStep + u * kStride + lane;
        nd[u] = c < nc ? row[c] : 0.f;
        nb[u] = use_bn && c < nc ? bn[c] : 0.f;
      }
    }
    if (!__any_sync(0xffffffffu, any)) continue;
#pragma unroll
    for (int u = 0; u < kSelUnroll; ++u) {
      unsigned m = __ballot_sync(0xffffffffu, better32(s[u], j[u], ts, ti));
      while (m) {
        const int src = __ffs(m) - 1;
        m &= m - 1;
        const float cs = __shfl_sync(0xffffffffu, s[u], src);
        const int cj = __shfl_sync(0xffffffffu, j[u], src);
        if (better32(cs, cj, ts, ti)) {
          warp_list_insert(ls, li, cs, cj, k, lane);
          ts = __shfl_sync(0xffffffffu, ls, k - 1);
          ti = __shfl_sync(0xffffffffu, li, k - 1);
        }
      }
    }
  }
  if (warp > 0) {
    sh_s[warp][lane] = ls;
    sh_i[warp][lane] = li;
  }
  __syncthreads();
  if (warp == 0) {
    for (int w = 1; w < kSelWarps; ++w)
      for (int e = 0; e < k; ++e) {
        const float cs = sh_s[w][e];
        const int cj = sh_i[w][e];
        if (!better32(cs, cj, ts, ti)) break;  // each list is sorted: the rest cannot enter either
        warp_list_insert(ls, li, cs, cj, k, lane);
        ts = __shfl_sync(0xffffffffu, ls, k - 1);
        ti = __shfl_sync(0xffffffffu, li, k - 1);
      }
    if (lane < k) {
      ss[lane] = li == kNoIdx ? inf : ls;
      si[lane] = li == kNoIdx ? -1 : li;
    }
  }
}

// Ascending bitonic sort of n (a power of two) (score, index) pairs in shared memory by the whole block.
__device__ void block_bitonic_sort(float* key, int* idx, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int e = threadIdx.x; e < n / 2; e += blockDim.x) {
        const int i = 2 * e - (e & (stride - 1)), l = i + stride;
        const bool asc = (i & size) == 0;
        if (better32(key[l], idx[l], key[i], idx[i]) == asc) {
          const float t = key[i];
          key[i] = key[l];
          key[l] = t;
          const int u = idx[i];
          idx[i] = idx[l];
          idx[l] = u;
        }
      }
      __syncthreads();
    }
  }
}

__global__ void __launch_bounds__(kSortThreads)
    select_sort_kernel(const float* __restrict__ S, int64_t nc, const float* __restrict__ bn, int metric, int64_t q0,
                       int64_t j0, bool exclude_self, int k, bool first, float* __restrict__ st_s,
                       int64_t* __restrict__ st_i) {
  __shared__ float key[kSortN];
  __shared__ int idx[kSortN];
  const int64_t r = blockIdx.x, qi = q0 + r;
  const float inf = __int_as_float(0x7f800000);
  float* ss = st_s + qi * k;
  int64_t* si = st_i + qi * k;
  const float* row = S + r * nc;
  for (int e = threadIdx.x; e < kSortN; e += kSortThreads) {
    float s = inf;
    int j = kNoIdx;
    if (e < k) {
      if (!first && si[e] >= 0) {
        s = ss[e];
        j = (int)si[e];
      }
    } else if (e - k < nc) {
      const int64_t c = e - k, jj = j0 + c;
      if (!(exclude_self && jj == qi)) {
        s = tile_score(row[c], bn, c, metric);
        j = (int)jj;
      }
    }
    key[e] = s;
    idx[e] = j;
  }
  __syncthreads();
  block_bitonic_sort(key, idx, kSortN);
  for (int c = threadIdx.x; c < k; c += kSortThreads) {
    ss[c] = idx[c] == kNoIdx ? inf : key[c];
    si[c] = idx[c] == kNoIdx ? -1 : idx[c];
  }
}

// Scores -> distances for query q of the running top-k (out_d holds scores on entry).
// l2/sqeuclidean: exact fp32 squared distances of the winners on the original rows, then re-sorted.
template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const T* __restrict__ q, const T* __restrict__ b, int64_t D, int k, int metric,
                  const float* __restrict__ qn, float* __restrict__ out_d, int64_t* __restrict__ out_i) {
  __shared__ float key[kMaxK];
  __shared__ int idx[kMaxK];
  const int64_t qi = blockIdx.x;
  float* od = out_d + qi * k;
  int64_t* oi = out_i + qi * k;
  const float inf = __int_as_float(0x7f800000);
  if (metric == kL2 || metric == kSqEuclidean) {
    int n = 1;
    while (n < k) n <<= 1;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const T* qr = q + qi * D;
    for (int c = warp; c < n; c += kFinishThreads / 32) {
      const int64_t j = c < k ? oi[c] : -1;
      float s = 0.f;
      if (j >= 0) {
        const T* br = b + j * D;
        for (int64_t t = lane; t < D; t += 32) {
          const float d = to_f(qr[t]) - to_f(br[t]);
          s = fmaf(d, d, s);
        }
        for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
      }
      if (lane == 0) {
        key[c] = j >= 0 ? s : inf;
        idx[c] = j >= 0 ? (int)j : kNoIdx;
      }
    }
    __syncthreads();
    block_bitonic_sort(key, idx, n);
    for (int c = threadIdx.x; c < k; c += kFinishThreads) {
      if (idx[c] == kNoIdx) {
        od[c] = inf;
        oi[c] = -1;
      } else {
        const float d2 = fmaxf(key[c], 0.f);
        od[c] = metric == kL2 ? sqrtf(d2) : d2;
        oi[c] = idx[c];
      }
    }
  } else {
    const float qinv = metric == kCosine && qn[qi] > 0.f ? rsqrtf(qn[qi]) : 0.f;
    for (int c = threadIdx.x; c < k; c += kFinishThreads) {
      if (oi[c] < 0) {
        od[c] = metric == kIP ? -inf : inf;
      } else {
        const float s = od[c];
        od[c] = metric == kCosine ? fmaxf(1.f + s * qinv, 0.f) : -s;
      }
    }
  }
}

}  // namespace

KnnPlan knn_plan(int64_t Q, int64_t N, int64_t D, int64_t k, int dtype, int metric) {
  KnnPlan p;
  const int64_t n1 = N > 0 ? N : 1;
  // float32: chunks of at most kF32ChunkRows (tiles of 2048 query rows at most) ran 10% faster at D=384 on an
  // H200 than 65536-row chunks (same at D=1536); bf16 ran best with 65536 (benchmarks/RESULTS.md, knn_sweep).
  const int64_t cap = dtype == kF32 ? std::min<int64_t>(kF32ChunkRows, chunk_rows_cap(D, dtype)) : chunk_rows_cap(D, dtype);
  p.Nc = k <= kSmallK ? std::min<int64_t>(n1, env_rows("FASTAD_CUDA_CHUNK_ROWS", cap)) : std::min<int64_t>(n1, kSortN - k);
  p.Qt = std::min<int64_t>(std::max<int64_t>(Q, 1), env_rows("FASTAD_CUDA_TILE_ROWS", tile_rows(Q, p.Nc, D, dtype)));
  // k = 1: the per-thread queue is a plain running minimum, which measured faster than the warp list
  // (bf16 D=1536: 11.1 vs 12.4 ms); k >= 2: the warp list (k = 9: 1.1-2.6x faster than the queues).
  const char* sel = std::getenv("FASTAD_CUDA_KNN_SELECT");  // benchmark knob: "queue" or "warp"
  p.warp_select = sel && std::strcmp(sel, "queue") == 0 ? false : sel && std::strcmp(sel, "warp") == 0 ? true : k > 1;
  p.sel_warps = (int)std::min<int64_t>(16, env_rows("FASTAD_CUDA_SEL_WARPS", 8));  // benchmark knob: 4, 8 or 16
  p.workspace_bytes = ScoreTiles::workspace_bytes(Q, p.Nc, p.Qt, D, dtype, metric);
  return p;
}

cudaError_t knn_launch(cublasHandle_t handle, const void* q, const void* b, int dtype, const float* bnorm, int64_t Q,
                       int64_t N, int64_t D, int64_t k, int metric, bool exclude_self, float* out_d, int64_t* out_i,
                       void* workspace, cudaStream_t stream) {
  if (Q == 0) return cudaSuccess;
  const KnnPlan plan = knn_plan(Q, N, D, k, dtype, metric);
  const int64_t Nc = plan.Nc, Qt = plan.Qt;
  ScoreTiles tiles(workspace, handle, q, b, dtype, metric, Q, N, Nc, Qt, D, stream);
  cudaError_t e = tiles.begin();
  if (e != cudaSuccess) return e;
  const float* S = tiles.scores();
  for (int64_t j0 = 0; j0 < std::max<int64_t>(N, 1); j0 += Nc) {  // N = 0: one empty chunk writes the pads
    const int64_t nc = std::max<int64_t>(0, std::min<int64_t>(Nc, N - j0));
    if ((e = tiles.load_chunk(j0, nc, bnorm)) != cudaSuccess) return e;
    const float* bnp = tiles.chunk_sqnorms();
    for (int64_t q0 = 0; q0 < Q; q0 += Qt) {
      const int64_t qt = std::min<int64_t>(Qt, Q - q0);
      if (nc > 0 && (e = tiles.dot(q0, qt)) != cudaSuccess) return e;  // cudaErrorUnknown: cuBLAS failed
      const bool first = j0 == 0;
      const int kk = (int)k;
      if (k > kSmallK) {
        select_sort_kernel<<<(unsigned)qt, kSortThreads, 0, stream>>>(S, nc, bnp, metric, q0, j0, exclude_self, kk,
                                                                      first, out_d, out_i);
      } else if (plan.warp_select) {
#define FASTAD_SELECT_WARP(W)                                                                         \
  select_warp_kernel<W><<<(unsigned)qt, W * 32, 0, stream>>>(S, nc, bnp, metric, q0, j0, exclude_self, kk, first, \
                                                             out_d, out_i)
        if (plan.sel_warps <= 4) FASTAD_SELECT_WARP(4);
        else if (plan.sel_warps <= 8) FASTAD_SELECT_WARP(8);
        else FASTAD_SELECT_WARP(16);
#undef FASTAD_SELECT_WARP
      } else {
#define FASTAD_SELECT(KK)                                                                                      \
  select_small_kernel<KK><<<(unsigned)qt, kSelThreads, 0, stream>>>(S, nc, bnp, metric, q0, j0, exclude_self, kk, \
                                                                    first, out_d, out_i)
        if (k <= 1) FASTAD_SELECT(1);
        else if (k <= 2) FASTAD_SELECT(2);
        else if (k <= 4) FASTAD_SELECT(4);
        else if (k <= 8) FASTAD_SELECT(8);
        else if (k <= 16) FASTAD_SELECT(16);
        else FASTAD_SELECT(32);
#undef FASTAD_SELECT
      }
      if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
  }
  const float* qn = tiles.query_sqnorms();
  switch (dtype) {
    case kF16:
      finish_kernel<__half><<<(unsigned)Q, kFinishThreads, 0, stream>>>(
          static_cast<const __half*>(q), static_cast<const __half*>(b), D, (int)k, metric, qn, out_d, out_i);
      break;
    case kBF16:
      finish_kernel<__nv_bfloat16><<<(unsigned)Q, kFinishThreads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(q), static_cast<const __nv_bfloat16*>(b), D, (int)k, metric, qn, out_d,
          out_i);
      break;
    default:
      finish_kernel<float><<<(unsigned)Q, kFinishThreads, 0, stream>>>(
          static_cast<const float*>(q), static_cast<const float*>(b), D, (int)k, metric, qn, out_d, out_i);
  }
  return cudaGetLastError();
}

}  // namespace fastad::cuda
