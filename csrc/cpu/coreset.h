// Greedy k-center (farthest point sampling) primitives shared by coreset_kernel.cpp and
// coreset_avx2.cpp (raw pointers and sizes only; row-major).
#pragma once
#include <cstdint>

namespace fastad::cpu {

// Storage type codes of the bank rows (arithmetic is always float32).
enum CoresetDType : int { kCoresetF32 = 0, kCoresetF16 = 1, kCoresetBF16 = 2 };

// Value stored in the running squared min-distance of a row once that row has been chosen: it is
// below every real squared distance, so a chosen row is never chosen again.
constexpr float kCoresetChosen = -1.f;

// Largest running min-distance among a range of rows, and its smallest row index.
struct CoresetBest {
  float value = -2.f;  // below kCoresetChosen: any row beats it
  int64_t index = -1;
};

/// One fused streaming pass over rows [r0, r1) of the bank: for every row x,
///   mind[r] = min(mind[r], sum((x - c)^2))   (fp32, exact difference form, no temporaries)
/// and return the largest updated mind[r] (ties: the smallest r).
/// @param bank   N * D elements of storage type `dtype` (only rows r0..r1-1 are read)
/// @param dtype  CoresetDType of `bank`
/// @param c      the centre, D floats (already converted to fp32 from the same storage)
/// @param mind   running squared min distance, N floats (rows r0..r1-1 are updated)
/// @param bad    set to true if some squared distance is NaN or Inf (never reset)
CoresetBest coreset_update_generic(const void* bank, int dtype, int64_t D, int64_t r0, int64_t r1, const float* c,
                                   float* mind, bool* bad);
/// Same contract, AVX2/FMA/F16C code (csrc/cpu/coreset_avx2.cpp). Call only when
/// fastad::cpu_has_avx2_fma() is true. Declared even when not compiled in (FASTAD_HAVE_AVX2=0).
CoresetBest coreset_update_avx2(const void* bank, int dtype, int64_t D, int64_t r0, int64_t r1, const float* c,
                                float* mind, bool* bad);

}  // namespace fastad::cpu
