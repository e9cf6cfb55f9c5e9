#include "common/mahalanobis_checks.h"

#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>

#include <cmath>

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

// sumsq for the vectors `vec` ([d] or [P, d]) of `from` (named `from_name` in the message): [.., d, d] or the
// packed lower triangles [.., d (d + 1) / 2] (d = 1: the same layout); returns whether it is packed.
static bool check_sumsq_layout(const char* op, const at::Tensor& sumsq, const std::vector<int64_t>& vec,
                               const char* from_name, const at::Tensor& from) {
  auto want_mat = vec;
  want_mat.push_back(vec.back());
  auto want_packed = vec;
  want_packed.back() = vec.back() * (vec.back() + 1) / 2;
  const bool packed = sumsq.dim() == static_cast<int64_t>(want_packed.size());
  TORCH_CHECK(sumsq.sizes() == at::IntArrayRef(packed ? want_packed : want_mat), op, ": sumsq must be ",
              at::IntArrayRef(want_mat), " (or packed lower triangles ", at::IntArrayRef(want_packed), ") for ",
              from_name, " of shape ", shape_str(from), ", got ", shape_str(sumsq));
  return packed;
}

void check_row_start(const char* op, const at::Tensor& r, const MahaShape& s, const char* name, const at::Tensor& t) {
  TORCH_CHECK(r.scalar_type() == at::kLong, op, ": row_start must be int64, got ", r.scalar_type());
  TORCH_CHECK(r.dim() == 1 && r.size(0) == s.P, op, ": row_start must be [", s.P, "] (one first row per ",
              s.per_position ? "position" : "call", ") for ", name, " of shape ", shape_str(t), ", got ", shape_str(r));
  TORCH_CHECK(r.device() == t.device(), op, ": row_start must be on ", name, "'s device (", t.device(), "), got ",
              r.device());
  if (r.numel() > 0) {
    const auto [lo, hi] = at::aminmax(r);
    const int64_t mn = lo.item<int64_t>(), mx = hi.item<int64_t>();
    TORCH_CHECK(mn >= 0 && mx <= s.d, op, ": row_start values must lie in [0, d = ", s.d, "], got [", mn, ", ", mx,
                "]");
  }
}

MahaShape check_gaussian_accumulate_args(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& sum,
                                         const at::Tensor& sumsq, const std::optional<at::Tensor>& row_start) {
  const char* op = "gaussian_accumulate";
  MahaShape s = x_shape(op, x);
  TORCH_CHECK(is_low_float(x.scalar_type()) || x.scalar_type() == at::kDouble, op,
              ": x dtype must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  TORCH_CHECK(shift.scalar_type() == at::kFloat || shift.scalar_type() == at::kDouble, op,
              ": shift dtype must be float32 or float64, got ", shift.scalar_type());
  TORCH_CHECK(sum.scalar_type() == at::kDouble, op, ": sum must be float64, got ", sum.scalar_type());
  TORCH_CHECK(sumsq.scalar_type() == at::kDouble, op, ": sumsq must be float64, got ", sumsq.scalar_type());
  const auto want_vec = s.per_position ? std::vector<int64_t>{s.P, s.d} : std::vector<int64_t>{s.d};
  TORCH_CHECK(shift.sizes() == at::IntArrayRef(want_vec), op, ": shift must be ", at::IntArrayRef(want_vec),
              " for x of shape ", shape_str(x), ", got ", shape_str(shift));
  TORCH_CHECK(sum.sizes() == at::IntArrayRef(want_vec), op, ": sum must be ", at::IntArrayRef(want_vec),
              " for x of shape ", shape_str(x), ", got ", shape_str(sum));
  s.packed = check_sumsq_layout(op, sumsq, want_vec, "x", x);
  TORCH_CHECK(sum.is_contiguous() && sumsq.is_contiguous(), op, ": sum and sumsq must be contiguous (updated in place)");
  for (const at::Tensor* t : {&shift, &sum, &sumsq})
    TORCH_CHECK(t->device() == x.device(), op, ": shift, sum and sumsq must be on x's device (", x.device(),
                "), got ", t->device());
  if (row_start.has_value()) check_row_start(op, *row_start, s, "x", x);
  return s;
}

MahaShape check_gaussian_covariance_args(const at::Tensor& sumsq, const at::Tensor& m, double n, double scale,
                                         double reg, const at::Tensor& out,
                                         const std::optional<at::Tensor>& row_start) {
  const char* op = "gaussian_covariance";
  TORCH_CHECK(m.dim() == 1 || m.dim() == 2, op, ": m must be [d] or [P, d] (the shifted means), got shape ",
              shape_str(m));
  MahaShape s;
  s.per_position = m.dim() == 2;
  s.P = s.per_position ? m.size(0) : 1;
  s.d = m.size(-1);
  TORCH_CHECK(m.scalar_type() == at::kDouble, op, ": m must be float64, got ", m.scalar_type());
  TORCH_CHECK(sumsq.scalar_type() == at::kDouble, op, ": sumsq must be float64, got ", sumsq.scalar_type());
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble, op,
              ": out must be float32 or float64, got ", out.scalar_type());
  const auto want_vec = s.per_position ? std::vector<int64_t>{s.P, s.d} : std::vector<int64_t>{s.d};
  s.packed = check_sumsq_layout(op, sumsq, want_vec, "m", m);
  auto want_mat = want_vec;
  want_mat.push_back(s.d);
  TORCH_CHECK(out.sizes() == at::IntArrayRef(want_mat), op, ": out must be ", at::IntArrayRef(want_mat),
              " for m of shape ", shape_str(m), ", got ", shape_str(out));
  for (const at::Tensor* t : {&sumsq, &m})
    TORCH_CHECK(t->device() == out.device(), op, ": sumsq and m must be on out's device (", out.device(), "), got ",
                t->device());
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous (written in place)");
  TORCH_CHECK(std::isfinite(n) && std::isfinite(scale) && std::isfinite(reg), op,
              ": n, scale and reg must be finite, got ", n, ", ", scale, ", ", reg);
  if (row_start.has_value()) check_row_start(op, *row_start, s, "out", out);
  return s;
}

MahaShape check_cholesky_lower_args(const at::Tensor& a, const std::optional<at::Tensor>& row_start,
                                    const std::optional<at::Tensor>& row_src) {
  const char* op = "cholesky_lower";
  TORCH_CHECK(a.dim() == 2 || a.dim() == 3, op, ": a must be [d, d] or [P, d, d] (symmetric matrices, lower triangle read), got shape ",
              shape_str(a));
  TORCH_CHECK(a.size(-1) == a.size(-2), op, ": a must hold square matrices, got shape ", shape_str(a));
  TORCH_CHECK(a.scalar_type() == at::kFloat, op, ": a must be float32, got ", a.scalar_type());
  TORCH_CHECK(a.is_contiguous(), op, ": a must be contiguous (factorised in place)");
  MahaShape s;
  s.per_position = a.dim() == 3;
  s.P = s.per_position ? a.size(0) : 1;
  s.d = a.size(-1);
  TORCH_CHECK(row_start.has_value() == row_src.has_value(), op,
              ": row_start and row_src go together (rows copied from another matrix), got ",
              row_start.has_value() ? "row_start only" : "row_src only");
  if (row_start.has_value()) {
    check_row_start(op, *row_start, s, "a", a);
    const at::Tensor& q = *row_src;
    TORCH_CHECK(q.scalar_type() == at::kLong && q.dim() == 1 && q.size(0) == s.P, op, ": row_src must be int64 [",
                s.P, "], got ", q.scalar_type(), " ", shape_str(q));
    TORCH_CHECK(q.device() == a.device(), op, ": row_src must be on a's device (", a.device(), "), got ", q.device());
    const at::Tensor rs = row_start->cpu().contiguous(), src = q.cpu().contiguous();
    const int64_t* r = rs.data_ptr<int64_t>();
    const int64_t* c = src.data_ptr<int64_t>();
    for (int64_t p = 0; p < s.P; ++p) {
      if (r[p] == 0) continue;
      TORCH_CHECK(c[p] >= 0 && c[p] < s.P, op, ": row_src[", p, "] = ", c[p], " is not a matrix of a (0 <= row_src < ",
                  s.P, ")");
      TORCH_CHECK(r[c[p]] < r[p], op, ": row_src[", p, "] = ", c[p], " must have a smaller row_start (", r[c[p]],
                  ") than matrix ", p, "'s (", r[p], "): its rows are factorised first");
    }
  }
  return s;
}

MapsShape check_gather_maps_args(at::TensorList maps, const at::Tensor& channels, const at::Tensor& out) {
  const char* op = "gather_maps";
  MapsShape s;
  s.L = static_cast<int64_t>(maps.size());
  TORCH_CHECK(s.L >= 1, op, ": maps must hold at least one layer map");
  const at::Device dev = out.device();
  for (int64_t l = 0; l < s.L; ++l) {
    const at::Tensor& m = maps[l];
    TORCH_CHECK(m.dim() == 4, op, ": maps[", l, "] must be 4-D [N, C, h, w], got shape ", shape_str(m));
    TORCH_CHECK(m.scalar_type() == at::kFloat, op, ": maps[", l, "] must be float32, got ", m.scalar_type());
    TORCH_CHECK(m.device() == dev, op, ": maps[", l, "] must be on out's device (", dev, "), got ", m.device());
    TORCH_CHECK(m.size(1) >= 1 && m.size(2) >= 1 && m.size(3) >= 1, op, ": maps[", l,
                "] must have C, h, w >= 1, got shape ", shape_str(m));
    TORCH_CHECK(m.size(0) == maps[0].size(0), op, ": the maps must share N = ", maps[0].size(0), ", got ", m.size(0),
                " for maps[", l, "]");
    s.cl.push_back(m.size(1));
    s.hl.push_back(m.size(2));
    s.wl.push_back(m.size(3));
  }
  s.N = maps[0].size(0);
  s.h = s.hl[0];
  s.w = s.wl[0];
  int64_t total = 0;
  for (int64_t c : s.cl) total += c;
  TORCH_CHECK(channels.dim() == 1 && channels.scalar_type() == at::kLong, op,
              ": channels must be a 1-D int64 tensor, got ", channels.scalar_type(), " of shape ", shape_str(channels));
  TORCH_CHECK(channels.device() == dev, op, ": channels must be on out's device (", dev, "), got ", channels.device());
  s.C = channels.size(0);
  TORCH_CHECK(s.C >= 1, op, ": channels must name at least one channel");
  if (channels.device().is_cpu()) {
    const at::Tensor c = channels.contiguous();
    const int64_t* cp = c.data_ptr<int64_t>();
    for (int64_t k = 0; k < s.C; ++k)
      TORCH_CHECK(cp[k] >= 0 && cp[k] < total, op, ": channels[", k, "] = ", cp[k], " is outside [0, ", total,
                  ") (the layers' ", total, " channels)");
  }
  TORCH_CHECK(out.scalar_type() == at::kFloat, op, ": out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.dim() == 3 && out.size(0) == s.N && out.size(1) == s.h * s.w && out.size(2) == s.C, op,
              ": out must be [N, h * w, C] = [", s.N, ", ", s.h * s.w, ", ", s.C, "], got ", shape_str(out));
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous (written in place)");
  return s;
}

}  // namespace fastad
