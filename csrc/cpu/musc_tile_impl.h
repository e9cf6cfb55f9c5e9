// Bodies of the musc_tile.h passes; included by musc_tile.cpp (generic) and musc_tile_avx2.cpp with
// FASTAD_TILE_NS naming the namespace. Written as long unit-stride loops so that the compiler
// vectorises them for the target ISA (8 lanes with -mavx2).
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace fastad::cpu::FASTAD_TILE_NS {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// One row of the min epilogue without a window, in one pass: B[q] = s[0][q] + ... + s[n-1][q] (left to
// right), d2 = np + nb[q] - two_wp * (wb[q] * B[q]) (wb nullptr: 1), colmin[q] = min(colmin[q], d2)
// (colmin may be nullptr); returns min_q d2.
inline float fused_min_row(const float* const* s, int64_t n, int64_t L, float np, float two_wp, const float* nb,
                           const float* wb, float* colmin) {
  int64_t q = 0;
  float m = kInf;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vnp = _mm256_set1_ps(np), vtw = _mm256_set1_ps(two_wp), one = _mm256_set1_ps(1.f);
  __m256 m0 = _mm256_set1_ps(kInf), m1 = m0;
  for (; q + 16 <= L; q += 16) {
    __m256 b0 = _mm256_loadu_ps(s[0] + q), b1 = _mm256_loadu_ps(s[0] + q + 8);
    for (int64_t k = 1; k < n; ++k) {
      b0 = _mm256_add_ps(b0, _mm256_loadu_ps(s[k] + q));
      b1 = _mm256_add_ps(b1, _mm256_loadu_ps(s[k] + q + 8));
    }
    const __m256 w0 = wb ? _mm256_loadu_ps(wb + q) : one, w1 = wb ? _mm256_loadu_ps(wb + q + 8) : one;
    const __m256 v0 = _mm256_fnmadd_ps(vtw, _mm256_mul_ps(w0, b0), _mm256_add_ps(vnp, _mm256_loadu_ps(nb + q)));
    const __m256 v1 = _mm256_fnmadd_ps(vtw, _mm256_mul_ps(w1, b1), _mm256_add_ps(vnp, _mm256_loadu_ps(nb + q + 8)));
    m0 = _mm256_min_ps(v0, m0);
    m1 = _mm256_min_ps(v1, m1);
    if (colmin) {
      _mm256_storeu_ps(colmin + q, _mm256_min_ps(v0, _mm256_loadu_ps(colmin + q)));
      _mm256_storeu_ps(colmin + q + 8, _mm256_min_ps(v1, _mm256_loadu_ps(colmin + q + 8)));
    }
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_min_ps(m0, m1));
  for (int u = 0; u < 8; ++u) m = std::min(m, t[u]);
#endif
  for (; q < L; ++q) {
    float b = s[0][q];
    for (int64_t k = 1; k < n; ++k) b += s[k][q];
    const float v = np + nb[q] - two_wp * ((wb ? wb[q] : 1.f) * b);
    m = std::min(m, v);
    if (colmin) colmin[q] = std::min(colmin[q], v);
  }
  return m;
}

// Inputs of the min epilogue shared by every row of one (pair, r).
struct MinRow {
  int64_t L, H, W, hw;  // hw: half window (-1: no window)
  const float *na, *nb, *wa, *wb;
  float *rowmin, *colmin;
  float* dd;  // L floats scratch

  // gr: row p of the (boxed) Gram tile; d2[q] = na[p] + nb[q] - 2 wa[p] wb[q] gr[q].
  void operator()(int64_t p, const float* gr) const {
    const float np = na[p];
    const float two_wp = 2.f * (wa ? wa[p] : 1.f);
    if (hw < 0) {
      rowmin[p] = fused_min_row(&gr, 1, L, np, two_wp, nb, wb, colmin);
      return;
    }
    int64_t q0 = 0, q1 = L;
    if (hw >= 0) {
      const int64_t hp = p / W;
      q0 = std::max<int64_t>(0, hp - hw) * W;
      q1 = std::min<int64_t>(H, hp + hw + 1) * W;
    }
    if (wb)
      for (int64_t q = q0; q < q1; ++q) dd[q] = np + nb[q] - two_wp * (wb[q] * gr[q]);
    else
      for (int64_t q = q0; q < q1; ++q) dd[q] = np + nb[q] - two_wp * gr[q];
    if (hw >= 0) {  // mask the columns outside the window (rows were restricted by q0, q1)
      const int64_t wp = p % W;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t wq = q % W;
        if (wq < wp - hw || wq > wp + hw) dd[q] = kInf;
      }
    }
    float part[16];
    for (int u = 0; u < 16; ++u) part[u] = kInf;
    int64_t q = q0;
    for (; q + 16 <= q1; q += 16)
      for (int u = 0; u < 16; ++u) part[u] = std::min(part[u], dd[q + u]);
    float m = kInf;
    for (int u = 0; u < 16; ++u) m = std::min(m, part[u]);
    for (; q < q1; ++q) m = std::min(m, dd[q]);
    rowmin[p] = m;
    if (colmin)
      for (int64_t q2 = q0; q2 < q1; ++q2) colmin[q2] = std::min(colmin[q2], dd[q2]);
  }
};

// out[q] = s[0][q] + s[1][q] + ... + s[n-1][q], summed left to right (fixed order); the common n
// are spelled out so that the q loop vectorises with the partial sums in registers.
inline void sum_rows(const float* const* s, int64_t n, int64_t L, float* out) {
  switch (n) {
    case 3:
      for (int64_t q = 0; q < L; ++q) out[q] = s[0][q] + s[1][q] + s[2][q];
      return;
    case 5:
      for (int64_t q = 0; q < L; ++q) out[q] = s[0][q] + s[1][q] + s[2][q] + s[3][q] + s[4][q];
      return;
    default:
      std::copy(s[0], s[0] + L, out);
      for (int64_t k = 1; k < n; ++k)
        for (int64_t q = 0; q < L; ++q) out[q] += s[k][q];
  }
}

// t[q] = g[q] + m[+1][q] g[q+1] + m[-1][q] g[q-1] + m[+2][q] g[q+2] + ... (in that order), with g
// zero-padded by rad floats on both sides (gp = g - rad) and m[d] = masks + (d + rad) * L, the 0/1
// masks of the w-shifts (0 across the grid's left/right edges: adds an exact 0).
inline void wshift_sum(const float* gp, const float* masks, int64_t rad, int64_t L, float* t) {
  const float* g = gp + rad;
  if (rad == 1) {
    const float *mp1 = masks + 2 * L, *mm1 = masks;
    for (int64_t q = 0; q < L; ++q) t[q] = g[q] + mp1[q] * g[q + 1] + mm1[q] * g[q - 1];
    return;
  }
  if (rad == 2) {
    const float *mp1 = masks + 3 * L, *mm1 = masks + L, *mp2 = masks + 4 * L, *mm2 = masks;
    for (int64_t q = 0; q < L; ++q)
      t[q] = g[q] + mp1[q] * g[q + 1] + mm1[q] * g[q - 1] + mp2[q] * g[q + 2] + mm2[q] * g[q - 2];
    return;
  }
  std::copy(g, g + L, t);
  for (int64_t d = 1; d <= rad; ++d) {
    const float* mp = masks + (d + rad) * L;
    const float* mm = masks + (-d + rad) * L;
    for (int64_t q = 0; q < L; ++q) t[q] += mp[q] * g[q + d];
    for (int64_t q = 0; q < L; ++q) t[q] += mm[q] * g[q - d];
  }
}

// o[q] = t[q] + t[q+W] + t[q-W] + t[q+2W] + ... (in that order); t zero-padded by rad * W floats on
// both sides (tp = t - rad * W), so shifts past the grid's top/bottom add an exact 0.
// s: room for 2 * rad + 1 pointers.
inline void hshift_sum(const float* tp, int64_t W, int64_t rad, int64_t L, const float** s, float* o) {
  const float* t = tp + rad * W;
  int64_t n = 0;
  s[n++] = t;
  for (int64_t d = 1; d <= rad; ++d) s[n++] = t + d * W, s[n++] = t - d * W;
  sum_rows(s, n, L, o);
}

}  // namespace

void pair_min_epilogue(const float* g, int64_t H, int64_t W, int64_t r, int64_t window, const float* na,
                       const float* nb, const float* wa, const float* wb, float* rowmin, float* colmin,
                       std::vector<float>& scratch) {
  const int64_t L = H * W;
  if (colmin) std::fill(colmin, colmin + L, kInf);
  if (r <= 1) {
    scratch.resize(L);
    const MinRow row{L, H, W, window > 0 ? (window - 1) / 2 : -1, na, nb, wa, wb, rowmin, colmin, scratch.data()};
    for (int64_t p = 0; p < L; ++p) row(p, g + p * L);
    return;
  }
  // Streaming 4-D box filter: B[p] = sum_{a in W_r(p)} qbox(g[a]), one grid row of p at a time.
  //   Q = qbox of the W Gram rows of grid row h (W x L floats; q: w-shifts, then h-shifts),
  //   T[h] = sum over the w-window of Q rows (ring of r grid rows, r x W x L floats),
  //   B[p] = sum over the h-window of T rows (one row, L floats) -> min epilogue.
  // Sums are taken in the same order as a whole-tile separable filter would; missing neighbours (past
  // a grid edge) are read from zero padding / a zero row, which adds an exact 0.
  const int64_t rad = (r - 1) / 2, WL = W * L, PW = rad * W;
  scratch.resize((2 * rad + 1) * L + WL + r * WL + 2 * rad + 2 * PW + 5 * L);
  float* masks = scratch.data();  // masks[(d + rad) * L + q] = 1 when 0 <= w(q) + d < W (zero padding)
  float* Q = masks + (2 * rad + 1) * L;
  float* ring = Q + WL;
  float* gpad = ring + r * WL;    // rad + L + rad floats, zero borders
  float* tpad = gpad + L + 2 * rad;  // PW + L + PW floats, zero borders
  float* brow = tpad + L + 2 * PW;
  float* dd = brow + L;
  float* zero = dd + L;  // L zeros
  std::fill(gpad, gpad + rad, 0.f);
  std::fill(gpad + rad + L, gpad + L + 2 * rad, 0.f);
  std::fill(tpad, tpad + PW, 0.f);
  std::fill(tpad + PW + L, tpad + L + 2 * PW, 0.f);
  std::fill(zero, zero + L, 0.f);
  for (int64_t d = -rad; d <= rad; ++d)
    for (int64_t q = 0; q < L; ++q) {
      const int64_t w2 = q % W + d;
      masks[(d + rad) * L + q] = (w2 >= 0 && w2 < W) ? 1.f : 0.f;
    }
  const MinRow row{L, H, W, window > 0 ? (window - 1) / 2 : -1, na, nb, wa, wb, rowmin, colmin, dd};
  std::vector<const float*> srcv(2 * rad + 1);
  const float** src = srcv.data();
  // sources of a window sum in the order centre, -rad, ..., -1, +1, ..., +rad (zero row if missing)
  auto window_sources = [&](int64_t c, int64_t n, auto row_of) {
    int64_t k = 0;
    src[k++] = row_of(c);
    for (int64_t d = -rad; d <= rad; ++d)
      if (d != 0) src[k++] = (c + d >= 0 && c + d < n) ? row_of(c + d) : zero;
    return k;
  };
  auto emit = [&](int64_t h) {  // output grid row h: needs T rows h - rad .. h + rad (valid ones)
    for (int64_t w = 0; w < W; ++w) {
      const int64_t k = window_sources(h, H, [&](int64_t hh) { return ring + (hh % r) * WL + w * L; });
      const int64_t p = h * W + w;
      if (window > 0) {
        sum_rows(src, k, L, brow);
        row(p, brow);
      } else {  // the h-window sum fused into the distance and minima pass
        rowmin[p] = fused_min_row(src, k, L, na[p], 2.f * (wa ? wa[p] : 1.f), nb, wb, colmin);
      }
    }
  };
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      std::copy(g + (h * W + w) * L, g + (h * W + w + 1) * L, gpad + rad);
      wshift_sum(gpad, masks, rad, L, tpad + PW);
      hshift_sum(tpad, W, rad, L, src, Q + w * L);
    }
    float* T = ring + (h % r) * WL;
    for (int64_t w = 0; w < W; ++w) {
      const int64_t k = window_sources(w, W, [&](int64_t ww) { return Q + ww * L; });
      sum_rows(src, k, L, T + w * L);
    }
    if (h - rad >= 0) emit(h - rad);
  }
  for (int64_t h = std::max<int64_t>(0, H - rad); h < H; ++h) emit(h);
}

}  // namespace fastad::cpu::FASTAD_TILE_NS
