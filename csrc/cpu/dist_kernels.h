// Distance kernels shared by the CPU k-NN and group-min ops (raw pointers + sizes, row-major fp32).
//
// Two implementations:
//   *_generic  portable C++ (csrc/cpu/knn_kernel.cpp, csrc/cpu/group_min_kernel.cpp)
//   *_avx2     register-blocked AVX2/FMA GEMM with a fused selection epilogue
//              (csrc/cpu/dist_gemm_avx2.cpp), used only when fastad::cpu_has_avx2_fma() is true.
// use_avx2_path() decides; FASTAD_FORCE_GENERIC=1 in the environment forces the portable path
// (read at every call, so tests can exercise both paths in one process).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "common/metric.h"
#include "cpu/f16.h"

namespace fastad::cpu {

/// true when the AVX2 kernels are compiled in, the CPU supports them and FASTAD_FORCE_GENERIC is not set.
bool use_avx2_path();

/// true when the AVX2 distance GEMM may use its AVX-512 micro-kernel (csrc/cpu/dist_micro_avx512.cpp):
/// compiled in, the CPU reports avx512f, and FASTAD_FORCE_AVX2 is not set in the environment (read at
/// every call, so tests can compare both micro-kernels in one process).
bool use_avx512_micro();

/// Raises naming op and arg if a row of the contiguous bfloat16 / float16 matrix t holds NaN or Inf.
void check_finite_16bit_rows(const char* op, const char* arg, const at::Tensor& t);

/// Exact squared L2 distance between two rows of d floats (direct differences, no expansion; portable).
float exact_sq_dist(const float* x, const float* y, int64_t d);

#if FASTAD_HAVE_AVX2
/// AVX2 exact k-NN. Same contract as knn_f32 in knn_kernel.cpp, except that bank norms are computed
/// internally (centred by an estimate of the bank mean, while packing the bank), and l2/sqeuclidean
/// winners are re-ranked with exact distances.
void knn_f32_avx2(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                  bool exclude_self, float* out_d, int64_t* out_i);

/// AVX2 group minimum: out[i, g] = min over bank rows j in [g*gs, (g+1)*gs) of dist(q_i, b_j)
/// ("ip": max inner product). exclude[i] (or nullptr) names a group to skip for query i (-1: none);
/// a skipped group gets +inf (-inf for "ip").
void group_min_f32_avx2(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t gs, Metric metric,
                        const int64_t* exclude, float* out);
float exact_sq_dist_avx2(const float* x, const float* y, int64_t d);
/// knn_f32_avx2 / group_min_f32_avx2 on float16 rows: converted per packed panel (F16C), never upcast as
/// a whole; results bit-identical to the float32 kernels on the upcast inputs.
void knn_f16_avx2(const F16* q, const F16* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                  bool exclude_self, float* out_d, int64_t* out_i);
void group_min_f16_avx2(const F16* q, const F16* b, int64_t Q, int64_t N, int64_t D, int64_t gs, Metric metric,
                        const int64_t* exclude, float* out);
#endif

#if FASTAD_HAVE_AVX2
/// The centre knn_f32_avx2 subtracts for l2 / sqeuclidean (mean of evenly spaced bank rows), D floats.
void knn_centre_avx2(const float* b, int64_t N, int64_t D, float* c);
/// k-NN on bfloat16 inputs (bits as uint16, row-major) through the bf16 GEMM (csrc/cpu/dist_bf16_knn_avx2.cpp):
/// fp32 accumulation, no centring, l2 / sqeuclidean winners re-ranked with exact fp32 distances of the
/// bf16 values. Same output contract as knn_f32_avx2. Needs use_bf16_gemm().
void knn_bf16_avx2(const uint16_t* q, const uint16_t* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                   bool exclude_self, float* out_d, int64_t* out_i);
/// Exact fp32 k-NN through the bf16 screen (l2 / sqeuclidean): the same indices and distances as
/// knn_f32_avx2, bit for bit. Returns false (outputs unspecified) when it declines: other metrics, a
/// bank row with a non-finite norm, or too many survivors for a query; the caller then runs knn_f32_avx2.
bool knn_f32_screen_bf16(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t k, Metric metric,
                         bool exclude_self, float* out_d, int64_t* out_i);
/// group_min_f32_avx2 (l2 / sqeuclidean) through the bf16 screen: the same outputs bit for bit, or false
/// (outputs unspecified) when it declines, as knn_f32_screen_bf16.
bool group_min_f32_screen_bf16(const float* q, const float* b, int64_t Q, int64_t N, int64_t D, int64_t gs,
                               Metric metric, const int64_t* exclude, float* out);
/// MuSc's pair minima (mutual_scores, r = 1, no window) through the bf16 screen (musc_screen_avx2.cpp):
/// minima[i, m, p] exactly as the fp32 path (Gram tile of gram_avx2 + pair_min_epilogue) writes them, bit
/// for bit, for the Nq query images (yq [Nq, L, C]) against the Np pool images (yp, pool mode when Np > 0)
/// or each other; nz [Nq + Np, L] the squared norms the fp32 path uses. Returns false (minima
/// unspecified) when it declines (a norm too large for the bound's arithmetic); the caller then runs the
/// fp32 path. Needs use_bf16_gemm().
bool mutual_minima_screen_bf16(const float* yq, const float* yp, int64_t Nq, int64_t Np, int64_t L, int64_t C,
                               const float* nz, float* minima);
/// Screen counters since the last reset (knn, group_min and mutual_scores together): calls, pairs
/// screened, survivors re-scored in fp32, fallbacks.
void bf16_screen_stats(int64_t* out4);
void bf16_screen_stats_reset();
void bf16_screen_count(int64_t calls, int64_t pairs, int64_t survivors, int64_t fallbacks);
#endif

/// true when the bf16 GEMM runs the AVX512-BF16 micro-kernel: compiled in, the CPU reports avx512f,
/// avx512bw, avx512vl and avx512_bf16, the AVX2 path is on, and FASTAD_BF16_EMULATE is not set.
bool use_bf16_micro();
/// true when the CPU has AMX tiles for bf16 (cpuid amx-tile and amx-bf16, the tile state enabled in XCR0)
/// and Linux granted this process the tile data state (arch_prctl(ARCH_REQ_XCOMP_PERM), asked once).
bool amx_usable();
/// The bf16 GEMM's AMX mode (when use_bf16_gemm()): 0 = off (the vdpbf16ps kernel or its emulation);
/// 1 = the AMX block kernel (dist_micro_amx.cpp): compiled in, use_bf16_micro(), amx_usable(), and either
/// FASTAD_AMX unset and the self-check passed (amx_hw_check(): identical to the emulation or within the fp32
/// accumulation bound) or FASTAD_AMX=1 (forced, no check); FASTAD_AMX=0 turns it off; 2 = that kernel's
/// scalar emulation (FASTAD_AMX_EMULATE=1, cpu/amx_tile_kernel.h: tests on any CPU).
int bf16_amx_mode();
/// true when the bf16 GEMM may run at all: use_bf16_micro(), or FASTAD_BF16_EMULATE=1 with the AVX2
/// path on (the scalar emulation of cpu/bf16_emu.h: bit-identical, slow; for tests).
bool use_bf16_gemm();

#if FASTAD_HAVE_AVX512
/// bf16 micro-kernel (dist_micro_avx512bf16.cpp; emulated by bf16emu::micro_bf16_emu).
void micro_bf16_avx512(int panels, int64_t kc2, const uint32_t* A, int64_t panel_stride, const uint32_t* B, float* C,
                       int64_t ldc, bool accumulate);
void bf16_rows_avx512(const float* x, int64_t rows, int64_t D, const float* c, uint16_t* out, int64_t ldo,
                      float* sums);
#endif
#if FASTAD_HAVE_AMX
/// AMX block kernel (dist_micro_amx.cpp; emulated by amx::tile_block_emu, operands: amx::tile_block).
void micro_amx_block(int64_t mc, int64_t ncp, int64_t kc2, const uint32_t* A, int64_t lda, const uint32_t* B,
                     int64_t bstride, float* C, int64_t ldc, bool accumulate, uint32_t* tail);
#endif
/// A block kernel with micro_amx_block's operands (the hardware kernel, its emulation, test variants).
using AmxBlockFn = void (*)(int64_t, int64_t, int64_t, const uint32_t*, int64_t, const uint32_t*, int64_t, float*,
                            int64_t, bool, uint32_t*);
/// The AMX kernel's self-check (amx_check.cpp): `block` against the emulation on fixed operands.
struct AmxCheck {
  enum Verdict { kNotRun, kIdentical, kWithinBound, kFailed } verdict;
  int64_t differing;  // dots that differ from the emulation's bits
  double worst;       // their largest |dot - exact| / sum |products| (0 when none differ)
};
AmxCheck amx_check_kernel(AmxBlockFn block);
/// The hardware kernel's check, run once per process where amx_usable() (kNotRun elsewhere).
const AmxCheck& amx_hw_check();
/// amx_hw_check() ("hardware"), or the check of a test variant: "emulation" (the emulation itself),
/// "sequential" (tdpbf16ps summed in one sequential chain), "first_panel" (a tile layout fault).
AmxCheck amx_check_variant(const std::string& which);

#if FASTAD_HAVE_AVX512
/// C[r * ldc + j] (r < 24, j < 16) = (accumulate ? C : 0) + sum_p A_{r/6}[p * 6 + r % 6] * B[p * 16 + j],
/// where A_t = A + t * panel_stride are four consecutive packed 6-row query panels and B one packed
/// 16-row bank panel (64-byte aligned). Bit-identical to four calls of the AVX2 6 x 16 kernel.
void micro_24x16_avx512(int64_t kc, const float* A, int64_t panel_stride, const float* B, float* C, int64_t ldc,
                        bool accumulate);
#endif

}  // namespace fastad::cpu
