// AMX block kernel of the bf16 distance GEMM: cpu/amx_tile_kernel.h's tile_block over the tile
// instructions (tileloadd, tilestored, tilezero, tdpbf16ps). Compiled with -mamx-tile -mamx-bf16
// (CMakeLists: *_amx.cpp, where the compiler has them); called only when amx_usable() (cpuid amx-tile and
// amx-bf16, the OS's XTILEDATA state granted by arch_prctl) and its self-check passed (amx_check.cpp;
// FASTAD_AMX=0 / 1 turn it off / force it on: bf16_amx_mode in dist_kernels.h).
// No torch or standard-library headers besides <cstdint> / <cstring>: an inline function emitted here
// would be AMX code the linker may pick for other callers.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define FASTAD_AMX_HW_TU
#include "cpu/amx_tile_kernel.h"

namespace fastad::cpu {

namespace {

// GCC's tile intrinsics paste the tile number into the instruction text: literals only. Their asm declares
// no memory read (tileloadd takes the address as a register; ldtilecfg names 8 of its 64 bytes), so the
// compiler could drop or move stores the tiles read (the tile configuration, the zero-padded tail, the
// repacked rows): a compiler memory barrier precedes every tile load and the configuration.
#define FASTAD_MEMORY_BARRIER() __asm__ volatile("" ::: "memory")
#define FASTAD_TILE_CASES(OP) \
  if constexpr (i == 0) OP(0); \
  else if constexpr (i == 1) OP(1); \
  else if constexpr (i == 2) OP(2); \
  else if constexpr (i == 3) OP(3); \
  else if constexpr (i == 4) OP(4); \
  else if constexpr (i == 5) OP(5); \
  else if constexpr (i == 6) OP(6); \
  else OP(7)

struct HwTiles {
  template <int i>
  void zero() {
#define FASTAD_Z(n) _tile_zero(n)
    FASTAD_TILE_CASES(FASTAD_Z);
#undef FASTAD_Z
  }
  template <int i>
  void load(const void* p, int64_t stride) {
    FASTAD_MEMORY_BARRIER();
#define FASTAD_L(n) _tile_loadd(n, p, stride)
    FASTAD_TILE_CASES(FASTAD_L);
#undef FASTAD_L
  }
  template <int i>
  void store(void* p, int64_t stride) {
#define FASTAD_S(n) _tile_stored(n, p, stride)
    FASTAD_TILE_CASES(FASTAD_S);
#undef FASTAD_S
  }
  template <int c, int a, int b>
  void dp() {
    static_assert((c == 0 && a == 4 && b == 6) || (c == 1 && a == 4 && b == 7) || (c == 2 && a == 5 && b == 6) ||
                  (c == 3 && a == 5 && b == 7), "tile_block uses these four products only");
    if constexpr (c == 0) _tile_dpbf16ps(0, 4, 6);
    else if constexpr (c == 1) _tile_dpbf16ps(1, 4, 7);
    else if constexpr (c == 2) _tile_dpbf16ps(2, 5, 6);
    else _tile_dpbf16ps(3, 5, 7);
  }
};
#undef FASTAD_TILE_CASES

// ldtilecfg's 64-byte operand: palette 1, tiles 0..7 of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

}  // namespace

/// See amx::tile_block (cpu/amx_tile_kernel.h); configures the tiles and releases them after the block.
void micro_amx_block(int64_t mc, int64_t ncp, int64_t kc2, const uint32_t* A, int64_t lda, const uint32_t* B,
                     int64_t bstride, float* C, int64_t ldc, bool accumulate, uint32_t* tail) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int i = 0; i < 8; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  FASTAD_MEMORY_BARRIER();
  _tile_loadconfig(&cfg);
  HwTiles t;
  amx::tile_block(t, mc, ncp, kc2, A, lda, B, bstride, C, ldc, accumulate, tail);
  _tile_release();
  FASTAD_MEMORY_BARRIER();
}

}  // namespace fastad::cpu
