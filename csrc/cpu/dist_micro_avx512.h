// The frame shared by the AVX-512 distance micro-kernels (dist_micro_avx512.cpp: fp32 24 x 16;
// dist_micro_avx512bf16.cpp: bf16 pairs, 6 x 16 per query panel, up to 24 x 16): kRows zmm accumulators,
// one per query row of the tile, loaded from C (accumulate: a later depth slice) or zeroed, updated by
// the kernel's depth loop, and stored back to C[r * ldc ...]. Every score element is one chain of
// multiply-adds over the depth, stored and reloaded between slices, so the blocking never changes a score.
//
// Included only by files compiled with AVX-512 flags (*_avx512.cpp, *_avx512bf16.cpp). Everything here is
// in an anonymous namespace and always inlined: no AVX-512 function is emitted under a shared (ODR) name
// that the linker could pick for a caller compiled for another instruction set.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace fastad::cpu {
namespace {

/// c[r] = accumulate ? C[r * ldc .. + 15] : 0 for r < kRows; depth(c) updates them; then stores them back.
template <int kRows, class Depth>
__attribute__((always_inline)) inline void zmm_tile(float* C, int64_t ldc, bool accumulate, Depth depth) {
  __m512 c[kRows];
  if (accumulate) {
#pragma GCC unroll 24
    for (int r = 0; r < kRows; ++r) c[r] = _mm512_loadu_ps(C + r * ldc);
  } else {
#pragma GCC unroll 24
    for (int r = 0; r < kRows; ++r) c[r] = _mm512_setzero_ps();
  }
  depth(c);
#pragma GCC unroll 24
  for (int r = 0; r < kRows; ++r) _mm512_storeu_ps(C + r * ldc, c[r]);
}

}  // namespace
}  // namespace fastad::cpu
