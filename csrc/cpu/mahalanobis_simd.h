// The Gaussian ops' SIMD kernels written once over the vector width (cpu/mahalanobis.h): included by
// mahalanobis_avx2.cpp (8-lane ymm, 16-column panels) and mahalanobis_avx512.cpp (16-lane zmm,
// 32-column panels), each compiled with its own ISA flags and instantiating these templates with its
// own vector traits V and factor loaders Ld (types in each file's anonymous namespace, so the two
// instantiations are distinct and never merged across ISAs).
//
// V provides: `reg` (the vector type), `W` (lanes), zero(), loadu(p), load_row(p) (a zero-padded
// feature row: aligned on AVX-512), storeu(p, v), fmadd(a, b, c), bcast(p) (broadcast *p), reduce(v)
// (horizontal sum), cols(nc, m) (mask of the first m <= nc columns of a panel, as Ld::load takes it)
// and prefetch_row(p, bytes_per_entry) (the lines of one panel row).
// Ld provides load(p, mask, nc, lo, hi) (masked, entries past nc not read) and load_full(p, lo, hi).
//
// Includes nothing but <cstdint>: the includer includes <immintrin.h> and defines V / Ld.
#pragma once
#include <cstdint>

namespace fastad::cpu::maha_simd {

constexpr int64_t kRowBlock = 48;  // rows per block of rows_impl (a multiple of the 6-row tile)
// samples per block of syrk_lower: as many as keep the block's rows within kSyrkBlockBytes (L2-resident
// on the CPUs seen here), at least 64. Measured at d = 100 / 152 / 550 (784 positions, 200 rows per call,
// Zen 4, 1 thread): 64 -> 256 samples raised the useful GF/s from 58 / 66 / 84 to 62 / 71 / 90 (fewer
// re-reads and re-writes of each tile).
constexpr int64_t kSyrkBlockBytes = 384 << 10;
inline int64_t syrk_kc(int64_t ld) {
  const int64_t kc = kSyrkBlockBytes / (ld * 4);
  return kc < 64 ? 64 : kc;
}    // samples per block of syrk_lower

// One 6-row tile x one 2W-column panel: acc = xc[6, j0:] @ tril(L)[j0:, j0:j0+2W]; the squares of the
// panel's entries are added into ss[6] (vector partials).
template <typename V, typename Ld, typename T>
inline void tile_panel(const T* L, int64_t d, int64_t j0, const float* x0, int64_t ld, typename V::reg* ss, bool first) {
  using R = typename V::reg;
  constexpr int64_t NR = 2 * V::W;
  const int64_t nc = d - j0 < NR ? d - j0 : NR;
  R c0[6], c1[6];
#pragma GCC unroll 6
  for (int r = 0; r < 6; ++r) c0[r] = c1[r] = V::zero();
  const int64_t kd = j0 + nc;  // end of the diagonal block
  for (int64_t k = j0; k < kd; ++k) {  // diagonal block: columns j0 + c <= k only
    R b0, b1;
    Ld::load(L + k * d + j0, V::cols(nc, k - j0 + 1), nc, b0, b1);
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) {
      const R a = V::bcast(x0 + r * ld + k);
      c0[r] = V::fmadd(a, b0, c0[r]);
      c1[r] = V::fmadd(a, b1, c1[r]);
    }
  }
  if (nc == NR) {
    // The first tile of a row block brings the panel in from memory: rows d * sizeof(T) apart, which
    // the hardware prefetcher follows poorly; prefetch kAhead rows ahead.
    constexpr int64_t kAhead = 12;
    for (int64_t k = kd; k < d; ++k) {
      if (first && k + kAhead < d) V::prefetch_row(reinterpret_cast<const char*>(L + (k + kAhead) * d + j0), sizeof(T));
      R b0, b1;
      Ld::load_full(L + k * d + j0, b0, b1);
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) {
        const R a = V::bcast(x0 + r * ld + k);
        c0[r] = V::fmadd(a, b0, c0[r]);
        c1[r] = V::fmadd(a, b1, c1[r]);
      }
    }
  }  // (nc < NR: the last panel, whose rows all lie in the diagonal block)
#pragma GCC unroll 6
  for (int r = 0; r < 6; ++r) {
    ss[r] = V::fmadd(c0[r], c0[r], ss[r]);
    ss[r] = V::fmadd(c1[r], c1[r], ss[r]);
  }
}

// out[r] = |xc[r] @ tril(L)|^2: panels outermost (one (d - j0) x 2W panel stays in L1/L2 while every
// tile of the 48-row block passes over it), tiles inside; per-row squared sums kept as vector partials.
template <typename V, typename Ld, typename T>
void rows_impl(const T* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out) {
  typename V::reg part[kRowBlock];
  for (int64_t r0 = 0; r0 < nrows; r0 += kRowBlock) {
    const int64_t nr = nrows - r0 < kRowBlock ? nrows - r0 : kRowBlock;
    for (int64_t r = 0; r < nr; ++r) part[r] = V::zero();
    for (int64_t j0 = 0; j0 < d; j0 += 2 * V::W)
      for (int64_t t = 0; t < nr; t += 6) tile_panel<V, Ld>(L, d, j0, xc + (r0 + t) * ld, ld, part + t, t == 0);
    for (int64_t r = 0; r < nr; ++r) out[r0 + r] = V::reduce(part[r]);
  }
}

// One lower-SYRK register tile: rows i0..i0+NI-1 (features) x NV W-wide column vectors from j0, over
// the kn samples of a block (y rows ld apart): per sample NI broadcasts of y[k, i0 + r] and NV loads of
// y[k, j0 : j0 + NV W] for NI NV FMAs; the tile is read from `tile` first unless `first`.
template <typename V, int NI, int NV>
inline void syrk_tile(const float* yb, int64_t ld, int64_t kn, int64_t i0, int64_t j0, float* tile, int64_t ldt,
                      bool first) {
  using R = typename V::reg;
  R c[NI][NV];
#pragma GCC unroll 6
  for (int r = 0; r < NI; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) c[r][v] = first ? V::zero() : V::loadu(tile + (i0 + r) * ldt + j0 + v * V::W);
  const float* yk = yb;
  for (int64_t k = 0; k < kn; ++k, yk += ld) {
    R b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = V::load_row(yk + j0 + v * V::W);
#pragma GCC unroll 6
    for (int r = 0; r < NI; ++r) {
      const R a = V::bcast(yk + i0 + r);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[r][v] = V::fmadd(a, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < NI; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) V::storeu(tile + (i0 + r) * ldt + j0 + v * V::W, c[r][v]);
}

template <typename V, int NV>
inline void syrk_tile_rows(int64_t ni, const float* yb, int64_t ld, int64_t kn, int64_t i0, int64_t j0, float* tile,
                           int64_t ldt, bool first) {
  switch (ni) {  // exactly the rows below d (a partial last block does no FMAs for padding rows)
    case 6: syrk_tile<V, 6, NV>(yb, ld, kn, i0, j0, tile, ldt, first); break;
    case 5: syrk_tile<V, 5, NV>(yb, ld, kn, i0, j0, tile, ldt, first); break;
    case 4: syrk_tile<V, 4, NV>(yb, ld, kn, i0, j0, tile, ldt, first); break;
    case 3: syrk_tile<V, 3, NV>(yb, ld, kn, i0, j0, tile, ldt, first); break;
    case 2: syrk_tile<V, 2, NV>(yb, ld, kn, i0, j0, tile, ldt, first); break;
    default: syrk_tile<V, 1, NV>(yb, ld, kn, i0, j0, tile, ldt, first); break;
  }
}

// Lower SYRK: tiles of 6 rows (features) x 2W columns from j0 for every row block reaching column j0,
// over the samples in blocks of syrk_kc(ld). A tile whose rows all lie above column j0 + W (the diagonal's
// first half) computes only its first W columns, and the last row block only its rows below d: the FMAs
// spent above the diagonal or on padding fall from 22% to 11% of the useful ones at d = 152 (6 x 32).
// Blocking the samples keeps the column panel and the broadcast rows in L1 while every row block passes
// over them; the tile is re-read and re-written once per sample block.
template <typename V>
void syrk_lower(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt) {
  constexpr int64_t NR = 2 * V::W;
  const int64_t kc = syrk_kc(ld);
  for (int64_t k0 = 0; k0 < n || k0 == 0; k0 += kc) {
    const int64_t kn = n - k0 < kc ? n - k0 : kc;
    const float* yb = y + k0 * ld;
    for (int64_t j0 = 0; j0 < d; j0 += NR) {
      for (int64_t i0 = j0 / 6 * 6; i0 < d; i0 += 6) {  // row blocks that reach column block j0
        const int64_t ni = d - i0 < 6 ? d - i0 : 6;
        // (entries above the diagonal and columns past d are computed where a vector covers them: the
        // tile is ldt >= round_up(d, 2W) wide, so every store stays inside its row)
        if (i0 + ni - 1 < j0 + V::W)
          syrk_tile_rows<V, 1>(ni, yb, ld, kn, i0, j0, tile, ldt, k0 == 0);
        else
          syrk_tile_rows<V, 2>(ni, yb, ld, kn, i0, j0, tile, ldt, k0 == 0);
      }
    }
  }
}

}  // namespace fastad::cpu::maha_simd
