// Shared pieces of the CUDA k-NN and group-min ops (csrc/cuda/dist_tiles.cu): bank centring, row
// norms and the tile inner-product GEMM through cuBLAS. Plain C++ / CUDA types only (no torch headers).
//
// Both ops walk the bank in chunks of `Nc` rows and the queries in tiles of `Qt` rows. For each
// (chunk, tile) cuBLAS writes the float32 inner products S[Qt, Nc] into a bounded scratch tile, and
// the op's own epilogue kernel turns them into scores and folds them into its running result
// (top-k, per-group minimum). This is the design of faiss's GPU brute-force search (cuBLAS GEMM into
// tiles + a selection kernel): the GEMM runs at the library's rate on every GPU, and the tile budget
// bounds the memory.
//
// l2 / sqeuclidean on float32: both sides are centred by the bank mean before the GEMM (copies of
// the current chunk / tile), and the squared norms of the centred rows are taken from those copies,
// so |q - b|^2 = |q'|^2 + |b'|^2 - 2 q'.b' loses no accuracy to large common offsets. fp16/bf16
// inputs are not centred: products of half values are exact in the fp32 accumulator, while a
// centred copy would be rounded to half precision again (2^-8 relative for bf16), which swaps far
// more neighbours than the cancellation it saves (measured on an H200: see benchmarks/RESULTS.md).
// The winners are re-ranked with exact fp32 distances on the original rows at the end.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastad::cuda {

constexpr int64_t kTileBudgetBytes = 256ll << 20;  // score tile and centred-chunk budget (each)

/// mu[D] = column means of x[N, D] (dtype code 0 f32, 1 f16, 2 bf16). mu must hold D floats.
cudaError_t column_mean(const void* x, int dtype, int64_t N, int64_t D, float* mu, cudaStream_t stream);

/// For rows x[R, D]: if out != nullptr, out = x - mu (mu may be nullptr: plain copy) in x's dtype;
/// sqnorm[r] = |out_r|^2 (of the rounded values actually written), or |x_r - mu|^2 when out == nullptr.
cudaError_t centre_rows(const void* x, int dtype, int64_t R, int64_t D, const float* mu, void* out, float* sqnorm,
                        cudaStream_t stream);

/// S[Qt, Nc] (row-major float32) = q[Qt, D] . b[Nc, D]^T, fp32 accumulation. float32 inputs run
/// without TF32 (the handle's math mode is set to default for the call and restored).
cublasStatus_t tile_dot(cublasHandle_t handle, int dtype, const void* q, int64_t Qt, const void* b, int64_t Nc,
                        int64_t D, float* S, cudaStream_t stream);

/// Bytes of one element of dtype code `dtype`.
inline int64_t dtype_bytes(int dtype) { return dtype == 0 ? 4 : 2; }

}  // namespace fastad::cuda
