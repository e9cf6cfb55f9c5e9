// AVX2/FMA build of the MuSc tile passes (compiled with -mavx2 -mfma; called only after the runtime
// CPU check in musc_tile.cpp).
#include "cpu/musc_tile.h"

#if FASTAD_HAVE_AVX2
#define FASTAD_TILE_NS tile_avx2
#include "cpu/musc_tile_impl.h"
#undef FASTAD_TILE_NS
#endif
