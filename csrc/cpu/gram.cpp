#include "cpu/gram.h"

#include "cpu/vec_ops.h"
#include "cpu/dist_kernels.h"

namespace fastad::cpu {

void gram(const float* a, int64_t na, const float* b, int64_t nb, int64_t d, float* out, int64_t ldo,
          GramScratch& scratch) {
#if FASTAD_HAVE_AVX2
  if (use_avx2_path()) {
    gram_avx2(a, na, b, nb, d, out, ldo, scratch);
    return;
  }
#endif
  (void)scratch;
  dot_tile(a, na, b, nb, d, out, ldo);
}

}  // namespace fastad::cpu
