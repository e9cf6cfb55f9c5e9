// bf16 distance GEMM (AVX512-BF16 vdpbf16ps micro-kernel, fp32 accumulation) with fused epilogues:
//   * knn_bf16_avx2: exact-selection k-NN on bfloat16 inputs, no upcast of the inputs (bank packed
//     block by block into bf16 pair panels, as the fp32 sweep of dist_gemm_avx2.cpp does in fp32);
//   * knn_f32_screen_bf16: exact float32 k-NN through a bf16 screen (identical answers to knn_f32_avx2);
//   * group_min_f32_screen_bf16: the same screen for group_min (k = 1 per group; identical to
//     group_min_f32_avx2: per group the smallest (s^, j) among its survivors, then its exact distance).
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
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/bf16_emu.h"
#include "cpu/dist_kernels.h"
#include "cpu/microkernel_avx2.h"
#include "cpu/topk.h"

namespace fastad::cpu {

namespace {

constexpr int64_t MR = 6;        // query rows per panel
constexpr int64_t NR = 16;       // bank rows per panel (one zmm of fp32 lanes)
constexpr int64_t kMC = 96;      // query rows per block (16 panels; 96 x 512 pairs x 4 B = 192 KiB in L2)
constexpr int64_t kNC = 512;     // bank rows per packed block
constexpr int64_t kKc2Max = 512; // depth pairs per slice: bank micro-panel <= 512 x 16 x 4 B = 32 KiB (L1d)
constexpr int64_t kQueryPackBytes = 16ll << 20;
constexpr int64_t kScreenMaxQ = 4096;  // queries per screen superblock (bounds the candidate lists)
constexpr float kInf = std::numeric_limits<float>::infinity();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <class T>
struct ABuf {  // growable 64-byte aligned buffer, reused across calls (thread_local below)
  T* p = nullptr;
  size_t cap = 0;
  ABuf() = default;
  ABuf(const ABuf&) = delete;
  ~ABuf() { std::free(p); }
  T* get(size_t n) {
    if (n > cap) {
      std::free(p);
      p = static_cast<T*>(std::aligned_alloc(64, static_cast<size_t>(round_up(int64_t(n * sizeof(T)), 64))));
      TORCH_CHECK(p != nullptr, "fastad: out of memory allocating a ", n * sizeof(T), "-byte CPU tile");
      cap = n;
    }
    return p;
  }
};
thread_local ABuf<uint32_t> tl_bpack, tl_qpack;
thread_local ABuf<uint16_t> tl_rows;
thread_local ABuf<float> tl_ctile, tl_f1, tl_f2, tl_f3, tl_f4, tl_sums;

// The micro-kernel in use (hardware or emulation) and the fp32 -> bf16 row conversion that goes with it.
struct Kern {
  bool hw;
  void micro(int panels, int64_t kc2, const uint32_t* A, int64_t ps, const uint32_t* B, float* C, int64_t ldc,
             bool acc) const {
#if FASTAD_HAVE_AVX512
    if (hw) return micro_bf16_avx512(panels, kc2, A, ps, B, C, ldc, acc);
#endif
    bf16emu::micro_bf16_emu(panels, kc2, A, ps, B, C, ldc, acc);
  }
  void rows(const float* x, int64_t n, int64_t D, const float* c, uint16_t* out, int64_t ldo, float* sums) const {
#if FASTAD_HAVE_AVX512
    if (hw) return bf16_rows_avx512(x, n, D, c, out, ldo, sums);
#endif
    bf16emu::bf16_rows_emu(x, n, D, c, out, ldo, sums);
  }
};

Kern current_kern() { return Kern{use_bf16_micro()}; }

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

inline float bf16f(uint16_t h) { return bf16emu::bits_f32(static_cast<uint32_t>(h) << 16); }

// |x - y|^2 of two bf16 rows in fp32 (values exact in fp32; direct differences; fixed order).
inline float sq_dist_bf16(const uint16_t* x, const uint16_t* y, int64_t d) {
  __m256 a0 = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m256 vx = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + t))), 16));
    const __m256 vy = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + t))), 16));
    const __m256 v = _mm256_sub_ps(vx, vy);
    a0 = _mm256_fmadd_ps(v, v, a0);
  }
  alignas(32) float s8[8];
  _mm256_store_ps(s8, a0);
  float s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
  for (; t < d; ++t) {
    const float v = bf16f(x[t]) - bf16f(y[t]);
    s = std::fma(v, v, s);
  }
  return s;
}

// |x|^2 of a bf16 row, summed in float64 (the products are exact), rounded once to float32.
inline float sq_norm_bf16(const uint16_t* x, int64_t d) {
  double s[4] = {0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 4 <= d; t += 4)
    for (int u = 0; u < 4; ++u) {
      const double v = bf16f(x[t + u]);
      s[u] += v * v;
    }
  for (; t < d; ++t) {
    const double v = bf16f(x[t]);
    s[0] += v * v;
  }
  return static_cast<float>((s[0] + s[1]) + (s[2] + s[3]));
}

// The sweep: queries [qa, qb) of the packed superblock A (bf16 pair panels of D2 pairs; qa a multiple of
// MR) against bank rows [ja, jb). epi.pack(j0, nc, Bp) packs a bank block (ceil(nc/16) panels) and its
// per-row terms; epi(i0, mc, j0, nc, C, ldc) receives the finished [mc x nc] tile of raw bf16 dots.
template <class Epi>
void sweep_bf16(const Kern& kern, const uint32_t* A, int64_t qa, int64_t qb, int64_t ja, int64_t jb, int64_t D,
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
void for_query_ranges(int64_t qs, F body) {
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

inline int64_t superblock_rows(int64_t Q, int64_t D2, int64_t qmax_cap) {
  const int64_t qmax = std::clamp<int64_t>(kQueryPackBytes / (4 * D2) / MR * MR, MR, qmax_cap);
  const int64_t nsb = (Q + qmax - 1) / qmax;
  return round_up((Q + nsb - 1) / nsb, MR);
}

// ------------------------------------------------------------------------------------------------
// Native bf16 knn: running top-k of alpha_j * dot + beta_j (as KnnEpilogue in dist_gemm_avx2.cpp).
struct Bf16KnnEpi {
  const uint16_t* b;
  int64_t D, k, s0;
  Metric metric;
  bool exclude_self;
  ScoreIdx* buf;  // superblock-relative [qs * k]
  int64_t* cnt;
  float *alpha, *beta;

  bool pack(int64_t j0, int64_t nc, uint32_t* Bp) {
    const int64_t D2 = (D + 1) / 2;
    for (int64_t p = 0; p * NR < nc; ++p)
      panelize<NR>(b + (j0 + p * NR) * D, D, std::min(NR, nc - p * NR), D, Bp + p * NR * D2);
    for (int64_t jj = 0; jj < round_up(nc, 8); ++jj) {
      if (jj >= nc) {
        alpha[jj] = 0.f, beta[jj] = kInf;
        continue;
      }
      switch (metric) {
        case Metric::L2:
        case Metric::SqEuclidean: alpha[jj] = -2.f, beta[jj] = sq_norm_bf16(b + (j0 + jj) * D, D); break;
        case Metric::Cosine: {
          const float n = sq_norm_bf16(b + (j0 + jj) * D, D);
          alpha[jj] = n > 0.f ? -1.f / std::sqrt(n) : 0.f, beta[jj] = 0.f;
          break;
        }
        default: alpha[jj] = -1.f, beta[jj] = 0.f; break;
      }
    }
    return true;
  }

  float threshold(const ScoreIdx* h, int64_t n) const { return n < k ? kInf : h[0].s; }

  void insert(ScoreIdx* h, int64_t& n, float s, int64_t j) const {
    auto worse_first = [](const ScoreIdx& a, const ScoreIdx& c) { return better(a, c); };
    if (n < k) {
      h[n++] = ScoreIdx{s, j};
      std::push_heap(h, h + n, worse_first);
    } else {
      std::pop_heap(h, h + n, worse_first);
      h[n - 1] = ScoreIdx{s, j};
      std::push_heap(h, h + n, worse_first);
    }
  }

  bool operator()(int64_t i0, int64_t mc, int64_t j0, int64_t nc, const float* S, int64_t ld) {
    alignas(32) float sv[8];
    for (int64_t r = 0; r < mc; ++r) {
      const int64_t qi = i0 + r, self = exclude_self ? s0 + qi : -1;
      ScoreIdx* h = buf + qi * k;
      int64_t& n = cnt[qi];
      const float* row = S + r * ld;
      float thr = threshold(h, n);
      __m256 tv = _mm256_set1_ps(thr);
      for (int64_t jj = 0; jj < nc; jj += 8) {
        const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(alpha + jj), _mm256_loadu_ps(row + jj), _mm256_loadu_ps(beta + jj));
        unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, tv, _CMP_LT_OQ)));
        if (!m) continue;
        _mm256_store_ps(sv, v);
        while (m) {
          const int64_t l = __builtin_ctz(m), cc = jj + l;
          m &= m - 1;
          if (cc >= nc) break;
          if (!(sv[l] < thr) || j0 + cc == self) continue;
          insert(h, n, sv[l], j0 + cc);
          thr = threshold(h, n);
        }
        tv = _mm256_set1_ps(thr);
      }
    }
    return true;
  }
};

// ------------------------------------------------------------------------------------------------
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
  double g, infl, absn;

  double inflate(float s) const { return static_cast<double>(s) * infl + absn; }

  bool pack(int64_t j0, int64_t nc, uint32_t* Bp) {
    if (abort->load(std::memory_order_relaxed)) return false;
    const int64_t Dp = round_up(D, 2), D2 = Dp / 2;
    uint16_t* rows = tl_rows.get(NR * Dp);
    float* sums = tl_sums.get(3 * NR);
    for (int64_t p = 0; p * NR < nc; ++p) {
      const int64_t nr = std::min(NR, nc - p * NR);
      kern->rows(b + (j0 + p * NR) * D, nr, D, c, rows, Dp, sums);
      panelize<NR>(rows, Dp, nr, Dp, Bp + p * NR * D2);
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t jj = p * NR + r;
        if (!std::isfinite(sums[3 * r])) {  // the fp32 path reports (or handles) this row itself
          abort->store(true);
          return false;
        }
        const double R = std::sqrt(std::max(inflate(sums[3 * r]), inflate(sums[3 * r + 1]))) * (1 + 0x1p-20);
        const double f = std::sqrt(inflate(sums[3 * r + 2])) * (1 + 0x1p-20);
        beta[jj] = sums[3 * r];
        X[jj] = static_cast<float>(4 * g * R + 2 * f);
        Y[jj] = static_cast<float>(2 * R);
        Z[jj] = static_cast<float>(2 * g * R * R + static_cast<double>(D) * 0x1p-124);
      }
    }
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

  bool operator()(int64_t i0, int64_t mc, int64_t j0, int64_t nc, const float* S, int64_t ld) {
    alignas(32) float lov[8], upv[8];
    const __m256 m2 = _mm256_set1_ps(-2.f), slack = _mm256_set1_ps(1.f + 0x1p-16f), rel = _mm256_set1_ps(0x1p-21f);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t r = 0; r < mc; ++r) {
      const int64_t qi = i0 + r, self = exclude_self ? s0 + qi : -1;
      std::vector<Cand>& cl = cand[qi];
      const float* row = S + r * ld;
      const __m256 pv = _mm256_set1_ps(P[qi]), ev = _mm256_set1_ps(E[qi]);
      // lo = s' - E and up = s' + E for bank rows j0 + jj .. + 7 (see the comment at the top)
      auto bounds = [&](int64_t jj, __m256& up) {
        const __m256 s = _mm256_fmadd_ps(m2, _mm256_loadu_ps(row + jj), _mm256_loadu_ps(beta + jj));
        const __m256 t = _mm256_fmadd_ps(pv, _mm256_loadu_ps(X + jj),
                                         _mm256_fmadd_ps(ev, _mm256_loadu_ps(Y + jj), _mm256_loadu_ps(Z + jj)));
        const __m256 e = _mm256_fmadd_ps(t, slack, _mm256_mul_ps(rel, _mm256_and_ps(s, absmask)));
        up = _mm256_add_ps(s, e);
        return _mm256_sub_ps(s, e);
      };
      if (gs == 0) {  // knn: candidates against the running k-th smallest upper bound
        float* h = ub + qi * k;
        int64_t& n = ucnt[qi];
        float thr = n < k ? kInf : h[0];
        __m256 tv = _mm256_set1_ps(thr);
        for (int64_t jj = 0; jj < nc; jj += 8) {
          __m256 up;
          const __m256 lo = bounds(jj, up);
          unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(lo, tv, _CMP_NGT_UQ)));
          if (!m) continue;
          _mm256_store_ps(lov, lo);
          _mm256_store_ps(upv, up);
          while (m) {
            const int64_t l = __builtin_ctz(m), cc = jj + l;
            m &= m - 1;
            if (cc >= nc) break;
            if (lov[l] > thr || j0 + cc == self) continue;
            cl.push_back(Cand{lov[l], j0 + cc});
            if (upv[l] < thr) {
              heap_push(h, n, k, upv[l]);
              thr = n < k ? kInf : h[0];
            }
          }
          tv = _mm256_set1_ps(thr);
          if (!prune(cl, [thr](int64_t) { return thr; })) return false;
        }
      } else {  // group_min: candidates against their group's running minimum upper bound
        float* U = ub + qi * G;
        const int64_t ex = exclude ? exclude[s0 + qi] : -1;
        for (int64_t jj = 0; jj < nc; jj += 8) {
          __m256 up;
          const __m256 lo = bounds(jj, up);
          const int64_t ga = (j0 + jj) / gs, gb = (j0 + std::min(jj + 7, nc - 1)) / gs;
          float tmax = U[ga];  // the loosest threshold of the (up to 8) groups these lanes touch
          for (int64_t g2 = ga + 1; g2 <= gb; ++g2) tmax = std::max(tmax, U[g2]);
          const __m256 tv = _mm256_set1_ps(tmax);
          unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(lo, tv, _CMP_NGT_UQ)));
          if (!m) continue;
          _mm256_store_ps(lov, lo);
          _mm256_store_ps(upv, up);
          while (m) {
            const int64_t l = __builtin_ctz(m), cc = jj + l;
            m &= m - 1;
            if (cc >= nc) break;
            const int64_t g = (j0 + cc) / gs;
            if (g == ex || lov[l] > U[g]) continue;
            cl.push_back(Cand{lov[l], j0 + cc});
            if (upv[l] < U[g]) U[g] = upv[l];
          }
          if (!prune(cl, [U, this](int64_t j) { return U[j / gs]; })) return false;
        }
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

void knn_bf16_avx2(const uint16_t* q, const uint16_t* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                   bool exclude_self, float* out_d, int64_t* out_i) {
  const Kern kern = current_kern();
  const int64_t D2 = (D + 1) / 2;
  const int64_t QS = superblock_rows(Q, D2, std::numeric_limits<int64_t>::max());
  const bool l2 = metric == Metric::L2 || metric == Metric::SqEuclidean;
  const float pad = metric == Metric::IP ? -kInf : kInf;
  for (int64_t s0 = 0; s0 < Q; s0 += QS) {
    const int64_t qs = std::min(QS, Q - s0), panels = (qs + MR - 1) / MR;
    uint32_t* A = tl_qpack.get(panels * MR * D2);
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        panelize<MR>(q + (s0 + p * MR) * D, D, std::min(MR, qs - p * MR), D, A + p * MR * D2);
    });
    std::vector<ScoreIdx> st(static_cast<size_t>(qs * k));
    std::vector<int64_t> cnt(static_cast<size_t>(qs), 0);
    for_query_ranges(qs, [&](int64_t qa, int64_t qb) {
      float* alpha = tl_f1.get(kNC);
      float* beta = tl_f2.get(kNC);
      Bf16KnnEpi epi{b, D, k, s0, metric, exclude_self, st.data(), cnt.data(), alpha, beta};
      sweep_bf16(kern, A, qa, qb, 0, N, D, epi);
    });
    at::parallel_for(0, qs, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        ScoreIdx* h = st.data() + r * k;
        const int64_t got = cnt[r];
        std::sort(h, h + got, better);
        const int64_t gi = s0 + r;
        const uint16_t* qrow = q + gi * D;
        if (l2) {
          for (int64_t t = 0; t < got; ++t) h[t].s = sq_dist_bf16(qrow, b + h[t].i * D, D);
          std::sort(h, h + got, better);
        }
        float qinv = 0.f;
        if (metric == Metric::Cosine) {
          const float qn = sq_norm_bf16(qrow, D);
          qinv = qn > 0.f ? 1.f / std::sqrt(qn) : 0.f;
        }
        for (int64_t t = 0; t < got; ++t) {
          const float s = h[t].s;
          float d;
          switch (metric) {
            case Metric::L2: d = std::sqrt(s); break;
            case Metric::SqEuclidean: d = s; break;
            case Metric::Cosine: d = std::max(1.f + s * qinv, 0.f); break;
            default: d = -s; break;
          }
          out_d[gi * k + t] = d;
          out_i[gi * k + t] = h[t].i;
        }
        for (int64_t t = got; t < k; ++t) out_d[gi * k + t] = pad, out_i[gi * k + t] = -1;
      }
    });
  }
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
  constexpr double u = 0x1p-24;
  const double g = static_cast<double>(D) * u / (1.0 - static_cast<double>(D) * u);
  const double infl = (1.0 + 0x1p-20) / (1.0 - static_cast<double>(D + 2) * u);
  const double absn = static_cast<double>(D) * 0x1p-125;
  std::atomic<bool> abort{false};
  int64_t pairs = 0, survivors = 0;
  for (int64_t s0 = 0; s0 < Q && !abort; s0 += QS) {
    const int64_t qs = std::min(QS, Q - s0), panels = (qs + MR - 1) / MR;
    uint32_t* A = tl_qpack.get(panels * MR * D2);
    std::vector<float> P(qs), E(qs);
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      std::vector<uint16_t> rows(MR * Dp);
      float sums[3 * MR];
      auto inflate = [&](float v) { return static_cast<double>(v) * infl + absn; };
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t nr = std::min(MR, qs - p * MR);
        kern.rows(q + (s0 + p * MR) * D, nr, D, c.data(), rows.data(), Dp, sums);
        panelize<MR>(rows.data(), Dp, nr, Dp, A + p * MR * D2);
        for (int64_t r = 0; r < nr; ++r) {
          P[p * MR + r] = static_cast<float>(std::sqrt(std::max(inflate(sums[3 * r]), inflate(sums[3 * r + 1]))) *
                                             (1 + 0x1p-20));
          E[p * MR + r] = static_cast<float>(std::sqrt(inflate(sums[3 * r + 2])) * (1 + 0x1p-20));
        }
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
                    cap, &abort, g, infl, absn};
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

}  // namespace

bool knn_f32_screen_bf16(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                         bool exclude_self, float* out_d, int64_t* out_i) {
  if (!(metric == Metric::L2 || metric == Metric::SqEuclidean)) return false;
  std::vector<float> c;
  auto init = [](int64_t, int64_t, ScreenState&) {};
  // Survivors: lo <= U (the final k-th smallest upper bound). Re-score them with the fp32 path's
  // arithmetic, keep its k smallest (s^, j), re-rank those exactly (as knn_f32_avx2 does).
  auto finish = [&](int64_t s0, int64_t qs, ScreenState& stt) -> int64_t {
    std::vector<int64_t> surv(static_cast<size_t>(qs), 0);
    at::parallel_for(0, qs, 16, [&](int64_t r0, int64_t r1) {
      std::vector<float> qc(D);
      std::vector<ScoreIdx> sc;
      std::vector<int64_t> keep;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t gi = s0 + r;
        const float U = stt.ucnt[r] < k ? kInf : stt.ub[r * k];
        const float* qrow = q + gi * D;
        for (int64_t p = 0; p < D; ++p) qc[p] = qrow[p] - c[p];
        sc.clear();
        rescore(stt.cand[r], qc.data(), b, c.data(), D, keep, [U](const Cand& x) { return !(x.lo > U); },
                [&](float s, int64_t j) {
                  if (s < kInf) sc.push_back(ScoreIdx{s, j});  // NaN / +inf never enter the fp32 path's top k
                });
        surv[r] = static_cast<int64_t>(keep.size());
        const int64_t got = std::min<int64_t>(k, static_cast<int64_t>(sc.size()));
        std::partial_sort(sc.begin(), sc.begin() + got, sc.end(), better);
        for (int64_t t = 0; t < got; ++t) sc[t].s = exact_sq_dist_avx2(qrow, b + sc[t].i * D, D);
        std::sort(sc.begin(), sc.begin() + got, better);
        for (int64_t t = 0; t < got; ++t) {
          out_d[gi * k + t] = metric == Metric::L2 ? std::sqrt(sc[t].s) : sc[t].s;
          out_i[gi * k + t] = sc[t].i;
        }
        for (int64_t t = got; t < k; ++t) out_d[gi * k + t] = kInf, out_i[gi * k + t] = -1;
      }
    });
    int64_t tot = 0;
    for (int64_t v : surv) tot += v;
    return tot;
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
  // Per group: the survivors (lo <= the group's minimum upper bound) re-scored with the fp32 path's
  // arithmetic; the smallest (s^, j) wins (as GroupEpilogue: +inf never wins), then its exact distance.
  auto finish = [&](int64_t s0, int64_t qs, ScreenState& stt) -> int64_t {
    std::vector<int64_t> surv(static_cast<size_t>(qs), 0);
    std::atomic<bool> nan{false};
    at::parallel_for(0, qs, 16, [&](int64_t r0, int64_t r1) {
      std::vector<float> qc(D), best(G);
      std::vector<int64_t> keep, arg(G);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t gi = s0 + r;
        const float* U = stt.ub.data() + r * G;
        const int64_t ex = exclude ? exclude[gi] : -1;
        const float* qrow = q + gi * D;
        for (int64_t p = 0; p < D; ++p) qc[p] = qrow[p] - c[p];
        std::fill(best.begin(), best.end(), kInf);
        std::fill(arg.begin(), arg.end(), -1);
        rescore(stt.cand[r], qc.data(), b, c.data(), D, keep,
                [&](const Cand& x) { return x.j / gs != ex && !(x.lo > U[x.j / gs]); },
                [&](float s, int64_t j) {
                  const int64_t g = j / gs;
                  if (std::isnan(s)) nan = true;  // the fp32 path's vector minimum is order-dependent for NaN
                  if (s < best[g] || (s == best[g] && arg[g] >= 0 && j < arg[g])) best[g] = s, arg[g] = j;
                });
        surv[r] = static_cast<int64_t>(keep.size());
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
    });
    if (nan) return -1;
    int64_t tot = 0;
    for (int64_t v : surv) tot += v;
    return tot;
  };
  return screen_run(q, b, Q, N, D, 1, gs, exclude, false, c, init, finish);
}

}  // namespace fastad::cpu
