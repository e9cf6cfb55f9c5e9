#pragma once
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace fastad {
// "avx2" when the AVX2/FMA kernels are compiled in and this CPU supports them, else "generic".
std::string simd_level();
// Micro-kernel of the knn/group_min distance GEMM in use now: "avx512" (24 x 16 zmm kernel, CPU with
// AVX-512F), "avx2" (6 x 16 ymm kernel; also when FASTAD_FORCE_AVX2=1) or "generic" (portable path).
std::string dist_micro_kernel();
// bf16 GEMM kernel of knn on bfloat16 inputs / the bf16 screen: "avx512bf16" (vdpbf16ps), "emulated"
// (FASTAD_BF16_EMULATE=1: the scalar emulation) or "none" (bf16 inputs are upcast to float32).
std::string bf16_micro_kernel();
/// The bf16 GEMM's AMX tile kernel: "amx" (in use: its self-check passed, or FASTAD_AMX=1), "available"
/// (the CPU has it; off: FASTAD_AMX=0 or the self-check failed), "emulated" (FASTAD_AMX_EMULATE=1), "none".
std::string bf16_amx_kernel();
/// The AMX kernel's self-check (cpu/amx_check.cpp) as (verdict, dots differing from the emulation, worst
/// relative error): verdict "identical", "within-bound", "failed" or "not-run" (no AMX here). variant
/// "hardware" = the kernel in use; "emulation", "sequential", "first_panel" = test variants.
std::tuple<std::string, long long, double> amx_self_check(const std::string& variant);
// Which kernel each CPU op (and input dtype / option) runs on this CPU now, as (op, kernel) pairs, from
// the same predicates the ops dispatch on (env overrides included): printed by `fastad info`.
std::vector<std::pair<std::string, std::string>> op_kernels();
// knn_screen counters since the last reset: (calls, pairs screened, survivors, fallbacks to the fp32 path).
std::tuple<long long, long long, long long, long long> knn_screen_stats(bool reset);
// true when the AVX2/FMA code paths may be used on this CPU.
bool cpu_has_avx2_fma();
// Threads used by at::parallel_for (follows torch.set_num_threads).
int openmp_threads();
// TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for, or "" without CUDA.
std::string cuda_archs();
}  // namespace fastad
