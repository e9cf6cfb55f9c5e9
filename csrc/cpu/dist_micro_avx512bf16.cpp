// AVX-512 BF16 micro-kernel and packing of the bf16 distance GEMM (dist_bf16_gemm.h, dist_bf16_knn_avx2.cpp,
// dist_bf16_screen_avx2.cpp: knn on bfloat16 inputs, and the bf16 screen of exact float32 knn).
//
// Block shape and accumulator frame: those of the AVX-512 fp32 kernel (zmm_tile of dist_micro_avx512.h,
// shared with dist_micro_avx512.cpp): up to four consecutive 6-row
// query panels against one 16-row bank panel, one zmm accumulator per query row (24 of 32 zmm). The
// operands are bf16 pairs: a packed panel holds, per depth pair p and row r, the 32-bit word
// (x[r][2p], x[r][2p + 1]) (low half = even depth), i.e. query panels [p][6] and bank panels [p][16]
// of uint32. Per depth pair, one vdpbf16ps per query row does two multiply-adds per lane:
//   c += a[2p+1] * b[2p+1];  c += a[2p] * b[2p]
// (odd element first, each step rounded to nearest even on the exact product-plus-accumulator, with
// DAZ on the inputs and FTZ on each result, tininess detected before rounding; measured on Zen 4 and
// emulated bit for bit by cpu/bf16_emu.h, which the tests compare against this kernel).
//
// Compiled with -mavx512f -mavx512bf16 (CMakeLists: *_avx512bf16.cpp); called only when
// use_bf16_micro() (cpuid avx512_bf16). No torch or standard-library headers besides <cstdint>: an
// inline function emitted here would be AVX-512 code the linker may pick for other callers.
#include <immintrin.h>

#include <cstdint>

#include "cpu/dist_micro_avx512.h"

namespace fastad::cpu {

namespace {

template <int kPanels>
inline void micro_bf16(int64_t kc2, const uint32_t* __restrict__ A, int64_t panel_stride, const uint32_t* __restrict__ B,
                       float* C, int64_t ldc, bool accumulate) {
  zmm_tile<6 * kPanels>(C, ldc, accumulate, [&](__m512* c) __attribute__((always_inline)) {
    for (int64_t p = 0; p < kc2; ++p) {
      const __m512bh b = (__m512bh)_mm512_load_si512(B + p * 16);
#pragma GCC unroll 4
      for (int t = 0; t < kPanels; ++t) {
        const uint32_t* a = A + t * panel_stride + p * 6;
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r)
          c[t * 6 + r] = _mm512_dpbf16_ps(c[t * 6 + r], (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r])), b);
      }
    }
  });
}

}  // namespace

/// C[r * ldc + j] (r < 6 * panels, j < 16) = (accumulate ? C : 0) + the bf16 dot of query row r (panel
/// r / 6 of A, panels panel_stride uint32 apart) with bank row j over depth pairs [0, kc2). B: 64-byte aligned.
void micro_bf16_avx512(int panels, int64_t kc2, const uint32_t* A, int64_t panel_stride, const uint32_t* B, float* C,
                       int64_t ldc, bool accumulate) {
  switch (panels) {
    case 4: micro_bf16<4>(kc2, A, panel_stride, B, C, ldc, accumulate); break;
    case 3: micro_bf16<3>(kc2, A, panel_stride, B, C, ldc, accumulate); break;
    case 2: micro_bf16<2>(kc2, A, panel_stride, B, C, ldc, accumulate); break;
    default: micro_bf16<1>(kc2, A, panel_stride, B, C, ldc, accumulate); break;
  }
}

/// Rounds `rows` rows of D floats (row stride D), minus c (nullptr: nothing), to bf16 (vcvtneps2bf16:
/// round to nearest even, denormal inputs -> signed zero) into rows of ldo uint16 (ldo even, >= D;
/// zero padded). With sums != nullptr, sums[3 r + 0 / 1 / 2] = fp32 sums over the row of x~^2, x'^2 and
/// (x' - x~)^2 (x~ = x - c in float32, x' its bf16 rounding), for the screen's error bound.
void bf16_rows_avx512(const float* x, int64_t rows, int64_t D, const float* c, uint16_t* out, int64_t ldo,
                      float* sums) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * D;
    uint16_t* o = out + r * ldo;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps();
    for (int64_t k = 0; k < D; k += 16) {
      const __mmask16 m = static_cast<__mmask16>(D - k >= 16 ? 0xffff : ((1u << (D - k)) - 1u));
      __m512 v = _mm512_maskz_loadu_ps(m, xr + k);
      if (c) v = _mm512_sub_ps(v, _mm512_maskz_loadu_ps(m, c + k));
      const __m256bh h = _mm512_cvtneps_pbh(v);
      _mm256_mask_storeu_epi16(o + k, m, (__m256i)h);
      if (sums) {
        // bf16 -> fp32 is a 16-bit shift
        const __m512 w = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
        const __m512 e = _mm512_sub_ps(w, v);
        s0 = _mm512_fmadd_ps(v, v, s0);
        s1 = _mm512_fmadd_ps(w, w, s1);
        s2 = _mm512_fmadd_ps(e, e, s2);
      }
    }
    for (int64_t k = D; k < ldo; ++k) o[k] = 0;
    if (sums) {
      sums[3 * r + 0] = _mm512_reduce_add_ps(s0);
      sums[3 * r + 1] = _mm512_reduce_add_ps(s1);
      sums[3 * r + 2] = _mm512_reduce_add_ps(s2);
    }
  }
}

}  // namespace fastad::cpu
