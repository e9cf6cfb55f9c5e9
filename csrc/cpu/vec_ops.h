// Small CPU primitives shared by the kernels (raw pointers + sizes, row-major).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastad::cpu {

/// out[r * ldo + c] = dot(a[r], b[c]) for r < na, c < nb.
/// @param a  na * d floats   @param b  nb * d floats   @param out  na rows of ldo floats
void dot_tile(const float* a, int64_t na, const float* b, int64_t nb, int64_t d, float* out, int64_t ldo);

/// Squared L2 norm of each of the n rows of x (n * d floats) into out (n floats).
void sq_norms(const float* x, int64_t n, int64_t d, float* out);

/// out[j] = 1 / sqrt(sq_norms[j]), or 0 for a zero row (cosine similarity 0 with everything); n floats.
void inverse_norms(const float* sq_norms, int64_t n, float* out);

// Tensor helpers for entry functions only.
at::Tensor as_f32_contiguous(const at::Tensor& x);    // float32, contiguous (no copy if already so)
at::Tensor row_sq_norms(const at::Tensor& x_f32);     // [n] float32, parallel over rows
// Errors if some row norm is NaN/Inf (the row holds NaN/Inf, or values whose square overflows fp32).
void check_finite_norms(const char* op, const char* arg, const at::Tensor& norms);

}  // namespace fastad::cpu
