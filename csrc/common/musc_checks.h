// Argument checks of the MuSc ops, shared by the CPU and CUDA entry functions.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastad {

// Side H of a square grid of L tokens (L = H * H), or -1.
int64_t grid_side(int64_t L);
// t is [N, L, C] floating (fp32/fp16/bf16) with C >= 1 (and L = H * H when need_grid).
void check_tokens(const char* op, const char* arg, const at::Tensor& t, bool need_grid);
// r is odd and >= 1.
void check_r(const char* op, int64_t r);
// z (and pool) tokens, window 0 or odd, 1 <= k <= number of reference images per query.
void check_mutual_args(const char* op, const at::Tensor& z, int64_t k, const std::optional<at::Tensor>& pool,
                       int64_t window, bool need_grid);

}  // namespace fastad
