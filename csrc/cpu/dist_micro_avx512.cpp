// AVX-512 micro-kernel for the distance GEMM of csrc/cpu/dist_gemm_avx2.cpp (knn, group_min).
//
// It reads the same packed operands as the AVX2 6 x 16 kernel (query panels [k][6], bank panels
// [k][16], see dist_gemm_avx2.cpp) and computes 24 x 16 of the score tile at once: four consecutive
// 6-row query panels against one 16-row bank panel, one zmm accumulator per query row (24 of the 32
// zmm registers). Per depth step it issues 24 FMAs for 1 bank load and 24 broadcasts, against 12 FMAs
// for 2 + 6 loads in the 6 x 16 ymm kernel: half the instructions per flop and fewer loads per FMA.
// On Zen 4 a 512-bit FMA runs as two 256-bit halves (benchmarks/peak_fma.c: same FP32 peak for both
// widths), so the gain is in the overheads, not in the peak.
//
// Every score element is the same fused multiply-add chain over the depth as in the 6 x 16 kernel
// (C = fma(a_p, b_p, C), p increasing, C stored and reloaded between depth slices), so both kernels
// give bit-identical scores and the results do not depend on which one computed a tile.
//
// The accumulator frame (load or zero, store) is zmm_tile of dist_micro_avx512.h, shared with the bf16
// kernel (dist_micro_avx512bf16.cpp).
// Compiled with -mavx512f (CMakeLists: *_avx512.cpp); called only when use_avx512_micro() is true.
// Deliberately includes no torch or standard-library headers besides <cstdint>: any inline function
// or static initialiser emitted here would be AVX-512 code that the linker may pick for (or run on)
// a CPU without AVX-512. The declaration it implements is in cpu/dist_kernels.h (the linker checks
// that the signatures agree).
#include <immintrin.h>

#include <cstdint>

#include "cpu/dist_micro_avx512.h"

namespace fastad::cpu {

void micro_24x16_avx512(int64_t kc, const float* __restrict__ A, int64_t panel_stride, const float* __restrict__ B,
                        float* C, int64_t ldc, bool accumulate) {
  constexpr int kPanelRows = 6, kNR = 16;
  zmm_tile<24>(C, ldc, accumulate, [&](__m512* c) __attribute__((always_inline)) {
    const float* A0 = A;
    const float* A1 = A + panel_stride;
    const float* A2 = A + 2 * panel_stride;
    const float* A3 = A + 3 * panel_stride;
#pragma GCC unroll 2
    for (int64_t p = 0; p < kc; ++p) {
      const __m512 b = _mm512_load_ps(B);
#pragma GCC unroll 6
      for (int r = 0; r < kPanelRows; ++r) c[r] = _mm512_fmadd_ps(_mm512_set1_ps(A0[r]), b, c[r]);
#pragma GCC unroll 6
      for (int r = 0; r < kPanelRows; ++r) c[6 + r] = _mm512_fmadd_ps(_mm512_set1_ps(A1[r]), b, c[6 + r]);
#pragma GCC unroll 6
      for (int r = 0; r < kPanelRows; ++r) c[12 + r] = _mm512_fmadd_ps(_mm512_set1_ps(A2[r]), b, c[12 + r]);
#pragma GCC unroll 6
      for (int r = 0; r < kPanelRows; ++r) c[18 + r] = _mm512_fmadd_ps(_mm512_set1_ps(A3[r]), b, c[18 + r]);
      A0 += kPanelRows, A1 += kPanelRows, A2 += kPanelRows, A3 += kPanelRows;
      B += kNR;
    }
  });
}

}  // namespace fastad::cpu
