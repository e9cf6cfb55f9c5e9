// Per-pair tile pass of MuSc's mutual scoring: the (box-filtered) Gram tile turned into squared
// distances and their row / column minima. The body lives in musc_tile_impl.h and is compiled twice:
// generic (musc_tile.cpp) and with AVX2/FMA (musc_tile_avx2.cpp); pair_min_epilogue dispatches on
// use_avx2_path() (FASTAD_FORCE_GENERIC=1 forces the generic build).
#pragma once
#include <cstdint>
#include <vector>

namespace fastad::cpu {

/// With B = g for r = 1, else the 4-D box SUM of g over both H x W patch grids (r odd, zero padding):
/// B[p, q] = sum over a in W_r(p), b in W_r(q) of g[a, b], computed streaming (one grid row of p at
/// a time; never a second L x L buffer):
/// d2[p, q] = na[p] + nb[q] - 2 * wa[p] * wb[q] * B[p, q] (wa / wb nullptr = 1);
/// rowmin[p] = min_q d2, colmin[q] = min_p d2 (colmin may be nullptr); with window > 0 (odd) only
/// |hp - hq|, |wp - wq| <= (window - 1) / 2 are compared.
/// @param g  L * L floats (L = H * W, row stride L)   @param na, nb, wa, wb, rowmin, colmin  L floats
/// @param scratch  resized to (2r + 3) L + (r + 1) W L floats at most (r = 5, L = 1369: 1.3 MiB)
void pair_min_epilogue(const float* g, int64_t H, int64_t W, int64_t r, int64_t window, const float* na,
                       const float* nb, const float* wa, const float* wb, float* rowmin, float* colmin,
                       std::vector<float>& scratch);

#define FASTAD_MUSC_TILE_DECL                                                                                \
  void pair_min_epilogue(const float* g, int64_t H, int64_t W, int64_t r, int64_t window, const float* na, \
                         const float* nb, const float* wa, const float* wb, float* rowmin, float* colmin,   \
                         std::vector<float>& scratch);
namespace tile_generic {
FASTAD_MUSC_TILE_DECL
}
namespace tile_avx2 {
FASTAD_MUSC_TILE_DECL
}
#undef FASTAD_MUSC_TILE_DECL

}  // namespace fastad::cpu
