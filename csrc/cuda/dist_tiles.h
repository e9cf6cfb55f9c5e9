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
constexpr int64_t kChunkRows = 65536;              // most bank rows per chunk

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

/// Whether l2 / sqeuclidean inputs are centred (float32 only; see above).
inline bool centred(int metric, int dtype) { return (metric == 0 || metric == 1) && dtype == 0; }

/// Most bank rows per chunk for rows of D elements (kChunkRows, less when a centred copy would pass
/// the budget; at least 256).
int64_t chunk_rows_cap(int64_t D, int dtype);

/// Benchmark tuning knobs (not a user API): the positive integer in environment variable `name`
/// (read at every call), or `fallback` when it is unset or not a positive integer. Used for
/// FASTAD_CUDA_CHUNK_ROWS / FASTAD_CUDA_TILE_ROWS (chunk and tile shape of knn / group_min) so one
/// build can sweep tile shapes on a GPU (benchmarks/bench_gpu.py --sections knn_sweep).
int64_t env_rows(const char* name, int64_t fallback);

/// Query rows per tile against chunks of Nc rows: the [Qt, Nc] float32 tile and the centred query
/// copy both stay within kTileBudgetBytes (at least 1 row, at most Q).
int64_t tile_rows(int64_t Q, int64_t Nc, int64_t D, int dtype);

/// The steps knn and group_min share, over one workspace: bank statistics, per-chunk preparation
/// (centred copy + norms, or plain norms) and the tile GEMM. Metric codes as fastad::Metric.
class ScoreTiles {
 public:
  /// Workspace bytes for Q queries, chunks of Nc bank rows and tiles of Qt query rows.
  static int64_t workspace_bytes(int64_t Q, int64_t Nc, int64_t Qt, int64_t D, int dtype, int metric);

  ScoreTiles(void* workspace, cublasHandle_t handle, const void* q, const void* b, int dtype, int metric, int64_t Q,
             int64_t N, int64_t Nc, int64_t Qt, int64_t D, cudaStream_t stream);

  /// Bank mean (centred metrics) and the queries' squared norms (cosine: query_sqnorms()).
  cudaError_t begin();
  /// Prepares bank rows [j0, j0 + nc): a centred copy and its norms, or the rows' squared norms
  /// (l2 on half inputs, cosine; `bank_sqnorms`, when given, replaces them for cosine).
  cudaError_t load_chunk(int64_t j0, int64_t nc, const float* bank_sqnorms);
  /// scores() = [qt, nc] inner products of queries [q0, q0 + qt) with the loaded chunk
  /// (cudaErrorUnknown when cuBLAS fails).
  cudaError_t dot(int64_t q0, int64_t qt);

  const float* scores() const { return S_; }
  /// Per chunk row: |b'|^2 (centred), |b|^2 (l2 on half inputs, cosine); unused for ip.
  const float* chunk_sqnorms() const { return chunk_norms_; }
  const float* query_sqnorms() const { return qn_; }  // [Q], cosine only

 private:
  cublasHandle_t handle_;
  const char *q_, *b_;
  int dtype_, metric_;
  int64_t Q_, N_, D_, es_, nc_ = 0;
  bool centre_;
  cudaStream_t stream_;
  float *mu_, *bn_, *qn_, *qtn_, *S_;
  char *bcopy_, *qcopy_;
  const void* chunk_ = nullptr;
  const float* chunk_norms_ = nullptr;
};

}  // namespace fastad::cuda
