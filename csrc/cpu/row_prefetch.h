// RowPrefetch: rows a memory-bound pass will read next, brought into L2 a few lines at a time by a
// compute-bound kernel running before it (gaussian_accumulate: the next chunk's rows, far apart in x,
// are prefetched while the SYRK of the current chunk runs, so its centring pass reads them from L2).
// Plain data and <cstdint> only: included by the per-ISA translation units as well.
#pragma once
#include <cstdint>

namespace fastad::cpu {

struct RowPrefetch {
  const char* base = nullptr;  // first row
  int64_t stride = 0;          // bytes between rows
  int64_t rows = 0;
  int64_t row_bytes = 0;
  int64_t issued = 0;  // lines issued so far (rows in order; a row spans row_bytes / 64 + 1 lines at most)
  int64_t lines_per_row() const { return (row_bytes + 63) / 64 + 1; }
  int64_t lines() const { return rows * lines_per_row(); }
};

}  // namespace fastad::cpu
