#include "common/build_info.h"

#include <ATen/Parallel.h>

#include <cstdlib>

#include "cpu/dist_kernels.h"
#include "cpu/mahalanobis.h"

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

std::string bf16_amx_kernel() {
  const int mode = cpu::use_bf16_gemm() ? cpu::bf16_amx_mode() : 0;
  if (mode == 1) return "amx";
  if (mode == 2) return "emulated";
  return cpu::amx_usable() ? "available" : "none";
}

std::tuple<std::string, long long, double> amx_self_check(const std::string& variant) {
  const cpu::AmxCheck c = cpu::amx_check_variant(variant);
  static const char* names[] = {"not-run", "identical", "within-bound", "failed"};
  return {names[c.verdict], c.differing, c.worst};
}

std::vector<std::pair<std::string, std::string>> op_kernels() {
  const bool avx2 = cpu::use_avx2_path(), bf16hw = cpu::use_bf16_micro(), bf16 = cpu::use_bf16_gemm();
  const std::string gemm = cpu::use_avx512_micro() ? "AVX-512 24x16 fp32 GEMM"
                           : avx2                  ? "AVX2/FMA 6x16 fp32 GEMM"
                                                   : "portable blocked sweep";
  const std::string amx = bf16_amx_kernel();
  const auto amx_off = [] {
    const char* on = std::getenv("FASTAD_AMX");
    if (on && on[0] == '0') return std::string(" (AMX tiles off: FASTAD_AMX=0)");
    return std::string(" (AMX tiles off: their self-check failed on this CPU)");
  };
  const std::string bf16k = amx == "amx"        ? "AMX tdpbf16ps tiles, fp32 accumulation"
                            : amx == "emulated" ? "AMX tile kernel through its scalar emulation (FASTAD_AMX_EMULATE)"
                            : bf16hw ? std::string("AVX512-BF16 vdpbf16ps GEMM, fp32 accumulation") +
                                           (amx == "available" ? amx_off() : "")
                                     : "bf16 GEMM through its scalar emulation (FASTAD_BF16_EMULATE)";
  const std::string screen = "bf16 screen (" + bf16k + ") + float32 re-score, else " + gemm;
  std::vector<std::pair<std::string, std::string>> k;
  k.emplace_back("knn float32", gemm + " + fused top-k");
  k.emplace_back("knn float16", avx2 ? gemm + ", float16 converted per packed panel (F16C)"
                                     : "float32 upcast + " + gemm);
  k.emplace_back("knn bfloat16", bf16 ? bf16k : "float32 upcast + " + gemm);
  k.emplace_back("knn screen='auto'", bf16hw ? screen + " (D >= 96, k * 64 <= N)"
                                             : gemm + " (no AVX512-BF16: the screen is slower here)");
  k.emplace_back("knn screen='bf16'", bf16 ? screen : gemm + " (no bf16 GEMM on this CPU)");
  k.emplace_back("group_min float32", gemm + " + fused group minimum");
  k.emplace_back("group_min float16", avx2 ? gemm + ", float16 converted per packed panel (F16C)"
                                           : "float32 upcast + " + gemm);
  k.emplace_back("group_min screen='auto'", bf16hw ? screen + " (D >= 96, group_size >= 64)"
                                                   : gemm + " (no AVX512-BF16: the screen is slower here)");
  k.emplace_back("mutual_scores", avx2 ? "AVX2/FMA 6x16 Gram tile + fused pair minima" : "portable Gram tile + pair minima");
  const std::string gram = avx2 ? "AVX2/FMA 6x16 Gram tile" : "portable Gram tile";
  k.emplace_back("mutual_scores screen='auto'", bf16hw ? "bf16 screen (" + bf16k + ") + float32 re-score, else " + gram +
                                                                " (C >= 128, L * C >= 32768, no window)"
                                                       : gram + " (no AVX512-BF16: the screen is slower here)");
  k.emplace_back("mutual_scores screen='bf16'", bf16 ? "bf16 screen (" + bf16k + ") + float32 re-score (no window)"
                                                     : gram + " (no bf16 GEMM on this CPU)");
  k.emplace_back("coreset", std::string(cpu_has_avx2_fma() ? "AVX2/FMA distance step" : "portable distance step") +
                                " (method='pruned': ball tree over PCA row summaries, batches of provably-next centres, exact)");
  k.emplace_back("mahalanobis float32/float16 factor", cpu::mahalanobis_kernel_name(false));
  k.emplace_back("mahalanobis bfloat16 factor", cpu::mahalanobis_kernel_name(true));
  k.emplace_back("mahalanobis cholesky factor", cpu::mahalanobis_kernel_name(false, true));
  k.emplace_back("gaussian_accumulate", cpu::gaussian_kernel_name(false));
  k.emplace_back("cholesky_lower", cpu::gaussian_kernel_name(true));
  return k;
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
