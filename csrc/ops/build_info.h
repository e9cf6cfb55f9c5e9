#pragma once
#include <string>

namespace fastad {
// "avx2" when the AVX2/FMA kernels are compiled in and this CPU supports them, else "generic".
std::string simd_level();
// true when the AVX2/FMA code paths may be used on this CPU.
bool cpu_has_avx2_fma();
// Threads used by at::parallel_for (follows torch.set_num_threads).
int openmp_threads();
// TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for, or "" without CUDA.
std::string cuda_archs();
}  // namespace fastad
