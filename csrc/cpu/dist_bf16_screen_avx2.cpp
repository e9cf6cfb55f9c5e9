// The bf16 screen of exact float32 k-NN and group_min, on the bf16 GEMM driver of dist_bf16_gemm.h:
//   * knn_f32_screen_bf16: exact float32 k-NN through a bf16 screen (identical answers to knn_f32_avx2);
//   * group_min_f32_screen_bf16: the same screen for group_min (k = 1 per group; identical to
//     group_min_f32_avx2: per group the smallest (s^, j) among its survivors, then its exact distance).
// Both share one screening pass (ScreenEpi::scan with a knn or a per-group threshold policy) and one
// re-scoring pass (rescore_rows with a knn or a group_min writer); the bound's terms and its evaluation
// are in bf16_screen_bound.h (shared with MuSc's screen, musc_screen_avx2.cpp).
//
// The micro-kernel is micro_bf16_avx512 (csrc/cpu/dist_micro_avx512bf16.cpp, 24 x 16 zmm tile over bf16
// pair panels) or, where the CPU lacks AVX512-BF16 and FASTAD_BF16_EMULATE=1 asks for it (tests), the
// scalar emulation of cpu/bf16_emu.h, which rounds bit for bit as the hardware does.
// This file is compiled with -mavx2 -mfma (*_avx2.cpp) and used only when use_avx2_path().
//
// ---- The screen (knn_f32_screen_bf16): why its answers equal the fp32 path's ---------------------
// The fp32 path (knn_f32_avx2, l2 / sqeuclidean) centres rows by c (estimate_centre), x~ = fl(x - c),
// scores every pair by s^ = fl(b^ - 2 d^) (d^ = sequential fp32 FMA chain of q~ . b~ from 0, b^ = fp32
// |b~|^2 summed in four k % 4 chains then (a0 + a1) + (a2 + a3)), keeps the k smallest (s^, j) (ties:
// smaller j; NaN and +inf scores never enter), then re-ranks those k by exact direct-difference
// distances. The screen computes s' = fl(b' - 2 d') with d' the bf16 GEMM of x' = bf16(x~) (fp32
// accumulation) and b' = fp32 |b~|^2 (another summation order), and a bound E >= |s^ - s'|:
//   |d^ - q~.b~| <= g |q~||b~|              (D roundings of one FMA chain, g = gamma_D = Du / (1 - Du), u = 2^-24)
//   |d' - q'.b'| <= g |q'||b'| + D 2^-126   (D rounded steps; FTZ on each result loses < 2^-126)
//   |q'.b' - q~.b~| <= |q' - q~||b~| + |q'||b' - b~|           (Cauchy-Schwarz)
//   |b' - b^| <= 2 g |b~|^2                 (both within g |b~|^2 of the exact |b~|^2)
// so with P >= max(|q~|, |q'|), e >= |q' - q~| (per query) and R >= max(|b~|, |b'|), f >= |b' - b~| (per
// bank row), all from fp32 sums inflated by 1 / (1 - (D + 2) u) plus D 2^-125 (underflowed squares),
//   Delta = |(b' - 2 d') - (b^ - 2 d^)| <= P X + e Y + Z,  X = 4 g R + 2 f,  Y = 2 R,  Z = 2 g R^2 + D 2^-124,
// and with the final roundings of s^ and s' (u |s^| + u |s'|), |s^ - s'| <= (Delta + 2u |s'|) / (1 - u).
// The code evaluates E = (P X + e Y + Z)(1 + 2^-16) + 2^-21 |s'| in fp32, which also covers the
// rounding of evaluating E and of lo = fl(s' - E), up = fl(s' + E) (all terms are positive).
// Then lo <= s^ <= up for every pair. Let U be the k-th smallest up over the query's rows (j != i with
// exclude_self). Every row j of the fp32 path's top k has s^_j <= (k-th smallest s^) <= U, hence lo_j <= U:
// keeping every row with lo <= U (NaN lo kept) keeps the fp32 top k. The survivors are re-scored with
// the fp32 path's own arithmetic (s^ above, bit-identical; 8 rows per AVX2 vector), the k smallest (s^, j) taken and
// re-ranked exactly as the fp32 path does: identical indices and distances. A query whose survivors
// overflow a bounded list (e.g. thousands of identical rows), or a bank row whose b' is not finite,
// makes the whole call return false and the caller runs the fp32 path (same answers, bounded memory).
// group_min: the same bound, with U the running minimum up of each group (a skipped group: -inf).
// Survivor fractions measured: 0.002-0.034% of pairs (knn, k = 1 / 9, N = 65536), 0.2-0.3% (group_min).
#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/bf16_screen_bound.h"
#include "cpu/dist_bf16_gemm.h"
#include "cpu/dist_gemm_common.h"
#include "cpu/dist_kernels.h"
#include "cpu/microkernel_avx2.h"
#include "cpu/topk.h"

namespace fastad::cpu {

namespace {

using namespace bf16gemm;  // NOLINT: the driver's constants and buffers

// Screen: running k-th smallest upper bound per query and the list of rows whose lower bound can beat it.
struct Cand {
  float lo;
  int64_t j;
};

struct ScreenEpi {
  const Kern* kern;
  const float* b;
  const float* c;
  int64_t D, k, s0;
  bool exclude_self;
  int64_t gs, G;               // group mode (group_min) when gs > 0: one running minimum per group
  const int64_t* exclude;      // group mode: group to skip per query (global rows), or nullptr
  float *beta, *X, *Y, *Z;     // per bank row of the block
  const float *P, *E;          // per query of the superblock
  float* ub;                   // knn: [qs * k] max-heaps of upper bounds; groups: [qs * G] minima (-inf: skipped)
  int64_t* ucnt;
  std::vector<Cand>* cand;     // [qs]
  int64_t cap;
  std::atomic<bool>* abort;
  screen::Bound bound;

  bool pack(int64_t j0, int64_t nc, uint32_t* Bp) {
    if (abort->load(std::memory_order_relaxed)) return false;
    const bool ok = pack_screen_block(*kern, b, j0, nc, D, c, Bp, [&](int64_t jj, const float* sums) {
      if (!std::isfinite(sums[0])) {  // the fp32 path reports (or handles) this row itself
        abort->store(true);
        return false;
      }
      beta[jj] = sums[0];
      bound.bank_terms(sums, D, X + jj, Y + jj, Z + jj);
      return true;
    });
    if (!ok) return false;
    for (int64_t jj = nc; jj < round_up(nc, 8); ++jj) beta[jj] = kInf, X[jj] = Y[jj] = Z[jj] = 0.f;
    return true;
  }

  static void heap_push(float* h, int64_t& n, int64_t k, float v) {  // max-heap of the k smallest values
    if (n < k) {
      h[n++] = v;
      std::push_heap(h, h + n);
    } else {
      std::pop_heap(h, h + n);
      h[n - 1] = v;
      std::push_heap(h, h + n);
    }
  }

  // Keeps the candidates a threshold (per row j: thr(j)) has not passed; false when too many remain.
  template <class Thr>
  bool prune(std::vector<Cand>& cl, Thr thr) {
    if (static_cast<int64_t>(cl.size()) < cap) return true;
    cl.erase(std::remove_if(cl.begin(), cl.end(), [&](const Cand& x) { return x.lo > thr(x.j); }), cl.end());
    if (static_cast<int64_t>(cl.size()) * 2 <= cap) return true;
    abort->store(true);
    return false;
  }

  // Threshold policies of scan(): knn keeps one running k-th smallest upper bound per query (a max-heap
  // of the k smallest up values), group_min one running minimum upper bound per group.
  struct KnnSel {
    float* h;
    int64_t& n;
    int64_t k, self;
    float thr;
    __m256 vthr(int64_t, int64_t) const { return _mm256_set1_ps(thr); }
    bool admit(int64_t j, float lo) const { return !(lo > thr) && j != self; }  // NaN lo kept
    void update(int64_t, float up) {
      if (up < thr) {
        heap_push(h, n, k, up);
        thr = n < k ? kInf : h[0];
      }
    }
    float limit(int64_t) const { return thr; }
  };
  struct GroupSel {
    float* U;  // [G]; a skipped group holds -inf
    int64_t gs, ex;
    __m256 vthr(int64_t ja, int64_t jb) const {  // the loosest threshold of the groups of rows ja..jb
      float tmax = U[ja / gs];
      for (int64_t g2 = ja / gs + 1; g2 <= jb / gs; ++g2) tmax = std::max(tmax, U[g2]);
      return _mm256_set1_ps(tmax);
    }
    bool admit(int64_t j, float lo) const { return j / gs != ex && !(lo > U[j / gs]); }
    void update(int64_t j, float up) {
      if (up < U[j / gs]) U[j / gs] = up;
    }
    float limit(int64_t j) const { return U[j / gs]; }
  };

  // One query row of a tile: lo = s' - E and up = s' + E of bank rows j0 .. j0 + nc - 1 (see the
  // comment at the top); every row whose lo can beat the policy's threshold becomes a candidate, and
  // its up tightens the threshold.
  template <class Sel>
  bool scan(const float* row, int64_t qi, int64_t j0, int64_t nc, Sel& sel) {
    alignas(32) float lov[8], upv[8];
    const __m256 m2 = _mm256_set1_ps(-2.f);
    const __m256 pv = _mm256_set1_ps(P[qi]), ev = _mm256_set1_ps(E[qi]);
    std::vector<Cand>& cl = cand[qi];
    for (int64_t jj = 0; jj < nc; jj += 8) {
      const __m256 s = _mm256_fmadd_ps(m2, _mm256_loadu_ps(row + jj), _mm256_loadu_ps(beta + jj));
      __m256 lo, up;
      screen::lo_up8(s, pv, ev, X + jj, Y + jj, Z + jj, lo, up);
      const __m256 tv = sel.vthr(j0 + jj, j0 + std::min(jj + 7, nc - 1));
      unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(lo, tv, _CMP_NGT_UQ)));
      if (!m) continue;
      _mm256_store_ps(lov, lo);
      _mm256_store_ps(upv, up);
      while (m) {
        const int64_t l = __builtin_ctz(m), cc = jj + l;
        m &= m - 1;
        if (cc >= nc) break;
        if (!sel.admit(j0 + cc, lov[l])) continue;
        cl.push_back(Cand{lov[l], j0 + cc});
        sel.update(j0 + cc, upv[l]);
      }
      if (!prune(cl, [&sel](int64_t j) { return sel.limit(j); })) return false;
    }
    return true;
  }

  bool operator()(int64_t i0, int64_t mc, int64_t j0, int64_t nc, const float* S, int64_t ld) {
    for (int64_t r = 0; r < mc; ++r) {
      const int64_t qi = i0 + r;
      if (gs == 0) {
        int64_t& n = ucnt[qi];
        KnnSel sel{ub + qi * k, n, k, exclude_self ? s0 + qi : -1, n < k ? kInf : ub[qi * k]};
        if (!scan(S + r * ld, qi, j0, nc, sel)) return false;
      } else {
        GroupSel sel{ub + qi * G, gs, exclude ? exclude[s0 + qi] : -1};
        if (!scan(S + r * ld, qi, j0, nc, sel)) return false;
      }
    }
    return !abort->load(std::memory_order_relaxed);
  }
};

// The fp32 path's score s^ = fl(b^ - 2 d^) of 8 bank rows (one per AVX2 lane), bit for bit (see the
// comment at the top): per lane, x = fl(b_p - c_p); d = fma(q~_p, x, d) for p = 0, 1, ... from 0;
// a[p % 4] = fma(x, x, a[p % 4]); b^ = (a0 + a1) + (a2 + a3); s^ = fma(-2, d, b^). 8 x 8 blocks of the rows are transposed so that
// one vector holds the 8 rows' values at one depth.
inline void fp32_path_score8(const float* qc, const float* const* rows, const float* c, int64_t D, float* out) {
  __m256 d = _mm256_setzero_ps(), a[4] = {d, d, d, d};
  int64_t p = 0;
  for (; p + 8 <= D; p += 8) {
    __m256 t0 = _mm256_loadu_ps(rows[0] + p), t1 = _mm256_loadu_ps(rows[1] + p), t2 = _mm256_loadu_ps(rows[2] + p),
           t3 = _mm256_loadu_ps(rows[3] + p), t4 = _mm256_loadu_ps(rows[4] + p), t5 = _mm256_loadu_ps(rows[5] + p),
           t6 = _mm256_loadu_ps(rows[6] + p), t7 = _mm256_loadu_ps(rows[7] + p);
    mk::transpose8(t0, t1, t2, t3, t4, t5, t6, t7);
    const __m256 t[8] = {t0, t1, t2, t3, t4, t5, t6, t7};
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) {
      const __m256 x = _mm256_sub_ps(t[u], _mm256_set1_ps(c[p + u]));
      d = _mm256_fmadd_ps(_mm256_set1_ps(qc[p + u]), x, d);
      a[u & 3] = _mm256_fmadd_ps(x, x, a[u & 3]);  // (p + u) & 3 == u & 3: p is a multiple of 8
    }
  }
  for (; p < D; ++p) {
    const __m256 v = _mm256_setr_ps(rows[0][p], rows[1][p], rows[2][p], rows[3][p], rows[4][p], rows[5][p], rows[6][p],
                                    rows[7][p]);
    const __m256 x = _mm256_sub_ps(v, _mm256_set1_ps(c[p]));
    d = _mm256_fmadd_ps(_mm256_set1_ps(qc[p]), x, d);
    a[p & 3] = _mm256_fmadd_ps(x, x, a[p & 3]);
  }
  const __m256 bn = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
  _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_set1_ps(-2.f), d, bn));
}

std::atomic<int64_t> g_screen_pairs{0}, g_screen_survivors{0}, g_screen_calls{0}, g_screen_fallbacks{0};

}  // namespace

void bf16_screen_stats(int64_t* out) {
  out[0] = g_screen_calls.load(), out[1] = g_screen_pairs.load(), out[2] = g_screen_survivors.load();
  out[3] = g_screen_fallbacks.load();
}
void bf16_screen_stats_reset() {
  g_screen_calls = 0, g_screen_pairs = 0, g_screen_survivors = 0, g_screen_fallbacks = 0;
}
void bf16_screen_count(int64_t calls, int64_t pairs, int64_t survivors, int64_t fallbacks) {
  g_screen_calls += calls, g_screen_pairs += pairs, g_screen_survivors += survivors, g_screen_fallbacks += fallbacks;
}

namespace {

// Re-scores the candidates of one query that pass keep(j, lo) with the fp32 path's arithmetic, 8 at a
// time, calling take(s^, j) for each (in candidate order). qc: the centred query row.
template <class Keep, class Take>
void rescore(const std::vector<Cand>& cl, const float* qc, const float* b, const float* c, int64_t D,
             std::vector<int64_t>& keep, Keep keep_fn, Take take) {
  keep.clear();
  for (const Cand& x : cl)
    if (keep_fn(x)) keep.push_back(x.j);
  const int64_t nk = static_cast<int64_t>(keep.size());
  for (int64_t t0 = 0; t0 < nk; t0 += 8) {
    const float* rows8[8];
    float s8[8];
    for (int l = 0; l < 8; ++l) rows8[l] = b + keep[std::min(t0 + l, nk - 1)] * D;
    for (int64_t t = t0 + 8; t < std::min(nk, t0 + 16); ++t) {  // the next group's rows (mostly in DRAM)
      const char* nb = reinterpret_cast<const char*>(b + keep[t] * D);
      for (int64_t off = 0; off < D * 4; off += 64) _mm_prefetch(nb + off, _MM_HINT_T0);
    }
    fp32_path_score8(qc, rows8, c, D, s8);
    for (int64_t l = 0; l < std::min<int64_t>(8, nk - t0); ++l) take(s8[l], keep[t0 + l]);
  }
}

// The screen's sweep (shared by knn and group_min): centre, query superblocks (packed bf16 + per-query
// bound terms), the bf16 GEMM with ScreenEpi, then finish(s0, qs, epi_state) per superblock, which
// re-scores the survivors and writes the outputs; it returns the number of survivors, or -1 to give up.
struct ScreenState {
  std::vector<float> ub;
  std::vector<int64_t> ucnt;
  std::vector<std::vector<Cand>> cand;
};

template <class Init, class Finish>
bool screen_run(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t k, int64_t gs,
                const int64_t* exclude, bool exclude_self, std::vector<float>& c, Init init, Finish finish) {
  const Kern kern = current_kern();
  c.assign(D, 0.f);
  knn_centre_avx2(b, N, D, c.data());
  const int64_t Dp = round_up(D, 2), D2 = Dp / 2;
  const int64_t G = gs > 0 ? N / gs : 0;
  const int64_t cap = std::max<int64_t>(1024, 8 * (gs > 0 ? G : k));
  // Memory: per query at most cap candidates (16 B) and k (or G) upper bounds: <= 2^24 of each per superblock.
  const int64_t qcap = std::max<int64_t>(MR, (int64_t(1) << 24) / std::max(cap, gs > 0 ? G : k));
  const int64_t QS = superblock_rows(Q, D2, std::min(kScreenMaxQ, qcap));
  const screen::Bound bound(D);
  std::atomic<bool> abort{false};
  int64_t pairs = 0, survivors = 0;
  for (int64_t s0 = 0; s0 < Q && !abort; s0 += QS) {
    const int64_t qs = std::min(QS, Q - s0), panels = (qs + MR - 1) / MR;
    uint32_t* A = tl_qpack.get(panels * MR * D2);
    std::vector<float> P(qs), E(qs);
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      std::vector<uint16_t> rows(MR * Dp);
      float sums[3 * MR];
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t nr = std::min(MR, qs - p * MR);
        kern.rows(q + (s0 + p * MR) * D, nr, D, c.data(), rows.data(), Dp, sums);
        panelize<MR>(rows.data(), Dp, nr, Dp, A + p * MR * D2);
        for (int64_t r = 0; r < nr; ++r) bound.query_terms(sums + 3 * r, &P[p * MR + r], &E[p * MR + r]);
      }
    });
    ScreenState stt;
    stt.ub.resize(static_cast<size_t>(qs * (gs > 0 ? G : k)));
    stt.ucnt.assign(static_cast<size_t>(qs), 0);
    stt.cand.resize(static_cast<size_t>(qs));
    init(s0, qs, stt);
    for_query_ranges(qs, [&](int64_t qa, int64_t qb) {
      ScreenEpi epi{&kern, b, c.data(), D, k, s0, exclude_self, gs, G, exclude, tl_f1.get(kNC), tl_f2.get(kNC),
                    tl_f3.get(kNC), tl_f4.get(kNC), P.data(), E.data(), stt.ub.data(), stt.ucnt.data(), stt.cand.data(),
                    cap, &abort, bound};
      sweep_bf16(kern, A, qa, qb, 0, N, D, epi);
    });
    if (abort) break;
    const int64_t sv = finish(s0, qs, stt);
    if (sv < 0) {
      abort = true;
      break;
    }
    survivors += sv;
    pairs += qs * (N - (exclude_self ? 1 : 0));
  }
  g_screen_calls += 1;
  if (abort) {
    g_screen_fallbacks += 1;
    return false;
  }
  g_screen_pairs += pairs, g_screen_survivors += survivors;
  return true;
}

// Per query of a superblock: the candidates that pass row.keep(cand) re-scored with the fp32 path's
// arithmetic (row.take(s^, j)), then row.write(gi, qrow) writes the outputs. make_row() gives each
// thread its writer (with its scratch). Returns the number of survivors re-scored.
template <class MakeRow>
int64_t rescore_rows(const float* q, const float* b, const float* c, int64_t D, int64_t s0, int64_t qs,
                     ScreenState& stt, MakeRow make_row) {
  std::vector<int64_t> surv(static_cast<size_t>(qs), 0);
  at::parallel_for(0, qs, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> qc(D);
    std::vector<int64_t> keep;
    auto row = make_row();
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t gi = s0 + r;
      const float* qrow = q + gi * D;
      for (int64_t p = 0; p < D; ++p) qc[p] = qrow[p] - c[p];
      row.begin(r, gi, stt);
      rescore(stt.cand[r], qc.data(), b, c, D, keep, [&](const Cand& x) { return row.keep(x); },
              [&](float s, int64_t j) { row.take(s, j); });
      surv[r] = static_cast<int64_t>(keep.size());
      row.write(gi, qrow);
    }
  });
  int64_t tot = 0;
  for (int64_t v : surv) tot += v;
  return tot;
}

// knn: survivors are lo <= U (the final k-th smallest upper bound); keep the fp32 path's k smallest
// (s^, j) among them and re-rank those exactly, as knn_f32_avx2 does.
struct KnnRow {
  const float* b;
  int64_t D, k;
  Metric metric;
  float* out_d;
  int64_t* out_i;
  float U = kInf;
  std::vector<ScoreIdx> sc;
  void begin(int64_t r, int64_t, const ScreenState& stt) {
    U = stt.ucnt[r] < k ? kInf : stt.ub[r * k];
    sc.clear();
  }
  bool keep(const Cand& x) const { return !(x.lo > U); }
  void take(float s, int64_t j) {
    if (s < kInf) sc.push_back(ScoreIdx{s, j});  // NaN / +inf never enter the fp32 path's top k
  }
  void write(int64_t gi, const float* qrow) {
    gemm::finish_knn_row(sc.data(), static_cast<int64_t>(sc.size()), k, metric, 0.f,
                         [&](int64_t j) { return exact_sq_dist_avx2(qrow, b + j * D, D); }, out_d + gi * k,
                         out_i + gi * k);
  }
};

// group_min: per group, the survivors (lo <= the group's minimum upper bound); the smallest (s^, j) wins
// (as GroupEpilogue: +inf never wins), then its exact distance.
struct GroupRow {
  const float* b;
  int64_t D, gs, G;
  Metric metric;
  const int64_t* exclude;
  float* out;
  std::atomic<bool>* nan;
  std::vector<float> best;
  std::vector<int64_t> arg;
  const float* U = nullptr;
  int64_t ex = -1;
  void begin(int64_t r, int64_t gi, const ScreenState& stt) {
    U = stt.ub.data() + r * G;
    ex = exclude ? exclude[gi] : -1;
    best.assign(G, kInf);
    arg.assign(G, -1);
  }
  bool keep(const Cand& x) const { return x.j / gs != ex && !(x.lo > U[x.j / gs]); }
  void take(float s, int64_t j) {
    const int64_t g = j / gs;
    if (std::isnan(s)) *nan = true;  // the fp32 path's vector minimum is order-dependent for NaN
    if (s < best[g] || (s == best[g] && arg[g] >= 0 && j < arg[g])) best[g] = s, arg[g] = j;
  }
  void write(int64_t gi, const float* qrow) {
    float* o = out + gi * G;
    for (int64_t g2 = 0; g2 < G; ++g2) {
      if (arg[g2] < 0) {
        o[g2] = kInf;
        continue;
      }
      const float d2 = exact_sq_dist_avx2(qrow, b + arg[g2] * D, D);
      o[g2] = metric == Metric::L2 ? std::sqrt(d2) : d2;
    }
  }
};

}  // namespace

bool knn_f32_screen_bf16(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                         bool exclude_self, float* out_d, int64_t* out_i) {
  if (!(metric == Metric::L2 || metric == Metric::SqEuclidean)) return false;
  std::vector<float> c;
  auto init = [](int64_t, int64_t, ScreenState&) {};
  auto finish = [&](int64_t s0, int64_t qs, ScreenState& stt) -> int64_t {
    return rescore_rows(q, b, c.data(), D, s0, qs, stt, [&] { return KnnRow{b, D, k, metric, out_d, out_i}; });
  };
  return screen_run(q, b, Q, N, D, k, 0, nullptr, exclude_self, c, init, finish);
}

bool group_min_f32_screen_bf16(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t gs,
                               Metric metric, const int64_t* exclude, float* out) {
  if (!(metric == Metric::L2 || metric == Metric::SqEuclidean)) return false;
  const int64_t G = N / gs;
  std::vector<float> c;
  auto init = [&](int64_t s0, int64_t qs, ScreenState& stt) {
    std::fill(stt.ub.begin(), stt.ub.end(), kInf);
    if (exclude)
      for (int64_t r = 0; r < qs; ++r)
        if (exclude[s0 + r] >= 0) stt.ub[r * G + exclude[s0 + r]] = -kInf;  // a skipped group keeps nothing
  };
  auto finish = [&](int64_t s0, int64_t qs, ScreenState& stt) -> int64_t {
    std::atomic<bool> nan{false};
    const int64_t tot = rescore_rows(q, b, c.data(), D, s0, qs, stt,
                                     [&] { return GroupRow{b, D, gs, G, metric, exclude, out, &nan, {}, {}}; });
    return nan ? -1 : tot;
  };
  return screen_run(q, b, Q, N, D, 1, gs, exclude, false, c, init, finish);
}

}  // namespace fastad::cpu
