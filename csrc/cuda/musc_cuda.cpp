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
#include "ops/checks.h"
#include "ops/musc_checks.h"

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

// On CUDA the fusion is by composition: lnamd per r (and for the pool), then mutual scoring.
at::Tensor lnamd_mutual_scores_cuda(const at::Tensor& tokens, at::IntArrayRef r_list, int64_t k,
                                    const std::optional<at::Tensor>& pool, int64_t window) {
  const char* op = "lnamd_mutual_scores";
  check_mutual_args(op, tokens, k, pool, window, true);
  TORCH_CHECK(!r_list.empty(), op, ": r_list must not be empty");
  for (int64_t r : r_list) check_r(op, r);
  c10::cuda::CUDAGuard guard(tokens.device());
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
