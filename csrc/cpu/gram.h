// Gram tile G = A * B^T of two row-major float32 matrices (the GEMM behind MuSc's mutual scoring).
#pragma once
#include <cstdint>
#include <vector>

namespace fastad::cpu {

// Register tile of the AVX2 micro-kernel: kGramMR rows of A x kGramNR rows of B (12 ymm accumulators).
constexpr int64_t kGramMR = 6;
constexpr int64_t kGramNR = 16;
// Inner-dimension block: one packed B micro-panel is kGramKC * kGramNR * 4 B = 16 KiB (stays in L1d).
constexpr int64_t kGramKC = 256;
// Rows of A packed per block: kGramMC * kGramKC * 4 B = 96 KiB (stays in L2).
constexpr int64_t kGramMC = 96;

/// Scratch owned by one thread (reused across calls; grows on demand).
struct GramScratch {
  std::vector<float> pack_a;  // kGramMC * kGramKC floats
  std::vector<float> pack_b;  // round_up(nb, kGramNR) * kGramKC floats
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
