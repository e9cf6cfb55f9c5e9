// The AMX (tdpbf16ps) block kernel of the bf16 distance GEMM (dist_bf16_gemm.h), written once over a
// tile-operations policy: HwTiles (the intrinsics, dist_micro_amx.cpp, compiled with -mamx-tile -mamx-bf16)
// and EmuTiles (below: eight 1 KiB tile registers in memory and the instruction's arithmetic in scalar
// code), so the blocking, the tile layouts, the depth tail and the accumulation are tested on every CPU
// and the hardware is compared with the emulation bit for bit where it exists (tests/ops/test_knn_bf16.py).
//
// Tiles (palette 1, every tile 16 rows x 64 bytes): C0..C3 = 0..3 (16 x 16 fp32 each: a 32 x 32 block of
// dots), A0, A1 = 4, 5 (16 query rows x 16 depth pairs), B0, B1 = 6, 7 (16 depth pairs x 16 bank rows, the
// pair-interleaved "VNNI" layout of the bank panels: row p of a tile = the 16 words (x[r][2p], x[r][2p+1])).
//
// tdpbf16ps C, A, B, per the operation in Intel's SDM (TDPBF16PS): for each row m and column n of C, two
// float32 partial sums start at zero and run over the instruction's 16 depth pairs k in order, one over
// the even elements, one over the odd ones (each step a multiply-add rounded to nearest even; bf16
// products are exact); then C[m][n] += (even sum + odd sum). Denormal inputs read as zero, tiny results
// flush to zero, RNE throughout. (The older intrinsics guide describes one sequential sum per element
// instead; the tests tell the two apart.) The emulation follows the SDM; it has not been checked against a
// CPU with AMX yet (none so far in this project): tests/ops/test_knn_bf16.py::test_amx_hw_equals_emulation
// does so where one runs (FASTAD_TEST_AMX=1). Meanwhile every process checks the hardware kernel once
// against the emulation before using it (cpu/amx_check.cpp: identical, or within the fp32 accumulation bound,
// else it is not used). The k-NN answers do not depend on the order: the bf16 results are specified by the
// fp32 accumulation bound and the screen's bound allows any order.
#pragma once
#include <cstdint>
#include <cstring>

#ifndef FASTAD_AMX_HW_TU  // (the AMX translation unit takes the kernel only: no <cmath> there)
#include "cpu/bf16_emu.h"
#endif

namespace fastad::cpu::amx {

constexpr int64_t kTileRows = 16;   // rows of every tile (query rows of A, depth pairs of B, rows of C)
constexpr int64_t kTilePairs = 16;  // depth pairs per A tile row (64 bytes)

inline int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }

/// C[i * ldc + j] (i < mc, j < ncp) = (accumulate ? C : 0) + sum over depth pairs p < kc2 of the bf16 dot
/// of A row i and bank row j.
///   A: row-major pairs, A[i * lda + p], rows < round16(mc) and pairs < round16(kc2) readable, zero beyond
///      mc / kc2 (lda a multiple of 16).
///   B: bank panels of 16 rows (ncp a multiple of 16): panel t at B + t * bstride, pair p at + p * 16.
///   C: rows < round16(mc) writable (rows >= mc receive zeros' dots).
///   tail: 2 x 256 words of scratch for the last depth step when kc2 is not a multiple of 16.
template <class T>
inline void tile_block(T& t, int64_t mc, int64_t ncp, int64_t kc2, const uint32_t* A, int64_t lda, const uint32_t* B,
                       int64_t bstride, float* C, int64_t ldc, bool accumulate, uint32_t* tail) {
  const int64_t mp = round16(mc), kp = round16(kc2);
  const int64_t sa = lda * 4, sc = ldc * 4;  // strides in bytes
  for (int64_t j = 0; j < ncp; j += 32) {
    const bool b2 = j + 16 < ncp;
    for (int64_t i = 0; i < mp; i += 32) {
      const bool a2 = i + 16 < mp;
      float* c0 = C + i * ldc + j;
      float* c2 = c0 + 16 * ldc;
      if (accumulate) {
        t.template load<0>(c0, sc);
        if (b2) t.template load<1>(c0 + 16, sc);
        if (a2) t.template load<2>(c2, sc);
        if (a2 && b2) t.template load<3>(c2 + 16, sc);
      } else {
        t.template zero<0>();
        t.template zero<1>();
        t.template zero<2>();
        t.template zero<3>();
      }
      for (int64_t k = 0; k < kp; k += kTilePairs) {
        const uint32_t* p0 = B + (j / 16) * bstride + k * 16;
        const uint32_t* p1 = p0 + bstride;
        if (k + kTilePairs > kc2) {  // depth tail: the panels' last pairs, zero padded (beyond kc2 lies
          const int64_t rem = kc2 - k;  // the next slice, or the end of the buffer)
          std::memset(tail, 0, 2 * 256 * sizeof(uint32_t));
          std::memcpy(tail, p0, rem * 16 * sizeof(uint32_t));
          if (b2) std::memcpy(tail + 256, p1, rem * 16 * sizeof(uint32_t));
          p0 = tail, p1 = tail + 256;
        }
        t.template load<4>(A + i * lda + k, sa);
        if (a2) t.template load<5>(A + (i + 16) * lda + k, sa);
        t.template load<6>(p0, 64);
        if (b2) t.template load<7>(p1, 64);
        t.template dp<0, 4, 6>();
        if (b2) t.template dp<1, 4, 7>();
        if (a2) {
          t.template dp<2, 5, 6>();
          if (b2) t.template dp<3, 5, 7>();
        }
      }
      t.template store<0>(c0, sc);
      if (b2) t.template store<1>(c0 + 16, sc);
      if (a2) t.template store<2>(c2, sc);
      if (a2 && b2) t.template store<3>(c2 + 16, sc);
    }
  }
}

#ifndef FASTAD_AMX_HW_TU
/// Eight tile registers of 16 rows x 64 bytes in memory; tdpbf16ps in scalar code (bf16emu::dp_step and
/// fma_ftz: one rounding per multiply-add or add, DAZ / FTZ).
struct EmuTiles {
  uint32_t reg[8][16][16];
  template <int i>
  void zero() {
    std::memset(reg[i], 0, sizeof(reg[i]));
  }
  template <int i>
  void load(const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(reg[i][r], static_cast<const char*>(p) + r * stride, 64);
  }
  template <int i>
  void store(void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<char*>(p) + r * stride, reg[i][r], 64);
  }
  template <int c, int a, int b>
  void dp() {
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float even = 0.f, odd = 0.f;
        for (int k = 0; k < 16; ++k) {
          const uint32_t x = reg[a][m][k], y = reg[b][k][n];
          even = bf16emu::dp_step(even, static_cast<uint16_t>(x & 0xffffu), static_cast<uint16_t>(y & 0xffffu));
          odd = bf16emu::dp_step(odd, static_cast<uint16_t>(x >> 16), static_cast<uint16_t>(y >> 16));
        }
        const float sum = bf16emu::fma_ftz(even, odd, 1.f);  // even + odd
        reg[c][m][n] = bf16emu::f32_bits(bf16emu::fma_ftz(bf16emu::bits_f32(reg[c][m][n]), sum, 1.f));
      }
  }
};

/// The emulated kernel: same operands and outputs as micro_amx_block (dist_kernels.h).
inline void tile_block_emu(int64_t mc, int64_t ncp, int64_t kc2, const uint32_t* A, int64_t lda, const uint32_t* B,
                           int64_t bstride, float* C, int64_t ldc, bool accumulate, uint32_t* tail) {
  static thread_local EmuTiles t;
  tile_block(t, mc, ncp, kc2, A, lda, B, bstride, C, ldc, accumulate, tail);
}
#endif  // FASTAD_AMX_HW_TU

}  // namespace fastad::cpu::amx
