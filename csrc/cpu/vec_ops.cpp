#include "cpu/vec_ops.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdlib>

#include "cpu/dist_kernels.h"
#include "common/build_info.h"

namespace fastad::cpu {

static inline float dot(const float* x, const float* y, int64_t d) {
  // 8 independent partial sums: lets the compiler vectorise without -ffast-math.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= d; t += 8)
    for (int u = 0; u < 8; ++u) acc[u] += x[t + u] * y[t + u];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; t < d; ++t) s += x[t] * y[t];
  return s;
}

void dot_tile(const float* a, int64_t na, const float* b, int64_t nb, int64_t d, float* out, int64_t ldo) {
  for (int64_t r = 0; r < na; ++r)
    for (int64_t c = 0; c < nb; ++c) out[r * ldo + c] = dot(a + r * d, b + c * d, d);
}

void sq_norms(const float* x, int64_t n, int64_t d, float* out) {
  for (int64_t r = 0; r < n; ++r) out[r] = dot(x + r * d, x + r * d, d);
}

bool use_avx2_path() {
  const char* force = std::getenv("FASTAD_FORCE_GENERIC");
  if (force && force[0] && force[0] != '0') return false;
  return FASTAD_HAVE_AVX2 && cpu_has_avx2_fma();
}

bool use_avx512_micro() {
#if FASTAD_HAVE_AVX512 && (defined(__x86_64__) || defined(__i386__))
  static const bool cpu_ok = __builtin_cpu_supports("avx512f");
  const char* force = std::getenv("FASTAD_FORCE_AVX2");
  if (force && force[0] && force[0] != '0') return false;
  return cpu_ok && use_avx2_path();
#else
  return false;
#endif
}

float exact_sq_dist(const float* x, const float* y, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= d; t += 8)
    for (int u = 0; u < 8; ++u) {
      const float v = x[t + u] - y[t + u];
      acc[u] += v * v;
    }
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; t < d; ++t) s += (x[t] - y[t]) * (x[t] - y[t]);
  return s;
}

void inverse_norms(const float* sq_norms, int64_t n, float* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = sq_norms[j] > 0.f ? 1.f / std::sqrt(sq_norms[j]) : 0.f;
}

at::Tensor as_f32_contiguous(const at::Tensor& x) { return x.to(at::kFloat).contiguous(); }

at::Tensor row_sq_norms(const at::Tensor& x) {
  const int64_t n = x.size(0), d = x.size(1);
  auto out = at::empty({n}, x.options().dtype(at::kFloat));
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, n, 256, [&](int64_t r0, int64_t r1) { sq_norms(px + r0 * d, r1 - r0, d, po + r0); });
  return out;
}

void check_finite_norms(const char* op, const char* arg, const at::Tensor& norms) {
  const float* p = norms.data_ptr<float>();
  for (int64_t r = 0; r < norms.numel(); ++r)
    TORCH_CHECK(std::isfinite(p[r]), op, ": ", arg, " must hold finite values, but row ", r,
                " contains NaN or Inf (or values whose square overflows float32)");
}

}  // namespace fastad::cpu
