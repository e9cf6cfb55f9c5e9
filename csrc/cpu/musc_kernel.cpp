// CPU kernels of MuSc (zero-shot mutual scoring): lnamd, snamd, mutual_scores, lnamd_mutual_scores.
//
// Layout: tokens are channels-last, [B, L, C] with L = H * W patches in row-major (h, w) order.
//
// Mutual scoring is organised around image PAIRS: for a pair (i, j) one Gram tile
// G = Y_i Y_j^T ([L, L], the only O(L^2) buffer, one per thread) is computed with the register-blocked
// GEMM of cpu/gram.h; its fused epilogue turns it into squared distances and takes both the row minima
// (patches of i against image j) and the column minima (patches of j against image i), so each pair
// is computed once (the official code computes it twice, once per direction). Only the minima are
// kept: [R, N, N-1, L] floats, never an [L, (N-1) L] distance matrix.
//
// lnamd_mutual_scores fuses LNAMD into the scoring: LNAMD's r x r mean is linear, so the inner
// products of pooled features are a 4-D box filter of the Gram of the LayerNorm-ed tokens,
//   <sum_{a in W_r(p)} y_a, sum_{b in W_r(q)} y_b> = sum_{a in W_r(p), b in W_r(q)} G[a, b],
// and one GEMM per pair and layer serves every r in r_list (the box filter costs O(r L^2), against
// O(C L^2) for the GEMM; it streams one grid row at a time inside the min epilogue of cpu/musc_tile.h,
// so G stays the only L x L buffer). The per-token L2 normalisation becomes a per-row/column scale.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "cpu/dist_kernels.h"
#include "cpu/gram.h"
#include "cpu/musc_tile.h"
#include "cpu/vec_ops.h"
#include "common/checks.h"
#include "common/musc_checks.h"

namespace fastad::cpu {

constexpr double kLayerNormEps = 1e-5;  // torch.nn.LayerNorm default, as in the official LNAMD

// ---------------------------------------------------------------------------------------------
// Raw-pointer building blocks.

/// LayerNorm of one image over all of its L * C values jointly (no affine, biased variance).
/// @param x  image tokens: L rows of C floats, row stride `row_stride` (>= C)
/// @param y  output, L * C floats contiguous
void layer_norm_image(const float* x, int64_t L, int64_t C, int64_t row_stride, float* y) {
  double s = 0.0;
  for (int64_t p = 0; p < L; ++p) {
    const float* xr = x + p * row_stride;
    double rs = 0.0;
    for (int64_t c = 0; c < C; ++c) rs += xr[c];
    s += rs;
  }
  const double n = static_cast<double>(L * C);
  const double mean = s / n;
  double v = 0.0;
  for (int64_t p = 0; p < L; ++p) {
    const float* xr = x + p * row_stride;
    double rv = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double d = xr[c] - mean;
      rv += d * d;
    }
    v += rv;
  }
  const float rstd = static_cast<float>(1.0 / std::sqrt(v / n + kLayerNormEps));
  const float m = static_cast<float>(mean);
  for (int64_t p = 0; p < L; ++p) {
    const float* xr = x + p * row_stride;
    float* yr = y + p * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m) * rstd;
  }
}

/// r x r box SUM over the H x W grid with zero padding (r odd), channels-last.
/// @param y    H * W * C floats   @param tmp  H * W * C floats scratch   @param out  H * W * C floats
void box_sum_image(const float* y, int64_t H, int64_t W, int64_t C, int64_t r, float* tmp, float* out) {
  const int64_t rad = (r - 1) / 2;
  // along w
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) {
      float* t = tmp + (h * W + w) * C;
      std::fill(t, t + C, 0.f);
      for (int64_t dw = -rad; dw <= rad; ++dw) {
        const int64_t w2 = w + dw;
        if (w2 < 0 || w2 >= W) continue;
        const float* s = y + (h * W + w2) * C;
        for (int64_t c = 0; c < C; ++c) t[c] += s[c];
      }
    }
  // along h
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) {
      float* o = out + (h * W + w) * C;
      std::fill(o, o + C, 0.f);
      for (int64_t dh = -rad; dh <= rad; ++dh) {
        const int64_t h2 = h + dh;
        if (h2 < 0 || h2 >= H) continue;
        const float* s = tmp + (h2 * W + w) * C;
        for (int64_t c = 0; c < C; ++c) o[c] += s[c];
      }
    }
}

/// L2 norm of each of the n rows (C floats) of x, accumulated in double.
static inline double row_norm(const float* x, int64_t C) {
  double s = 0.0;
  for (int64_t c = 0; c < C; ++c) s += static_cast<double>(x[c]) * x[c];
  return std::sqrt(s);
}

/// One image of lnamd: LN(C,H,W) -> r x r mean (zero padding counted) -> per-token L2 normalisation.
/// @param x  L rows of C floats (row stride row_stride)   @param out  L * C floats
/// @param y, tmp  L * C floats scratch each
void lnamd_image(const float* x, int64_t H, int64_t W, int64_t C, int64_t row_stride, int64_t r, float* y,
                 float* tmp, float* out) {
  const int64_t L = H * W;
  layer_norm_image(x, L, C, row_stride, y);
  if (r > 1) {
    box_sum_image(y, H, W, C, r, tmp, out);
    const float inv = 1.f / static_cast<float>(r * r);
    for (int64_t i = 0; i < L * C; ++i) out[i] *= inv;
  } else {
    std::copy(y, y + L * C, out);
  }
  for (int64_t p = 0; p < L; ++p) {
    float* o = out + p * C;
    const float nrm = static_cast<float>(row_norm(o, C));
    for (int64_t c = 0; c < C; ++c) o[c] = o[c] / nrm;
  }
}

/// One image of snamd (MuSc-V2): exp(-||x_n - x_c||)-weighted r x r means of the raw tokens, the
/// zero-padded positions counted in the weight sum (weight exp(-||x_c||), no feature), averaged over
/// r_list, then L2-normalised. float32 throughout (the official code rounds to fp16 between steps).
void snamd_image(const float* x, int64_t H, int64_t W, int64_t C, int64_t row_stride, const int64_t* r_list,
                 int64_t R, float* out, std::vector<double>& acc) {
  int64_t rmax = 1;
  for (int64_t t = 0; t < R; ++t) rmax = std::max(rmax, r_list[t]);
  const int64_t rad_max = (rmax - 1) / 2;
  const int64_t side = 2 * rad_max + 1;
  std::vector<float> wgt(side * side);
  acc.assign(C, 0.0);
  std::vector<double> fr(C);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) {
      const float* xc = x + (h * W + w) * row_stride;
      const float pad_w = std::exp(-static_cast<float>(row_norm(xc, C)));
      for (int64_t dh = -rad_max; dh <= rad_max; ++dh)
        for (int64_t dw = -rad_max; dw <= rad_max; ++dw) {
          const int64_t h2 = h + dh, w2 = w + dw;
          float wv;
          if (h2 < 0 || h2 >= H || w2 < 0 || w2 >= W) {
            wv = pad_w;
          } else {
            const float* xn = x + (h2 * W + w2) * row_stride;
            double s = 0.0;
            for (int64_t c = 0; c < C; ++c) {
              const double d = static_cast<double>(xn[c]) - xc[c];
              s += d * d;
            }
            wv = std::exp(-static_cast<float>(std::sqrt(s)));
          }
          wgt[(dh + rad_max) * side + (dw + rad_max)] = wv;
        }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = 0; t < R; ++t) {
        const int64_t rad = (r_list[t] - 1) / 2;
        std::fill(fr.begin(), fr.end(), 0.0);
        double wsum = 0.0;
        for (int64_t dh = -rad; dh <= rad; ++dh)
          for (int64_t dw = -rad; dw <= rad; ++dw) {
            const double wv = wgt[(dh + rad_max) * side + (dw + rad_max)];
            wsum += wv;
            const int64_t h2 = h + dh, w2 = w + dw;
            if (h2 < 0 || h2 >= H || w2 < 0 || w2 >= W) continue;
            const float* xn = x + (h2 * W + w2) * row_stride;
            for (int64_t c = 0; c < C; ++c) fr[c] += wv * xn[c];
          }
        for (int64_t c = 0; c < C; ++c) acc[c] += fr[c] / wsum;
      }
      float* o = out + (h * W + w) * C;
      double nrm = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        acc[c] /= static_cast<double>(R);
        nrm += acc[c] * acc[c];
      }
      nrm = std::sqrt(nrm);
      for (int64_t c = 0; c < C; ++c) o[c] = static_cast<float>(acc[c] / nrm);
    }
}

/// The pair engine of mutual scoring.
struct MutualProblem {
  const float* yq = nullptr;  // [Nq, L, C] Gram features of the query images
  const float* yp = nullptr;  // [Np, L, C] Gram features of the pool images (pool mode only)
  int64_t Nq = 0, Np = 0;     // pool mode when Np > 0; else the Nq images score each other
  int64_t L = 0, C = 0, H = 0, W = 0, window = 0;
  std::vector<int64_t> r;     // box sizes per output slot (1 = no box filter)
  const float* w = nullptr;   // [R, Nq + Np, L] per-token scales, or nullptr (scale 1)
  const float* nz = nullptr;  // [R, Nq + Np, L] squared norms of the scored vectors
  float* minima = nullptr;    // [R, Nq, Nref, L] minimum squared distances, Nref = Np or Nq - 1
  int64_t nref() const { return Np > 0 ? Np : Nq - 1; }
  const float* img(int64_t n) const { return n < Nq ? yq + n * L * C : yp + (n - Nq) * L * C; }
};

void mutual_minima(const MutualProblem& P) {
  const int64_t R = static_cast<int64_t>(P.r.size()), Ntot = P.Nq + P.Np, L = P.L, Nref = P.nref();
  std::vector<std::pair<int64_t, int64_t>> pairs;
  if (P.Np > 0) {
    for (int64_t i = 0; i < P.Nq; ++i)
      for (int64_t j = P.Nq; j < Ntot; ++j) pairs.emplace_back(i, j);
  } else {
    for (int64_t i = 0; i < P.Nq; ++i)
      for (int64_t j = i + 1; j < P.Nq; ++j) pairs.emplace_back(i, j);
  }
  at::parallel_for(0, static_cast<int64_t>(pairs.size()), 1, [&](int64_t b, int64_t e) {
    GramScratch scratch;
    std::vector<float> g(L * L), epi;
    for (int64_t t = b; t < e; ++t) {
      const auto [i, j] = pairs[t];
      gram(P.img(i), L, P.img(j), L, P.C, g.data(), L, scratch);
      for (int64_t ri = 0; ri < R; ++ri) {
        const float* nzr = P.nz + ri * Ntot * L;
        const float* wr = P.w ? P.w + ri * Ntot * L : nullptr;
        float* mr = P.minima + ri * P.Nq * Nref * L;
        float* rowmin;
        float* colmin = nullptr;
        if (P.Np > 0) {
          rowmin = mr + (i * Nref + (j - P.Nq)) * L;
        } else {
          rowmin = mr + (i * Nref + (j - 1)) * L;  // slot of j among i's others (j > i)
          colmin = mr + (j * Nref + i) * L;        // slot of i among j's others (i < j)
        }
        pair_min_epilogue(g.data(), P.H, P.W, P.r[ri], P.window, nzr + i * L, nzr + j * L, wr ? wr + i * L : nullptr,
                          wr ? wr + j * L : nullptr, rowmin, colmin, epi);
      }
    }
  });
}

/// out[s, p] = mean of the k smallest sqrt(max(minima[s, m, p], 0)) over m < Nref, for S = R * Nq slots.
void interval_mean(const float* minima, int64_t S, int64_t Nref, int64_t L, int64_t k, float* out) {
  at::parallel_for(0, S, 1, [&](int64_t b, int64_t e) {
    std::vector<float> v(Nref);
    for (int64_t s = b; s < e; ++s) {
      const float* m = minima + s * Nref * L;
      for (int64_t p = 0; p < L; ++p) {
        for (int64_t j = 0; j < Nref; ++j) v[j] = m[j * L + p];
        if (k < Nref) std::nth_element(v.begin(), v.begin() + (k - 1), v.end());
        double acc = 0.0;
        for (int64_t j = 0; j < k; ++j) acc += std::sqrt(std::max(v[j], 0.f));
        out[s * L + p] = static_cast<float>(acc / static_cast<double>(k));
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Entry functions (the only code touching at::Tensor).

namespace {

// float32 with unit stride along C (copies only when needed).
at::Tensor as_f32_rows(const at::Tensor& t) {
  at::Tensor f = t.to(at::kFloat);
  if (f.numel() && (f.stride(2) != 1 || f.stride(1) < f.size(2))) f = f.contiguous();
  return f;
}

void check_finite(const char* op, const char* arg, const at::Tensor& f) {
  if (f.numel() == 0) return;
  const int64_t N = f.size(0), L = f.size(1), C = f.size(2), s0 = f.stride(0), s1 = f.stride(1);
  const float* p = f.data_ptr<float>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e && !bad; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const float* row = p + n * s0 + l * s1;
        float acc = 0.f;
        for (int64_t c = 0; c < C; ++c) acc += row[c] * 0.f;  // NaN/Inf propagate, finite values give 0
        if (acc != 0.f) {
          bad = true;
          break;
        }
      }
  });
  TORCH_CHECK(!bad, op, ": ", arg, " must hold finite values, got NaN or Inf");
}

at::Tensor lnamd_cpu(const at::Tensor& tokens, int64_t r) {
  check_tokens("lnamd", "tokens", tokens, true);
  check_r("lnamd", r);
  const int64_t B = tokens.size(0), L = tokens.size(1), C = tokens.size(2), H = grid_side(L);
  auto out = at::empty({B, L, C}, tokens.options().dtype(at::kFloat));
  if (B == 0) return out;
  const at::Tensor x = as_f32_rows(tokens);
  check_finite("lnamd", "tokens", x);
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t s0 = x.stride(0), s1 = x.stride(1);
  at::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
    std::vector<float> y(L * C), tmp(r > 1 ? L * C : 0);
    for (int64_t n = b; n < e; ++n) lnamd_image(px + n * s0, H, H, C, s1, r, y.data(), tmp.data(), po + n * L * C);
  });
  return out;
}

at::Tensor snamd_cpu(const at::Tensor& tokens, at::IntArrayRef r_list) {
  check_tokens("snamd", "tokens", tokens, true);
  TORCH_CHECK(!r_list.empty(), "snamd: r_list must not be empty");
  for (int64_t r : r_list) check_r("snamd", r);
  const int64_t B = tokens.size(0), L = tokens.size(1), C = tokens.size(2), H = grid_side(L);
  auto out = at::empty({B, L, C}, tokens.options().dtype(at::kFloat));
  if (B == 0) return out;
  const at::Tensor x = as_f32_rows(tokens);
  check_finite("snamd", "tokens", x);
  const std::vector<int64_t> rl(r_list.begin(), r_list.end());
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t s0 = x.stride(0), s1 = x.stride(1);
  at::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
    std::vector<double> acc;
    for (int64_t n = b; n < e; ++n)
      snamd_image(px + n * s0, H, H, C, s1, rl.data(), static_cast<int64_t>(rl.size()), po + n * L * C, acc);
  });
  return out;
}

// screen: run the pair minima through the bf16 screen (musc_screen_avx2.cpp; identical minima) when it
// can run here (use_bf16_gemm(), no window); it falls back to the fp32 pair engine when it declines.
at::Tensor mutual_scores_run(const at::Tensor& z, int64_t k, const std::optional<at::Tensor>& pool, int64_t window,
                             bool screen) {
  const int64_t Nq = z.size(0), L = z.size(1), C = z.size(2);
  auto out = at::empty({Nq, L}, z.options().dtype(at::kFloat));
  if (Nq == 0 || L == 0) return out;
  const at::Tensor zq = z.to(at::kFloat).contiguous();
  check_finite("mutual_scores", "z", zq);
  at::Tensor zp;
  const int64_t Np = pool ? pool->size(0) : 0;
  if (pool) {
    zp = pool->to(at::kFloat).contiguous();
    check_finite("mutual_scores", "pool", zp);
  }
  const int64_t Ntot = Nq + Np;
  std::vector<float> nz(Ntot * L);
  sq_norms(zq.data_ptr<float>(), Nq * L, C, nz.data());
  if (Np) sq_norms(zp.data_ptr<float>(), Np * L, C, nz.data() + Nq * L);
  MutualProblem P;
  P.yq = zq.data_ptr<float>();
  P.yp = Np ? zp.data_ptr<float>() : nullptr;
  P.Nq = Nq, P.Np = Np, P.L = L, P.C = C, P.window = window;
  P.H = window > 0 ? grid_side(L) : 1, P.W = window > 0 ? grid_side(L) : L;
  P.r = {1};
  P.nz = nz.data();
  std::vector<float> minima(Nq * P.nref() * L);
  P.minima = minima.data();
  bool done = false;
#if FASTAD_HAVE_AVX2
  if (screen && window == 0 && use_bf16_gemm())
    done = mutual_minima_screen_bf16(P.yq, P.yp, Nq, Np, L, C, P.nz, P.minima);
#else
  (void)screen;
#endif
  if (!done) mutual_minima(P);
  interval_mean(minima.data(), Nq, P.nref(), L, k, out.data_ptr<float>());
  return out;
}

at::Tensor mutual_scores_cpu(const at::Tensor& z, int64_t k, const std::optional<at::Tensor>& pool, int64_t window) {
  check_mutual_args("mutual_scores", z, k, pool, window, false);
  return mutual_scores_run(z, k, pool, window, false);
}

// mutual_scores_screen: mutual_scores with its pair minima through the bf16 screen, identical output.
// screen "bf16": whenever the bf16 GEMM can run (use_bf16_gemm()); "auto": only with AVX512-BF16 hardware,
// C >= kAutoMinC and L * C >= kAutoMinLC, measured on a Zen 4 (bench_musc.py --screen compare, random unit
// tokens, N = 8; auto / fp32 time): L=144: C=96 0.85x, C=128 0.89x, C=384 1.04x (faster); L=256: C=96 0.95x,
// C=128 1.04x, C=384 1.11-1.27x (DINOv2 MTD); L=784, C=768 1.62x; L=1369, C=1024 1.65x. Small tiles lose:
// each row's and column's minimiser survives (~2 / L of the pairs) and the bound costs a fixed epilogue per
// pair. On AVX2-only CPUs the screen runs through its scalar emulation, far slower, so "auto" is the fp32
// path there. With a window (same_position) the fp32 path runs.
constexpr int64_t kAutoMinC = 128, kAutoMinLC = 32768;
at::Tensor mutual_scores_screen_cpu(const at::Tensor& z, int64_t k, const std::optional<at::Tensor>& pool,
                                    int64_t window, c10::string_view screen) {
  TORCH_CHECK(screen == "bf16" || screen == "auto", "mutual_scores_screen: screen must be 'bf16' or 'auto', got '",
              std::string(screen), "'");
  check_mutual_args("mutual_scores", z, k, pool, window, false);
  bool on = use_bf16_gemm();
  if (screen == "auto") on = use_bf16_micro() && z.size(2) >= kAutoMinC && z.size(1) * z.size(2) >= kAutoMinLC;
  return mutual_scores_run(z, k, pool, window, on);
}

// Per-image LN features Y, and per-r token scales w = 1 / ||box_r(Y)_p|| and squared norms of the
// normalised vectors (computed from the vectors, not assumed to be 1).
void lnamd_prepare(const at::Tensor& x, const std::vector<int64_t>& rl, int64_t H, float* y, float* w, float* nz,
                   int64_t Ntot, int64_t offset) {
  const int64_t N = x.size(0), L = x.size(1), C = x.size(2), s0 = x.stride(0), s1 = x.stride(1);
  const int64_t R = static_cast<int64_t>(rl.size());
  const float* px = x.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    std::vector<float> tmp(L * C), u(L * C);
    for (int64_t n = b; n < e; ++n) {
      float* yn = y + n * L * C;
      layer_norm_image(px + n * s0, L, C, s1, yn);
      for (int64_t ri = 0; ri < R; ++ri) {
        const float* src = yn;
        if (rl[ri] > 1) {
          box_sum_image(yn, H, H, C, rl[ri], tmp.data(), u.data());
          src = u.data();
        }
        float* wr = w + (ri * Ntot + offset + n) * L;
        float* nr = nz + (ri * Ntot + offset + n) * L;
        for (int64_t p = 0; p < L; ++p) {
          const float* v = src + p * C;
          const double nrm = row_norm(v, C);
          const float inv = nrm > 0 ? static_cast<float>(1.0 / nrm) : 0.f;
          double s = 0.0;
          for (int64_t c = 0; c < C; ++c) {
            const float zc = v[c] * inv;
            s += static_cast<double>(zc) * zc;
          }
          wr[p] = inv;
          nr[p] = static_cast<float>(s);
        }
      }
    }
  });
}

at::Tensor lnamd_mutual_scores_cpu(const at::Tensor& tokens, at::IntArrayRef r_list, int64_t k,
                                   const std::optional<at::Tensor>& pool, int64_t window) {
  const char* op = "lnamd_mutual_scores";
  check_mutual_args(op, tokens, k, pool, window, true);
  TORCH_CHECK(!r_list.empty(), op, ": r_list must not be empty");
  for (int64_t r : r_list) check_r(op, r);
  const std::vector<int64_t> rl(r_list.begin(), r_list.end());
  const int64_t R = static_cast<int64_t>(rl.size());
  const int64_t Nq = tokens.size(0), L = tokens.size(1), C = tokens.size(2), H = grid_side(L);
  auto out = at::empty({R, Nq, L}, tokens.options().dtype(at::kFloat));
  if (Nq == 0) return out;
  const at::Tensor xq = as_f32_rows(tokens);
  check_finite(op, "tokens", xq);
  at::Tensor xp;
  const int64_t Np = pool ? pool->size(0) : 0;
  if (pool) {
    xp = as_f32_rows(*pool);
    check_finite(op, "pool", xp);
  }
  const int64_t Ntot = Nq + Np;
  std::vector<float> yq(Nq * L * C), yp(Np * L * C), w(R * Ntot * L), nz(R * Ntot * L);
  lnamd_prepare(xq, rl, H, yq.data(), w.data(), nz.data(), Ntot, 0);
  if (Np) lnamd_prepare(xp, rl, H, yp.data(), w.data(), nz.data(), Ntot, Nq);
  MutualProblem P;
  P.yq = yq.data();
  P.yp = Np ? yp.data() : nullptr;
  P.Nq = Nq, P.Np = Np, P.L = L, P.C = C, P.H = H, P.W = H, P.window = window;
  P.r = rl;
  P.w = w.data();
  P.nz = nz.data();
  std::vector<float> minima(R * Nq * P.nref() * L);
  P.minima = minima.data();
  mutual_minima(P);
  interval_mean(minima.data(), R * Nq, P.nref(), L, k, out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("lnamd", &lnamd_cpu);
  m.impl("snamd", &snamd_cpu);
  m.impl("mutual_scores", &mutual_scores_cpu);
  m.impl("mutual_scores_screen", &mutual_scores_screen_cpu);
  m.impl("lnamd_mutual_scores", &lnamd_mutual_scores_cpu);
}

}  // namespace fastad::cpu
