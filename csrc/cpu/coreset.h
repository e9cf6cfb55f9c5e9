// Greedy k-center (farthest point sampling) primitives shared by coreset_kernel.cpp and
// coreset_avx2.cpp (raw pointers and sizes only; row-major).
#pragma once
#include <cmath>
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

/// One centre's summary (CoresetFilter): coordinates on the axes (scaled), their error bound and its residual norm.
struct CoresetCentreSummary {
  const float* ac = nullptr;  // Kp floats
  float s_c = 0.f, en_c = 0.f, se_c = 0.f;
};

/// Inputs of the per-row summary test of CoresetFilter (one batch of centres): positions are in tree order,
/// in groups of 8: hs1 holds the first min(8, Kp) summary coordinates (per group 8 x 8 float16, dimension-major),
/// hs2 the other Kp - 8 (per group (Kp - 8) x 8); en/sa/se/mind: per position.
struct CoresetLeafArgs {
  const uint16_t* hs1 = nullptr;
  const uint16_t* hs2 = nullptr;
  int64_t Kp = 0;
  const float* en = nullptr;  // residual norm per position
  const float* sa = nullptr;  // bound of the stored summary's rounding error (scaled units)
  const float* se = nullptr;  // bound of the residual norm's error
  const float* mind = nullptr;  // running squared min distance per position (< 0: chosen or padding)
  const float* gb = nullptr;    // per group of 8: the largest sa, the smallest en - se, the largest en + se, 0
  const CoresetCentreSummary* cs = nullptr;  // the batch's centres
  float lo_k = 1.f, sc2 = 1.f, fin = 1.f, tiny = 0.f;
};

/// Lower bound of the computed squared distance to a centre from a summary-space squared distance dsum2
/// (computed in fp32, any order), the error `slop` of the summary side (scaled units), the centre's own error
/// s_c and a residual-norm gap egap (see CoresetFilter). The scalar and the AVX2 tests use these operations.
inline float coreset_summary_bound(float dsum2, float slop, float s_c, float egap, const CoresetLeafArgs& a) {
  const float s = std::sqrt(dsum2) * a.lo_k - slop - s_c;
  const float A = s > 0.f ? s : 0.f;
  const float Bg = egap > 0.f ? egap : 0.f;
  return (A * A * a.sc2 + Bg * Bg) * a.fin - a.tiny;
}

/// Per-row test of positions [p0, p1) (multiples of 8) against the centres of `active` (bit i: centre i):
/// writes the positions whose summary bound for centre i is below their running min (and >= 0) to
/// cand[i * cap ...], in order, and their count to counts[i] (0 for inactive centres).
int64_t coreset_leaf_test_generic(const CoresetLeafArgs& a, int64_t p0, int64_t p1, uint32_t active, int64_t* cand,
                                  int64_t cap, int64_t* counts);
int64_t coreset_leaf_test_avx2(const CoresetLeafArgs& a, int64_t p0, int64_t p1, uint32_t active, int64_t* cand,
                               int64_t cap, int64_t* counts);
using CoresetLeafFn = int64_t (*)(const CoresetLeafArgs&, int64_t, int64_t, uint32_t, int64_t*, int64_t, int64_t*);
/// Squared distance of two float vectors of Kp elements (a tree node's ball centre to the centre's summary).
float coreset_sq_dist32_generic(const float* q, const float* ac, int64_t Kp);
float coreset_sq_dist32_avx2(const float* q, const float* ac, int64_t Kp);
using CoresetSqDistFn = float (*)(const float*, const float*, int64_t);

/// Row filter for method="pruned" (csrc/cpu/coreset_filter.cpp).
///
/// Every row x keeps a summary: its coordinates on the top kMaxAxes principal axes of the bank (float16,
/// scaled by a power of two, with its exact rounding error) and its residual norm off those axes. Since
/// ||x - c||^2 = ||a_x - a_c||^2 + ||e_x - e_c||^2 >= ||a_x - a_c||^2 + (||e_x|| - ||e_c||)^2 (a: exact
/// coordinates, e: residuals), the summaries give a rigorous lower bound of the distance to the new centre
/// c; with the rounding margin coreset_margin(D) a row whose bound is >= its running min cannot improve
/// (its computed distance would not be below its running min) and is not read in full. The rows are the
/// leaves (<= kLeaf rows, splits at multiples of 8) of a binary tree (recursive bisection in summary space);
/// every node keeps a ball around its rows' summaries, the range of their residual norms and its largest
/// running min (value, smallest row index on ties); only the maxima along changed paths are recomputed and
/// the argmax is the root's. Steps come in batches: after the centre c_1, the root's argmax r is the next
/// greedy choice as long as no centre of the batch improves it (its running min is an upper bound of
/// every other row's after the batch), so up to kMaxBatch centres are chosen from one pass. The pass
/// descends from the root with the set of centres that may improve a row below (a node's bound >= its
/// maximum drops a centre), tests 8 rows at a time against each centre (8 axes with the group's terms as a
/// squared-distance threshold, then 32 axes with each row's terms), then, for float32 banks, a float16
/// copy of the row (||x - c|| >= ||h - c|| - ||x - h||), and reads the rest in full. Rows that are read
/// get exactly the exhaustive step's distance (the same dists function on the same stored values and
/// centre) and the same updates in the same order, so the indices and distances are identical.
/// Memory: a tree-ordered copy of the bank (and a float16 one of float32 banks), 2 N int64 + 5 N floats +
/// N * 32 halves, and per node 32 floats + 48 bytes (< N / 64 nodes).
class CoresetFilter {
 public:
  static constexpr int64_t kLeaf = 256;  // a node of more rows is split (every split at a multiple of 8 rows)
  static constexpr int64_t kMaxAxes = 32;
  CoresetFilter(const void* bank, int dtype, int64_t N, int64_t D, CoresetDistsFn dists, CoresetLeafFn leaf,
                CoresetSqDistFn sqd);
  static constexpr int kMaxBatch = 16;
  /// Greedy steps from the chosen centre `cur` (the caller has set mind[cur] = kCoresetChosen; cid its
  /// position in the list of centres). Also chooses, without a pass over the rows, the next rows while each
  /// is provably the next greedy choice (the current largest running min, smallest row on ties, and no
  /// centre of the batch improves it: computed distance >= its running min), at most max_batch - 1 of
  /// them: these go to more_rows / more_vals (their running min = the exhaustive step's value) and get
  /// mind = kCoresetChosen. Then one pass applies every centre of the batch, in order (each row: the
  /// exhaustive updates, strict <), and returns the new argmax (largest mind, smallest index on ties).
  /// `read` gets the number of (row, centre) full distances computed, `summaries` the number of row
  /// summaries read, `bad` is set when a computed distance is NaN/Inf.
  CoresetBest step(int64_t cur, int32_t cid, int64_t max_batch, float* mind, int32_t* assign, int64_t* more_rows,
                   float* more_vals, int64_t* n_more, int64_t* read, int64_t* summaries, bool* bad);
  /// Copy mind and recompute every node's largest running min (after steps taken without the filter).
  void refresh(const float* mind);

 private:
  struct Node {
    int64_t lo, hi;                 // positions [lo, hi)
    int32_t left, right, parent;    // -1: none (leaves have no children)
    float rho = 0.f, emin = 0.f, emax = 0.f;  // ball radius (scaled units), residual-norm range
    float maxv = -2.f;              // largest running min of its rows ...
    int64_t maxi = -1;              // ... and its smallest row on ties
  };
  void build();
  int32_t make_node(int64_t lo, int64_t hi, int32_t parent, const std::vector<float>& u);
  void leaf_max(int32_t n);
  void combine(int32_t n);
  bool visit(int32_t n, uint32_t active);
  void centre_summary(const float* c, int i);
  void mark_chosen(int64_t row);
  const void* bank_;
  int dtype_;
  int64_t N_, D_, N8_ = 0, K_ = 0, Kp_ = 0;
  CoresetDistsFn dists_;
  CoresetLeafFn leaf_;
  CoresetSqDistFn sqd_;
  int64_t leaf_rows_ = kLeaf;
  float mD_, mK_ = 0.f, tiny_;
  double scale_ = 1.0;
  std::vector<double> mu_, p_, y_;  // mean, axes (D x Kp, row-major), workspace
  std::vector<int64_t> perm_;       // position -> row
  std::vector<int64_t> ipos_;       // row -> position
  std::vector<char> data_;          // the rows in tree order (same stored values)
  std::vector<uint16_t> h16_;       // float32 banks: the rows in tree order rounded to float16 ...
  std::vector<float> h16err_;       // ... and >= ||x - float16(x)|| per position (a last test before a full read)
  std::vector<uint16_t> hs1_, hs2_; // summaries in tree order (see CoresetLeafArgs), float16 bits
  std::vector<float> en_, sa_, se_; // per position (padded to N8_)
  std::vector<float> gb_;           // per group of 8 positions: 4 floats (see CoresetLeafArgs::gb)
  std::vector<float> mind_t_;       // running squared min distance in tree order (mirrors mind; padding -1)
  std::vector<Node> nodes_;         // preorder: children after their parent
  std::vector<float> q_;            // ball centres, Kp floats per node
  std::vector<int32_t> leaf_of_;    // group of 8 positions -> its leaf
  std::vector<int64_t> cand_;          // kMaxBatch x (leaf size + 8) candidate positions
  std::vector<int64_t> cand2_;
  std::vector<float> cand_d2_;
  // the current batch
  int nc_ = 0;
  std::vector<float> cv_;              // the centres, kMaxBatch x D floats
  std::vector<float> acs_;             // their summaries, kMaxBatch x Kp
  CoresetCentreSummary cs_[kMaxBatch];
  int32_t cids_[kMaxBatch] = {};
  int64_t counts_[kMaxBatch] = {};
  float* mind_ = nullptr;
  int32_t* assign_ = nullptr;
  int64_t read_ = 0, summ_ = 0;
  bool bad_ = false;
  CoresetLeafArgs la_;
};

}  // namespace fastad::cpu
