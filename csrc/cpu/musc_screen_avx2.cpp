// MuSc's mutual scoring (mutual_scores: r = 1, no window) through the bf16 screen of issue 15, on the
// bf16 GEMM driver of dist_bf16_gemm.h and the bound of bf16_screen_bound.h (the knn / group_min screen
// is dist_bf16_screen_avx2.cpp). Compiled with -mavx2 -mfma (*_avx2.cpp); used only when use_bf16_gemm().
//
// ---- The fp32 path (musc_kernel.cpp: mutual_minima, r = 1) -----------------------------------------
// Per image pair (i, j): g^ = gram_avx2 tile of the raw rows (no centring): every entry a sequential fp32
// FMA chain x_0 y_0, fma(x_1, y_1, .), ... from 0 (the 6 x 16 micro-kernel, depth slices continue the
// chain through the stored tile); then (pair_min_epilogue, r = 1, no window) the score
// s^ = fl(A - 2 g^) with A = fl(na_p + nb_q) (na, nb: the fp32 squared norms of sq_norms, one array for
// both paths), rowmin[p] = min_q s^ and colmin[q] = min_p s^ (self mode; pool mode: rows only).
//
// ---- The screen: why its minima equal the fp32 path's ----------------------------------------------
// The screen centres like knn's (the fp32 path does not): c = knn_centre_avx2 of the query images' rows,
// v = fl(x - c), w = fl(y - c) (a = x - c, b = y - c exactly), v' = bf16(v), w' = bf16(w), d' = the bf16
// GEMM of v', w' (fp32 accumulation). Exactly, x.y = a.b + t_x + t_y with t_x = c.x - |c|^2 / 2; per row
// n2_x = fl(na_x - 2 T_x) (T_x = t_x in double, |T_x - t_x| <= eps_x = (C + 2) 2^-52 (|c||x| + |c|^2)),
// and the screen scores a pair by s' = fl(B - 2 d'), B = fl(n2_p + n2_q). With g = gamma_C = Cu / (1 - Cu),
// u = 2^-24:
//   (A - 2 g^) - (B - 2 d') = [A - 2 t_p - 2 t_q - B] + 2 [d' - a.b] + 2 [x.y - g^]
//   |A - 2 t_p - 2 t_q - B| <= 2^-21 (na_p + |n2_p| + nb_q + |n2_q|) + 2 eps_p + 2 eps_q  (four roundings)
//   2 |x.y - g^| <= 2 g |x||y| + C 2^-125 <= g (|x|^2 + |y|^2) + C 2^-125  (C roundings of the FMA chain,
//                   each losing < 2^-126 to underflow)
//   |d' - v'.w'| <= g |v'||w'| + C 2^-126                 (C rounded steps; FTZ loses < 2^-126 per step)
//   |v'.w' - a.b| <= |v' - a||b| + |v'||w' - b|           (Cauchy-Schwarz)
//   |v' - a| <= |v' - v| + |v - a| <= e + 2^-23 P + sqrt(C) 2^-126  (v = fl(a): relative u, or a flushed
//                   denormal when FTZ / DAZ are on; e >= |v' - v|, P >= max(|v|, |v'|)); likewise |w' - b|,
//                   and |b| <= R + 2^-23 R + sqrt(C) 2^-126
// so with P, e' = e + 2^-23 P + sqrt(C) 2^-124 per row p of image i and R, f' likewise per row q of image j
// (the 2^-124: the flushed parts of |b| times e' <= 2 P land in P X)
// (from the fp32 sums of the bf16 conversion, inflated: bf16_screen_bound.h),
//   Delta = |(A - 2 g^) - (B - 2 d')| <= P X + e' Y + (Z + W),  X = 2 g R + 2 f', Y = 2 R,
//   Z = C 2^-124 + S_q, W = S_p,  S = 2^-21 (n + |n2|) + 2 eps + g |x|^2 (per row, from its norm n)
// and with the final roundings of s^ and s', |s^ - s'| <= (Delta + 2u |s'|) / (1 - u) <= E =
// (P X + e' Y + (Z + W))(1 + 2^-16) + 2^-21 |s'| evaluated in fp32 (bf16_screen_bound.h: lo = s' - E <= s^
// <= up = s' + E for every pair). (Without centring the bf16 error scales with |x||y|: on DINOv2 features
// whose rows share a large mean, 22% of the pairs survived; centred, see RESULTS.md.)
// Rows: U_p = min_q up_pq >= min_q s^_pq = s^_pq* >= lo_pq*, so the fp32 path's minimiser q* of row p has
// lo_pq* <= U_p; likewise for columns with V_q = min_p up_pq. Every pair with lo_pq <= U_p or lo_pq <= V_q
// (a survivor) is re-scored with the fp32 path's arithmetic (s^ bit for bit, 8 pairs per AVX2 vector),
// and rowmin[p] / colmin[q] are the minima of the re-scored s^ of row p / column q: each set holds the
// minimiser and only values >= the minimum, so the minima are the fp32 path's, bit for bit (all s^ are
// finite: the inputs are checked finite and squared norms >= 2^100 make the screen decline).
// Memory per thread: the L x L tile of lower bounds (the fp32 path holds an L x L Gram tile instead),
// the bf16 panels of one image and the survivor list.
#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/bf16_screen_bound.h"
#include "cpu/dist_bf16_gemm.h"
#include "cpu/dist_kernels.h"
#include "cpu/microkernel_avx2.h"

namespace fastad::cpu {

namespace {

using namespace bf16gemm;  // NOLINT: the driver's constants and buffers

constexpr float kMaxNorm = 0x1p100f;  // squared norms at or above this: decline (A, 2 g^ and E stay finite)

// The sweep epilogue of one image pair: lower bounds of every pair into lo [L, Lp], running minima of the
// upper bounds per row (rowU) and per column (colU; nullptr in pool mode).
struct PairEpi {
  const Kern* kern;
  const float* yb;           // bank image rows [L, C]
  const float* c;            // the centre, C floats
  const float *na, *nb;      // n2 of the rows of the query / bank image (see the top)
  const float* sb;           // S of the rows of the bank image
  const float *P, *E, *W;    // per row of the query image
  int64_t C, Lp;
  float* lo;                 // [L, Lp]
  float* rowU;               // [L]
  float* colU;               // [Lp] or nullptr
  float *nbb, *X, *Y, *Z;    // per bank row of the block (kNC + 8)
  const screen::Bound* bound;

  bool pack(int64_t j0, int64_t nc, uint32_t* Bp) {
    pack_screen_block(*kern, yb, j0, nc, C, c, Bp, [&](int64_t jj, const float* sums) {
      double R, f;
      bound->norms(sums, &R, &f);
      f = f + 0x1p-23 * R + std::sqrt(static_cast<double>(C)) * 0x1p-124;
      nbb[jj] = nb[j0 + jj];
      X[jj] = static_cast<float>((2 * bound->g * R + 2 * f) * (1 + 0x1p-20));
      Y[jj] = static_cast<float>(2 * R);
      Z[jj] = static_cast<float>((static_cast<double>(C) * 0x1p-124 + sb[j0 + jj]) * (1 + 0x1p-20));
      return true;
    });
    for (int64_t jj = nc; jj < round_up(nc, 8); ++jj) nbb[jj] = kInf, X[jj] = Y[jj] = Z[jj] = 0.f;  // up = +inf
    return true;
  }

  bool operator()(int64_t i0, int64_t mc, int64_t j0, int64_t nc, const float* S, int64_t ld) {
    const __m256 m2 = _mm256_set1_ps(-2.f);
    for (int64_t r = 0; r < mc; ++r) {
      const int64_t p = i0 + r;
      const float* row = S + r * ld;
      float* lor = lo + p * Lp + j0;  // j0 + round_up(nc, 8) <= Lp
      const __m256 npv = _mm256_set1_ps(na[p]), pv = _mm256_set1_ps(P[p]), ev = _mm256_set1_ps(E[p]),
                   wv = _mm256_set1_ps(W[p]);
      __m256 umin = _mm256_set1_ps(kInf);
      for (int64_t jj = 0; jj < nc; jj += 8) {
        const __m256 s = _mm256_fmadd_ps(m2, _mm256_loadu_ps(row + jj), _mm256_add_ps(npv, _mm256_loadu_ps(nbb + jj)));
        __m256 l, u;
        screen::lo_up8(s, pv, ev, wv, X + jj, Y + jj, Z + jj, l, u);
        _mm256_storeu_ps(lor + jj, l);
        umin = _mm256_min_ps(u, umin);
        if (colU) _mm256_storeu_ps(colU + j0 + jj, _mm256_min_ps(u, _mm256_loadu_ps(colU + j0 + jj)));
      }
      alignas(32) float t[8];
      _mm256_store_ps(t, umin);
      float m = rowU[p];
      for (int u = 0; u < 8; ++u) m = std::min(m, t[u]);
      rowU[p] = m;
    }
    return true;
  }
};

// The fp32 path's Gram entries of 8 pairs (one per lane): d = fma(a_l[c], b_l[c], d) for c = 0, 1, ...
// from 0, as micro_6x16 accumulates them. 8 x 8 blocks are transposed so that one vector holds the 8
// pairs' values at one depth.
inline __m256 fp32_path_dot8(const float* const* a, const float* const* b, int64_t C) {
  __m256 d = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 a0 = _mm256_loadu_ps(a[0] + c), a1 = _mm256_loadu_ps(a[1] + c), a2 = _mm256_loadu_ps(a[2] + c),
           a3 = _mm256_loadu_ps(a[3] + c), a4 = _mm256_loadu_ps(a[4] + c), a5 = _mm256_loadu_ps(a[5] + c),
           a6 = _mm256_loadu_ps(a[6] + c), a7 = _mm256_loadu_ps(a[7] + c);
    __m256 b0 = _mm256_loadu_ps(b[0] + c), b1 = _mm256_loadu_ps(b[1] + c), b2 = _mm256_loadu_ps(b[2] + c),
           b3 = _mm256_loadu_ps(b[3] + c), b4 = _mm256_loadu_ps(b[4] + c), b5 = _mm256_loadu_ps(b[5] + c),
           b6 = _mm256_loadu_ps(b[6] + c), b7 = _mm256_loadu_ps(b[7] + c);
    mk::transpose8(a0, a1, a2, a3, a4, a5, a6, a7);
    mk::transpose8(b0, b1, b2, b3, b4, b5, b6, b7);
    d = _mm256_fmadd_ps(a0, b0, d);
    d = _mm256_fmadd_ps(a1, b1, d);
    d = _mm256_fmadd_ps(a2, b2, d);
    d = _mm256_fmadd_ps(a3, b3, d);
    d = _mm256_fmadd_ps(a4, b4, d);
    d = _mm256_fmadd_ps(a5, b5, d);
    d = _mm256_fmadd_ps(a6, b6, d);
    d = _mm256_fmadd_ps(a7, b7, d);
  }
  for (; c < C; ++c) {
    const __m256 x = _mm256_setr_ps(a[0][c], a[1][c], a[2][c], a[3][c], a[4][c], a[5][c], a[6][c], a[7][c]);
    const __m256 y = _mm256_setr_ps(b[0][c], b[1][c], b[2][c], b[3][c], b[4][c], b[5][c], b[6][c], b[7][c]);
    d = _mm256_fmadd_ps(x, y, d);
  }
  return d;
}

struct Surv {
  int32_t p, q;
};

// Thread scratch of the screen.
struct PairScratch {
  ABuf<uint32_t> apack;
  std::vector<float> P, E, W, lo, rowU, colU, nbb, X, Y, Z;
  std::vector<Surv> surv;
  int64_t a_img = -1;
};

}  // namespace

bool mutual_minima_screen_bf16(const float* yq, const float* yp, int64_t Nq, int64_t Np, int64_t L, int64_t C,
                               const float* nz, float* minima) {
  const int64_t Ntot = Nq + Np, Nref = Np > 0 ? Np : Nq - 1;
  for (int64_t t = 0; t < Ntot * L; ++t)
    if (!(nz[t] < kMaxNorm)) {
      bf16_screen_count(1, 0, 0, 1);
      return false;
    }
  auto img = [&](int64_t n) { return n < Nq ? yq + n * L * C : yp + (n - Nq) * L * C; };
  std::vector<std::pair<int64_t, int64_t>> pairs;
  if (Np > 0) {
    for (int64_t i = 0; i < Nq; ++i)
      for (int64_t j = Nq; j < Ntot; ++j) pairs.emplace_back(i, j);
  } else {
    for (int64_t i = 0; i < Nq; ++i)
      for (int64_t j = i + 1; j < Nq; ++j) pairs.emplace_back(i, j);
  }
  const Kern kern = current_kern();
  const screen::Bound bound(C);
  // The centre and, per row of every image, n2 = fl(n - 2 T) and S (see the top).
  std::vector<float> c(C), n2(Ntot * L), S(Ntot * L);
  knn_centre_avx2(yq, Nq * L, C, c.data());
  double cn2 = 0.0;
  for (int64_t k = 0; k < C; ++k) cn2 += static_cast<double>(c[k]) * c[k];
  const double cn = std::sqrt(cn2) * (1 + 0x1p-40), cn2u = cn2 * (1 + 0x1p-40);
  at::parallel_for(0, Ntot, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t p = 0; p < L; ++p) {
        const float* x = img(n) + p * C;
        const int64_t t = n * L + p;
        double cx = 0.0;
        for (int64_t k = 0; k < C; ++k) cx += static_cast<double>(c[k]) * x[k];
        const double T = cx - 0.5 * cn2, nx2 = bound.inflate(nz[t]);
        const double eps = static_cast<double>(C + 2) * 0x1p-52 * (cn * std::sqrt(nx2) + cn2u);
        n2[t] = static_cast<float>(static_cast<double>(nz[t]) - 2 * T);
        S[t] = static_cast<float>((0x1p-21 * (nz[t] + std::fabs(n2[t])) + 2 * eps + bound.g * nx2) * (1 + 0x1p-20));
      }
  });
  const int64_t Lp = round_up(L, 8), Dp = round_up(C, 2), D2 = Dp / 2, panels = (L + MR - 1) / MR;
  std::atomic<int64_t> survivors{0};
  at::parallel_for(0, static_cast<int64_t>(pairs.size()), 1, [&](int64_t b, int64_t e) {
    PairScratch s;
    s.P.resize(L), s.E.resize(L), s.W.resize(L), s.lo.resize(L * Lp), s.rowU.resize(L), s.colU.resize(Lp);
    s.nbb.resize(kNC + 8), s.X.resize(kNC + 8), s.Y.resize(kNC + 8), s.Z.resize(kNC + 8);
    uint32_t* A = s.apack.get(panels * MR * D2);
    std::vector<uint16_t> rows(MR * Dp);
    float sums[3 * MR];
    int64_t my_surv = 0;
    for (int64_t t = b; t < e; ++t) {
      const auto [i, j] = pairs[t];
      if (s.a_img != i) {  // pack the query image once for its run of pairs (i, j), (i, j + 1), ...
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t nr = std::min(MR, L - p * MR);
          kern.rows(img(i) + p * MR * C, nr, C, c.data(), rows.data(), Dp, sums);
          panelize<MR>(rows.data(), Dp, nr, Dp, A + p * MR * D2);
          for (int64_t r = 0; r < nr; ++r) {
            const int64_t pr = p * MR + r;
            double R, f;
            bound.norms(sums + 3 * r, &R, &f);
            s.P[pr] = static_cast<float>(R);
            s.E[pr] = static_cast<float>((f + 0x1p-23 * R + std::sqrt(static_cast<double>(C)) * 0x1p-124) * (1 + 0x1p-20));
            s.W[pr] = S[i * L + pr];
          }
        }
        s.a_img = i;
      }
      const bool self = Np == 0;
      std::fill(s.rowU.begin(), s.rowU.end(), kInf);
      std::fill(s.colU.begin(), s.colU.end(), kInf);
      PairEpi epi{&kern, img(j), c.data(), n2.data() + i * L, n2.data() + j * L, S.data() + j * L, s.P.data(),
                  s.E.data(), s.W.data(), C, Lp, s.lo.data(),
                  s.rowU.data(), self ? s.colU.data() : nullptr, s.nbb.data(), s.X.data(), s.Y.data(), s.Z.data(),
                  &bound};
      sweep_bf16(kern, A, 0, L, 0, L, C, epi);
      // survivors: lo <= the row's (or, self mode, the column's) minimum upper bound
      s.surv.clear();
      for (int64_t p = 0; p < L; ++p) {
        const __m256 ru = _mm256_set1_ps(s.rowU[p]);
        const float* lor = s.lo.data() + p * Lp;
        for (int64_t q = 0; q < L; q += 8) {
          const __m256 l = _mm256_loadu_ps(lor + q);
          __m256 keep = _mm256_cmp_ps(l, ru, _CMP_NGT_UQ);
          if (self) keep = _mm256_or_ps(keep, _mm256_cmp_ps(l, _mm256_loadu_ps(s.colU.data() + q), _CMP_NGT_UQ));
          unsigned m = static_cast<unsigned>(_mm256_movemask_ps(keep));
          if (L - q < 8) m &= (1u << (L - q)) - 1;
          while (m) {
            const int l2 = __builtin_ctz(m);
            m &= m - 1;
            s.surv.push_back(Surv{static_cast<int32_t>(p), static_cast<int32_t>(q + l2)});
          }
        }
      }
      // re-score the survivors with the fp32 path's arithmetic; the minima of rows / columns
      float* rowmin = minima + (i * Nref + (self ? j - 1 : j - Nq)) * L;
      float* colmin = self ? minima + (j * Nref + i) * L : nullptr;
      std::fill(rowmin, rowmin + L, kInf);
      if (colmin) std::fill(colmin, colmin + L, kInf);
      const float *ya = img(i), *yb = img(j), *na = nz + i * L, *nb = nz + j * L;
      const int64_t ns = static_cast<int64_t>(s.surv.size());
      for (int64_t t0 = 0; t0 < ns; t0 += 8) {
        const float *ar[8], *br[8];
        alignas(32) float nav[8], nbv[8], sv[8];
        for (int l = 0; l < 8; ++l) {
          const Surv& x = s.surv[std::min(t0 + l, ns - 1)];
          ar[l] = ya + x.p * C, br[l] = yb + x.q * C, nav[l] = na[x.p], nbv[l] = nb[x.q];
        }
        const __m256 g = fp32_path_dot8(ar, br, C);
        const __m256 a = _mm256_add_ps(_mm256_load_ps(nav), _mm256_load_ps(nbv));
        _mm256_store_ps(sv, _mm256_fmadd_ps(_mm256_set1_ps(-2.f), g, a));
        for (int64_t l = 0; l < std::min<int64_t>(8, ns - t0); ++l) {
          const Surv& x = s.surv[t0 + l];
          rowmin[x.p] = std::min(rowmin[x.p], sv[l]);
          if (colmin) colmin[x.q] = std::min(colmin[x.q], sv[l]);
        }
      }
      my_surv += ns;
    }
    survivors += my_surv;
  });
  bf16_screen_count(1, static_cast<int64_t>(pairs.size()) * L * L, survivors.load(), 0);
  return true;
}

}  // namespace fastad::cpu
