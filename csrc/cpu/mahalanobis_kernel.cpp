// CPU entry of fastad::mahalanobis: squared Mahalanobis distances d2 = || (x - mean) @ tril(factor) ||^2
// (precision = L L^T), float32 accumulation, for x [N, d] (one Gaussian) or [N, P, d] (one per position).
//
// Blocks of kMahaBlock rows are centred into a float32 scratch buffer and run through a 6 x 32
// micro-kernel over the lower triangle of the factor, read in place panel by panel (cpu/mahalanobis.h:
// half the FLOPs and bytes of a dense product); its epilogue squares and sums the whitened tile in
// registers: no [N, d] whitened tensor exists, not even per position. Parallel over positions (P > 1)
// or over row blocks (P = 1).
// Paths: AVX-512 (use_avx512_micro()), AVX2/FMA 6 x 16 (use_avx2_path() without AVX-512, or
// FASTAD_FORCE_AVX2=1; also float32 / float16 factors on AMD CPUs, see maha_prefer_256()), AVX-512 BF16 vdpbf16ps for a bfloat16 factor (cpuid avx512_bf16;
// FASTAD_FORCE_NO_BF16=1 falls back to converting the factor to float32), portable C++ otherwise.
//
// Two factor kinds. The precision factor L (precision = L L^T) is scored as x @ L, a GEMM whose column
// panels are independent, in the register-blocked micro-kernels above. The covariance's Cholesky factor C
// (cholesky=true) is scored by a triangular solve z = C^{-1} (x - mean) vectorised across images (one
// image per SIMD lane), which costs the same d^2 / 2 multiply-adds per row: measured at d = 550, 784
// positions, 32 images, 1 thread (benchmarks/bench_padim.py --synthetic, results/padim_synthetic_d550.txt)
// 0.196 CPU-s for the solve against 0.199 for x @ L, so float32 PaDiM models keep C and skip the
// triangular inverse at fit (d^3 / 3 flops per position; fit 5.0 s instead of 9.4 s). Half-precision
// models keep L (the bf16 dot-product kernel and the halved model need the GEMM form).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/checks.h"
#include "common/mahalanobis_checks.h"
#include "cpu/dist_kernels.h"
#include "cpu/gram.h"
#include "cpu/mahalanobis.h"

namespace fastad::cpu {

namespace {
constexpr int64_t kMahaBlock = 48;  // rows centred per block (a multiple of kMahaMR)

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

/// Portable rows: z[r] = xc[r] @ tril(L) for 6 rows at a time (row k of L read once per 6 rows, its
/// first k + 1 entries only), then the sums of squares.
template <typename F>
void rows_generic(const F* L, int64_t d, const float* xc, int64_t ld, int64_t nrows, float* out, std::vector<float>& z) {
  z.assign(static_cast<size_t>(kMahaMR * d), 0.f);
  for (int64_t r0 = 0; r0 < nrows; r0 += kMahaMR) {
    std::fill(z.begin(), z.end(), 0.f);
    for (int64_t k = 0; k < d; ++k) {
      const F* lk = L + k * d;
      for (int64_t r = 0; r < kMahaMR; ++r) {
        const float a = xc[(r0 + r) * ld + k];
        float* zr = z.data() + r * d;
        for (int64_t j = 0; j <= k; ++j) zr[j] += a * static_cast<float>(lk[j]);
      }
    }
    for (int64_t r = 0; r < kMahaMR; ++r) {
      float ss = 0.f;
      const float* zr = z.data() + r * d;
      for (int64_t j = 0; j < d; ++j) ss += zr[j] * zr[j];
      out[r0 + r] = ss;
    }
  }
}

inline uint16_t f32_to_bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

struct U16Buf {
  uint16_t* p = nullptr;
  size_t cap = 0;
  ~U16Buf() { std::free(p); }
  uint16_t* get(size_t n) {
    if (n > cap) {
      std::free(p);
      const size_t bytes = (n * 2 + 63) / 64 * 64;
      p = static_cast<uint16_t*>(std::aligned_alloc(64, bytes));
      TORCH_CHECK(p != nullptr, "mahalanobis: out of memory allocating a ", bytes, "-byte scratch buffer");
      cap = n;
    }
    return p;
  }
};

enum class Path { Generic, Avx2, Avx512, Bf16 };

/// The kernel for a float32 / float16 factor, or a bfloat16 one (bf16_factor), on this CPU now.
Path choose_path(bool bf16_factor, bool cholesky) {
  if (cholesky) return use_avx2_path() ? Path::Avx2 : Path::Generic;  // the solve has one SIMD kernel
  const bool avx512 = use_avx512_micro();
  Path path = avx512 ? Path::Avx512 : (use_avx2_path() ? Path::Avx2 : Path::Generic);
  // float32 / float16 factors on AMD CPUs (Zen 4 executes a 512-bit FMA as two 256-bit halves): the
  // 6 x 16 kernel, measured 1.0-1.3x faster than the 6 x 32 AVX-512 one (bench_padim.py --synthetic).
  if (path == Path::Avx512 && !bf16_factor && maha_prefer_256()) path = Path::Avx2;
  if (bf16_factor && avx512 && maha_use_bf16_dot()) path = Path::Bf16;
  return path;
}

/// Row buffers of one thread.
struct Scorer {
  Path path;
  int64_t d, ld;
  AlignedFloats xc;
  U16Buf xcb;
  std::vector<float> tmp, z;

  Scorer(Path p, int64_t d_) : path(p), d(d_), ld((d_ + 15) / 16 * 16) {}

  /// rows [n0, n0 + nr) of x (row n at x + n * row_stride), centred by mean, scored against the factor L
  /// (d x d row-major); out[(n0 + r) * out_stride]
  template <typename T, typename M, typename F>
  void score(const T* x, int64_t row_stride, const M* mean, const F* L, int64_t n0, int64_t nr, float* out,
             int64_t out_stride) {
    const int64_t nrp = (nr + kMahaMR - 1) / kMahaMR * kMahaMR;
    tmp.resize(static_cast<size_t>(nrp));
    if (path == Path::Bf16) {
      // bf16 rows padded with zeros to a multiple of 32 (even; for odd d, entry d pads the last pair)
      const int64_t ldp = (d + 31) / 32 * 32;
      float* f = xc.get(static_cast<size_t>(nrp * ld));
      for (int64_t r = 0; r < nr; ++r) {
        const T* xr = x + (n0 + r) * row_stride;
        float* o = f + r * ld;
        for (int64_t k = 0; k < d; ++k) o[k] = to_float(xr[k]) - to_float(mean[k]);
      }
      uint16_t* b = xcb.get(static_cast<size_t>(nrp * ldp));
      std::memset(b + nr * ldp, 0, static_cast<size_t>((nrp - nr) * ldp) * 2);
#if FASTAD_HAVE_AVX512
      maha_rows_to_bf16(f, ld, nr, d, b, ldp);  // pads every row with zeros up to a multiple of 32
      if constexpr (std::is_same_v<F, c10::BFloat16>)
        maha_rows_bf16_avx512(reinterpret_cast<const uint16_t*>(L), d, b, ldp, nrp, tmp.data());
#endif
    } else {
      float* b = xc.get(static_cast<size_t>(nrp * ld));
      for (int64_t r = 0; r < nr; ++r) {
        const T* xr = x + (n0 + r) * row_stride;
        float* o = b + r * ld;
        for (int64_t k = 0; k < d; ++k) o[k] = to_float(xr[k]) - to_float(mean[k]);
      }
      std::memset(b + nr * ld, 0, static_cast<size_t>((nrp - nr) * ld) * 4);
#if FASTAD_HAVE_AVX512
      if (path == Path::Avx512) {
        if constexpr (std::is_same_v<F, float>)
          maha_rows_avx512(L, d, b, ld, nrp, tmp.data());
        else if constexpr (std::is_same_v<F, c10::Half>)
          maha_rows_avx512_f16(reinterpret_cast<const uint16_t*>(L), d, b, ld, nrp, tmp.data());
        else
          maha_rows_avx512_bf16(reinterpret_cast<const uint16_t*>(L), d, b, ld, nrp, tmp.data());
      } else
#endif
#if FASTAD_HAVE_AVX2
      if (path == Path::Avx2) {
        if constexpr (std::is_same_v<F, float>)
          maha_rows_avx2(L, d, b, ld, nrp, tmp.data());
        else if constexpr (std::is_same_v<F, c10::Half>)
          maha_rows_avx2_f16(reinterpret_cast<const uint16_t*>(L), d, b, ld, nrp, tmp.data());
        else
          maha_rows_avx2_bf16(reinterpret_cast<const uint16_t*>(L), d, b, ld, nrp, tmp.data());
      } else
#endif
        rows_generic(L, d, b, ld, nrp, tmp.data(), z);
    }
    for (int64_t r = 0; r < nr; ++r) out[(n0 + r) * out_stride] = tmp[static_cast<size_t>(r)];
  }
};

/// cholesky=True: rows [n0, n0 + nr) of x centred and solved against the covariance's lower Cholesky
/// factor C (C z = x - mean, d2 = |z|^2). The AVX2 path transposes groups of 16 rows into image lanes
/// (maha_solve_avx2); the portable path substitutes row by row. A float16 / bfloat16 factor is widened to
/// float32 once per Gaussian (cf32).
struct Solver {
  bool simd;
  int64_t d;
  AlignedFloats zt;
  std::vector<float> cf32, tmp;

  Solver(Path p, int64_t d_) : simd(p != Path::Generic), d(d_) {}

  template <typename F>
  const float* widen(const F* C) {
    if constexpr (std::is_same_v<F, float>) {
      return C;
    } else {
      cf32.resize(static_cast<size_t>(d * d));
      for (int64_t k = 0; k < d; ++k)
        for (int64_t j = 0; j <= k; ++j) cf32[static_cast<size_t>(k * d + j)] = static_cast<float>(C[k * d + j]);
      return cf32.data();
    }
  }

  template <typename T, typename M>
  void solve(const T* x, int64_t row_stride, const M* mean, const float* C, int64_t n0, int64_t nr, float* out,
             int64_t out_stride) {
#if FASTAD_HAVE_AVX2
    if (simd) {
      const int64_t ng = (nr + 15) / 16;
      float* z = zt.get(static_cast<size_t>(ng * d * 16));
      for (int64_t g = 0; g < ng; ++g) {
        float* zg = z + g * d * 16;
        for (int64_t l = 0; l < 16; ++l) {
          const int64_t r = g * 16 + l;
          if (r < nr) {
            const T* xr = x + (n0 + r) * row_stride;
            for (int64_t k = 0; k < d; ++k) zg[k * 16 + l] = to_float(xr[k]) - to_float(mean[k]);
          } else {
            for (int64_t k = 0; k < d; ++k) zg[k * 16 + l] = 0.f;
          }
        }
      }
      tmp.resize(static_cast<size_t>(ng * 16));
      maha_solve_avx2(C, d, z, ng, tmp.data());
      for (int64_t r = 0; r < nr; ++r) out[(n0 + r) * out_stride] = tmp[static_cast<size_t>(r)];
      return;
    }
#endif
    tmp.resize(static_cast<size_t>(d));
    for (int64_t r = 0; r < nr; ++r) {
      const T* xr = x + (n0 + r) * row_stride;
      float ss = 0.f;
      for (int64_t k = 0; k < d; ++k) {
        const float* ck = C + k * d;
        float acc = to_float(xr[k]) - to_float(mean[k]);
        for (int64_t j = 0; j < k; ++j) acc -= ck[j] * tmp[static_cast<size_t>(j)];
        const float z = acc / ck[k];
        tmp[static_cast<size_t>(k)] = z;
        ss += z * z;
      }
      out[(n0 + r) * out_stride] = ss;
    }
  }
};

// One worker per thread over the (position, block of images) grid: blocks of images when P == 1, positions
// otherwise. `prep(worker, p)` readies position p's factor once; `fn(worker, factor, p, n0, rows)` scores
// rows n0 .. n0 + rows of it. x rows have stride P * d, outputs stride P (P == 1: d and 1).
template <typename Worker, typename Prep, typename Fn>
void sweep(const MahaShape& s, Path path, Prep prep, Fn fn) {
  const int64_t N = s.N, P = s.P;
  if (P == 1) {
    const int64_t nblocks = (N + kMahaBlock - 1) / kMahaBlock;
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      Worker w(path, s.d);
      const auto f = prep(w, int64_t{0});
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * kMahaBlock;
        fn(w, f, int64_t{0}, n0, std::min(kMahaBlock, N - n0));
      }
    });
    return;
  }
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    Worker w(path, s.d);
    for (int64_t p = p0; p < p1; ++p) {
      const auto f = prep(w, p);
      for (int64_t n0 = 0; n0 < N; n0 += kMahaBlock) fn(w, f, p, n0, std::min(kMahaBlock, N - n0));
    }
  });
}

template <typename T, typename M, typename F>
void run_solve(const T* x, const M* mean, const F* C, const MahaShape& s, Path path, float* out) {
  const int64_t P = s.P, d = s.d;
  sweep<Solver>(
      s, path, [&](Solver& sv, int64_t p) { return sv.widen(C + p * d * d); },
      [&](Solver& sv, const float* c, int64_t p, int64_t n0, int64_t rows) {
        sv.solve(x + p * d, P * d, mean + p * d, c, n0, rows, out + p, P);
      });
}

template <typename T, typename M, typename F>
void run(const T* x, const M* mean, const F* L, const MahaShape& s, Path path, float* out) {
  const int64_t P = s.P, d = s.d;
  sweep<Scorer>(
      s, path, [&](Scorer&, int64_t p) { return L + p * d * d; },
      [&](Scorer& sc, const F* Lp, int64_t p, int64_t n0, int64_t rows) {
        sc.score(x + p * d, P * d, mean + p * d, Lp, n0, rows, out + p, P);
      });
}

at::Tensor mahalanobis_cpu(const at::Tensor& x_, const at::Tensor& mean_, const at::Tensor& factor_, bool cholesky) {
  const MahaShape s = check_mahalanobis_args(x_, mean_, factor_);
  auto out = s.per_position ? at::empty({s.N, s.P}, x_.options().dtype(at::kFloat))
                            : at::empty({s.N}, x_.options().dtype(at::kFloat));
  if (s.N == 0 || s.P == 0) return out;
  const at::Tensor x = x_.contiguous(), factor = factor_.contiguous(), mean = mean_.to(at::kFloat).contiguous();
  const Path path = choose_path(factor.scalar_type() == at::kBFloat16, cholesky);
  const float* m = mean.data_ptr<float>();
  float* o = out.data_ptr<float>();
  auto with_factor = [&](auto xp) {
    auto go = [&](auto fp) {
      if (cholesky)
        run_solve(xp, m, fp, s, path, o);
      else
        run(xp, m, fp, s, path, o);
    };
    switch (factor.scalar_type()) {
      case at::kFloat: go(factor.data_ptr<float>()); break;
      case at::kHalf: go(factor.data_ptr<at::Half>()); break;
      default: go(factor.data_ptr<at::BFloat16>()); break;
    }
  };
  switch (x.scalar_type()) {
    case at::kFloat: with_factor(x.data_ptr<float>()); break;
    case at::kHalf: with_factor(x.data_ptr<at::Half>()); break;
    default: with_factor(x.data_ptr<at::BFloat16>()); break;
  }
  // Non-finite input always reaches the output (NaN/Inf times anything in the lower factor), so one
  // pass over the [N, P] result detects it.
  const int64_t total = s.N * s.P;
  for (int64_t i = 0; i < total; ++i)
    if (!std::isfinite(o[i])) {
      TORCH_CHECK(false, "mahalanobis: non-finite distance for row ", i / s.P,
                  s.per_position ? " at position " + std::to_string(i % s.P) : std::string(),
                  cholesky ? ": x, mean or factor hold NaN or Inf, or the Cholesky factor has a zero on its diagonal "
                             "(or the distance overflows float32)"
                           : ": x, mean or factor hold NaN or Inf (or the distance overflows float32)");
    }
  return out;
}

}  // namespace

bool maha_use_bf16_dot() {
#if FASTAD_HAVE_AVX512 && (defined(__x86_64__) || defined(__i386__))
  static const bool cpu_ok = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  const char* force = std::getenv("FASTAD_FORCE_NO_BF16");
  if (force && force[0] && force[0] != '0') return false;
  return cpu_ok && use_avx512_micro();
#else
  return false;
#endif
}

bool maha_prefer_256() {
#if FASTAD_HAVE_AVX2 && (defined(__x86_64__) || defined(__i386__))
  static const bool amd = __builtin_cpu_is("amd");
  const char* force = std::getenv("FASTAD_MAHA_AVX512");  // 1: the 6 x 32 AVX-512 kernel anyway (tests)
  if (force && force[0] && force[0] != '0') return false;
  return amd;
#else
  return false;
#endif
}

TORCH_LIBRARY_IMPL(fastad, CPU, m) { m.impl("mahalanobis", &mahalanobis_cpu); }

std::string mahalanobis_kernel_name(bool bf16_factor, bool cholesky) {
  if (cholesky)
    return choose_path(false, true) == Path::Avx2 ? "AVX2/FMA image-lane triangular solve" : "portable triangular solve";
  switch (choose_path(bf16_factor, false)) {
    case Path::Bf16: return "AVX512-BF16 vdpbf16ps triangular kernel";
    case Path::Avx512: return "AVX-512 6x32 triangular kernel";
    case Path::Avx2: return "AVX2/FMA 6x16 triangular kernel";
    default: return "portable triangular kernel";
  }
}

}  // namespace fastad::cpu
