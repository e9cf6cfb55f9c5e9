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
constexpr int64_t kSyrkKc = 64;    // samples per block of syrk_lower

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

// Lower SYRK tile: rows i0..i0+5 (features) x columns j0..j0+2W-1 for every j0 <= i0 + 5, over the
// samples in blocks of kSyrkKc: per sample 6 broadcasts of y[k, i0 + r] and 2 loads of y[k, j0 : j0 + 2W]
// for 12 FMAs. Blocking the samples keeps the column panel and the broadcast rows in L1 while every row
// block passes over them; the tile is re-read and re-written once per sample block.
template <typename V>
void syrk_lower(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt) {
  using R = typename V::reg;
  constexpr int64_t NR = 2 * V::W;
  for (int64_t k0 = 0; k0 < n || k0 == 0; k0 += kSyrkKc) {
    const int64_t kn = n - k0 < kSyrkKc ? n - k0 : kSyrkKc;
    const float* yb = y + k0 * ld;
    for (int64_t j0 = 0; j0 < d; j0 += NR) {
      for (int64_t i0 = j0 / 6 * 6; i0 < d; i0 += 6) {  // row blocks that reach column block j0
        const int64_t ni = d - i0 < 6 ? d - i0 : 6;
        R c0[6], c1[6];
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) c0[r] = c1[r] = V::zero();
        // (constant-index loops with a guard, fully unrolled: the accumulators stay in registers; a
        // loop to the runtime bound ni would index them from memory)
        if (k0 > 0) {
#pragma GCC unroll 6
          for (int r = 0; r < 6; ++r)
            if (r < ni) {
              c0[r] = V::loadu(tile + (i0 + r) * ldt + j0);
              c1[r] = V::loadu(tile + (i0 + r) * ldt + j0 + V::W);
            }
        }
        const float* yk = yb;
        for (int64_t k = 0; k < kn; ++k, yk += ld) {
          const R b0 = V::load_row(yk + j0), b1 = V::load_row(yk + j0 + V::W);
#pragma GCC unroll 6
          for (int r = 0; r < 6; ++r) {
            const R a = V::bcast(yk + i0 + r);  // rows past d read the zero padding
            c0[r] = V::fmadd(a, b0, c0[r]);
            c1[r] = V::fmadd(a, b1, c1[r]);
          }
        }
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) {
          if (r >= ni) break;
          // the tile is ldt >= round_up(d, 32) wide, so the full 2W-column store stays inside row i0 + r
          V::storeu(tile + (i0 + r) * ldt + j0, c0[r]);
          V::storeu(tile + (i0 + r) * ldt + j0 + V::W, c1[r]);
        }
      }
    }
  }
}

}  // namespace fastad::cpu::maha_simd
