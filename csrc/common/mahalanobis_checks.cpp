#include "common/mahalanobis_checks.h"

#include <c10/util/Exception.h>

#include "common/checks.h"

namespace fastad {

static bool is_low_float(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// x [N, d] (one Gaussian) or [N, P, d] (one per position) -> its sizes, checked (d >= 1).
static MahaShape x_shape(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 || x.dim() == 3, op, ": x must be 2-D [N, d] or 3-D [N, P, d], got ", x.dim(),
              "-D tensor of shape ", shape_str(x));
  MahaShape s;
  s.per_position = x.dim() == 3;
  s.N = x.size(0);
  s.P = s.per_position ? x.size(1) : 1;
  s.d = x.size(-1);
  TORCH_CHECK(s.d >= 1, op, ": x must have d >= 1 features, got shape ", shape_str(x));
  return s;
}

MahaShape check_mahalanobis_args(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& factor) {
  const char* op = "mahalanobis";
  MahaShape s = x_shape(op, x);
  TORCH_CHECK(is_low_float(x.scalar_type()), op, ": x dtype must be float32, float16 or bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(is_low_float(mean.scalar_type()), op, ": mean dtype must be float32, float16 or bfloat16, got ",
              mean.scalar_type());
  TORCH_CHECK(is_low_float(factor.scalar_type()), op, ": factor dtype must be float32, float16 or bfloat16, got ",
              factor.scalar_type());
  if (s.per_position) {
    TORCH_CHECK(mean.dim() == 2 && mean.size(0) == s.P && mean.size(1) == s.d, op,
                ": mean must be [P, d] = [", s.P, ", ", s.d, "] for x of shape ", shape_str(x), ", got ",
                shape_str(mean));
    TORCH_CHECK(factor.dim() == 3 && factor.size(0) == s.P, op, ": factor must be [P, d, d] = [", s.P, ", ", s.d,
                ", ", s.d, "] (one lower-triangular factor per position) for x of shape ", shape_str(x), ", got ",
                shape_str(factor));
  } else {
    TORCH_CHECK(mean.dim() == 1 && mean.size(0) == s.d, op, ": mean must be [d] = [", s.d,
                "] for x of shape ", shape_str(x), ", got ", shape_str(mean));
    TORCH_CHECK(factor.dim() == 2, op, ": factor must be [d, d] = [", s.d, ", ", s.d,
                "] (a lower-triangular factor) for x of shape ", shape_str(x), ", got ", shape_str(factor));
  }
  TORCH_CHECK(factor.size(-1) == factor.size(-2), op, ": factor must be square (triangular-shaped [.., d, d]), got ",
              shape_str(factor));
  TORCH_CHECK(factor.size(-1) == s.d, op, ": factor must be [.., d, d] with d = ", s.d, " (x's features), got ",
              shape_str(factor));
  TORCH_CHECK(mean.device() == x.device(), op, ": mean must be on x's device (", x.device(), "), got ",
              mean.device());
  TORCH_CHECK(factor.device() == x.device(), op, ": factor must be on x's device (", x.device(), "), got ",
              factor.device());
  return s;
}

MahaShape check_gaussian_accumulate_args(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& sum,
                                         const at::Tensor& sumsq) {
  const char* op = "gaussian_accumulate";
  MahaShape s = x_shape(op, x);
  TORCH_CHECK(is_low_float(x.scalar_type()) || x.scalar_type() == at::kDouble, op,
              ": x dtype must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  TORCH_CHECK(shift.scalar_type() == at::kFloat || shift.scalar_type() == at::kDouble, op,
              ": shift dtype must be float32 or float64, got ", shift.scalar_type());
  TORCH_CHECK(sum.scalar_type() == at::kDouble, op, ": sum must be float64, got ", sum.scalar_type());
  TORCH_CHECK(sumsq.scalar_type() == at::kDouble, op, ": sumsq must be float64, got ", sumsq.scalar_type());
  const auto want_vec = s.per_position ? std::vector<int64_t>{s.P, s.d} : std::vector<int64_t>{s.d};
  const auto want_mat = s.per_position ? std::vector<int64_t>{s.P, s.d, s.d} : std::vector<int64_t>{s.d, s.d};
  TORCH_CHECK(shift.sizes() == at::IntArrayRef(want_vec), op, ": shift must be ", at::IntArrayRef(want_vec),
              " for x of shape ", shape_str(x), ", got ", shape_str(shift));
  TORCH_CHECK(sum.sizes() == at::IntArrayRef(want_vec), op, ": sum must be ", at::IntArrayRef(want_vec),
              " for x of shape ", shape_str(x), ", got ", shape_str(sum));
  TORCH_CHECK(sumsq.sizes() == at::IntArrayRef(want_mat), op, ": sumsq must be ", at::IntArrayRef(want_mat),
              " for x of shape ", shape_str(x), ", got ", shape_str(sumsq));
  TORCH_CHECK(sum.is_contiguous() && sumsq.is_contiguous(), op, ": sum and sumsq must be contiguous (updated in place)");
  for (const at::Tensor* t : {&shift, &sum, &sumsq})
    TORCH_CHECK(t->device() == x.device(), op, ": shift, sum and sumsq must be on x's device (", x.device(),
                "), got ", t->device());
  return s;
}

}  // namespace fastad
