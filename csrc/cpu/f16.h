// float16 (IEEE binary16) values as the CPU kernels read them: the bits of one at::Half, with a type of
// their own so that overloads on float / F16 pick the right loads (F16C vcvtph2ps: exact conversion).
#pragma once
#include <cstdint>

namespace fastad::cpu {

struct F16 {
  uint16_t bits;
};

}  // namespace fastad::cpu
