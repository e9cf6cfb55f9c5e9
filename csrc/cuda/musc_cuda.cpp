// CUDA entries of the MuSc ops: argument checks, float32 staging, outputs, stream/guard, launches.
// Non-finite inputs are rejected by the Python wrappers (a check here would need a device sync).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "cuda/musc_kernel.h"
#include "common/checks.h"
#include "common/musc_checks.h"

namespace fastad::cuda {

namespace {

// float32 with unit stride along C (copies only when needed).
at::Tensor as_f32_rows(const at::Tensor& t) {
  at::Tensor f = t.to(at::kFloat);
  if (f.numel() && (f.stride(2) != 1 || f.stride(1) < f.size(2))) f = f.contiguous();
  return f;
}

void check_launch(const char* op, cudaError_t e) {
  TORCH_CHECK(e == cudaSuccess, op, ": CUDA kernel or cuBLAS call failed: ", cudaGetErrorString(e));
}

at::Tensor lnamd_impl(const at::Tensor& tokens, int64_t r) {
  const int64_t B = tokens.size(0), L = tokens.size(1), C = tokens.size(2), H = grid_side(L);
  auto out = at::empty({B, L, C}, tokens.options().dtype(at::kFloat));
  if (B == 0) return out;
  const at::Tensor x = as_f32_rows(tokens);
  auto stats = at::empty({2 * B}, out.options());
  check_launch("lnamd", lnamd_launch(x.data_ptr<float>(), B, H, C, x.stride(0), x.stride(1), r,
                                     stats.data_ptr<float>(), out.data_ptr<float>(),
                                     c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor lnamd_cuda(const at::Tensor& tokens, int64_t r) {
  check_tokens("lnamd", "tokens", tokens, true);
  check_r("lnamd", r);
  c10::cuda::CUDAGuard guard(tokens.device());
  return lnamd_impl(tokens, r);
}

at::Tensor snamd_cuda(const at::Tensor& tokens, at::IntArrayRef r_list) {
  check_tokens("snamd", "tokens", tokens, true);
  TORCH_CHECK(!r_list.empty(), "snamd: r_list must not be empty");
  TORCH_CHECK((int64_t)r_list.size() <= kMusCMaxR, "snamd: the CUDA kernel supports len(r_list) <= ", kMusCMaxR,
              ", got ", r_list.size());
  std::vector<int> rl;
  for (int64_t r : r_list) {
    check_r("snamd", r);
    TORCH_CHECK(r <= kMusCMaxWindow, "snamd: the CUDA kernel supports r <= ", kMusCMaxWindow, ", got ", r);
    rl.push_back(static_cast<int>(r));
  }
  c10::cuda::CUDAGuard guard(tokens.device());
  const int64_t B = tokens.size(0), L = tokens.size(1), C = tokens.size(2), H = grid_side(L);
  auto out = at::empty({B, L, C}, tokens.options().dtype(at::kFloat));
  if (B == 0) return out;
  const at::Tensor x = as_f32_rows(tokens);
  check_launch("snamd", snamd_launch(x.data_ptr<float>(), B, H, C, x.stride(0), x.stride(1), rl.data(),
                                     static_cast<int>(rl.size()), out.data_ptr<float>(),
                                     c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor mutual_impl(const char* op, const at::Tensor& z, int64_t k, const std::optional<at::Tensor>& pool,
                       int64_t window) {
  const int64_t Nq = z.size(0), L = z.size(1), C = z.size(2);
  auto out = at::empty({Nq, L}, z.options().dtype(at::kFloat));
  const int64_t Np = pool ? pool->size(0) : 0;
  const int64_t Nref = Np > 0 ? Np : Nq - 1;
  if (Nq == 0 || L == 0) return out;
  TORCH_CHECK(k <= kMusCMaxK, op, ": the CUDA kernel supports k <= ", kMusCMaxK, ", got k=", k);
  const at::Tensor zq = z.to(at::kFloat).contiguous();
  at::Tensor zp;
  if (Np) zp = pool->to(at::kFloat).contiguous();
  auto norms = at::empty({(Nq + Np) * L}, out.options());
  auto minima = at::empty({Nq * Nref * L}, out.options());
  const int64_t H = window > 0 ? grid_side(L) : 1;
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto tile = at::empty({L * mutual_tile_images(L, Nref) * L}, out.options());
  check_launch(op, mutual_minima_launch(at::cuda::getCurrentCUDABlasHandle(), zq.data_ptr<float>(),
                                        Np ? zp.data_ptr<float>() : nullptr, Nq, Np, L, C, H, window,
                                        norms.data_ptr<float>(), tile.data_ptr<float>(), minima.data_ptr<float>(),
                                        stream));
  check_launch(op, interval_mean_launch(minima.data_ptr<float>(), Nq, Nref, L, k, out.data_ptr<float>(), stream));
  return out;
}

at::Tensor mutual_scores_cuda(const at::Tensor& z, int64_t k, const std::optional<at::Tensor>& pool, int64_t window) {
  check_mutual_args("mutual_scores", z, k, pool, window, false);
  c10::cuda::CUDAGuard guard(z.device());
  return mutual_impl("mutual_scores", z, k, pool, window);
}

// With two or more sizes in r_list, one Gram per image pair serves every r (box filters on the tile,
// see musc_kernel.cu), as the CPU kernel does: on an H200 at N=200, 37 x 37, C=1024, r = 1, 3, 5 one
// layer took 3.27 s instead of 5.02 s by composition. A single r stays with the composition (lnamd,
// then mutual scoring: 1.68 s against 2.30 s with the box filters), as do more than kMusCBoxMaxL
// patches and empty problems.
at::Tensor lnamd_mutual_scores_cuda(const at::Tensor& tokens, at::IntArrayRef r_list, int64_t k,
                                    const std::optional<at::Tensor>& pool, int64_t window) {
  const char* op = "lnamd_mutual_scores";
  check_mutual_args(op, tokens, k, pool, window, true);
  TORCH_CHECK(!r_list.empty(), op, ": r_list must not be empty");
  for (int64_t r : r_list) check_r(op, r);
  c10::cuda::CUDAGuard guard(tokens.device());
  const int64_t Nq = tokens.size(0), L = tokens.size(1), C = tokens.size(2);
  const int64_t Np = pool ? pool->size(0) : 0, Nref = Np > 0 ? Np : Nq - 1;
  if (r_list.size() >= 2 && Nq > 0 && L > 0 && Nref > 0 && L <= kMusCBoxMaxL) {
    TORCH_CHECK(k <= kMusCMaxK, op, ": the CUDA kernel supports k <= ", kMusCMaxK, ", got k=", k);
    const int64_t H = grid_side(L), R = static_cast<int64_t>(r_list.size()), Ntot = Nq + Np;
    const auto opts = tokens.options().dtype(at::kFloat);
    auto stream = c10::cuda::getCurrentCUDAStream();
    auto y = at::empty({Ntot, L, C}, opts);
    auto stats = at::empty({2 * Ntot}, opts);
    const at::Tensor xq = as_f32_rows(tokens);
    check_launch(op, ln_features_launch(xq.data_ptr<float>(), Nq, L, C, xq.stride(0), xq.stride(1),
                                        stats.data_ptr<float>(), y.data_ptr<float>(), stream));
    if (Np) {
      const at::Tensor xp = as_f32_rows(*pool);
      check_launch(op, ln_features_launch(xp.data_ptr<float>(), Np, L, C, xp.stride(0), xp.stride(1),
                                          stats.data_ptr<float>() + 2 * Nq, y.data_ptr<float>() + Nq * L * C, stream));
    }
    auto w = at::empty({R, Ntot, L}, opts);
    auto nz = at::empty({R, Ntot, L}, opts);
    const std::vector<int64_t> rl(r_list.begin(), r_list.end());
    for (int64_t ri = 0; ri < R; ++ri)
      check_launch(op, box_scales_launch(y.data_ptr<float>(), Ntot, H, C, rl[ri], w.data_ptr<float>() + ri * Ntot * L,
                                         nz.data_ptr<float>() + ri * Ntot * L, stream));
    const int64_t tile_floats = L * mutual_tile_images(L, Nref) * L;
    auto tiles = at::empty({3 * tile_floats}, opts);
    float* T = tiles.data_ptr<float>();
    auto minima = at::empty({R * Nq * Nref * L}, opts);
    check_launch(op, lnamd_minima_launch(at::cuda::getCurrentCUDABlasHandle(), y.data_ptr<float>(),
                                         Np ? y.data_ptr<float>() + Nq * L * C : nullptr, Nq, Np, L, C, H, window,
                                         rl.data(), R, w.data_ptr<float>(), nz.data_ptr<float>(), T, T + tile_floats,
                                         T + 2 * tile_floats, minima.data_ptr<float>(), stream));
    auto out = at::empty({R, Nq, L}, opts);
    check_launch(op, interval_mean_launch(minima.data_ptr<float>(), R * Nq, Nref, L, k, out.data_ptr<float>(), stream));
    return out;
  }
  std::vector<at::Tensor> outs;
  for (int64_t r : r_list) {
    std::optional<at::Tensor> zp;
    if (pool) zp = lnamd_impl(*pool, r);
    outs.push_back(mutual_impl(op, lnamd_impl(tokens, r), k, zp, window));
  }
  return at::stack(outs);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) {
  m.impl("lnamd", &lnamd_cuda);
  m.impl("snamd", &snamd_cuda);
  m.impl("mutual_scores", &mutual_scores_cuda);
  m.impl("lnamd_mutual_scores", &lnamd_mutual_scores_cuda);
}

}  // namespace fastad::cuda
