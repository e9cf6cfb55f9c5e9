// AVX2/FMA Gram tile (compiled with -mavx2 -mfma; called only after the runtime CPU check).
// The same packed GEMM as the knn / group_min sweep (dist_gemm_avx2.cpp), on the shared micro-kernel
// of microkernel_avx2.h:
//   * A is packed whole into 6-row panels [k][6] (kept across calls with the same A: MuSc scores
//     image i against several j in a row);
//   * B is packed kGramNC rows at a time into 16-row panels [k][16], full depth;
//   * for each kGramMC-row block of A and each depth slice (<= kGramKcMax), the 6 x 16 micro-kernel
//     accumulates into a kGramMC x kGramNC tile (L2); the finished tile is copied to `out`.
#include <algorithm>
#include <cstring>

#include "cpu/gram.h"
#include "cpu/microkernel_avx2.h"

namespace fastad::cpu {

namespace {
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
}  // namespace

void gram_avx2(const float* a, int64_t na, const float* b, int64_t nb, int64_t d, float* out, int64_t ldo,
               GramScratch& s) {
  using mk::kMR;
  using mk::kNR;
  if (na == 0 || nb == 0) return;
  if (d == 0) {
    for (int64_t r = 0; r < na; ++r) std::fill(out + r * ldo, out + r * ldo + nb, 0.f);
    return;
  }
  const int64_t pa = (na + kMR - 1) / kMR;
  float* A = s.pack_a.get(static_cast<size_t>(pa * kMR * d));
  if (!(s.a_src == a && s.a_rows == na && s.a_d == d)) {
    for (int64_t p = 0; p < pa; ++p) mk::pack_a_panel(a + p * kMR * d, std::min(kMR, na - p * kMR), d, nullptr, A + p * kMR * d);
    s.a_src = a, s.a_rows = na, s.a_d = d;
  }
  float* Bp = s.pack_b.get(static_cast<size_t>(kGramNC * d));
  float* C = s.tile.get(static_cast<size_t>(kGramMC * kGramNC));
  const int64_t nkb = (d + kGramKcMax - 1) / kGramKcMax;
  const int64_t KC = (d + nkb - 1) / nkb;
  for (int64_t j0 = 0; j0 < nb; j0 += kGramNC) {
    const int64_t nc = std::min(kGramNC, nb - j0), ncp = round_up(nc, kNR);
    for (int64_t p = 0; p < ncp / kNR; ++p)
      mk::pack_b_panel(b + (j0 + p * kNR) * d, std::min(kNR, nc - p * kNR), d, nullptr, Bp + p * kNR * d);
    for (int64_t i0 = 0; i0 < na; i0 += kGramMC) {
      const int64_t mc = std::min(kGramMC, na - i0), mcp = round_up(mc, kMR);
      for (int64_t pc = 0; pc < d; pc += KC) {
        const int64_t kc = std::min(KC, d - pc);
        for (int64_t jr = 0; jr < ncp; jr += kNR) {
          const float* Bpanel = Bp + (jr / kNR) * kNR * d + pc * kNR;
          for (int64_t ir = 0; ir < mcp; ir += kMR)
            mk::micro_6x16(kc, A + ((i0 + ir) / kMR) * kMR * d + pc * kMR, Bpanel, C + ir * kGramNC + jr, kGramNC,
                           pc > 0);
        }
      }
      for (int64_t r = 0; r < mc; ++r) std::memcpy(out + (i0 + r) * ldo + j0, C + r * kGramNC, nc * sizeof(float));
    }
  }
}

}  // namespace fastad::cpu
