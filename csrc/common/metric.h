// The distance metrics of the k-NN family (knn, group_min), torch-free so that plain kernel headers
// (csrc/cpu/dist_kernels.h) need no ATen. Parsing a metric name lives in checks.h (it raises errors).
#pragma once

namespace fastad {

/// l2: Euclidean distance; sqeuclidean: its square; cosine: 1 - cosine similarity; ip: inner product
/// (larger is nearer).
enum class Metric { L2, SqEuclidean, Cosine, IP };

}  // namespace fastad
