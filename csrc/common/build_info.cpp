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

int openmp_threads() { return at::get_num_threads(); }

std::string cuda_archs() {
#if FASTAD_WITH_CUDA
  return FASTAD_CUDA_ARCHS;
#else
  return "";
#endif
}

}  // namespace fastad
