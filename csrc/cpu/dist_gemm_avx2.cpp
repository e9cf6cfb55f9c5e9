// AVX2/FMA distance GEMM with fused selection epilogues: the fast CPU path of knn and group_min.
//
// Scores are computed as a register-blocked GEMM in the BLIS style:
//   * queries are packed once per "superblock" into MR-row panels laid out [k][MR] (centred);
//   * the bank is packed block by block (NC rows) into NR-row panels laid out [k][NR] (centred),
//     and its row norms are computed while packing (the bank_norms argument is not needed);
//   * the 6 x 16 micro-kernel of microkernel_avx2.h (12 ymm accumulators; shared with MuSc's Gram
//     tile) runs over KC-deep slices: the KC x 16 bank micro-panel stays in L1d while the MC x KC
//     query block streams from L2; where the CPU has AVX-512F, a 24 x 16 zmm kernel
//     (csrc/cpu/dist_micro_avx512.cpp) takes four query panels at a time, with bit-identical scores;
//   * when the whole depth D is accumulated, the [MC x NC] score tile (in L2, never Q x N) is turned
//     into scores alpha_j * dot + beta_j (knn: fused into its compare pass) and handed to the
//     epilogue: a running per-query top-k
//     (sorted buffer k <= 32, heap beyond) behind a vector threshold test, or a running per-group
//     min and argmin.
// Query norms are needed only for the winners; l2/sqeuclidean winners (knn) and group winners
// (group_min) are re-evaluated with exact
// (direct-difference) distances, so the returned distances are accurate to fp32 rounding even on
// non-centred data.
//
// Numerics: for l2/sqeuclidean both queries and bank are centred by c, an estimate of the bank mean
// (mean of at most kCentreSample evenly spaced rows). Any c gives the same exact distances; a c near
// the data keeps |q-c|^2 + |b-c|^2 close to |q-b|^2, so the expansion loses little to cancellation.
//
// Determinism: the score of a pair (i, j) is computed by the same instruction sequence whatever the
// blocking or the thread that computes it; the per-chunk top-k lists are merged under the total order
// (score, index), so results do not depend on the thread count.
#include <immintrin.h>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "cpu/dist_gemm_common.h"
#include "cpu/dist_kernels.h"
#include "cpu/microkernel_avx2.h"
#include "cpu/topk.h"

namespace fastad::cpu {

namespace {

using mk::micro_6x16;                            // the shared micro-kernel and packing (microkernel_avx2.h)
using mk::pack_a_panel;
using mk::pack_b_panel;
constexpr int64_t MR = mk::kMR;                 // query rows per micro-tile (6 x 2 ymm accumulators)
constexpr int64_t NR = mk::kNR;                 // bank rows per micro-tile (2 ymm)
constexpr int64_t kKcMax = 512;                 // depth per pass: bank micro-panel <= 512*16*4 = 32 KiB (L1d);
                                                // measured: 384-512 beat 256-320 by ~3% at D=384 and 1536
constexpr int64_t kMC = 96;                     // query rows per block: <= 96*512*4 = 192 KiB (L2);
                                                // 48-192 within noise at D=384 and 1536
constexpr int64_t kNCMax = 512;                 // bank rows per packed block ...
constexpr int64_t kBankBlockBytes = 2ll << 20;  // ... and at most 2 MiB of packed bank per thread, or
constexpr int64_t kBankBlockBytesSmallQ = 256ll << 10;  // 256 KiB when the sweep's packed queries fit in
constexpr int64_t kSmallQueryBytes = 4ll << 20;         // 4 MiB (e.g. 784 queries at D=384): then the
    // packed bank block, the prefetched next block and the query block all stay in L2 (1 MiB on Zen 4)
    // and packing costs half as much (160 rows at D=384: +0-1.6% at Q=784 against 512 rows); with more
    // queries, each bank block re-streams them from L3, and 512 rows were 0.5-0.8% faster (Q=12544).
constexpr int64_t kCentreSample = 2048;         // bank rows averaged to estimate the centre
constexpr int64_t kBankSplitMaxQ = 2048;        // at most this many queries: split the bank across threads
using gemm::kInf;
using gemm::kSortedMaxK;
using gemm::KnnEpilogue;  // running top-k (dist_gemm_common.h, shared with the bf16 GEMM)
using gemm::round_up;
using FBuf = gemm::ABuf<float>;

// Per-thread tiles of the sweep (bank pack, score tile, alpha/beta) and the caller's query pack.
struct SweepBufs {
  FBuf bpack, ctile, alpha, beta;
};
thread_local SweepBufs tl_sweep;
thread_local FBuf tl_qpack;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 4 floats from float32 or float16 (F16) rows, in the low half of a ymm.
inline __m256 load8_prefix4(const float* p) { return _mm256_castps128_ps256(_mm_loadu_ps(p)); }
inline __m256 load8_prefix4(const F16* p) {
  return _mm256_castps128_ps256(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// |x - y|^2 with two 8-lane accumulators, then a scalar tail (fixed order: deterministic). Rows of
// float32 or float16 (F16: converted exactly, so the result equals that of the upcast rows).
template <class TX, class TY>
inline float sq_dist(const TX* x, const TY* y, int64_t d) {
  using mk::detail::load1;
  using mk::detail::load8;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= d; t += 16) {
    const __m256 v0 = _mm256_sub_ps(load8(x + t), load8(y + t));
    const __m256 v1 = _mm256_sub_ps(load8(x + t + 8), load8(y + t + 8));
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
  }
  if (t + 8 <= d) {
    const __m256 v0 = _mm256_sub_ps(load8(x + t), load8(y + t));
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    t += 8;
  }
  // The tail, written out as the compiler had vectorised `s += v * v` before float16 rows (so that the
  // float32 results stay bit for bit, and every element type and call site rounds alike): groups of 4
  // squares rounded, then added in order; the last d % 4 as FMAs.
  __m128 s = _mm_set_ss(hsum(_mm256_add_ps(a0, a1)));
  for (; t + 4 <= d; t += 4) {
    const __m128 v = _mm_sub_ps(_mm256_castps256_ps128(load8_prefix4(x + t)), _mm256_castps256_ps128(load8_prefix4(y + t)));
    const __m128 p = _mm_mul_ps(v, v);
    s = _mm_add_ss(s, p);
    s = _mm_add_ss(s, _mm_shuffle_ps(p, p, 1));
    s = _mm_add_ss(s, _mm_shuffle_ps(p, p, 2));
    s = _mm_add_ss(s, _mm_shuffle_ps(p, p, 3));
  }
  float r = _mm_cvtss_f32(s);
  for (; t < d; ++t) {
    const float v = load1(x + t) - load1(y + t);
    r = std::fma(v, v, r);
  }
  return r;
}

// Squared norms of the NR rows of one packed bank panel P[k * NR + r] (the centred rows |b - c|^2),
// read back from the panel just packed (in L1/L2) instead of from the bank rows (evicted to L3/DRAM by
// then). Every row goes through the same lane-wise sequence (four partial sums by k % 4, then
// (s0 + s1) + (s2 + s3)), so its norm does not depend on its position in a panel or block.
inline void panel_sq_norms(const float* P, int64_t D, float* out) {
  __m256 lo[4], hi[4];
  for (int u = 0; u < 4; ++u) lo[u] = hi[u] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 4 <= D; k += 4) {
    for (int u = 0; u < 4; ++u) {
      const __m256 x = _mm256_load_ps(P + (k + u) * NR), y = _mm256_load_ps(P + (k + u) * NR + 8);
      lo[u] = _mm256_fmadd_ps(x, x, lo[u]);
      hi[u] = _mm256_fmadd_ps(y, y, hi[u]);
    }
  }
  for (int u = 0; k < D; ++k, ++u) {
    const __m256 x = _mm256_load_ps(P + k * NR), y = _mm256_load_ps(P + k * NR + 8);
    lo[u] = _mm256_fmadd_ps(x, x, lo[u]);
    hi[u] = _mm256_fmadd_ps(y, y, hi[u]);
  }
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(lo[0], lo[1]), _mm256_add_ps(lo[2], lo[3])));
  _mm256_storeu_ps(out + 8, _mm256_add_ps(_mm256_add_ps(hi[0], hi[1]), _mm256_add_ps(hi[2], hi[3])));
}

// Bank rows per packed block for a sweep over `rows` queries: a multiple of NR, at most kNCMax and
// kBankBlockBytes (kBankBlockBytesSmallQ for few queries) of packed data.
inline int64_t bank_block_rows(int64_t D, int64_t rows) {
  const int64_t bytes = rows * D * 4 <= kSmallQueryBytes ? kBankBlockBytesSmallQ : kBankBlockBytes;
  const int64_t nc = bytes / (4 * D) / NR * NR;
  return std::clamp<int64_t>(nc, NR, kNCMax);
}

// Centre for l2/sqeuclidean: mean of at most kCentreSample evenly spaced bank rows (float64 sums).
template <class T>
void estimate_centre(const T* b, int64_t N, int64_t D, float* c) {
  std::vector<double> acc(D, 0.0);
  const int64_t step = std::max<int64_t>(1, N / kCentreSample);
  int64_t cnt = 0;
  constexpr int64_t kAhead = 4;  // sampled rows prefetched ahead: they are step rows apart, mostly in DRAM
  for (int64_t j = 0; j < N && cnt < kCentreSample; j += step, ++cnt) {
    if (j + kAhead * step < N) {
      const char* nb = reinterpret_cast<const char*>(b + (j + kAhead * step) * D);
      for (int64_t off = 0; off < D * int64_t(sizeof(T)); off += 64) _mm_prefetch(nb + off, _MM_HINT_T0);
    }
    for (int64_t t = 0; t < D; ++t) acc[t] += mk::detail::load1(b + j * D + t);
  }
  for (int64_t t = 0; t < D; ++t) {
    c[t] = cnt ? static_cast<float>(acc[t] / cnt) : 0.f;
    if (!std::isfinite(c[t])) c[t] = 0.f;  // NaN/Inf rows are reported by the sweep's norm check
  }
}

// Packs queries [0, rows) of q (row-major) into ceil(rows / MR) panels of D * MR floats.
template <class T>
void pack_queries(const T* q, int64_t rows, int64_t D, const float* c, float* A) {
  const int64_t panels = (rows + MR - 1) / MR;
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) pack_a_panel(q + p * MR * D, std::min(MR, rows - p * MR), D, c, A + p * MR * D);
  });
}

// Scores queries [qa, qb) of the packed superblock A (qa a multiple of MR) against bank rows [ja, jb):
// S[r, c] = alpha_j * dot(q - c, b - c) + beta_j for j = j0 + c, with
//   l2/sqeuclidean: alpha = -2, beta = |b - c|^2;  cosine: alpha = -1/|b| (0 for a zero row), beta = 0;
//   ip: alpha = -1, beta = 0;  padding columns: alpha = 0, beta = +inf.
// Each finished [mc x nc] tile goes to epi(i0, mc, j0, nc, S, ldS, alpha, beta) (i0 relative to the
// superblock). With Epi::kScales the tile holds the raw dots and the epilogue applies alpha_j * dot + beta_j
// itself (the same single FMA, so the same scores) while it compares them against its threshold: one pass
// over the tile instead of a scaling pass plus a compare pass (knn). Otherwise the sweep scales the tile.
template <class T, class Epi>
void sweep(const char* op, const float* A, int64_t qa, int64_t qb, const T* b, int64_t ja, int64_t jb, int64_t D,
           const float* c, Metric metric, Epi& epi) {
  SweepBufs& tb = tl_sweep;
  const int64_t NC = bank_block_rows(D, qb - qa);
  float* Bp = tb.bpack.get(NC * D);
  float* C = tb.ctile.get(kMC * NC);
  float* alpha = tb.alpha.get(NC);
  float* beta = tb.beta.get(NC);
  [[maybe_unused]] const bool wide = use_avx512_micro();  // AVX-512 24 x 16 micro-kernel (same scores)
  const int64_t nkb = (D + kKcMax - 1) / kKcMax;
  const int64_t KC = (D + nkb - 1) / nkb;
  for (int64_t j0 = ja; j0 < jb; j0 += NC) {
    const int64_t nc = std::min(NC, jb - j0), ncp = round_up(nc, NR);
    for (int64_t p = 0; p < ncp / NR; ++p) {
      pack_b_panel(b + (j0 + p * NR) * D, std::min(NR, nc - p * NR), D, c, Bp + p * NR * D);
      panel_sq_norms(Bp + p * NR * D, D, beta + p * NR);  // |b - c|^2, overwritten below
    }
    for (int64_t jj = 0; jj < ncp; ++jj) {
      if (jj >= nc) {
        alpha[jj] = 0.f;
        beta[jj] = kInf;
        continue;
      }
      const float nrm = beta[jj];
      TORCH_CHECK(std::isfinite(nrm), op, ": bank must hold finite values, but row ", j0 + jj,
                  " contains NaN or Inf (or values whose square overflows float32)");
      switch (metric) {
        case Metric::L2:
        case Metric::SqEuclidean: alpha[jj] = -2.f, beta[jj] = nrm; break;
        case Metric::Cosine: alpha[jj] = nrm > 0.f ? -1.f / std::sqrt(nrm) : 0.f, beta[jj] = 0.f; break;
        default: alpha[jj] = -1.f, beta[jj] = 0.f; break;
      }
    }
    // Software prefetch of the next bank block, spread over this block's micro-kernel sweeps, so that
    // its packing reads from cache instead of stalling on DRAM.
    const char* pf = reinterpret_cast<const char*>(b + (j0 + nc) * D);
    const char* pf_end = reinterpret_cast<const char*>(b + std::min(jb, j0 + nc + NC) * D);
    const int64_t sweeps = ((qb - qa + kMC - 1) / kMC) * ((D + KC - 1) / KC) * (ncp / NR);
    const int64_t pf_step = pf < pf_end ? ((pf_end - pf) / 64 + sweeps - 1) / sweeps : 0;
    for (int64_t i0 = qa; i0 < qb; i0 += kMC) {
      const int64_t mc = std::min(kMC, qb - i0), mcp = round_up(mc, MR);
      for (int64_t pc = 0; pc < D; pc += KC) {
        const int64_t kc = std::min(KC, D - pc);
        for (int64_t jr = 0; jr < ncp; jr += NR) {
          for (int64_t t = 0; t < pf_step && pf < pf_end; ++t, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
          const float* Bpanel = Bp + (jr / NR) * NR * D + pc * NR;
          int64_t ir = 0;
#if FASTAD_HAVE_AVX512
          if (wide)  // 4 query panels at a time (bit-identical to 4 calls of micro_6x16)
            for (; ir + 4 * MR <= mcp; ir += 4 * MR)
              micro_24x16_avx512(kc, A + ((i0 + ir) / MR) * MR * D + pc * MR, MR * D, Bpanel, C + ir * NC + jr, NC,
                                 pc > 0);
#endif
          for (; ir < mcp; ir += MR)
            micro_6x16(kc, A + ((i0 + ir) / MR) * MR * D + pc * MR, Bpanel, C + ir * NC + jr, NC, pc > 0);
        }
      }
      if constexpr (!Epi::kScales) {
        for (int64_t r = 0; r < mc; ++r) {
          float* row = C + r * NC;
          for (int64_t jj = 0; jj < ncp; jj += 8)
            _mm256_storeu_ps(row + jj, _mm256_fmadd_ps(_mm256_loadu_ps(alpha + jj), _mm256_loadu_ps(row + jj),
                                                       _mm256_loadu_ps(beta + jj)));
        }
      }
      epi(i0, mc, j0, nc, C, NC, alpha, beta);
    }
  }
}

inline float seg_min(const float* x, int64_t n) {
  int64_t t = 0;
  float m = kInf;
  if (n >= 8) {
    __m256 v = _mm256_loadu_ps(x);
    for (t = 8; t + 8 <= n; t += 8) v = _mm256_min_ps(v, _mm256_loadu_ps(x + t));
    __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_min_ps(s, _mm_movehl_ps(s, s));
    s = _mm_min_ss(s, _mm_movehdup_ps(s));
    m = _mm_cvtss_f32(s);
  }
  for (; t < n; ++t) m = std::min(m, x[t]);
  return m;
}

// Running per-group minimum score best[qi * G + g] and its bank row arg[qi * G + g] (superblock-relative
// rows). Equal minima keep the smaller bank index, whatever the blocking.
struct GroupEpilogue {
  float* best;
  int64_t* arg;
  int64_t G, gs, s0;
  const int64_t* exclude;

  static constexpr bool kScales = false;  // receives finished scores (the sweep applies alpha, beta)

  void operator()(int64_t i0, int64_t mc, int64_t j0, int64_t nc, const float* S, int64_t ld, const float*,
                  const float*) const {
    for (int64_t r = 0; r < mc; ++r) {
      const int64_t qi = i0 + r;
      const int64_t ex = exclude ? exclude[s0 + qi] : -1;
      const float* row = S + r * ld;
      float* out = best + qi * G;
      int64_t* oa = arg + qi * G;
      int64_t cc = 0;
      while (cc < nc) {
        const int64_t g = (j0 + cc) / gs;
        const int64_t end = std::min(nc, (g + 1) * gs - j0);
        if (g != ex) {
          const float m = seg_min(row + cc, end - cc);
          if (m < out[g]) {  // first column holding the minimum, 8 at a time
            const __m256 mv = _mm256_set1_ps(m);
            int64_t t = cc;
            for (; t + 8 <= end; t += 8) {
              const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + t), mv, _CMP_EQ_OQ));
              if (mask) {
                t += __builtin_ctz(static_cast<unsigned>(mask));
                break;
              }
            }
            while (row[t] != m) ++t;  // tail (or already there)
            out[g] = m;
            oa[g] = j0 + t;
          }
        }
        cc = end;
      }
    }
  }
};

// Superblock size: packed queries <= 16 MiB, equal-sized blocks, multiple of MR.
inline int64_t superblock_rows(int64_t Q, int64_t D) { return gemm::superblock_rows(Q, 4 * D, MR); }

}  // namespace

float exact_sq_dist_avx2(const float* x, const float* y, int64_t d) { return sq_dist(x, y, d); }

void knn_centre_avx2(const float* b, int64_t N, int64_t D, float* c) { estimate_centre(b, N, D, c); }

namespace {

// knn_f32_avx2 over float32 or float16 (F16) rows: float16 rows are converted per packed panel (and per
// re-ranked pair), never as a whole, and give the results of float32 on their upcast, bit for bit.
template <class E>
void knn_avx2(const E* q, const E* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric, bool exclude_self,
              float* out_d, int64_t* out_i) {
  const bool centred = metric == Metric::L2 || metric == Metric::SqEuclidean;
  std::vector<float> c(D, 0.f);
  if (centred) estimate_centre(b, N, D, c.data());
  const int64_t T = std::max(1, at::get_num_threads());
  const int64_t QS = superblock_rows(Q, D);
  const bool heap = k > kSortedMaxK;
  for (int64_t s0 = 0; s0 < Q; s0 += QS) {
    const int64_t qs = std::min(QS, Q - s0), panels = (qs + MR - 1) / MR;
    float* A = tl_qpack.get(panels * MR * D);
    pack_queries(q + s0 * D, qs, D, c.data(), A);
    // Few queries: every thread sweeps all of them over its share of the bank; else split the queries.
    const int64_t nbc = (T > 1 && qs <= kBankSplitMaxQ && N >= 2 * NR * T) ? T : 1;
    const int64_t nqr = nbc == 1 ? std::min(T, panels) : 1;
    std::vector<ScoreIdx> st(static_cast<size_t>(nbc * qs * k));
    std::vector<int64_t> cnt(static_cast<size_t>(nbc * qs), 0);
    at::parallel_for(0, nbc * nqr, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t bc = t % nbc, qr = t / nbc;
        const int64_t qa = panels * qr / nqr * MR, qb = std::min(qs, panels * (qr + 1) / nqr * MR);
        if (qa >= qb) continue;
        KnnEpilogue epi{st.data() + bc * qs * k, cnt.data() + bc * qs, k, s0, exclude_self, heap};
        sweep("knn", A, qa, qb, b, N * bc / nbc, N * (bc + 1) / nbc, D, c.data(), metric, epi);
      }
    });
    // Merge the chunks' lists, re-rank exactly (l2/sqeuclidean), write the outputs.
    at::parallel_for(0, qs, 16, [&](int64_t r0, int64_t r1) {
      std::vector<ScoreIdx> cand;
      cand.reserve(static_cast<size_t>(nbc * k));
      for (int64_t r = r0; r < r1; ++r) {
        if (centred && r + 1 < r1) {  // the next query's candidate rows (random, mostly in DRAM) for its re-rank
          for (int64_t bc = 0; bc < nbc; ++bc) {
            const ScoreIdx* h = st.data() + (bc * qs + r + 1) * k;
            for (int64_t t = 0; t < cnt[bc * qs + r + 1]; ++t) {
              const char* nb = reinterpret_cast<const char*>(b + h[t].i * D);
              for (int64_t off = 0; off < D * int64_t(sizeof(E)); off += 64) _mm_prefetch(nb + off, _MM_HINT_T0);
            }
          }
        }
        cand.clear();
        for (int64_t bc = 0; bc < nbc; ++bc) {
          const ScoreIdx* h = st.data() + (bc * qs + r) * k;
          cand.insert(cand.end(), h, h + cnt[bc * qs + r]);
        }
        const int64_t gi = s0 + r;
        const E* qrow = q + gi * D;
        float qinv = 0.f;
        if (metric == Metric::Cosine) {
          const float qn = sq_dist(qrow, c.data(), D);  // c == 0 for cosine
          qinv = qn > 0.f ? 1.f / std::sqrt(qn) : 0.f;
        }
        gemm::finish_knn_row(cand.data(), static_cast<int64_t>(cand.size()), k, metric, qinv,
                             [&](int64_t j) { return sq_dist(qrow, b + j * D, D); }, out_d + gi * k, out_i + gi * k);
      }
    });
  }
}

// group_min_f32_avx2 over float32 or float16 rows (as knn_avx2).
template <class E>
void group_min_avx2(const E* q, const E* b, int64_t Q, int64_t N, int64_t D, int64_t gs, Metric metric,
                    const int64_t* exclude, float* out) {
  const int64_t G = N / gs;
  if (Q == 0 || G == 0) return;
  const bool centred = metric == Metric::L2 || metric == Metric::SqEuclidean;
  std::vector<float> c(D, 0.f);
  if (centred) estimate_centre(b, N, D, c.data());
  const int64_t T = std::max(1, at::get_num_threads());
  const int64_t QS = superblock_rows(Q, D);
  for (int64_t s0 = 0; s0 < Q; s0 += QS) {
    const int64_t qs = std::min(QS, Q - s0), panels = (qs + MR - 1) / MR;
    float* A = tl_qpack.get(panels * MR * D);
    pack_queries(q + s0 * D, qs, D, c.data(), A);
    float* best = out + s0 * G;  // scores first, distances after the sweep
    std::fill(best, best + qs * G, kInf);
    std::vector<int64_t> arg(static_cast<size_t>(qs * G), -1);
    // Few queries: split the groups across threads (disjoint outputs, no merge); else split the queries.
    const int64_t nbc = (T > 1 && qs <= kBankSplitMaxQ && G >= T) ? T : 1;
    const int64_t nqr = nbc == 1 ? std::min(T, panels) : 1;
    at::parallel_for(0, nbc * nqr, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t bc = t % nbc, qr = t / nbc;
        const int64_t qa = panels * qr / nqr * MR, qb = std::min(qs, panels * (qr + 1) / nqr * MR);
        if (qa >= qb) continue;
        GroupEpilogue epi{best, arg.data(), G, gs, s0, exclude};
        sweep("group_min", A, qa, qb, b, G * bc / nbc * gs, G * (bc + 1) / nbc * gs, D, c.data(), metric, epi);
      }
    });
    // Scores -> distances. l2/sqeuclidean: the exact (direct-difference) distance to each group's
    // winner. Group-major order: the winners of group g all lie in its gs rows and the queries of the
    // superblock are reused for every group, so both stay in cache (query-major order re-read the
    // winners, Q * G rows, in random order from DRAM: 2-4% of the time at 784 queries).
    std::vector<float> qinv;
    if (metric == Metric::Cosine) {
      qinv.resize(qs);
      at::parallel_for(0, qs, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float qn = sq_dist(q + (s0 + r) * D, c.data(), D);  // c == 0 for cosine
          qinv[r] = qn > 0.f ? 1.f / std::sqrt(qn) : 0.f;
        }
      });
    }
    constexpr int64_t kAhead = 4;  // winners prefetched ahead (a row is 1.5-6 KiB, mostly from DRAM/L3)
    const bool rerank = centred;
    at::parallel_for(0, G, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        for (int64_t r = 0; r < qs; ++r) {
          if (rerank && r + kAhead < qs && arg[(r + kAhead) * G + g] >= 0) {
            const char* nb = reinterpret_cast<const char*>(b + arg[(r + kAhead) * G + g] * D);
            for (int64_t off = 0; off < D * int64_t(sizeof(E)); off += 64) _mm_prefetch(nb + off, _MM_HINT_T0);
          }
          float* o = best + r * G + g;
          const float s = *o;
          if (s == kInf) {  // excluded group
            *o = metric == Metric::IP ? -kInf : kInf;
            continue;
          }
          const E* qrow = q + (s0 + r) * D;
          const E* brow = b + arg[r * G + g] * D;
          switch (metric) {
            case Metric::L2: *o = std::sqrt(sq_dist(qrow, brow, D)); break;
            case Metric::SqEuclidean: *o = sq_dist(qrow, brow, D); break;
            case Metric::Cosine: *o = std::max(1.f + s * qinv[r], 0.f); break;
            default: *o = -s; break;
          }
        }
      }
    });
  }
}

}  // namespace

void knn_f32_avx2(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                  bool exclude_self, float* out_d, int64_t* out_i) {
  knn_avx2(q, b, Q, N, D, k, metric, exclude_self, out_d, out_i);
}
void knn_f16_avx2(const F16* q, const F16* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                  bool exclude_self, float* out_d, int64_t* out_i) {
  knn_avx2(q, b, Q, N, D, k, metric, exclude_self, out_d, out_i);
}
void group_min_f32_avx2(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t gs, Metric metric,
                        const int64_t* exclude, float* out) {
  group_min_avx2(q, b, Q, N, D, gs, metric, exclude, out);
}
void group_min_f16_avx2(const F16* q, const F16* b, int64_t Q, int64_t N, int64_t D, int64_t gs, Metric metric,
                        const int64_t* exclude, float* out) {
  group_min_avx2(q, b, Q, N, D, gs, metric, exclude, out);
}

}  // namespace fastad::cpu
