#include "common/musc_checks.h"

#include <c10/util/Exception.h>

#include <cmath>

#include "common/checks.h"

namespace fastad {

int64_t grid_side(int64_t L) {
  const int64_t s = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(L))));
  return s * s == L ? s : -1;
}

static bool is_float_type(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_tokens(const char* op, const char* arg, const at::Tensor& t, bool need_grid) {
  TORCH_CHECK(t.dim() == 3, op, ": ", arg, " must be 3-D [N, L, C], got ", t.dim(), "-D tensor of shape ",
              shape_str(t));
  TORCH_CHECK(is_float_type(t.scalar_type()), op, ": ", arg, " dtype must be float32, float16 or bfloat16, got ",
              t.scalar_type());
  TORCH_CHECK(t.size(2) >= 1, op, ": ", arg, " must have C >= 1 channels, got shape ", shape_str(t));
  if (need_grid)
    TORCH_CHECK(t.size(1) >= 1 && grid_side(t.size(1)) > 0, op, ": ", arg,
                " must hold a square grid of L = H * H patch tokens (CLS removed), got L = ", t.size(1));
}

void check_r(const char* op, int64_t r) {
  TORCH_CHECK(r >= 1 && r % 2 == 1, op, ": r must be an odd integer >= 1, got ", r);
}

void check_mutual_args(const char* op, const at::Tensor& z, int64_t k, const std::optional<at::Tensor>& pool,
                       int64_t window, bool need_grid) {
  check_tokens(op, "z", z, need_grid || window > 0);
  TORCH_CHECK(window >= 0 && (window == 0 || window % 2 == 1), op,
              ": window (same_position) must be 0 (off) or an odd integer >= 1, got ", window);
  int64_t nref = z.size(0) - 1;
  if (pool) {
    check_tokens(op, "pool", *pool, false);
    TORCH_CHECK(pool->size(1) == z.size(1) && pool->size(2) == z.size(2), op,
                ": pool must have the same L and C as z, got z ", shape_str(z), " and pool ", shape_str(*pool));
    TORCH_CHECK(pool->scalar_type() == z.scalar_type(), op, ": pool and z must have the same dtype, got z ",
                z.scalar_type(), " and pool ", pool->scalar_type());
    TORCH_CHECK(pool->device() == z.device(), op, ": pool must be on z's device (", z.device(), "), got ",
                pool->device());
    nref = pool->size(0);
  }
  TORCH_CHECK(k >= 1, op, ": k must be >= 1 (k = int(fraction * number of reference images)), got k=", k);
  TORCH_CHECK(z.size(0) == 0 || k <= nref, op, ": k must be <= the number of reference images per query (",
              pool ? "pool size" : "N - 1", " = ", nref, "), got k=", k);
}

}  // namespace fastad
