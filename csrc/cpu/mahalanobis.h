// CPU kernels of the Gaussian ops: fastad::mahalanobis (squared distances through a triangular
// precision factor) and fastad::gaussian_accumulate (per-position shifted sums and SYRK products).
//
// Kernel bodies take raw pointers and sizes; the entry functions (mahalanobis_kernel.cpp,
// gaussian_kernel.cpp) check arguments, centre rows into scratch buffers and parallelise.
#pragma once
#include <cstdint>

namespace fastad::cpu {

// ---- mahalanobis: d2 = || xc @ tril(L) ||^2 ------------------------------------------------------
// tril(L) is packed once per factor into column panels of kMahaNR columns; panel q (columns
// j0 = q * kMahaNR ..) holds rows k = j0 .. d-1 only (rows < j0 of those columns are zero in a lower
// factor), each row kMahaNR floats with the strict upper part and columns >= d set to 0. The packed
// factor is therefore ~d^2/2 floats (half the bytes and half the FLOPs of a dense d x d product).
constexpr int64_t kMahaNR = 32;  // columns per panel (two zmm / four ymm)
constexpr int64_t kMahaMR = 6;   // rows (images) per micro tile
/// Floats of the packed factor (each panel's size is a multiple of 32 floats: 128-byte aligned panels).
int64_t maha_packed_floats(int64_t d);
/// bf16 pairs layout (vdpbf16ps): panel q holds k-pairs (k, k+1) for k = j0, j0+2, .. < d (odd d padded
/// with a zero row), each pair as kMahaNR columns x 2 interleaved bf16 = 64 uint16.
int64_t maha_packed_bf16(int64_t d);

/// out[r] = sum_j (sum_k xc[r * ld + k] * tril(L)[k, j])^2 for r < nrows; nrows a multiple of kMahaMR;
/// xc rows hold d floats (entries k >= d are not read). Portable C++.
void maha_rows_generic(const float* packed, const float* xc, int64_t ld, int64_t nrows, int64_t d, float* out);
#if FASTAD_HAVE_AVX512
/// The same with a 6 x 32 AVX-512 micro-kernel (mahalanobis_avx512.cpp); call only when use_avx512_micro().
void maha_rows_avx512(const float* packed, const float* xc, int64_t ld, int64_t nrows, int64_t d, float* out);
/// bf16 factor and bf16 centred rows (xcb: ld even, zero-padded to an even d), float32 accumulation with
/// vdpbf16ps (mahalanobis_avx512bf16.cpp); call only when maha_use_bf16_dot().
void maha_rows_bf16_avx512(const uint16_t* packed, const uint16_t* xcb, int64_t ld, int64_t nrows, int64_t d,
                           float* out);
#endif
/// AVX-512 BF16 dot products usable (cpuid avx512_bf16 + avx512f path, FASTAD_FORCE_NO_BF16 unset).
bool maha_use_bf16_dot();

// ---- gaussian_accumulate: C += tril(Y^T Y) ------------------------------------------------------
/// tile[i * ldt + j] (float32, overwritten) = sum_{k < n} y[k * ld + i] * y[k * ld + j] for j <= i < d
/// (entries j > i of a tile row may hold anything); y rows are zero-padded to ld (a multiple of 32).
void syrk_lower_generic(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt);
#if FASTAD_HAVE_AVX512
void syrk_lower_avx512(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt);
#endif

}  // namespace fastad::cpu
