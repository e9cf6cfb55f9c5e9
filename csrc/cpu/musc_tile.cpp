// Generic build of the MuSc tile passes + the runtime dispatch (see musc_tile.h).
#include "cpu/musc_tile.h"

#include "cpu/dist_kernels.h"

#define FASTAD_TILE_NS tile_generic
#include "cpu/musc_tile_impl.h"
#undef FASTAD_TILE_NS

namespace fastad::cpu {

void box_gram(const float* g, int64_t H, int64_t W, int64_t r, float* tmp, float* out, std::vector<float>& row) {
#if FASTAD_HAVE_AVX2
  if (use_avx2_path()) return tile_avx2::box_gram(g, H, W, r, tmp, out, row);
#endif
  tile_generic::box_gram(g, H, W, r, tmp, out, row);
}

void pair_min_epilogue(const float* g, int64_t L, int64_t H, int64_t W, int64_t window, const float* na,
                       const float* nb, const float* wa, const float* wb, float* rowmin, float* colmin,
                       std::vector<float>& d2) {
#if FASTAD_HAVE_AVX2
  if (use_avx2_path()) return tile_avx2::pair_min_epilogue(g, L, H, W, window, na, nb, wa, wb, rowmin, colmin, d2);
#endif
  tile_generic::pair_min_epilogue(g, L, H, W, window, na, nb, wa, wb, rowmin, colmin, d2);
}

}  // namespace fastad::cpu
