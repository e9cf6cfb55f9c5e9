#include "cpu/gram.h"

#include "cpu/vec_ops.h"
#include "ops/build_info.h"

namespace fastad::cpu {

void gram(const float* a, int64_t na, const float* b, int64_t nb, int64_t d, float* out, int64_t ldo,
          GramScratch& scratch) {
#if FASTAD_HAVE_AVX2
  if (cpu_has_avx2_fma()) {
    gram_avx2(a, na, b, nb, d, out, ldo, scratch);
    return;
  }
#endif
  (void)scratch;
  dot_tile(a, na, b, nb, d, out, ldo);
}

}  // namespace fastad::cpu
