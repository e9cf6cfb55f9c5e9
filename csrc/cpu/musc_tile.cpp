// Generic build of the MuSc tile pass + the runtime dispatch (see musc_tile.h).
#include "cpu/musc_tile.h"

#include "cpu/dist_kernels.h"

#define FASTAD_TILE_NS tile_generic
#include "cpu/musc_tile_impl.h"
#undef FASTAD_TILE_NS

namespace fastad::cpu {

void pair_min_epilogue(const float* g, int64_t H, int64_t W, int64_t r, int64_t window, const float* na,
                       const float* nb, const float* wa, const float* wb, float* rowmin, float* colmin,
                       std::vector<float>& scratch) {
#if FASTAD_HAVE_AVX2
  if (use_avx2_path())
    return tile_avx2::pair_min_epilogue(g, H, W, r, window, na, nb, wa, wb, rowmin, colmin, scratch);
#endif
  tile_generic::pair_min_epilogue(g, H, W, r, window, na, nb, wa, wb, rowmin, colmin, scratch);
}

}  // namespace fastad::cpu
