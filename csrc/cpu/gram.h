// Gram tile G = A * B^T of two row-major float32 matrices (the GEMM behind MuSc's mutual scoring).
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastad::cpu {

// Blocking of the AVX2 path (gram_avx2.cpp), which runs the shared 6 x 16 micro-kernel of
// microkernel_avx2.h (the one knn and group_min use) over packed panels:
// depth per pass: the D inner dimension is cut into equal slices of at most kGramKcMax, so one packed
// B micro-panel (kc x 16 floats) is <= 32 KiB and stays in L1d;
constexpr int64_t kGramKcMax = 512;
// rows of A per block: kGramMC x kc x 4 B <= 192 KiB stays in L2 while B micro-panels stream past;
constexpr int64_t kGramMC = 96;
// rows of B packed per block (full depth: 512 x D x 4 B, 2 MiB at D = 1024) = columns of the output
// tile, which is kGramMC x kGramNC floats = 192 KiB (L2) and is copied to `out` once complete.
constexpr int64_t kGramNC = 512;

/// A growable 64-byte aligned float buffer (the micro-kernel needs 32-byte aligned B panels).
struct AlignedFloats {
  float* p = nullptr;
  size_t cap = 0;
  AlignedFloats() = default;
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  ~AlignedFloats();
  float* get(size_t n);  // at least n floats; contents are kept only when no growth was needed
};

/// Scratch owned by one thread (reused across calls; grows on demand).
struct GramScratch {
  AlignedFloats pack_a;  // A packed whole: ceil(na / 6) panels of d * 6 floats
  AlignedFloats pack_b;  // one block of B: kGramNC / 16 panels of d * 16 floats
  AlignedFloats tile;    // kGramMC x kGramNC output tile
  // What pack_a holds: gram() called again with the same (a, na, d) skips packing A (MuSc scores
  // image i against j = i+1, i+2, ... in a row). The caller must not change the floats at `a`
  // between such calls on one scratch (or must call forget_a()).
  const float* a_src = nullptr;
  int64_t a_rows = -1, a_d = -1;
  void forget_a() { a_src = nullptr; }
};

/// out[r * ldo + c] = dot(a[r], b[c]) for r < na, c < nb (overwrites out).
/// @param a  na * d floats (row-major)   @param b  nb * d floats   @param out  na rows of ldo >= nb floats
/// Uses the AVX2/FMA micro-kernel when use_avx2_path() (AVX2/FMA CPU, FASTAD_FORCE_GENERIC unset),
/// else the generic dot_tile.
void gram(const float* a, int64_t na, const float* b, int64_t nb, int64_t d, float* out, int64_t ldo,
          GramScratch& scratch);

#if FASTAD_HAVE_AVX2
/// AVX2/FMA version of gram() (csrc/cpu/gram_avx2.cpp). Call only when cpu_has_avx2_fma().
void gram_avx2(const float* a, int64_t na, const float* b, int64_t nb, int64_t d, float* out, int64_t ldo,
               GramScratch& scratch);
#endif

}  // namespace fastad::cpu
