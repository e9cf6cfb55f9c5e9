#include "common/build_info.h"

#include <ATen/Parallel.h>

#include "cpu/dist_kernels.h"

namespace fastad {

bool cpu_has_avx2_fma() {
#if FASTAD_HAVE_AVX2 && (defined(__x86_64__) || defined(__i386__))
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
#else
  return false;
#endif
}

std::string simd_level() { return cpu_has_avx2_fma() ? "avx2" : "generic"; }

std::string dist_micro_kernel() {
  if (cpu::use_avx512_micro()) return "avx512";
  return cpu::use_avx2_path() ? "avx2" : "generic";
}

std::string bf16_micro_kernel() {
  if (cpu::use_bf16_micro()) return "avx512bf16";
  return cpu::use_bf16_gemm() ? "emulated" : "none";
}

std::tuple<long long, long long, long long, long long> knn_screen_stats(bool reset) {
  int64_t v[4] = {0, 0, 0, 0};
#if FASTAD_HAVE_AVX2
  cpu::bf16_screen_stats(v);
  if (reset) cpu::bf16_screen_stats_reset();
#endif
  return {v[0], v[1], v[2], v[3]};
}

int openmp_threads() { return at::get_num_threads(); }

std::string cuda_archs() {
#if FASTAD_WITH_CUDA
  return FASTAD_CUDA_ARCHS;
#else
  return "";
#endif
}

}  // namespace fastad
