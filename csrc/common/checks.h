// Argument checks and small helpers shared by the CPU and CUDA entry functions (no maths here).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <string_view>

#include "common/metric.h"

namespace fastad {

// Parses "l2" | "sqeuclidean" | "cosine" | "ip"; errors name the op and the value given.
Metric parse_metric(const char* op, std::string_view metric);

// query [Q, D] and bank [N, D]: 2-D, same D >= 1, same floating dtype (fp32/fp16/bf16), same device.
void check_query_bank(const char* op, const at::Tensor& query, const at::Tensor& bank);

// An optional per-bank-row float tensor ([N], same device).
void check_bank_norms(const char* op, const at::Tensor& bank_norms, int64_t n, const at::Tensor& bank);

std::string shape_str(const at::Tensor& t);

// group_min: query/bank as check_query_bank, group_size >= 1 dividing N, exclude_group (optional)
// a 1-D int64 [Q] tensor on the query's device. Values are checked by the CPU kernel only.
void check_group_min_args(const at::Tensor& query, const at::Tensor& bank, int64_t group_size,
                          const std::optional<at::Tensor>& exclude_group);
// coreset: bank [N, D] 2-D, N >= 1, D >= 1, fp32/fp16/bf16; 1 <= n <= N; 0 <= start < N.
void check_coreset_args(const char* op, const at::Tensor& bank, int64_t n, int64_t start);
/// The progress counter of coreset (nullptr when absent), checked: CPU, int64, contiguous, >= 1 element.
int64_t* coreset_progress_ptr(const char* op, const std::optional<at::Tensor>& progress);
/// coreset's method argument: true for "pruned", false for "exhaustive", an error naming both otherwise.
bool coreset_method_is_pruned(const char* op, std::string_view method);

}  // namespace fastad
