#pragma once
#include <string>

namespace fastad {
// "avx2" when the AVX2/FMA kernels are compiled in and this CPU supports them, else "generic".
std::string simd_level();
// Micro-kernel of the knn/group_min distance GEMM in use now: "avx512" (24 x 16 zmm kernel, CPU with
// AVX-512F), "avx2" (6 x 16 ymm kernel; also when FASTAD_FORCE_AVX2=1) or "generic" (portable path).
std::string dist_micro_kernel();
// true when the AVX2/FMA code paths may be used on this CPU.
bool cpu_has_avx2_fma();
// Threads used by at::parallel_for (follows torch.set_num_threads).
int openmp_threads();
// TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for, or "" without CUDA.
std::string cuda_archs();
}  // namespace fastad
