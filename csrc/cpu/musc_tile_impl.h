// Bodies of the musc_tile.h passes; included by musc_tile.cpp (generic) and musc_tile_avx2.cpp with
// FASTAD_TILE_NS naming the namespace. Written as long unit-stride loops so that the compiler
// vectorises them for the target ISA (8 lanes with -mavx2).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace fastad::cpu::FASTAD_TILE_NS {

void box_gram(const float* g, int64_t H, int64_t W, int64_t r, float* tmp, float* out, std::vector<float>& row) {
  const int64_t L = H * W, rad = (r - 1) / 2;
  row.resize(L);
  // Masks of the w-shifts: valid_d[q] = 1 when 0 <= w(q) + d < W (zero padding), for d = -rad..rad.
  std::vector<float> masks((2 * rad + 1) * L);
  for (int64_t d = -rad; d <= rad; ++d)
    for (int64_t q = 0; q < L; ++q) {
      const int64_t w2 = q % W + d;
      masks[(d + rad) * L + q] = (w2 >= 0 && w2 < W) ? 1.f : 0.f;
    }
  // 1) along the column grid (q) of every row: w-shifts (masked), then h-shifts (whole rows of W).
  for (int64_t p = 0; p < L; ++p) {
    const float* gr = g + p * L;
    float* t = row.data();
    std::copy(gr, gr + L, t);
    for (int64_t d = 1; d <= rad; ++d) {
      const float* mp = masks.data() + (d + rad) * L;
      const float* mm = masks.data() + (-d + rad) * L;
      for (int64_t q = 0; q < L - d; ++q) t[q] += mp[q] * gr[q + d];
      for (int64_t q = d; q < L; ++q) t[q] += mm[q] * gr[q - d];
    }
    float* o = out + p * L;
    std::copy(t, t + L, o);
    for (int64_t d = 1; d <= rad; ++d) {
      const int64_t s = d * W;
      for (int64_t q = 0; q < L - s; ++q) o[q] += t[q + s];
      for (int64_t q = s; q < L; ++q) o[q] += t[q - s];
    }
  }
  // 2) along the row grid (p): whole rows, first the w-shifts (out -> tmp), then the h-shifts (tmp -> out).
  for (int64_t p = 0; p < L; ++p) {
    const int64_t w = p % W;
    float* t = tmp + p * L;
    const float* s0 = out + p * L;
    std::copy(s0, s0 + L, t);
    for (int64_t d = -rad; d <= rad; ++d) {
      if (d == 0 || w + d < 0 || w + d >= W) continue;
      const float* s = out + (p + d) * L;
      for (int64_t q = 0; q < L; ++q) t[q] += s[q];
    }
  }
  for (int64_t p = 0; p < L; ++p) {
    const int64_t h = p / W;
    float* o = out + p * L;
    const float* s0 = tmp + p * L;
    std::copy(s0, s0 + L, o);
    for (int64_t d = -rad; d <= rad; ++d) {
      if (d == 0 || h + d < 0 || h + d >= H) continue;
      const float* s = tmp + (p + d * W) * L;
      for (int64_t q = 0; q < L; ++q) o[q] += s[q];
    }
  }
}

void pair_min_epilogue(const float* g, int64_t L, int64_t H, int64_t W, int64_t window, const float* na,
                       const float* nb, const float* wa, const float* wb, float* rowmin, float* colmin,
                       std::vector<float>& d2) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  d2.resize(L);
  if (colmin) std::fill(colmin, colmin + L, kInf);
  const int64_t hw = window > 0 ? (window - 1) / 2 : 0;
  for (int64_t p = 0; p < L; ++p) {
    const float* gr = g + p * L;
    const float np = na[p];
    const float two_wp = 2.f * (wa ? wa[p] : 1.f);
    int64_t q0 = 0, q1 = L;
    if (window > 0) {
      const int64_t hp = p / W;
      q0 = std::max<int64_t>(0, hp - hw) * W;
      q1 = std::min<int64_t>(H, hp + hw + 1) * W;
    }
    float* dd = d2.data();
    if (wb)
      for (int64_t q = q0; q < q1; ++q) dd[q] = np + nb[q] - two_wp * (wb[q] * gr[q]);
    else
      for (int64_t q = q0; q < q1; ++q) dd[q] = np + nb[q] - two_wp * gr[q];
    if (window > 0) {  // mask the columns outside the window (rows were restricted by q0, q1)
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
}

}  // namespace fastad::cpu::FASTAD_TILE_NS
