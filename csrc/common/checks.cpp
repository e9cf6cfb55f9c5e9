#include "common/checks.h"

#include <c10/util/Exception.h>

#include <sstream>

namespace fastad {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

Metric parse_metric(const char* op, std::string_view metric) {
  if (metric == "l2") return Metric::L2;
  if (metric == "sqeuclidean") return Metric::SqEuclidean;
  if (metric == "cosine") return Metric::Cosine;
  if (metric == "ip") return Metric::IP;
  TORCH_CHECK(false, op, ": metric must be one of 'l2', 'sqeuclidean', 'cosine', 'ip', got '",
              std::string(metric), "'");
}

static bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_query_bank(const char* op, const at::Tensor& query, const at::Tensor& bank) {
  TORCH_CHECK(query.dim() == 2, op, ": query must be 2-D [Q, D], got ", query.dim(), "-D tensor of shape ",
              shape_str(query));
  TORCH_CHECK(bank.dim() == 2, op, ": bank must be 2-D [N, D], got ", bank.dim(), "-D tensor of shape ",
              shape_str(bank));
  TORCH_CHECK(query.size(1) == bank.size(1), op, ": query and bank must have the same feature dimension D, got query ",
              shape_str(query), " and bank ", shape_str(bank));
  TORCH_CHECK(query.size(1) >= 1, op, ": feature dimension D must be >= 1, got ", query.size(1));
  TORCH_CHECK(supported_dtype(query.scalar_type()), op, ": query dtype must be float32, float16 or bfloat16, got ",
              query.scalar_type());
  TORCH_CHECK(query.scalar_type() == bank.scalar_type(), op, ": query and bank must have the same dtype, got query ",
              query.scalar_type(), " and bank ", bank.scalar_type());
  TORCH_CHECK(query.device() == bank.device(), op, ": query and bank must be on the same device, got query on ",
              query.device(), " and bank on ", bank.device());
}

void check_bank_norms(const char* op, const at::Tensor& bank_norms, int64_t n, const at::Tensor& bank) {
  TORCH_CHECK(bank_norms.dim() == 1 && bank_norms.size(0) == n, op, ": bank_norms must be 1-D [N] with N = ", n,
              " (the squared L2 norm of each bank row), got shape ", shape_str(bank_norms));
  TORCH_CHECK(bank_norms.scalar_type() == at::kFloat, op, ": bank_norms must be float32, got ",
              bank_norms.scalar_type());
  TORCH_CHECK(bank_norms.device() == bank.device(), op, ": bank_norms must be on the bank's device (", bank.device(),
              "), got ", bank_norms.device());
}

void check_group_min_args(const at::Tensor& query, const at::Tensor& bank, int64_t group_size,
                          const std::optional<at::Tensor>& exclude_group) {
  check_query_bank("group_min", query, bank);
  TORCH_CHECK(group_size >= 1, "group_min: group_size must be >= 1, got ", group_size);
  const int64_t N = bank.size(0), Q = query.size(0);
  TORCH_CHECK(N % group_size == 0, "group_min: bank rows N must be a multiple of group_size (G consecutive groups of ",
              "group_size rows), got N=", N, " and group_size=", group_size);
  if (exclude_group) {
    const at::Tensor& e = *exclude_group;
    TORCH_CHECK(e.dim() == 1 && e.size(0) == Q, "group_min: exclude_group must be 1-D [Q] with Q = ", Q,
                " (one group id or -1 per query), got shape ", shape_str(e));
    TORCH_CHECK(e.scalar_type() == at::kLong, "group_min: exclude_group must be int64, got ", e.scalar_type());
    TORCH_CHECK(e.device() == query.device(), "group_min: exclude_group must be on the query's device (",
                query.device(), "), got ", e.device());
  }
}

void check_coreset_args(const char* op, const at::Tensor& bank, int64_t n, int64_t start) {
  TORCH_CHECK(bank.dim() == 2, op, ": bank must be 2-D [N, D], got ", bank.dim(), "-D tensor of shape ",
              shape_str(bank));
  TORCH_CHECK(supported_dtype(bank.scalar_type()), op, ": bank dtype must be float32, float16 or bfloat16, got ",
              bank.scalar_type());
  const int64_t N = bank.size(0);
  TORCH_CHECK(N >= 1, op, ": bank must have at least one row, got shape ", shape_str(bank));
  TORCH_CHECK(bank.size(1) >= 1, op, ": feature dimension D must be >= 1, got shape ", shape_str(bank));
  TORCH_CHECK(n >= 1 && n <= N, op, ": n (centres to choose) must be in [1, N] = [1, ", N, "], got ", n);
  TORCH_CHECK(start >= 0 && start < N, op, ": start must be a bank row index in [0, ", N, "), got ", start);
  TORCH_CHECK(N < (int64_t(1) << 31), op, ": bank must have fewer than 2^31 rows, got ", N);
}

int64_t* coreset_progress_ptr(const char* op, const std::optional<at::Tensor>& progress) {
  if (!progress) return nullptr;
  const at::Tensor& p = *progress;
  TORCH_CHECK(p.device().is_cpu(), op, ": progress must be a CPU tensor (it is polled from the host), got device ",
              p.device());
  TORCH_CHECK(p.scalar_type() == at::kLong, op, ": progress must be int64, got ", p.scalar_type());
  TORCH_CHECK(p.numel() >= 1 && p.is_contiguous(), op,
              ": progress must be a contiguous tensor with at least one element, got shape ", shape_str(p));
  return p.data_ptr<int64_t>();
}

bool coreset_method_is_pruned(const char* op, std::string_view method) {
  TORCH_CHECK(method == "pruned" || method == "exhaustive", op,
              ": method must be 'pruned' or 'exhaustive', got '", method, "'");
  return method == "pruned";
}

}  // namespace fastad
