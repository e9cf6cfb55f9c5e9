// Greedy k-center (farthest point sampling) primitives shared by coreset_kernel.cpp and
// coreset_avx2.cpp (raw pointers and sizes only; row-major).
#pragma once
#include <cstdint>
#include <limits>

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

// Triangle-inequality pruning of one step (optional). Every row r remembers the centre that gave its
// running min, assign[r] (a position in the list of chosen centres). If the new centre c is far from
// that centre a, d(c, a) >= 2 d(r, a), then d(r, c) >= d(c, a) - d(r, a) >= d(r, a): the row cannot
// improve and is not read. kCoresetPruneSlack keeps the test exact under fp32 rounding.
constexpr float kCoresetPruneSlack = 1.0001f;

struct CoresetStep {
  const float* c = nullptr;      // the new centre, D floats (fp32, converted from the bank storage)
  int32_t cid = 0;               // its position in the list of chosen centres
  float* mind = nullptr;         // running squared min distance, N floats
  int32_t* assign = nullptr;     // position of the centre that gave mind[r], N ints
  const float* cc2 = nullptr;    // squared distance from c to every chosen centre (by position), or
                                 // nullptr: no pruning this step
};

/// One fused streaming pass over rows [r0, r1) of the bank: for every row x (not pruned),
///   d2 = sum((x - c)^2)   (fp32, exact difference form, no temporaries)
///   if d2 < mind[r]: mind[r] = d2, assign[r] = cid
/// and return the largest mind[r] over the range (ties: the smallest r).
/// @param bank     N * D elements of storage type `dtype` (only rows r0..r1-1 are read)
/// @param dtype    CoresetDType of `bank`
/// @param st       the step (centre, state arrays, optional pruning distances)
/// @param skipped  incremented by the number of rows pruned (not read)
/// @param bad      set to true if some squared distance is NaN or Inf (never reset)
CoresetBest coreset_update_generic(const void* bank, int dtype, int64_t D, int64_t r0, int64_t r1,
                                   const CoresetStep& st, int64_t* skipped, bool* bad);
/// Same contract, AVX2/FMA/F16C code (csrc/cpu/coreset_avx2.cpp). Call only when
/// fastad::cpu_has_avx2_fma() is true.
CoresetBest coreset_update_avx2(const void* bank, int dtype, int64_t D, int64_t r0, int64_t r1,
                                const CoresetStep& st, int64_t* skipped, bool* bad);

/// The row loop behind both coreset_update_* (one definition; each caller supplies its own squared-distance
/// code for row r as `dist(r)`, compiled for its ISA). Same contract as coreset_update_generic.
template <typename Dist>
inline CoresetBest coreset_update_rows(int64_t r0, int64_t r1, const CoresetStep& st, Dist&& dist, int64_t* skipped,
                                       bool* bad) {
  CoresetBest best;
  bool nonfinite = false;
  int64_t skip = 0;
  float* mind = st.mind;
  for (int64_t r = r0; r < r1; ++r) {
    float m = mind[r];
    if (st.cc2 != nullptr && st.cc2[st.assign[r]] > kCoresetPruneSlack * 4.f * m) {
      ++skip;  // cannot improve (chosen rows, m = -1, always land here)
    } else {
      const float d2 = dist(r);
      nonfinite |= !(d2 < std::numeric_limits<float>::infinity());  // NaN or Inf
      if (d2 < m) {
        m = d2;
        mind[r] = d2;
        st.assign[r] = st.cid;
      }
    }
    if (m > best.value) {  // strict: ascending rows, so ties keep the smallest index
      best.value = m;
      best.index = r;
    }
  }
  if (nonfinite) *bad = true;
  *skipped += skip;
  return best;
}

/// Squared distances from c (D floats) to the bank rows rows[0..count-1] into out[0..count-1].
void coreset_row_dists_generic(const void* bank, int dtype, int64_t D, const int64_t* rows, int64_t count,
                               const float* c, float* out);
void coreset_row_dists_avx2(const void* bank, int dtype, int64_t D, const int64_t* rows, int64_t count,
                            const float* c, float* out);

}  // namespace fastad::cpu
