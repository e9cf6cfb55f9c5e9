// CPU kernels of the Gaussian ops: fastad::mahalanobis (squared distances through a triangular
// precision factor) and fastad::gaussian_accumulate (per-position shifted sums and SYRK products).
//
// Kernel bodies take raw pointers and sizes; the entry functions (mahalanobis_kernel.cpp,
// gaussian_kernel.cpp) check arguments, centre rows into scratch buffers and parallelise.
#pragma once
#include <cstdint>
#include <string>

#include "cpu/row_prefetch.h"

namespace fastad::cpu {

// ---- mahalanobis: d2 = || xc @ tril(L) ||^2 ------------------------------------------------------
// The factor is read in place (row-major d x d, one Gaussian): column panels of 32 columns, rows k >= j0
// of panel j0 only (the rows above are zero in a lower factor), the diagonal block masked to k >= j;
// half the FLOPs and bytes of a dense product, and no per-call packing (PaDiM scores ~32 images per
// position, too few to amortise a copy of the factor).
constexpr int64_t kMahaNR = 32;  // columns per panel (two zmm)
constexpr int64_t kMahaMR = 6;   // rows (images) per micro tile

#if FASTAD_HAVE_AVX512
/// out[r] = sum_j (sum_{k >= j} xc[r * ld + k] * L[k * d + j])^2 for r < nrows (a multiple of kMahaMR),
/// 6 x 32 AVX-512 micro-kernel; the factor as float32 / float16 / bfloat16 (widened in registers).
/// Call only when use_avx512_micro(). (mahalanobis_avx512.cpp)
void maha_rows_avx512(const float* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out);
void maha_rows_avx512_f16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out);
void maha_rows_avx512_bf16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out);
/// bf16 factor and bf16 centred rows (xcb: ld even, zero-padded to an even length), float32 accumulation
/// with vdpbf16ps (mahalanobis_avx512bf16.cpp); call only when maha_use_bf16_dot().
void maha_rows_bf16_avx512(const uint16_t* L, int64_t d, const uint16_t* xcb, int64_t ld, int64_t nrows, float* out);
/// float32 rows -> bfloat16 rows (round to nearest even), zero-padded to ldb >= round_up(d, 32).
void maha_rows_to_bf16(const float* xc, int64_t ld, int64_t nr, int64_t d, uint16_t* out, int64_t ldb);
#endif
#if FASTAD_HAVE_AVX2
/// The same with a 6 x 16 AVX2/FMA micro-kernel (16-column panels), for CPUs without AVX-512; call
/// only when use_avx2_path() (mahalanobis_avx2.cpp). FASTAD_FORCE_AVX2=1 selects it on AVX-512 CPUs.
void maha_rows_avx2(const float* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out);
void maha_rows_avx2_f16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out);
void maha_rows_avx2_bf16(const uint16_t* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out);
/// cholesky=True: forward substitution C z = xc with the covariance's lower Cholesky factor C (float32,
/// row-major d x d, lower triangle read) for ngroups groups of 16 centred rows stored transposed
/// (zt[g * d * 16 + j * 16 + l] = row 16 g + l, feature j; overwritten by z); out[16 g + l] = |z|^2.
/// Also run on AVX-512 CPUs (a 6 x 16 tile; call only when use_avx2_path()).
void maha_solve_avx2(const float* C, int64_t d, float* zt, int64_t ngroups, float* out);
#endif
/// true on AMD CPUs (the 6 x 16 kernel is measured faster there for float32 / float16 factors) unless
/// FASTAD_MAHA_AVX512=1 (read at every call).
bool maha_prefer_256();
/// AVX-512 BF16 dot products usable (cpuid avx512_bf16 + avx512f path, FASTAD_FORCE_NO_BF16 unset).
bool maha_use_bf16_dot();
/// The kernel ops.mahalanobis runs now for a float32 / float16 precision factor, a bfloat16 one, or a
/// Cholesky factor (cholesky=true: the triangular solve) (fastad info).
std::string mahalanobis_kernel_name(bool bf16_factor, bool cholesky = false);
/// The kernel gaussian_accumulate's float32 SYRK (cholesky = false) or cholesky_lower runs now (fastad info).
std::string gaussian_kernel_name(bool cholesky);

// ---- cholesky_lower: A = C C^T in place (float32, row-major d x d, lower triangle read) ------------
/// Returns 0 (C in the lower triangle, the strict upper one zeroed) or k >= 1, the order of the first
/// leading minor that is not positive definite (or not finite; A then partially overwritten). scratch:
/// at least cholesky_scratch_*(d) floats, 64-byte aligned. Portable version: cholesky_lower_generic.
/// r0 > 0: rows [0, r0) already hold the factor of the leading r0 x r0 block (not re-read as matrix
/// entries); only rows r0 and below are factorised.
int64_t cholesky_lower_generic(float* a, int64_t d, int64_t r0);
#if FASTAD_HAVE_AVX512
int64_t cholesky_lower_avx512(float* a, int64_t d, float* scratch, int64_t r0);
int64_t cholesky_scratch_avx512(int64_t d);
#endif
#if FASTAD_HAVE_AVX2
int64_t cholesky_lower_avx2(float* a, int64_t d, float* scratch, int64_t r0);
int64_t cholesky_scratch_avx2(int64_t d);
#endif

// ---- gaussian_accumulate: C += tril(Y^T Y) ------------------------------------------------------
/// tile[i * ldt + j] (float32, overwritten) = sum_{k < n} y[k * ld + i] * y[k * ld + j] for j <= i, r0 <= i < d
/// (entries j > i of a tile row, and rows above r0, may hold anything); y rows are zero-padded to ld (a
/// multiple of 32). pf (SIMD kernels; may be null): rows prefetched into L2 meanwhile (the next chunk the
/// caller centres).
void syrk_lower_generic(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt, int64_t r0);
#if FASTAD_HAVE_AVX512
void syrk_lower_avx512(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt, RowPrefetch* pf,
                       int64_t r0);
#endif
#if FASTAD_HAVE_AVX2
void syrk_lower_avx2(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt, RowPrefetch* pf,
                     int64_t r0);
/// y[r * ld + j] = x[r * rs + j] - shift[j] (float32; zero for d <= j < ld) and cs[j] += y[r * ld + j]
/// (float64, rows in order) for r < nr: gaussian_accumulate's centring, the same values as its portable loop.
void center_rows_avx2(const float* x, int64_t rs, const float* shift, int64_t nr, int64_t d, float* y, int64_t ld,
                      double* cs);
/// s2[i * d + j] (packed: s2[i (i + 1) / 2 + j]) += tile[i * ldt + j] (float32 -> float64) for j <= i,
/// r0 <= i < d.
void tile_add_f64_avx2(const float* tile, int64_t ldt, int64_t d, double* s2, bool packed, int64_t r0);
/// gather_maps for one image: out[p * C + k] = planes[k][srcs[k] ? srcs[k][p] : p] for p < P, k < C
/// (8 positions x 8 channels per 8 x 8 transpose; srcs[k] == nullptr: the channel's layer is on the
/// output grid). next: nullptr, or per channel the offset of the next image's plane (prefetched while
/// the last positions of this one are written).
void gather_maps_image_avx2(const float* const* planes, const int32_t* const* srcs, const int64_t* next, int64_t C,
                            int64_t P, float* out);
#endif

}  // namespace fastad::cpu
