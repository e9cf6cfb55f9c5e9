// The one place where every fastad operator schema is declared.
//
// Each backend registers its kernels in its own file with TORCH_LIBRARY_IMPL(fastad, <Backend>, m):
//   csrc/cpu/<op>_kernel.cpp   CPU
//   csrc/cuda/<op>_cuda.cpp    CUDA (host glue; the device code lives in csrc/cuda/<op>_kernel.cu,
//                              which includes no torch headers so that nvcc stays fast)
// Fake (meta) kernels for torch.compile / opcheck are in python/fastad/_meta.py.
#include <torch/library.h>

TORCH_LIBRARY(fastad, m) {
  // Exact k nearest neighbours of each query row among the bank rows.
  // query [Q, D], bank [N, D] -> (distances [Q, k] float32, indices [Q, k] int64), best first.
  m.def("knn(Tensor query, Tensor bank, int k, str metric=\"l2\", Tensor? bank_norms=None, "
        "bool exclude_self=False) -> (Tensor, Tensor)");

  // Exact float32 k-NN through a bf16 screen (CPU; issue 15): the same answers as knn (bit for bit),
  // screen "bf16" | "auto" (see ops.knn's screen argument).
  m.def("knn_screen(Tensor query, Tensor bank, int k, str metric=\"l2\", Tensor? bank_norms=None, "
        "bool exclude_self=False, str screen=\"bf16\") -> (Tensor, Tensor)");

  // group_min: per-group minimum distance (MuSc mutual scoring, SPADE per-image search).
  // query [Q, D], bank [N, D] = G consecutive groups of group_size rows -> [Q, G] float32;
  // exclude_group [Q] int64 (group id or -1) skips one group per query (+inf; "ip": -inf).
  m.def("group_min(Tensor query, Tensor bank, int group_size, str metric=\"l2\", Tensor? exclude_group=None) -> Tensor");
  // group_min through the bf16 screen (CPU; issue 15): the same output as group_min, bit for bit.
  m.def("group_min_screen(Tensor query, Tensor bank, int group_size, str metric=\"l2\", Tensor? exclude_group=None, "
        "str screen=\"bf16\") -> Tensor");
  // coreset: greedy k-center (farthest point sampling) selection of n rows of bank [N, D], starting at
  // row `start` -> (indices [n] int64, min_distances [n] float32: the Euclidean distance of each chosen
  // row to the rows chosen before it; min_distances[0] = +inf). Deterministic; argmax ties -> smaller index.
  // progress: optional CPU int64 tensor; progress[0] = centres chosen so far (CPU: updated after every
  // step while the op runs, for a progress bar polled from another thread; CUDA: n once the device loop
  // is enqueued).
  // method: "exhaustive" (default) or "pruned" (CPU: ball-tree triangle-inequality pruning, same
  // indices; CUDA: runs the exhaustive loop). progress with >= 3 elements (CPU): [1] rows read so far, [2] rows a full
  // scan per step would have read so far.
  m.def("coreset(Tensor bank, int n, int start=0, Tensor(a!)? progress=None, str method=\"exhaustive\") -> (Tensor, Tensor)");
  // ---- MuSc (issue 5): zero-shot mutual scoring ---------------------------------------------
  // LNAMD: per-image LayerNorm over (C, H, W) jointly (no affine, eps 1e-5) -> r x r mean with zero
  // padding counted -> per-token L2 normalisation. tokens [B, L, C] (CLS removed, L = H*H) -> [B, L, C].
  m.def("lnamd(Tensor tokens, int r) -> Tensor");
  // MuSc-V2 SNAMD: exp(-||x_n - x_c||)-weighted r x r means of raw tokens, mean over r_list, L2-normalised.
  m.def("snamd(Tensor tokens, int[] r_list) -> Tensor");
  // Mutual scoring: z [N, L, C] -> [N, L]: for each patch, its min distance to every other image
  // (or to every pool image when pool [Np, L, C] is given), then the mean of the k smallest.
  // window > 0 (odd): patch p only compared with the window x window patches around p.
  m.def("mutual_scores(Tensor z, int k, Tensor? pool=None, int window=0) -> Tensor");
  // mutual_scores with the pair minima through the bf16 screen (CPU; issue 15): the same output, bit for
  // bit; screen "bf16" | "auto" (see ops.mutual_scores's screen argument).
  m.def("mutual_scores_screen(Tensor z, int k, Tensor? pool=None, int window=0, str screen=\"bf16\") -> Tensor");
  // lnamd (for each r in r_list) followed by mutual_scores, fused: raw tokens [N, L, C] -> [R, N, L].
  m.def("lnamd_mutual_scores(Tensor tokens, int[] r_list, int k, Tensor? pool=None, int window=0) -> Tensor");
  // ---- Gaussian models (issue 13) ---------------------------------------------------------------
  // Squared Mahalanobis distances ||(x - mean) @ tril(factor)||^2 (precision = L L^T), float32:
  // x [N, d] / mean [d] / factor [d, d] -> [N]; or x [N, P, d] / mean [P, d] / factor [P, d, d] -> [N, P].
  // cholesky=True: factor is instead the covariance's lower Cholesky factor C (cov = C C^T) and
  // d2 = ||C^{-1} (x - mean)||^2 (a triangular solve; fit needs no inverse).
  m.def("mahalanobis(Tensor x, Tensor mean, Tensor factor, bool cholesky=False) -> Tensor");
  // Streaming Gaussian statistics: y = x - shift per position; sum += sum_n y, tril(sumsq) += sum_n y y^T
  // (float64; the strict upper triangle of sumsq is not touched). x [N, d] / [N, P, d]. row_start [P]
  // (optional): rows i < row_start[p] of position p's sumsq are not touched either (rows the caller copies
  // from a position whose leading features are the same, e.g. PaDiM's nearest-upsampled coarse layers).
  m.def("gaussian_accumulate(Tensor x, Tensor shift, Tensor(a!) sum, Tensor(b!) sumsq, Tensor? row_start=None) -> ()");
  // The covariances from those sums: for j <= i, out[p, i, j] = (sumsq[p, i, j] - n m[p, i] m[p, j]) *
  // scale (+ reg on the diagonal), in float64, rounded once to out's dtype (float32 / float64); sumsq dense
  // [P, d, d] (lower read) or packed [P, d (d + 1) / 2]; m [P, d] float64; the strict upper triangle of out
  // [P, d, d] is not written. Unbatched: [d, d] / [d (d + 1) / 2], [d], [d, d]. row_start [P] (optional):
  // rows i < row_start[p] of out[p] are not written either.
  m.def("gaussian_covariance(Tensor sumsq, Tensor m, float n, float scale, float reg, Tensor(a!) out, Tensor? row_start=None) -> ()");
  // Lower Cholesky factors in place: a [P, d, d] / [d, d] float32 (lower triangle read) -> C with C C^T = a
  // in the lower triangle, the strict upper one zeroed; returns info [P] / [] int64: 0, or k >= 1 when the
  // leading minor of order k is not positive definite (that matrix is then partially overwritten). CUDA:
  // ATen's batched linalg_cholesky_ex written back. row_start / row_src [P] (optional, together): the
  // factor's rows i < row_start[p] are copied from matrix row_src[p] (whose leading block of that order is
  // a[p]'s; it has a smaller row_start and is factorised first) and only the rows below are factorised
  // (a[p]'s rows above row_start[p] are not read); a copy from a failed matrix takes its info.
  m.def("cholesky_lower(Tensor(a!) a, Tensor? row_start=None, Tensor? row_src=None) -> Tensor");
  // The rows of a multi-layer embedding (PaDiM's) written position-major: out [N, h * w, C] float32,
  // out[n, p, k] = channel channels[k] of the concatenation of the L layer maps [N, C_l, h_l, w_l]
  // (float32), each nearest-resized to the first layer's h x w grid.
  m.def("gather_maps(Tensor[] maps, Tensor channels, Tensor(a!) out) -> ()");
  // ---- fastad.distributed (issue 17) ----------------------------------------------------------
  // coreset_step: one greedy k-center step on a bank shard [N, D] (N may be 0) with the arithmetic of
  // coreset: min_sq[r] = min(min_sq[r], sum((bank[r] - centre)^2)) (fp32; rows holding -1 = chosen stay);
  // returns (max of min_sq [] float32, its smallest row [] int64, rows skipped [] int64), (-2, -1, 0) when
  // N == 0. Optional exact triangle-inequality pruning: assign [N] int32 (position of the centre that gave
  // min_sq[r], updated), centre_dists [s] float32 (squared distances from this centre, at position
  // centre_id, to the centres by position). CPU only.
  m.def("coreset_step(Tensor bank, Tensor centre, Tensor(a!) min_sq, Tensor(b!)? assign=None, "
        "Tensor? centre_dists=None, int centre_id=0) -> (Tensor, Tensor, Tensor)");
}
