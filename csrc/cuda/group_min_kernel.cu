// CUDA group minimum (fastad::group_min): bank chunks of whole groups x query tiles, cuBLAS inner
// products into a bounded float32 tile (csrc/cuda/dist_tiles.h), then one warp per (query, group)
// reduces the group's scores to its best (score, row); l2/sqeuclidean take the winner's exact fp32
// distance on the original rows (centring keeps the winner right; the exact value keeps the digits).
#include "cuda/cuda_utils.cuh"
#include "cuda/dist_tiles.h"
#include "cuda/group_min_kernel.h"

#include <algorithm>

namespace fastad::cuda {

namespace {

constexpr int kWarps = 8;              // warps per block of the epilogue (one (query, group) per warp)

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    group_epilogue_kernel(const float* __restrict__ S, int64_t nc, int64_t gs, int64_t gpc, int64_t qt,
                          const float* __restrict__ bn, int metric, int64_t q0, int64_t g0, int64_t G,
                          const int64_t* __restrict__ exclude, const T* __restrict__ q, const T* __restrict__ b,
                          int64_t D, const float* __restrict__ qn, float* __restrict__ out) {
  const int64_t w = blockIdx.x * (int64_t)kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t r = w / gpc, gl = w % gpc;
  if (r >= qt) return;
  const int64_t qi = q0 + r, g = g0 + gl;
  const float inf = __int_as_float(0x7f800000);
  if (exclude && exclude[qi] == g) {
    if (lane == 0) out[qi * G + g] = metric == kIP ? -inf : inf;
    return;
  }
  const float* row = S + r * nc + gl * gs;
  const float* bng = bn + gl * gs;
  float best = inf;
  int64_t bc = -1;
  for (int64_t c = lane; c < gs; c += 32) {
    const float dot = row[c];
    float s;
    if (metric == kL2 || metric == kSqEuclidean) {
      s = bng[c] - 2.f * dot;
    } else if (metric == kCosine) {
      s = bng[c] > 0.f ? -dot * rsqrtf(bng[c]) : 0.f;
    } else {
      s = -dot;
    }
    if (bc < 0 || s < best) {  // strict: keeps the first (smallest) row among equal scores per lane
      best = s;
      bc = c;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    const float os = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oc = __shfl_xor_sync(0xffffffffu, bc, o);
    if (oc >= 0 && (bc < 0 || os < best || (os == best && oc < bc))) {
      best = os;
      bc = oc;
    }
  }
  float d;
  if (metric == kL2 || metric == kSqEuclidean) {
    const T* qr = q + qi * D;
    const T* br = b + (g * gs + bc) * D;
    float s = 0.f;
    for (int64_t t = lane; t < D; t += 32) {
      const float x = to_f(qr[t]) - to_f(br[t]);
      s = fmaf(x, x, s);
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    d = metric == kL2 ? sqrtf(fmaxf(s, 0.f)) : fmaxf(s, 0.f);
  } else if (metric == kCosine) {
    const float qinv = qn[qi] > 0.f ? rsqrtf(qn[qi]) : 0.f;
    d = fmaxf(1.f + best * qinv, 0.f);
  } else {
    d = -best;
  }
  if (lane == 0) out[qi * G + g] = d;
}

}  // namespace

GroupMinPlan group_min_plan(int64_t Q, int64_t G, int64_t gs, int64_t D, int dtype, int metric) {
  GroupMinPlan p;  // chunks hold whole groups, at least one
  p.groups_per_chunk = std::max<int64_t>(1, std::min<int64_t>(std::max<int64_t>(G, 1), env_rows("FASTAD_CUDA_CHUNK_ROWS", chunk_rows_cap(D, dtype)) / gs));
  const int64_t Nc = p.groups_per_chunk * gs;
  p.Qt = std::min<int64_t>(std::max<int64_t>(Q, 1), env_rows("FASTAD_CUDA_TILE_ROWS", tile_rows(Q, Nc, D, dtype)));
  p.workspace_bytes = ScoreTiles::workspace_bytes(Q, Nc, p.Qt, D, dtype, metric);
  return p;
}

cudaError_t group_min_launch(cublasHandle_t handle, const void* q, const void* b, int dtype, int64_t Q, int64_t G,
                             int64_t gs, int64_t D, int metric, const int64_t* exclude, float* out, void* workspace,
                             cudaStream_t stream) {
  if (Q == 0 || G == 0) return cudaSuccess;
  const GroupMinPlan plan = group_min_plan(Q, G, gs, D, dtype, metric);
  const int64_t gpcap = plan.groups_per_chunk, Nc = gpcap * gs, Qt = plan.Qt;
  ScoreTiles tiles(workspace, handle, q, b, dtype, metric, Q, G * gs, Nc, Qt, D, stream);
  cudaError_t e = tiles.begin();
  if (e != cudaSuccess) return e;
  const float *S = tiles.scores(), *qn = tiles.query_sqnorms();
  for (int64_t g0 = 0; g0 < G; g0 += gpcap) {
    const int64_t gpc = std::min<int64_t>(gpcap, G - g0), nc = gpc * gs;
    if ((e = tiles.load_chunk(g0 * gs, nc, nullptr)) != cudaSuccess) return e;
    const float* bn = tiles.chunk_sqnorms();
    for (int64_t q0 = 0; q0 < Q; q0 += Qt) {
      const int64_t qt = std::min<int64_t>(Qt, Q - q0);
      if ((e = tiles.dot(q0, qt)) != cudaSuccess) return e;  // cudaErrorUnknown: cuBLAS failed
      const int64_t warps = qt * gpc;
      const unsigned blocks = (unsigned)((warps + kWarps - 1) / kWarps);
      switch (dtype) {
        case kF16:
          group_epilogue_kernel<__half><<<blocks, kWarps * 32, 0, stream>>>(
              S, nc, gs, gpc, qt, bn, metric, q0, g0, G, exclude, static_cast<const __half*>(q),
              static_cast<const __half*>(b), D, qn, out);
          break;
        case kBF16:
          group_epilogue_kernel<__nv_bfloat16><<<blocks, kWarps * 32, 0, stream>>>(
              S, nc, gs, gpc, qt, bn, metric, q0, g0, G, exclude, static_cast<const __nv_bfloat16*>(q),
              static_cast<const __nv_bfloat16*>(b), D, qn, out);
          break;
        default:
          group_epilogue_kernel<float><<<blocks, kWarps * 32, 0, stream>>>(S, nc, gs, gpc, qt, bn, metric, q0, g0, G,
                                                                           exclude, static_cast<const float*>(q),
                                                                           static_cast<const float*>(b), D, qn, out);
      }
      if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
  }
  return cudaGetLastError();
}

}  // namespace fastad::cuda
