// The Gaussian ops' SIMD kernels written once over the vector width (cpu/mahalanobis.h): included by
// mahalanobis_avx2.cpp (8-lane ymm, 16-column panels) and mahalanobis_avx512.cpp (16-lane zmm,
// 32-column panels), each compiled with its own ISA flags and instantiating these templates with its
// own vector traits V and factor loaders Ld (types in each file's anonymous namespace, so the two
// instantiations are distinct and never merged across ISAs).
//
// V provides: `reg` (the vector type), `W` (lanes), zero(), loadu(p), load_row(p) (a zero-padded
// feature row: aligned on AVX-512), storeu(p, v), fmadd(a, b, c), fnmadd(a, b, c) (c - a b), sub(a, b),
// div(a, b), set1(x), sqrt1(x) (a scalar square root), bcast(p) (broadcast *p), reduce(v) (horizontal
// sum), cols(nc, m) (mask of the first m <= nc columns of a panel, as Ld::load takes it),
// prefetch_row(p, bytes_per_entry) (the lines of one panel row) and prefetch_l2(p) (one line into L2).
// Ld provides load(p, mask, nc, lo, hi) (masked, entries past nc not read) and load_full(p, lo, hi).
//
// Includes nothing but <cstdint> (and cpu/row_prefetch.h, plain data): the includer includes
// <immintrin.h> and defines V / Ld.
#pragma once
#include <cstdint>

#include "cpu/row_prefetch.h"

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
}

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
// r0: only rows r0 and below are formed (row blocks r0 + 6 m; rows above are the caller's to copy).
// pf (may be null): rows to prefetch into L2 meanwhile, spread over the tiles.
// Blocking the samples keeps the column panel and the broadcast rows in L1 while every row block passes
// over them; the tile is re-read and re-written once per sample block.
// Issues up to `count` more lines of pf's rows (prefetch into L2).
template <typename V>
inline void issue_row_prefetch(RowPrefetch* pf, int64_t count) {
  const int64_t lpr = pf->lines_per_row(), total = pf->lines();
  for (int64_t c = 0; c < count && pf->issued < total; ++c, ++pf->issued) {
    const int64_t r = pf->issued / lpr, l = pf->issued % lpr;
    const char* row = pf->base + r * pf->stride;
    V::prefetch_l2(l + 1 < lpr ? row + l * 64 : row + pf->row_bytes - 1);
  }
}

// The first 6-row block from r0 (rows r0 + 6 m) that reaches column j0.
inline int64_t syrk_first_row(int64_t j0, int64_t r0) { return j0 > r0 ? r0 + (j0 - r0) / 6 * 6 : r0; }

template <typename V>
void syrk_lower(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt, RowPrefetch* pf,
                int64_t r0) {
  constexpr int64_t NR = 2 * V::W;
  const int64_t kc = syrk_kc(ld);
  int64_t per_tile = 0;  // pf's lines spread evenly over the tiles
  if (pf != nullptr && pf->rows > 0) {
    int64_t tiles = 0;
    for (int64_t j0 = 0; j0 < d; j0 += NR) tiles += (d - syrk_first_row(j0, r0) + 5) / 6;
    tiles *= (n + kc - 1) / kc > 0 ? (n + kc - 1) / kc : 1;
    per_tile = tiles > 0 ? (pf->lines() - pf->issued) / tiles + 1 : 0;
  }
  for (int64_t k0 = 0; k0 < n || k0 == 0; k0 += kc) {
    const int64_t kn = n - k0 < kc ? n - k0 : kc;
    const float* yb = y + k0 * ld;
    for (int64_t j0 = 0; j0 < d; j0 += NR) {
      // row blocks (from r0) that reach column block j0
      for (int64_t i0 = syrk_first_row(j0, r0); i0 < d; i0 += 6) {
        const int64_t ni = d - i0 < 6 ? d - i0 : 6;
        // (entries above the diagonal and columns past d are computed where a vector covers them: the
        // tile is ldt >= round_up(d, 2W) wide, so every store stays inside its row)
        if (per_tile) issue_row_prefetch<V>(pf, per_tile);
        if (i0 + ni - 1 < j0 + V::W)
          syrk_tile_rows<V, 1>(ni, yb, ld, kn, i0, j0, tile, ldt, k0 == 0);
        else
          syrk_tile_rows<V, 2>(ni, yb, ld, kn, i0, j0, tile, ldt, k0 == 0);
      }
    }
  }
}

// ---- cholesky_lower: A = C C^T in place (float32, row-major, lower triangle read) -----------------
// Left-looking, by column panels of NB = 2W columns (32 on AVX-512, 16 on AVX2), with a transposed copy
// U = C^T of the finished columns (U[k * ldu + i] = C[i, k]) so that both operands of the update are
// read along rows:
//   1. panel update  W[i, c] = A[i, j0 + c] - sum_{k < j0} C[i, k] C[j0 + c, k]   (i >= j0; 6-row tiles,
//      a broadcast of C[i, k] against the vectors U[k, j0 : j0 + NB]: the SYRK tile's shape);
//   2. the diagonal block's factor R (upper, R^T R = W[j0 : j0 + jn, :]) by the unblocked right-looking
//      algorithm on its transpose, row operations in vectors, and R^{-1} by back substitution;
//   3. the rows below: C[i, j0 : j0 + jn] = W[i, :] R^{-1}  (the same tile shape, K = jn; R^{-1} is upper,
//      so its rows m >= W have a zero first vector and skip it).
// FLOPs: d^3 / 3 for the updates plus ~0.75 d^2 NB for step 3 (a triangular solve through the block's
// inverse: vectorised, at the price of the inverse's zeros). Float32 throughout, products summed in
// float32 (as LAPACK's blocked spotrf). Returns 0, or k >= 1 when the leading minor of order k is not
// positive definite (or not finite); A is then left partially overwritten. The strict upper triangle is
// zeroed on success.
template <typename V>
constexpr int64_t chol_nb() { return 2 * V::W; }
template <typename V>  // (+ NB: a panel starting past a multiple of NB, after row_start, reads NB columns of U)
inline int64_t chol_ldu(int64_t d) { return (d + chol_nb<V>() - 1) / chol_nb<V>() * chol_nb<V>() + chol_nb<V>(); }
/// floats of scratch cholesky_lower<V> needs for order d (U, the panel, the block and its inverse)
template <typename V>
inline int64_t chol_scratch_floats(int64_t d) {
  constexpr int64_t NB = chol_nb<V>();
  return d * chol_ldu<V>(d) + d * NB + 2 * NB * NB;
}

// c[r][v] += sum_{k0 <= k < k1} a[r * lda + k] * b[k * ldb + v W : (v + 1) W] for the NI rows of a tile and
// v = 0, 1: one broadcast per row against two vectors per k (the Cholesky's update and solve tiles).
template <typename V, int NI>
inline void fma_rows_2v(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t k0, int64_t k1,
                        typename V::reg (&c)[NI][2]) {
  using R = typename V::reg;
  for (int64_t k = k0; k < k1; ++k) {
    const R b0 = V::loadu(b + k * ldb), b1 = V::loadu(b + k * ldb + V::W);
#pragma GCC unroll 6
    for (int r = 0; r < NI; ++r) {
      const R x = V::bcast(a + r * lda + k);
      c[r][0] = V::fmadd(x, b0, c[r][0]);
      c[r][1] = V::fmadd(x, b1, c[r][1]);
    }
  }
}

// W[r][:] -= sum_{k < K} A[(i0 + r) * lda + k] * U[k * ldu + 0 : NB]  for the NI rows of a tile (row
// stride NB). The sum is formed in blocks of kCholKb products, each block's sum subtracted from W: rounding
// error growth ~(K / kCholKb + kCholKb) u instead of ~K u over one chain. Measured backward error
// max|C C^T - A| / max|A| at d = 152 / 550 (random covariances): one chain 5.3e-7 / 1.1e-6, blocks of 64
// 2.8e-7 / 2.6e-7, LAPACK spotrf (OpenBLAS) 1.9e-7 / 2.5e-7.
constexpr int64_t kCholKb = 64;
template <typename V, int NI>
inline void chol_update_tile(const float* A, int64_t lda, int64_t i0, const float* U, int64_t ldu, int64_t K, float* W) {
  using R = typename V::reg;
  constexpr int64_t NB = chol_nb<V>();
  const float* a0 = A + i0 * lda;
  for (int64_t kb = 0; kb < K; kb += kCholKb) {
    const int64_t ke = K - kb < kCholKb ? K : kb + kCholKb;
    R c[NI][2];
#pragma GCC unroll 6
    for (int r = 0; r < NI; ++r) c[r][0] = c[r][1] = V::zero();
    fma_rows_2v<V, NI>(a0, lda, U, ldu, kb, ke, c);
#pragma GCC unroll 6
    for (int r = 0; r < NI; ++r) {
      V::storeu(W + r * NB, V::sub(V::loadu(W + r * NB), c[r][0]));
      V::storeu(W + r * NB + V::W, V::sub(V::loadu(W + r * NB + V::W), c[r][1]));
    }
    // keep W in memory between blocks: held in registers across them (GCC 12 does so for zmm), it pushed
    // the panel vectors b0 / b1 onto the stack inside the k loop (d = 550: 44 instead of 72 GF/s)
    asm volatile("" ::: "memory");
  }
}

// W[r][:] = W[r][0 : jn] @ Ri (Ri: NB x NB upper, row-major) for the NI rows of a tile, in place.
template <typename V, int NI>
inline void chol_solve_tile(const float* Ri, int64_t jn, float* W) {
  using R = typename V::reg;
  constexpr int64_t NB = chol_nb<V>();
  R c[NI][2];
#pragma GCC unroll 6
  for (int r = 0; r < NI; ++r) c[r][0] = c[r][1] = V::zero();
  const int64_t m1 = jn < V::W ? jn : V::W;
  fma_rows_2v<V, NI>(W, NB, Ri, NB, 0, m1, c);
  for (int64_t m = m1; m < jn; ++m) {  // rows m >= W of an upper Ri: the first vector is zero
    const R b1 = V::loadu(Ri + m * NB + V::W);
#pragma GCC unroll 6
    for (int r = 0; r < NI; ++r) c[r][1] = V::fmadd(V::bcast(W + r * NB + m), b1, c[r][1]);
  }
#pragma GCC unroll 6
  for (int r = 0; r < NI; ++r) {
    V::storeu(W + r * NB, c[r][0]);
    V::storeu(W + r * NB + V::W, c[r][1]);
  }
}

template <typename V, typename F>
inline void chol_rows(int64_t i0, int64_t n, F&& tile) {  // tile(i, ni) over rows [i0, n) in blocks of 6
  for (int64_t i = i0; i < n; i += 6) tile(i, n - i < 6 ? n - i : 6);
}

// r0 > 0: rows [0, r0) of A already hold the factor's rows (a leading block shared with another matrix);
// panels end at r0 (the one across it is split there), the panels above it only update and solve rows
// r0 and below, and their diagonal blocks' R is read from A instead of factorised. With r0 a multiple of
// NB every row below r0 goes through the same operations as in a full factorisation (the same bits).
template <typename V>
int64_t cholesky_lower(float* A, int64_t d, float* scratch, int64_t r0) {
  using R = typename V::reg;
  constexpr int64_t NB = chol_nb<V>();
  const int64_t ldu = chol_ldu<V>(d);
  float* U = scratch;               // d x ldu
  float* Wp = U + d * ldu;          // d x NB: the panel's rows j0.. (row i - j0)
  float* T = Wp + d * NB;           // NB x NB: the diagonal block, transposed, factorised into R
  float* Ri = T + NB * NB;          // NB x NB: R^{-1}
  for (int64_t k = 0; k < d; ++k)   // U's columns past d are read by the last panel's vectors: zero
    for (int64_t i = d; i < ldu; ++i) U[k * ldu + i] = 0.0f;
  for (int64_t j0 = 0, jn = 0; j0 < d; j0 += jn) {
    jn = d - j0 < NB ? d - j0 : NB;
    if (j0 < r0 && j0 + jn > r0) jn = r0 - j0;  // a panel ends at r0
    const int64_t m = d - j0;
    const int64_t g = r0 > j0 ? r0 - j0 : 0;  // the panel's leading rows that are given (all of its block or none)
    // 1. the panel's rows, updated by the finished columns
    // (row by row, in vectors where the panel is full: a column-wise copy, as the compiler laid out the
    // plain loop, read one line of A per float)
    for (int64_t i = 0; i < m; ++i) {
      float* w = Wp + i * NB;
      const float* a = A + (j0 + i) * d + j0;
      if (jn == NB) {
        V::storeu(w, V::loadu(a));
        V::storeu(w + V::W, V::loadu(a + V::W));
      } else {
        for (int64_t c = 0; c < jn; ++c) w[c] = a[c];
        for (int64_t c = jn; c < NB; ++c) w[c] = 0.0f;
      }
    }
    if (j0 > 0)
      chol_rows<V>(g, m, [&](int64_t i, int64_t ni) {
        const float* Uj = U + j0;
        float* w = Wp + i * NB;
        switch (ni) {
          case 6: chol_update_tile<V, 6>(A, d, j0 + i, Uj, ldu, j0, w); break;
          case 5: chol_update_tile<V, 5>(A, d, j0 + i, Uj, ldu, j0, w); break;
          case 4: chol_update_tile<V, 4>(A, d, j0 + i, Uj, ldu, j0, w); break;
          case 3: chol_update_tile<V, 3>(A, d, j0 + i, Uj, ldu, j0, w); break;
          case 2: chol_update_tile<V, 2>(A, d, j0 + i, Uj, ldu, j0, w); break;
          default: chol_update_tile<V, 1>(A, d, j0 + i, Uj, ldu, j0, w); break;
        }
      });
    // 2. the diagonal block: T = its transpose (upper triangle valid), factorised in place into R (a given
    // block: T is already R)
    for (int64_t c = 0; c < NB; ++c)
      for (int64_t r = 0; r < NB; ++r) T[c * NB + r] = (r < jn && c <= r) ? Wp[r * NB + c] : 0.0f;
    for (int64_t k = 0; k < (g > 0 ? 0 : jn); ++k) {
      float* tk = T + k * NB;
      const float dkk = tk[k];
      if (!(dkk > 0.0f) || !(dkk < 3.4e38f)) return j0 + k + 1;  // not positive, NaN or Inf
      const float s = V::sqrt1(dkk);
      for (int64_t c = 0; c < k; ++c) tk[c] = 0.0f;  // (the strict lower part: never read, kept at zero)
      const R sv = V::set1(s);  // (a division, not a product with 1 / s: one rounding, as LAPACK's spotf2)
      V::storeu(tk, V::div(V::loadu(tk), sv));
      V::storeu(tk + V::W, V::div(V::loadu(tk + V::W), sv));
      tk[k] = s;
      const R r0 = V::loadu(tk), r1 = V::loadu(tk + V::W);
      for (int64_t q = k + 1; q < jn; ++q) {  // T[q, :] -= R[k, q] R[k, :]
        float* tq = T + q * NB;
        const R f = V::set1(tk[q]);
        V::storeu(tq, V::fnmadd(f, r0, V::loadu(tq)));
        V::storeu(tq + V::W, V::fnmadd(f, r1, V::loadu(tq + V::W)));
      }
    }
    for (int64_t c = 0; c < (g > 0 ? 0 : jn); ++c) {  // the block's finished rows: C[j0 + r, j0 + c] = R[c, r]
      for (int64_t r = c; r < jn; ++r) A[(j0 + r) * d + j0 + c] = T[c * NB + r];
    }
    if (jn < m) {
      // R^{-1}, upper, row by row from the bottom: Ri[k, :] = (e_k - sum_{q > k} R[k, q] Ri[q, :]) / R[k, k]
      for (int64_t k = jn - 1; k >= 0; --k) {
        float* rk = Ri + k * NB;
        for (int64_t c = 0; c < NB; ++c) rk[c] = c == k ? 1.0f : 0.0f;
        R x0 = V::loadu(rk), x1 = V::loadu(rk + V::W);
        for (int64_t q = k + 1; q < jn; ++q) {
          const R f = V::set1(T[k * NB + q]);
          x0 = V::fnmadd(f, V::loadu(Ri + q * NB), x0);
          x1 = V::fnmadd(f, V::loadu(Ri + q * NB + V::W), x1);
        }
        const R dk = V::set1(T[k * NB + k]);
        V::storeu(rk, V::div(x0, dk));
        V::storeu(rk + V::W, V::div(x1, dk));
      }
      // 3. the rows below the block (and below r0): C[i, j0 : j0 + jn] = W[i, :] R^{-1}
      const int64_t s0 = g > jn ? g - jn : 0;
      chol_rows<V>(s0, m - jn, [&](int64_t i, int64_t ni) {
        float* w = Wp + (jn + i) * NB;
        switch (ni) {
          case 6: chol_solve_tile<V, 6>(Ri, jn, w); break;
          case 5: chol_solve_tile<V, 5>(Ri, jn, w); break;
          case 4: chol_solve_tile<V, 4>(Ri, jn, w); break;
          case 3: chol_solve_tile<V, 3>(Ri, jn, w); break;
          case 2: chol_solve_tile<V, 2>(Ri, jn, w); break;
          default: chol_solve_tile<V, 1>(Ri, jn, w); break;
        }
      });
      for (int64_t i = jn + s0; i < m; ++i) {
        const float* w = Wp + i * NB;
        float* a = A + (j0 + i) * d + j0;
        for (int64_t c = 0; c < jn; ++c) a[c] = w[c];
      }
    }
    // U rows j0 .. j0 + jn - 1 (only entries i >= j0 + NB are read later: those below the block)
    // (row by row of U: contiguous stores, strided loads from the L1-resident panel; the other loop order,
    // strided stores into U, took 80% of the time at d = 152)
    for (int64_t c = 0; c < jn; ++c) {
      float* u = U + (j0 + c) * ldu + j0;
      for (int64_t i = jn; i < m; ++i) u[i] = Wp[i * NB + c];
    }
  }
  for (int64_t i = 0; i + 1 < d; ++i)
    for (int64_t c = i + 1; c < d; ++c) A[i * d + c] = 0.0f;
  return 0;
}

}  // namespace fastad::cpu::maha_simd
