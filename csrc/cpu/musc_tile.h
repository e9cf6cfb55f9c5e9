// Per-pair tile passes of MuSc's mutual scoring (box-filtered Gram, fused distance/min epilogue).
// The bodies live in musc_tile_impl.h and are compiled twice: generic (musc_tile.cpp) and with
// AVX2/FMA (musc_tile_avx2.cpp); box_gram / pair_min_epilogue dispatch on use_avx2_path()
// (FASTAD_FORCE_GENERIC=1 forces the generic build).
#pragma once
#include <cstdint>
#include <vector>

namespace fastad::cpu {

/// 4-D box SUM of a Gram tile over both H x W patch grids, zero padding, r odd:
/// out[p, q] = sum over a in W_r(p), b in W_r(q) of g[a, b].
/// @param g, tmp, out  L * L floats each (L = H * W, row stride L); tmp is scratch
/// @param row          scratch, resized to L floats
void box_gram(const float* g, int64_t H, int64_t W, int64_t r, float* tmp, float* out, std::vector<float>& row);

/// d2[p, q] = na[p] + nb[q] - 2 * wa[p] * wb[q] * g[p, q] (wa / wb nullptr = 1);
/// rowmin[p] = min_q d2, colmin[q] = min_p d2 (colmin may be nullptr); with window > 0 (odd, needs
/// L = H * W) only |hp - hq|, |wp - wq| <= (window - 1) / 2 are compared.
/// @param g  L * L floats   @param na, nb, wa, wb, rowmin, colmin  L floats   @param d2  scratch
void pair_min_epilogue(const float* g, int64_t L, int64_t H, int64_t W, int64_t window, const float* na,
                       const float* nb, const float* wa, const float* wb, float* rowmin, float* colmin,
                       std::vector<float>& d2);

#define FASTAD_MUSC_TILE_DECL                                                                              \
  void box_gram(const float* g, int64_t H, int64_t W, int64_t r, float* tmp, float* out,                   \
                std::vector<float>& row);                                                                  \
  void pair_min_epilogue(const float* g, int64_t L, int64_t H, int64_t W, int64_t window, const float* na, \
                         const float* nb, const float* wa, const float* wb, float* rowmin, float* colmin,  \
                         std::vector<float>& d2);
namespace tile_generic {
FASTAD_MUSC_TILE_DECL
}
namespace tile_avx2 {
FASTAD_MUSC_TILE_DECL
}
#undef FASTAD_MUSC_TILE_DECL

}  // namespace fastad::cpu
