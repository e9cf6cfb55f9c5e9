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

  // group_min: per-group minimum distance (MuSc mutual scoring, SPADE per-image search).
  // query [Q, D], bank [N, D] = G consecutive groups of group_size rows -> [Q, G] float32;
  // exclude_group [Q] int64 (group id or -1) skips one group per query (+inf; "ip": -inf).
  m.def("group_min(Tensor query, Tensor bank, int group_size, str metric=\"l2\", Tensor? exclude_group=None) -> Tensor");
  // coreset: greedy k-center (farthest point sampling) selection of n rows of bank [N, D], starting at
  // row `start` -> (indices [n] int64, min_distances [n] float32: the Euclidean distance of each chosen
  // row to the rows chosen before it; min_distances[0] = +inf). Deterministic; argmax ties -> smaller index.
  m.def("coreset(Tensor bank, int n, int start=0) -> (Tensor, Tensor)");
}
