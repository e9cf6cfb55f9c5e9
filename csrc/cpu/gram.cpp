#include "cpu/gram.h"

#include <c10/util/Exception.h>

#include <cstdlib>

#include "cpu/dist_kernels.h"
#include "cpu/vec_ops.h"

namespace fastad::cpu {

AlignedFloats::~AlignedFloats() { std::free(p); }

float* AlignedFloats::get(size_t n) {
  if (n > cap) {
    std::free(p);
    const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(p != nullptr, "fastad: out of memory allocating a ", bytes, "-byte CPU scratch buffer");
    cap = n;
  }
  return p;
}

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
