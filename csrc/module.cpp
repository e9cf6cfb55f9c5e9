// The Python extension module fastad._C. Tensor functions are NOT exposed here: they are torch
// operators (torch.ops.fastad.*, see registration.cpp). This module only carries build facts.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastad compiled kernels (operators are registered under torch.ops.fastad)";
  m.def("compiled_torch_version", [] { return std::string(FASTAD_TORCH_VERSION); });
  m.def("cuda_compiled", [] { return bool(FASTAD_WITH_CUDA); });
  m.def("cuda_archs", [] { return fastad::cuda_archs(); });
  m.def("simd_level", [] { return fastad::simd_level(); });
  m.def("dist_micro_kernel", [] { return fastad::dist_micro_kernel(); });
  m.def("bf16_micro_kernel", [] { return fastad::bf16_micro_kernel(); });
  m.def("bf16_amx_kernel", [] { return fastad::bf16_amx_kernel(); });
  m.def("amx_self_check", [](const std::string& v) { return fastad::amx_self_check(v); }, py::arg("variant") = "hardware");
  m.def("knn_screen_stats", [](bool reset) { return fastad::knn_screen_stats(reset); }, py::arg("reset") = false);
  m.def("op_kernels", [] { return fastad::op_kernels(); });
  m.def("openmp_threads", [] { return fastad::openmp_threads(); });
}
