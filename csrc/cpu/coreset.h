// Greedy k-center (farthest point sampling) primitives shared by coreset_kernel.cpp and
// coreset_avx2.cpp (raw pointers and sizes only; row-major).
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

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
  float slack = kCoresetPruneSlack;  // >= kCoresetPruneSlack + 4 * coreset_margin(D) (rounding of long rows)
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
    if (st.cc2 != nullptr && st.cc2[st.assign[r]] > st.slack * 4.f * m) {
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
using CoresetDistsFn = void (*)(const void*, int, int64_t, const int64_t*, int64_t, const float*, float*);

/// Relative rounding margin of the pruning bounds for rows of D elements: a computed squared distance
/// (any summation order, fp32) is within a factor (1 +- e) of the exact one for e = (D + 16) * 2^-23
/// (twice the worst-case bound), so a bound that holds with this margin holds for the computed values.
inline float coreset_margin(int64_t D) { return static_cast<float>(D + 16) * 0x1p-23f; }

/// Row filter for method="pruned" (csrc/cpu/coreset_filter.cpp).
///
/// Every row x keeps a summary: its coordinates on the top kMaxAxes principal axes of the bank (float16,
/// scaled by a power of two, with its exact rounding error) and its residual norm off those axes. Since
/// ||x - c||^2 = ||a_x - a_c||^2 + ||e_x - e_c||^2 >= ||a_x - a_c||^2 + (||e_x|| - ||e_c||)^2 (a: exact
/// coordinates, e: residuals), the summaries give a rigorous lower bound of the distance to the new centre
/// c; with the rounding margin coreset_margin(D) a row whose bound is >= its running min cannot improve
/// (its computed distance would not be below its running min) and is not read in full. Rows are ordered
/// into blocks of <= kBlock rows (recursive bisection in summary space); a block keeps a ball around its
/// rows' summaries, the range of their residual norms and its largest running min (value, smallest row
/// index on ties), so a block that cannot improve is skipped without touching its rows and the argmax is a
/// scan over the blocks. Rows that are read get exactly the exhaustive step's distance (the same dists
/// function on the same stored values and centre) and the same update, so the indices are identical.
/// Memory: a block-ordered copy of the bank, 2 N int64 + 4 N floats + N * 32 halves, and per block
/// 32 floats + 4.
class CoresetFilter {
 public:
  static constexpr int64_t kBlock = 64;
  static constexpr int64_t kMaxAxes = 32;
  CoresetFilter(const void* bank, int dtype, int64_t N, int64_t D, CoresetDistsFn dists);
  /// One greedy step with centre c (D floats, fp32, cid its position): updates mind/assign of the rows
  /// that can improve, returns the new argmax (largest mind, smallest index on ties); `read` gets the
  /// number of rows whose full distance was computed, `summaries` the number of summaries read, `bad` is
  /// set when a computed distance is NaN/Inf. `cur` is the row of c; the caller has set
  /// mind[cur] = kCoresetChosen.
  CoresetBest step(const float* c, int64_t cur, int32_t cid, float* mind, int32_t* assign, int64_t* read,
                   int64_t* summaries, bool* bad);
  /// Copy mind and recompute every block's largest running min (after steps taken without the filter).
  void refresh(const float* mind);

 private:
  struct RowBound {
    float en;  // residual norm ||e_x||
    float sa;  // >= ||u_x - a_x / scale|| (scaled units)
    float se;  // >= | en - ||e_x|| | (and float64 rounding)
  };
  void build();
  void block_max(int64_t b);
  const void* bank_;
  int dtype_;
  int64_t N_, D_, K_ = 0, Kp_ = 0;
  CoresetDistsFn dists_;
  float mD_, mK_ = 0.f, tiny_;
  double scale_ = 1.0;
  std::vector<double> mu_, p_, y_;  // mean, axes (D x Kp, row-major), workspace
  std::vector<int64_t> perm_;       // block position -> row
  std::vector<int64_t> ipos_;       // row -> block position
  std::vector<int64_t> pos_;        // 0..N-1 (position lists for the dists function)
  std::vector<char> data_;          // the rows in block order (same stored values)
  std::vector<uint16_t> hs_;        // summaries in block order, N x Kp float16 bits
  std::vector<RowBound> rb_;
  std::vector<float> mind_t_;       // running squared min distance in block order (mirrors mind)
  std::vector<int64_t> blo_;        // block b = positions [blo_[b], blo_[b + 1])
  std::vector<float> q_, rho_, emin_, emax_, bmaxv_, dq2_;
  std::vector<int64_t> bmaxi_, bidx_;
  std::vector<int64_t> cand_;
  std::vector<float> cand_d2_, sum_d2_, ac_;
};

}  // namespace fastad::cpu
