// The bf16 distance GEMM driver (fp32 accumulation), shared by the k-NN on bfloat16 inputs
// (dist_bf16_knn_avx2.cpp) and the bf16 screen of exact float32 knn / group_min
// (dist_bf16_screen_avx2.cpp): blocking constants, the micro-kernel in use (AVX512-BF16 hardware or its
// scalar emulation, cpu/bf16_emu.h), packing of bf16 rows into pair panels, and the blocked sweep that
// hands finished [mc x nc] tiles of raw bf16 dots to an epilogue. Its shape is that of the fp32 driver
// (dist_gemm_avx2.cpp; the shared pieces are in dist_gemm_common.h).
// Included only by files compiled with -mavx2 -mfma (*_avx2.cpp); used only when use_avx2_path().
#pragma once
#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu/amx_tile_kernel.h"
#include "cpu/bf16_emu.h"
#include "cpu/dist_gemm_common.h"
#include "cpu/dist_kernels.h"

namespace fastad::cpu::bf16gemm {

using gemm::ABuf;
using gemm::kInf;
using gemm::round_up;

constexpr int64_t MR = 6;        // query rows per panel
constexpr int64_t NR = 16;       // bank rows per panel (one zmm of fp32 lanes)
constexpr int64_t kMC = 96;      // query rows per block (16 panels; 96 x 512 pairs x 4 B = 192 KiB in L2)
constexpr int64_t kNC = 512;     // bank rows per packed block
constexpr int64_t kKc2Max = 512; // depth pairs per slice: bank micro-panel <= 512 x 16 x 4 B = 32 KiB (L1d)
constexpr int64_t kScreenMaxQ = 4096;  // queries per screen superblock (bounds the candidate lists)
static_assert(kMC % 16 == 0 && kNC % 32 == 0, "AMX blocks: 16-row tiles of C within the [kMC x kNC] tile");

// Per-thread tiles, reused across calls.
inline thread_local ABuf<uint32_t> tl_bpack, tl_qpack, tl_arow, tl_tail;
inline thread_local ABuf<uint16_t> tl_rows;
inline thread_local ABuf<float> tl_ctile, tl_f1, tl_f2, tl_f3, tl_f4, tl_sums;

// The micro-kernel in use (hardware or emulation) and the fp32 -> bf16 row conversion that goes with it.
struct Kern {
  bool hw;
  int amx;  // bf16_amx_mode(): 0 the vdpbf16ps micro-kernel (or its emulation), 1 AMX tiles, 2 their emulation
  void micro(int panels, int64_t kc2, const uint32_t* A, int64_t ps, const uint32_t* B, float* C, int64_t ldc,
             bool acc) const {
#if FASTAD_HAVE_AVX512
    if (hw) return micro_bf16_avx512(panels, kc2, A, ps, B, C, ldc, acc);
#endif
    bf16emu::micro_bf16_emu(panels, kc2, A, ps, B, C, ldc, acc);
  }
  // AMX: a whole [mc x ncp] block of one depth slice (operands: amx::tile_block)
  void block(int64_t mc, int64_t ncp, int64_t kc2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t bstride,
             float* C, int64_t ldc, bool acc, uint32_t* tail) const {
#if FASTAD_HAVE_AMX
    if (amx == 1) return micro_amx_block(mc, ncp, kc2, A, lda, B, bstride, C, ldc, acc, tail);
#endif
    amx::tile_block_emu(mc, ncp, kc2, A, lda, B, bstride, C, ldc, acc, tail);
  }
  void rows(const float* x, int64_t n, int64_t D, const float* c, uint16_t* out, int64_t ldo, float* sums) const {
#if FASTAD_HAVE_AVX512
    if (hw) return bf16_rows_avx512(x, n, D, c, out, ldo, sums);
#endif
    bf16emu::bf16_rows_emu(x, n, D, c, out, ldo, sums);
  }
};

inline Kern current_kern() { return Kern{use_bf16_micro(), bf16_amx_mode()}; }

// AMX: rows [i0, i0 + mc) of the packed query panels (MR rows each, D2 pairs per row), depth pairs
// [pc, pc + kc2), as row-major pairs (lda = round16(kc2)), rows and pairs zero padded to multiples of 16.
inline void rows_of_panels(const uint32_t* A, int64_t D2, int64_t i0, int64_t mc, int64_t pc, int64_t kc2,
                           uint32_t* out) {
  const int64_t mp = amx::round16(mc), kp = amx::round16(kc2);
  for (int64_t r = 0; r < mp; ++r) {
    uint32_t* dst = out + r * kp;
    int64_t p = 0;
    if (r < mc) {
      const int64_t row = i0 + r;
      const uint32_t* src = A + (row / MR) * MR * D2 + pc * MR + row % MR;
      for (; p < kc2; ++p) dst[p] = src[p * MR];
    }
    for (; p < kp; ++p) dst[p] = 0;
  }
}

// Interleaves `rows` (<= R) bf16 rows (row stride ld uint16, D values) into one panel of ceil(D/2) pairs:
// dst[p * R + r] = (x[r][2p] | x[r][2p+1] << 16); missing rows and the odd tail are zero.
template <int R>
inline void panelize(const uint16_t* x, int64_t ld, int64_t rows, int64_t D, uint32_t* dst) {
  const int64_t D2 = (D + 1) / 2, De = D / 2;
  for (int64_t r = 0; r < R; ++r) {
    if (r >= rows) {
      for (int64_t p = 0; p < D2; ++p) dst[p * R + r] = 0;
      continue;
    }
    const uint16_t* s = x + r * ld;
    for (int64_t p = 0; p < De; ++p) {
      uint32_t w;
      std::memcpy(&w, s + 2 * p, 4);
      dst[p * R + r] = w;
    }
    if (D2 > De) dst[De * R + r] = s[D - 1];
  }
}

// A screen's bank block: rows [j0, j0 + nc) of x (D floats each) centred by c, rounded to bf16 and packed
// into NR-row panels at Bp (ceil(nc / NR) panels of ceil(D / 2) pairs); row_terms(jj, sums) receives each
// row's fp32 conversion sums (3 floats, bf16_screen_bound.h) with jj = row - j0; false from it stops (false).
template <class RowTerms>
inline bool pack_screen_block(const Kern& kern, const float* x, int64_t j0, int64_t nc, int64_t D, const float* c,
                              uint32_t* Bp, RowTerms&& row_terms) {
  const int64_t Dp = round_up(D, 2), D2 = Dp / 2;
  uint16_t* rows = tl_rows.get(NR * Dp);
  float* sums = tl_sums.get(3 * NR);
  for (int64_t p = 0; p * NR < nc; ++p) {
    const int64_t nr = std::min(NR, nc - p * NR);
    kern.rows(x + (j0 + p * NR) * D, nr, D, c, rows, Dp, sums);
    panelize<NR>(rows, Dp, nr, Dp, Bp + p * NR * D2);
    for (int64_t r = 0; r < nr; ++r)
      if (!row_terms(p * NR + r, sums + 3 * r)) return false;
  }
  return true;
}

// The sweep: queries [qa, qb) of the packed superblock A (bf16 pair panels of D2 pairs; qa a multiple of
// MR) against bank rows [ja, jb). epi.pack(j0, nc, Bp) packs a bank block (ceil(nc/16) panels) and its
// per-row terms; epi(i0, mc, j0, nc, C, ldc) receives the finished [mc x nc] tile of raw bf16 dots.
template <class Epi>
inline void sweep_bf16(const Kern& kern, const uint32_t* A, int64_t qa, int64_t qb, int64_t ja, int64_t jb, int64_t D,
                Epi& epi) {
  const int64_t D2 = (D + 1) / 2;
  uint32_t* Bp = tl_bpack.get(kNC * D2);
  float* C = tl_ctile.get(kMC * kNC);
  const int64_t nkb = (D2 + kKc2Max - 1) / kKc2Max;
  const int64_t KC2 = (D2 + nkb - 1) / nkb;
  for (int64_t j0 = ja; j0 < jb; j0 += kNC) {
    const int64_t nc = std::min(kNC, jb - j0), ncp = round_up(nc, NR);
    if (!epi.pack(j0, nc, Bp)) return;
    for (int64_t i0 = qa; i0 < qb; i0 += kMC) {
      const int64_t mc = std::min(kMC, qb - i0), npan = (mc + MR - 1) / MR;
      for (int64_t pc = 0; pc < D2; pc += KC2) {
        const int64_t kc2 = std::min(KC2, D2 - pc);
        if (kern.amx) {  // one tile-kernel call per block and depth slice (the query rows repacked once)
          const int64_t kp = amx::round16(kc2);  // the repacked rows' stride (pairs)
          uint32_t* Ar = tl_arow.get(amx::round16(mc) * kp);
          rows_of_panels(A, D2, i0, mc, pc, kc2, Ar);
          kern.block(mc, ncp, kc2, Ar, kp, Bp + pc * NR, NR * D2, C, kNC, pc > 0, tl_tail.get(512));
          continue;
        }
        for (int64_t jr = 0; jr < ncp; jr += NR) {
          const uint32_t* Bpanel = Bp + (jr / NR) * NR * D2 + pc * NR;
          for (int64_t t = 0; t < npan; t += 4) {
            const int panels = static_cast<int>(std::min<int64_t>(4, npan - t));
            kern.micro(panels, kc2, A + ((i0 / MR) + t) * MR * D2 + pc * MR, MR * D2, Bpanel, C + t * MR * kNC + jr,
                       kNC, pc > 0);
          }
        }
      }
      if (!epi(i0, mc, j0, nc, C, kNC)) return;
    }
  }
}

// Splits [0, panels) query panels of a superblock over the threads and runs body(qa, qb) (rows).
template <class F>
inline void for_query_ranges(int64_t qs, F body) {
  const int64_t panels = (qs + MR - 1) / MR;
  const int64_t T = std::max<int64_t>(1, at::get_num_threads());
  const int64_t nqr = std::min(T, panels);
  at::parallel_for(0, nqr, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qa = panels * t / nqr * MR, qb = std::min(qs, panels * (t + 1) / nqr * MR);
      if (qa < qb) body(qa, qb);
    }
  });
}

// Queries per superblock of packed bf16 pairs (D2 per row), at most qmax_cap.
inline int64_t superblock_rows(int64_t Q, int64_t D2, int64_t qmax_cap = std::numeric_limits<int64_t>::max()) {
  return gemm::superblock_rows(Q, 4 * D2, MR, qmax_cap);
}

}  // namespace fastad::cpu::bf16gemm
