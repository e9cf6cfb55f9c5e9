// The AMX kernel's self-check (issue 15): before the bf16 GEMM uses the AMX tile kernel by default, it
// runs that kernel once per process on fixed operands and compares every dot with the scalar emulation of
// the same instruction sequence (cpu/amx_tile_kernel.h). The kernel has been written and tested against the
// emulation on CPUs without AMX only, so the check guards users on the first CPUs that run it:
//   identical        every dot equals the emulation bit for bit: the kernel is used;
//   within bound     some dots differ (the CPU sums a tdpbf16ps in another order than the SDM's model), but
//                    every dot is within the fp32 accumulation bound of its exact value: the kernel is used
//                    (every k-NN answer allows any summation order: the bf16 results are specified by that
//                    bound and the screen's bound covers any order), and the difference is reported
//                    (build_info()["bf16_amx_check"], tests/ops/test_knn_bf16.py::test_amx_hw_equals_emulation);
//   failed           a dot is outside the bound (a layout or tile-configuration fault): the kernel is not
//                    used, the vdpbf16ps kernel runs instead, and one line on stderr says so.
// Operands: 40 query rows x 48 bank rows (partial second tiles of A, whole and half tiles of B), two depth
// slices (37 pairs: a depth tail; then 20 pairs accumulated onto the first), bf16 values with random signs,
// significands and exponents in [2^-6, 2^6), and a non-zero C row stride.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/amx_tile_kernel.h"
#include "cpu/dist_kernels.h"

namespace fastad::cpu {

namespace {

constexpr int64_t kMc = 40, kNcp = 48, kLdc = 52;
constexpr int64_t kSlices[2] = {37, 20};

struct Operands {
  std::vector<uint32_t> A[2], B[2];  // per depth slice: row-major pairs (lda = round16), bank panels
  int64_t lda[2], bstride[2];
};

Operands make_operands() {
  Operands o;
  uint64_t s = 0x9e3779b97f4a7c15ull;
  const auto next = [&s] {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    return s;
  };
  const auto word = [&next] {  // bf16: random sign and significand, exponent 121..132 ([2^-6, 2^6))
    const uint64_t r = next();
    return static_cast<uint16_t>(((r & 1) << 15) | ((121 + (r >> 8) % 12) << 7) | ((r >> 20) & 0x7f));
  };
  const auto pair = [&word] { return static_cast<uint32_t>(word()) | (static_cast<uint32_t>(word()) << 16); };
  for (int z = 0; z < 2; ++z) {
    const int64_t kc2 = kSlices[z];
    o.lda[z] = amx::round16(kc2), o.bstride[z] = kc2 * 16;
    o.A[z].assign(amx::round16(kMc) * o.lda[z], 0u);
    for (int64_t i = 0; i < kMc; ++i)
      for (int64_t p = 0; p < kc2; ++p) o.A[z][i * o.lda[z] + p] = pair();
    o.B[z].resize(kNcp / 16 * o.bstride[z]);
    for (auto& w : o.B[z]) w = pair();
  }
  return o;
}

// C[i][j] of the two slices through `block`.
std::vector<float> run_block(AmxBlockFn block, const Operands& o) {
  std::vector<float> C(amx::round16(kMc) * kLdc, 0.f);
  std::vector<uint32_t> tail(512);
  for (int z = 0; z < 2; ++z)
    block(kMc, kNcp, kSlices[z], o.A[z].data(), o.lda[z], o.B[z].data(), o.bstride[z], C.data(), kLdc, z > 0,
          tail.data());
  return C;
}

// The exact dot of query row i and bank row j over both slices (double: the products of bf16 values are exact
// and 114 of them sum with a relative error far below the float32 bound), and the sum of |products|.
void exact_dot(const Operands& o, int64_t i, int64_t j, double* dot, double* abs_sum) {
  const auto f = [](uint16_t h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float v;
    std::memcpy(&v, &u, 4);
    return static_cast<double>(v);
  };
  *dot = 0, *abs_sum = 0;
  for (int z = 0; z < 2; ++z)
    for (int64_t p = 0; p < kSlices[z]; ++p) {
      const uint32_t a = o.A[z][i * o.lda[z] + p], b = o.B[z][(j / 16) * o.bstride[z] + p * 16 + j % 16];
      const double lo = f(a & 0xffffu) * f(b & 0xffffu), hi = f(a >> 16) * f(b >> 16);
      *dot += lo + hi, *abs_sum += std::fabs(lo) + std::fabs(hi);
    }
}

// Test variants of the kernel under check (amx_check_variant): the SDM order summed sequentially (one
// partial sum per element, as the older intrinsics guide describes), and a layout fault (every bank panel
// read from the first: bstride 0).
struct SequentialTiles : amx::EmuTiles {
  template <int c, int a, int b>
  void dp() {
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float acc = bf16emu::bits_f32(reg[c][m][n]);
        for (int k = 0; k < 16; ++k) {
          const uint32_t x = reg[a][m][k], y = reg[b][k][n];
          acc = bf16emu::dp_step(acc, static_cast<uint16_t>(x & 0xffffu), static_cast<uint16_t>(y & 0xffffu));
          acc = bf16emu::dp_step(acc, static_cast<uint16_t>(x >> 16), static_cast<uint16_t>(y >> 16));
        }
        reg[c][m][n] = bf16emu::f32_bits(acc);
      }
  }
};
void sequential_block(int64_t mc, int64_t ncp, int64_t kc2, const uint32_t* A, int64_t lda, const uint32_t* B,
                      int64_t bstride, float* C, int64_t ldc, bool accumulate, uint32_t* tail) {
  static thread_local SequentialTiles t;
  amx::tile_block(t, mc, ncp, kc2, A, lda, B, bstride, C, ldc, accumulate, tail);
}
void first_panel_block(int64_t mc, int64_t ncp, int64_t kc2, const uint32_t* A, int64_t lda, const uint32_t* B,
                       int64_t, float* C, int64_t ldc, bool accumulate, uint32_t* tail) {
  amx::tile_block_emu(mc, ncp, kc2, A, lda, B, 0, C, ldc, accumulate, tail);
}

}  // namespace

AmxCheck amx_check_variant(const std::string& which) {
  if (which == "hardware") return amx_hw_check();
  if (which == "emulation") return amx_check_kernel(&amx::tile_block_emu);
  if (which == "sequential") return amx_check_kernel(&sequential_block);
  if (which == "first_panel") return amx_check_kernel(&first_panel_block);
  throw std::invalid_argument("amx_self_check: variant must be 'hardware', 'emulation', 'sequential' or "
                              "'first_panel', got '" + which + "'");
}

AmxCheck amx_check_kernel(AmxBlockFn block) {
  const Operands o = make_operands();
  const std::vector<float> got = run_block(block, o), emu = run_block(&amx::tile_block_emu, o);
  // fp32 accumulation of n terms (2 per depth pair, the slice sums, the partial-sum adds): |err| <= gamma_n sum|.|
  constexpr double u = 1.0 / (1 << 24);
  const double n = 2.0 * (kSlices[0] + kSlices[1]) + 8, gamma = n * u / (1 - n * u);
  AmxCheck r{AmxCheck::kIdentical, 0, 0.0};
  for (int64_t i = 0; i < kMc; ++i)
    for (int64_t j = 0; j < kNcp; ++j) {
      const float g = got[i * kLdc + j], e = emu[i * kLdc + j];
      if (std::memcmp(&g, &e, 4) == 0) continue;
      ++r.differing;
      double dot, abs_sum;
      exact_dot(o, i, j, &dot, &abs_sum);
      const double err = std::isfinite(g) ? std::fabs(g - dot) / abs_sum : INFINITY;
      r.worst = std::fmax(r.worst, err);
      if (!(err <= gamma)) r.verdict = AmxCheck::kFailed;
      else if (r.verdict == AmxCheck::kIdentical) r.verdict = AmxCheck::kWithinBound;
    }
  return r;
}

const AmxCheck& amx_hw_check() {
  static const AmxCheck r = [] {
#if FASTAD_HAVE_AMX
    if (!amx_usable()) return AmxCheck{AmxCheck::kNotRun, 0, 0.0};
    AmxCheck c = amx_check_kernel(&micro_amx_block);
    if (c.verdict == AmxCheck::kFailed)
      std::fprintf(stderr,
                   "fastad: the AMX tile kernel disagreed with its reference on this CPU (%lld of %lld dots differ, "
                   "worst relative error %.3g); the bf16 GEMM uses the AVX512-BF16 kernel instead. Please report "
                   "this with the output of `python -m fastad info`.\n",
                   static_cast<long long>(c.differing), static_cast<long long>(kMc * kNcp), c.worst);
    return c;
#else
    return AmxCheck{AmxCheck::kNotRun, 0, 0.0};
#endif
  }();
  return r;
}

}  // namespace fastad::cpu
