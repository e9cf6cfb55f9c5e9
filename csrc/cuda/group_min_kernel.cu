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
constexpr int64_t kChunkRows = 65536;  // target bank rows per chunk (whole groups, at least one)

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

int64_t align256(int64_t x) { return (x + 255) / 256 * 256; }

}  // namespace

GroupMinPlan group_min_plan(int64_t Q, int64_t G, int64_t gs, int64_t D, int dtype, int metric) {
  GroupMinPlan p;
  const int64_t es = dtype_bytes(dtype);
  const bool centre = (metric == kL2 || metric == kSqEuclidean) && dtype == kF32;  // see dist_tiles.h
  const int64_t rows_cap = std::min<int64_t>(kChunkRows, std::max<int64_t>(256, kTileBudgetBytes / (D * es)));
  p.groups_per_chunk = std::max<int64_t>(1, std::min<int64_t>(std::max<int64_t>(G, 1), rows_cap / gs));
  const int64_t Nc = p.groups_per_chunk * gs;
  p.Qt = std::max<int64_t>(1, std::min<int64_t>({Q, kTileBudgetBytes / (4 * Nc), std::max<int64_t>(1, kTileBudgetBytes / (D * es))}));
  int64_t w = align256(4 * D) + align256(4 * Nc) + align256(4 * std::max<int64_t>(Q, 1)) + align256(4 * p.Qt) +
              align256(4 * p.Qt * Nc);
  if (centre) w += align256(es * Nc * D) + align256(es * p.Qt * D);
  p.workspace_bytes = w;
  return p;
}

cudaError_t group_min_launch(cublasHandle_t handle, const void* q, const void* b, int dtype, int64_t Q, int64_t G,
                             int64_t gs, int64_t D, int metric, const int64_t* exclude, float* out, void* workspace,
                             cudaStream_t stream) {
  if (Q == 0 || G == 0) return cudaSuccess;
  const GroupMinPlan plan = group_min_plan(Q, G, gs, D, dtype, metric);
  const int64_t es = dtype_bytes(dtype), gpcap = plan.groups_per_chunk, Nc = gpcap * gs, Qt = plan.Qt, N = G * gs;
  const bool l2 = metric == kL2 || metric == kSqEuclidean;
  const bool centre = l2 && dtype == kF32;  // see dist_tiles.h: half inputs are not centred
  char* p = static_cast<char*>(workspace);
  auto take = [&p](int64_t bytes) {
    char* r = p;
    p += align256(bytes);
    return r;
  };
  float* mu = reinterpret_cast<float*>(take(4 * D));
  float* bn = reinterpret_cast<float*>(take(4 * Nc));
  float* qn = reinterpret_cast<float*>(take(4 * std::max<int64_t>(Q, 1)));
  float* qtn = reinterpret_cast<float*>(take(4 * Qt));
  float* S = reinterpret_cast<float*>(take(4 * Qt * Nc));
  char* bcopy = centre ? take(es * Nc * D) : nullptr;
  char* qcopy = centre ? take(es * Qt * D) : nullptr;
  const char* qb = static_cast<const char*>(q);
  const char* bb = static_cast<const char*>(b);
  cudaError_t e = cudaSuccess;
  if (centre && (e = column_mean(b, dtype, N, D, mu, stream)) != cudaSuccess) return e;
  if (metric == kCosine && (e = centre_rows(q, dtype, Q, D, nullptr, nullptr, qn, stream)) != cudaSuccess) return e;
  for (int64_t g0 = 0; g0 < G; g0 += gpcap) {
    const int64_t gpc = std::min<int64_t>(gpcap, G - g0), nc = gpc * gs;
    const void* bg = bb + g0 * gs * D * es;
    if (centre) {
      if ((e = centre_rows(bg, dtype, nc, D, mu, bcopy, bn, stream)) != cudaSuccess) return e;
      bg = bcopy;
    } else if (l2 || metric == kCosine) {
      if ((e = centre_rows(bg, dtype, nc, D, nullptr, nullptr, bn, stream)) != cudaSuccess) return e;
    }
    for (int64_t q0 = 0; q0 < Q; q0 += Qt) {
      const int64_t qt = std::min<int64_t>(Qt, Q - q0);
      const void* qg = qb + q0 * D * es;
      if (centre) {
        if ((e = centre_rows(qg, dtype, qt, D, mu, qcopy, qtn, stream)) != cudaSuccess) return e;
        qg = qcopy;
      }
      if (tile_dot(handle, dtype, qg, qt, bg, nc, D, S, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
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
