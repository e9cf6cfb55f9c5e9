// CPU entry of fastad::gaussian_accumulate: streaming per-position Gaussian statistics.
//
// For every position p and a batch x [N, P, d] (or [N, d], P = 1): y = x[:, p] - shift[p];
//   sum[p]   += sum_n y_n                      (float64)
//   sumsq[p] += tril(sum_n y_n y_n^T)          (float64; only the lower triangle incl. the diagonal)
// The shift (the caller passes the first batch's mean) keeps the products free of a large common
// offset. Low-precision x: rows are centred in chunks of kAccChunk into a float32 buffer, the SYRK
// product of a chunk is formed in float32 by a 6 x 32 AVX-512 / 6 x 16 AVX2 micro-kernel (or portable C++) over the
// lower triangle only (half the FLOPs of a GEMM), and added into the float64 sums: float32 error over
// at most kAccChunk shifted products, float64 across chunks. float64 x: float64 throughout. One pass
// over x; memory: one chunk buffer, one d x d float32 tile and (more than one chunk per position) one
// d x d float64 tile per thread (no [N, P, d, d] anything).
// Parallel over positions (P > 1), or (P = 1) over up to 8 fixed groups of row chunks, each with its own float64
// partial sums added in group order (deterministic on any thread count).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/mahalanobis_checks.h"
#include "cpu/dist_kernels.h"
#include "cpu/gram.h"
#include "cpu/mahalanobis.h"

namespace fastad::cpu {

namespace {
constexpr int64_t kAccChunk = 256;
/// Kernels by CPU: AVX-512 (2), AVX2/FMA (1), portable (0). The SYRK runs its 6 x 32 AVX-512 tiles
/// everywhere they exist (measured on Zen 4 at least as fast as 6 x 16); the Cholesky prefers 16-column
/// panels on AMD (maha_prefer_256; 784 x 152: 26.5 vs 34.5 ms, 200 x 550: 142 vs 157 ms on Zen 4).
int cholesky_simd() { return use_avx512_micro() && !maha_prefer_256() ? 2 : (use_avx2_path() ? 1 : 0); }
int syrk_simd() { return use_avx512_micro() ? 2 : (use_avx2_path() ? 1 : 0); }
constexpr int64_t kRowGroups = 8;  // P = 1: row-chunk groups summed separately (parallelism; fixed order)

/// Offset of row i of a d x d lower triangle: dense (i d) or packed (i (i + 1) / 2).
inline int64_t row_off(int64_t i, int64_t d, bool packed) { return packed ? i * (i + 1) / 2 : i * d; }

/// dst += src over rows [r0, d) of the lower triangle incl. the diagonal (src, dst: float64, each dense [d, d]
/// or packed).
void add_lower(const double* src, bool src_packed, double* dst, bool dst_packed, int64_t d, int64_t r0 = 0) {
  for (int64_t i = r0; i < d; ++i) {
    const double* a = src + row_off(i, d, src_packed);
    double* o = dst + row_off(i, d, dst_packed);
    for (int64_t j = 0; j <= i; ++j) o[j] += a[j];
  }
}

/// Rows [r0, d) of s2 [d, d] (float64, lower triangle; packed: row i at i (i + 1) / 2) += tril(Y^T Y) of nr
/// centred float32 rows y (zero-padded to ld, a multiple of 32, with 64 zero floats after the last row): the
/// float32 SYRK micro-kernel into a tile.
void syrk_add(const float* y, int64_t ld, int64_t nr, int64_t d, double* s2, bool packed, int simd,
              AlignedFloats& tbuf, RowPrefetch* pf, int64_t r0) {
  float* tile = tbuf.get(static_cast<size_t>(d * ld));
#if FASTAD_HAVE_AVX512
  if (simd == 2)
    syrk_lower_avx512(y, ld, nr, d, tile, ld, pf, r0);
  else
#endif
#if FASTAD_HAVE_AVX2
  if (simd == 1)
    syrk_lower_avx2(y, ld, nr, d, tile, ld, pf, r0);
  else
#endif
    syrk_lower_generic(y, ld, nr, d, tile, ld, r0);
#if FASTAD_HAVE_AVX2
  if (simd >= 1) {
    tile_add_f64_avx2(tile, ld, d, s2, packed, r0);
    return;
  }
#endif
  for (int64_t i = r0; i < d; ++i) {
    const float* t = tile + i * ld;
    double* o = s2 + row_off(i, d, packed);
    for (int64_t j = 0; j <= i; ++j) o[j] += static_cast<double>(t[j]);
  }
}

/// Adds rows [n0, n0 + nr) of one position (row n at x + n * rs) into s1 [d] / s2 [d, d] (float64; packed:
/// lower triangle rows at i (i + 1) / 2; only the triangle's rows r0 and below). Returns false (and adds
/// nothing) when a chunk holds a non-finite value.
/// pf (may be null): the rows the caller centres next, prefetched into L2 during this chunk's SYRK.
template <typename T, typename S>
bool accumulate_rows(const T* x, int64_t rs, const S* shift, int64_t n0, int64_t nr, int64_t d, double* s1,
                     double* s2, bool packed, int simd, AlignedFloats& ybuf, AlignedFloats& tbuf,
                     std::vector<double>& cs, int64_t r0, RowPrefetch* pf = nullptr) {
  const int64_t ld = (d + 31) / 32 * 32;
  cs.assign(static_cast<size_t>(d), 0.0);
  if constexpr (std::is_same_v<T, double>) {
    // float64: rows in groups of 8, so each accumulator row is read and written once per 8 samples
    // (the j loop is contiguous and vectorises; the accumulator is d^2 doubles, beyond L2 at d ~ 400).
    constexpr int64_t kG = 8;
    std::vector<double> y(static_cast<size_t>(kG * d));
    std::vector<double> acc(static_cast<size_t>(d * d), 0.0);
    for (int64_t g0 = 0; g0 < nr; g0 += kG) {
      const int64_t g = std::min(kG, nr - g0);
      std::fill(y.begin(), y.end(), 0.0);
      for (int64_t r = 0; r < g; ++r) {
        const double* xr = x + (n0 + g0 + r) * rs;
        for (int64_t j = 0; j < d; ++j) {
          y[r * d + j] = xr[j] - static_cast<double>(shift[j]);
          cs[j] += y[r * d + j];
        }
      }
      const double* y0 = y.data();
      for (int64_t i = r0; i < d; ++i) {
        double a[kG];
        for (int64_t r = 0; r < kG; ++r) a[r] = y0[r * d + i];
        double* o = acc.data() + i * d;
        for (int64_t j = 0; j <= i; ++j) {
          double t = 0.0;
          for (int64_t r = 0; r < kG; ++r) t += a[r] * y0[r * d + j];
          o[j] += t;
        }
      }
    }
    for (int64_t j = 0; j < d; ++j)
      if (!std::isfinite(cs[j])) return false;
    for (int64_t j = 0; j < d; ++j) s1[j] += cs[j];
    add_lower(acc.data(), false, s2, packed, d, r0);
    return true;
  } else {
    float* y = ybuf.get(static_cast<size_t>(nr * ld + 64));
    bool centred = false;
#if FASTAD_HAVE_AVX2
    if constexpr (std::is_same_v<T, float> && std::is_same_v<S, float>) {
      if (simd >= 1) {
        center_rows_avx2(x + n0 * rs, rs, shift, nr, d, y, ld, cs.data());
        centred = true;
      }
    }
#endif
    for (int64_t r = 0; r < (centred ? 0 : nr); ++r) {
      const T* xr = x + (n0 + r) * rs;
      float* yr = y + r * ld;
      for (int64_t j = 0; j < d; ++j) {
        yr[j] = static_cast<float>(xr[j]) - static_cast<float>(shift[j]);
        cs[j] += yr[j];
      }
      std::memset(yr + d, 0, static_cast<size_t>(ld - d) * 4);
    }
    std::memset(y + nr * ld, 0, 64 * 4);
    for (int64_t j = 0; j < d; ++j)
      if (!std::isfinite(cs[j])) return false;
    syrk_add(y, ld, nr, d, s2, packed, simd, tbuf, pf, r0);
    for (int64_t j = 0; j < d; ++j) s1[j] += cs[j];
    return true;
  }
}

template <typename T, typename S>
void run(const T* x, const S* shift, double* sum, double* sumsq, const int64_t* row_start, const MahaShape& s) {
  const int64_t N = s.N, P = s.P, d = s.d;
  const bool packed = s.packed;
  const int64_t sq = packed ? d * (d + 1) / 2 : d * d;  // sumsq entries per position
  const int simd = syrk_simd();  // AVX-512, AVX2/FMA, portable
  std::atomic<int64_t> bad{-1};
  if (P > 1 || N <= kAccChunk) {
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      AlignedFloats ybuf, tbuf;
      std::vector<double> cs;
      // more than one chunk: the chunks' products are summed into a cache-resident float64 tile first (in
      // sumsq's layout), so the position's sums (in memory: P d^2 or P d (d + 1) / 2 doubles) are read and
      // written once per call
      std::vector<double> local(N > kAccChunk ? static_cast<size_t>(sq) : 0);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r0 = row_start != nullptr ? row_start[p] : 0;
        double* s2 = N > kAccChunk ? local.data() : sumsq + p * sq;
        if (N > kAccChunk) {
          if (packed)
            std::fill(local.begin(), local.end(), 0.0);
          else
            for (int64_t i = 0; i < d; ++i) std::fill(s2 + i * d, s2 + i * d + i + 1, 0.0);
        }
        for (int64_t n0 = 0; n0 < N; n0 += kAccChunk) {
          // the next chunk: this position's next rows or the next position's first ones (rows P d apart:
          // each a separate stream the hardware prefetcher does not follow)
          RowPrefetch pf;
          const int64_t nn = n0 + kAccChunk < N ? n0 + kAccChunk : 0, pn = nn > 0 ? p : p + 1;
          if (pn < p1) {
            pf.base = reinterpret_cast<const char*>(x + nn * P * d + pn * d);
            pf.stride = P * d * static_cast<int64_t>(sizeof(T));
            pf.rows = std::min(kAccChunk, N - nn);
            pf.row_bytes = d * static_cast<int64_t>(sizeof(T));
          }
          if (!accumulate_rows(x + p * d, P * d, shift + p * d, n0, std::min(kAccChunk, N - n0), d, sum + p * d,
                               s2, packed, simd, ybuf, tbuf, cs, r0, pf.rows > 0 ? &pf : nullptr))
            bad = p;
        }
        if (N > kAccChunk) add_lower(s2, packed, sumsq + p * sq, packed, d, r0);
      }
    });
  } else {
    // P = 1, many rows: the row chunks form kRowGroups groups fixed by N alone (not by the thread count),
    // each summed into its own packed float64 partial, and the partials are added in group order: the
    // same sums, bit for bit, on any number of threads and in every run
    const int64_t nchunks = (N + kAccChunk - 1) / kAccChunk, G = std::min(nchunks, kRowGroups);
    const int64_t r0 = row_start != nullptr ? row_start[0] : 0;
    const int64_t sqp = d * (d + 1) / 2;
    std::vector<double> g1(static_cast<size_t>(G * d), 0.0), g2(static_cast<size_t>(G * sqp), 0.0);
    at::parallel_for(0, G, 1, [&](int64_t a, int64_t b) {
      AlignedFloats ybuf, tbuf;
      std::vector<double> cs;
      for (int64_t g = a; g < b; ++g)
        for (int64_t c = nchunks * g / G; c < nchunks * (g + 1) / G; ++c) {
          const int64_t n0 = c * kAccChunk;
          if (!accumulate_rows(x, d, shift, n0, std::min(kAccChunk, N - n0), d, g1.data() + g * d,
                               g2.data() + g * sqp, true, simd, ybuf, tbuf, cs, r0))
            bad = 0;
        }
    });
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t j = 0; j < d; ++j) sum[j] += g1[g * d + j];
      add_lower(g2.data() + g * sqp, true, sumsq, packed, d, r0);
    }
  }
  TORCH_CHECK(bad.load() < 0, "gaussian_accumulate: x (or shift) holds NaN or Inf",
              s.per_position ? " at position " + std::to_string(bad.load()) : std::string(),
              "; the sums are left partially updated");
}

void gaussian_accumulate_cpu(const at::Tensor& x_, const at::Tensor& shift_, const at::Tensor& sum,
                             const at::Tensor& sumsq, const std::optional<at::Tensor>& row_start) {
  const MahaShape s = check_gaussian_accumulate_args(x_, shift_, sum, sumsq, row_start);
  if (s.N == 0 || s.P == 0) return;
  const at::Tensor x = x_.contiguous();
  const at::Tensor rs_t = row_start.has_value() ? row_start->contiguous() : at::Tensor();
  const int64_t* rs = rs_t.defined() ? rs_t.data_ptr<int64_t>() : nullptr;
  double* s1 = sum.data_ptr<double>();
  double* s2 = sumsq.data_ptr<double>();
  if (x.scalar_type() == at::kDouble) {
    const at::Tensor sh = shift_.to(at::kDouble).contiguous();
    run(x.data_ptr<double>(), sh.data_ptr<double>(), s1, s2, rs, s);
    return;
  }
  const at::Tensor sh = shift_.to(at::kFloat).contiguous();
  const float* shp = sh.data_ptr<float>();
  switch (x.scalar_type()) {
    case at::kFloat: run(x.data_ptr<float>(), shp, s1, s2, rs, s); break;
    case at::kHalf: run(x.data_ptr<at::Half>(), shp, s1, s2, rs, s); break;
    default: run(x.data_ptr<at::BFloat16>(), shp, s1, s2, rs, s); break;
  }
}


// ---- gather_maps: the positions' rows of a multi-layer embedding ----------------------------------
// out[n, p, k] = maps[l(k)][n, c(k), si(p), sj(p)] with (si, sj) the nearest source cell of p's (i, j)
// on layer l's grid (F.interpolate(mode="nearest")): the resized, concatenated, channel-subset embedding
// written position-major in one pass. Image by image (one image's maps and rows stay in L2): AVX2 8 x 8
// transposes (8 positions of 8 kept channels; positions of a resized layer by an index gather), or
// portably each kept channel's plane read in order into its column of a block of kGatherPB rows.
constexpr int64_t kGatherPB = 16;

/// F.interpolate(mode="nearest")'s source index (ATen's nearest_idx without explicit scales).
int64_t nearest_src(int64_t o, int64_t in, int64_t out) {
  if (in == out) return o;
  if (out == 2 * in) return o >> 1;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  return std::min(static_cast<int64_t>(std::floor(static_cast<float>(o) * scale)), in - 1);
}

void gather_maps_cpu(at::TensorList maps_, const at::Tensor& channels_, const at::Tensor& out) {
  const MapsShape s = check_gather_maps_args(maps_, channels_, out);
  const int64_t L = s.L, C = s.C, N = s.N, P = s.h * s.w;
  if (N == 0) return;
  std::vector<at::Tensor> maps;
  for (const at::Tensor& m : maps_) maps.push_back(m.contiguous());
  const at::Tensor chan = channels_.contiguous();
  const int64_t* cp = chan.data_ptr<int64_t>();
  std::vector<int64_t> first(static_cast<size_t>(L + 1), 0);
  for (int64_t l = 0; l < L; ++l) first[l + 1] = first[l] + s.cl[l];
  // per layer: the source cell of every position (identity for the first layer's own grid)
  std::vector<int32_t> src(static_cast<size_t>(L * P));
  std::vector<char> ident(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    bool id = true;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t v = nearest_src(p / s.w, s.hl[l], s.h) * s.wl[l] + nearest_src(p % s.w, s.wl[l], s.w);
      src[l * P + p] = static_cast<int32_t>(v);
      id = id && v == p;
    }
    ident[l] = id;
  }
  std::vector<int32_t> klayer(static_cast<size_t>(C));
  std::vector<int64_t> koff(static_cast<size_t>(C));  // the channel's plane within an image of its layer
  for (int64_t k = 0; k < C; ++k) {
    int64_t l = 0;
    while (cp[k] >= first[l + 1]) ++l;
    klayer[k] = static_cast<int32_t>(l);
    koff[k] = (cp[k] - first[l]) * s.hl[l] * s.wl[l];
  }
  float* o = out.data_ptr<float>();
  const bool avx2 = use_avx2_path();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<const float*> planes(static_cast<size_t>(C));
    std::vector<const int32_t*> srcs(static_cast<size_t>(C));
    std::vector<int64_t> next(static_cast<size_t>(C));
    for (int64_t k = 0; k < C; ++k) next[k] = s.cl[klayer[k]] * s.hl[klayer[k]] * s.wl[klayer[k]];
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k = 0; k < C; ++k) {
        const int64_t l = klayer[k];
        planes[k] = maps[l].data_ptr<float>() + n * s.cl[l] * s.hl[l] * s.wl[l] + koff[k];
        srcs[k] = ident[l] ? nullptr : src.data() + l * P;
      }
      float* on = o + n * P * C;
#if FASTAD_HAVE_AVX2
      if (avx2) {
        gather_maps_image_avx2(planes.data(), srcs.data(), n + 1 < n1 ? next.data() : nullptr, C, P, on);
        continue;
      }
#endif
      for (int64_t p0 = 0; p0 < P; p0 += kGatherPB) {  // portable: a block of rows stays in L1
        const int64_t np = std::min(kGatherPB, P - p0);
        for (int64_t k = 0; k < C; ++k) {
          float* ok = on + p0 * C + k;
          const float* a = planes[k];
          if (srcs[k] == nullptr) {
            for (int64_t p = 0; p < np; ++p) ok[p * C] = a[p0 + p];
          } else {
            const int32_t* sl = srcs[k] + p0;
            for (int64_t p = 0; p < np; ++p) ok[p * C] = a[sl[p]];
          }
        }
      }
    }
  });
}

// gaussian_covariance: one pass over the lower triangles, parallel over positions. The formula
// (sumsq_ij - (n m_i) m_j) * scale (+ reg when i == j) is evaluated in float64 in this order, without FMA
// contraction (this file is compiled for the baseline ISA, which has no FMA), and rounded once; the
// float64 redo of a float32 factorisation (fastad/gaussian.py) calls the same op with a float64 out.
template <class T>
void covariance_rows(const double* s2, const double* m, int64_t d, bool packed, double n, double scale, double reg,
                     T* out, int64_t r0) {
  for (int64_t i = r0; i < d; ++i) {
    const double* si = s2 + row_off(i, d, packed);
    const double a = n * m[i];
    T* oi = out + i * d;
    for (int64_t j = 0; j < i; ++j) oi[j] = static_cast<T>((si[j] - a * m[j]) * scale);
    oi[i] = static_cast<T>((si[i] - a * m[i]) * scale + reg);
  }
}

void gaussian_covariance_cpu(const at::Tensor& sumsq, const at::Tensor& m, double n, double scale, double reg,
                             at::Tensor& out, const std::optional<at::Tensor>& row_start) {
  const MahaShape s = check_gaussian_covariance_args(sumsq, m, n, scale, reg, out, row_start);
  const at::Tensor rs_t = row_start.has_value() ? row_start->contiguous() : at::Tensor();
  const int64_t* rs = rs_t.defined() ? rs_t.data_ptr<int64_t>() : nullptr;
  const int64_t P = s.P, d = s.d;
  const bool packed = s.packed;
  if (P == 0 || d == 0) return;
  const at::Tensor s2 = sumsq.contiguous(), mc = m.contiguous();
  const double* sp = s2.data_ptr<double>();
  const double* mp = mc.data_ptr<double>();
  const int64_t sstride = packed ? d * (d + 1) / 2 : d * d;
  const bool f32 = out.scalar_type() == at::kFloat;
  void* op_ = out.data_ptr();
  at::parallel_for(0, P, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, d * d)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = rs != nullptr ? rs[p] : 0;
      if (f32)
        covariance_rows(sp + p * sstride, mp + p * d, d, packed, n, scale, reg, static_cast<float*>(op_) + p * d * d, r0);
      else
        covariance_rows(sp + p * sstride, mp + p * d, d, packed, n, scale, reg, static_cast<double*>(op_) + p * d * d,
                        r0);
    }
  });
}

// cholesky_lower: one matrix per task, parallel over matrices; the AVX-512 / AVX2 blocked kernel
// (cpu/mahalanobis_simd.h) by the Gaussian ops' dispatch (maha_prefer_256: 16-column panels on AMD),
// else the portable row-oriented algorithm.
at::Tensor cholesky_lower_cpu(at::Tensor& a, const std::optional<at::Tensor>& row_start,
                              const std::optional<at::Tensor>& row_src) {
  const MahaShape s = check_cholesky_lower_args(a, row_start, row_src);
  const int64_t P = s.P, d = s.d;
  at::Tensor info = at::zeros(s.per_position ? std::vector<int64_t>{P} : std::vector<int64_t>{}, a.options().dtype(at::kLong));
  if (P == 0 || d == 0) return info;
  float* ap = a.data_ptr<float>();
  int64_t* ip = info.data_ptr<int64_t>();
  const int simd = cholesky_simd();
  // phases of equal row_start, ascending: a matrix's source (smaller row_start) is finished before it
  std::vector<int64_t> order(static_cast<size_t>(P)), starts(static_cast<size_t>(P), 0), srcs;
  for (int64_t p = 0; p < P; ++p) order[p] = p;
  if (row_start.has_value()) {
    const at::Tensor rs = row_start->contiguous(), rc = row_src->contiguous();
    std::copy(rs.data_ptr<int64_t>(), rs.data_ptr<int64_t>() + P, starts.begin());
    srcs.assign(rc.data_ptr<int64_t>(), rc.data_ptr<int64_t>() + P);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return starts[x] < starts[y]; });
  }
  for (int64_t b = 0; b < P;) {
    int64_t e = b + 1;
    while (e < P && starts[order[e]] == starts[order[b]]) ++e;
    at::parallel_for(b, e, 1, [&](int64_t q0, int64_t q1) {
      AlignedFloats scratch;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t p = order[q], r0 = starts[p];
        float* m = ap + p * d * d;
        if (r0 > 0) {  // the shared leading rows: the source's factor rows (whole rows: its upper part is zero)
          const int64_t src = srcs[p];
          if (ip[src] != 0) {
            ip[p] = ip[src];
            continue;
          }
          std::memcpy(m, ap + src * d * d, static_cast<size_t>(r0 * d) * sizeof(float));
        }
#if FASTAD_HAVE_AVX512
        if (simd == 2) {
          ip[p] = cholesky_lower_avx512(m, d, scratch.get(static_cast<size_t>(cholesky_scratch_avx512(d))), r0);
          continue;
        }
#endif
#if FASTAD_HAVE_AVX2
        if (simd == 1) {
          ip[p] = cholesky_lower_avx2(m, d, scratch.get(static_cast<size_t>(cholesky_scratch_avx2(d))), r0);
          continue;
        }
#endif
        ip[p] = cholesky_lower_generic(m, d, r0);
      }
    });
    b = e;
  }
  return info;
}

}  // namespace

void syrk_lower_generic(const float* y, int64_t ld, int64_t n, int64_t d, float* tile, int64_t ldt, int64_t r0) {
  for (int64_t i = r0; i < d; ++i) std::memset(tile + i * ldt, 0, static_cast<size_t>(i + 1) * 4);
  for (int64_t k = 0; k < n; ++k) {
    const float* yk = y + k * ld;
    for (int64_t i = r0; i < d; ++i) {
      const float yi = yk[i];
      float* t = tile + i * ldt;
      for (int64_t j = 0; j <= i; ++j) t[j] += yi * yk[j];
    }
  }
}

// Row-oriented (Cholesky-Crout): C[j, j] = sqrt(a_jj - C[j, :j] . C[j, :j]), then for i > j
// C[i, j] = (a_ij - C[i, :j] . C[j, :j]) / C[j, j]; both dot products run along rows (row-major), summed
// in float64 (one chain of float32 products would have ~3x spotrf's backward error at d = 152).
int64_t cholesky_lower_generic(float* a, int64_t d, int64_t r0) {
  for (int64_t j = 0; j < d; ++j) {
    float* cj = a + j * d;
    float r = cj[j];  // given rows (j < r0): the factor's diagonal entry
    if (j >= r0) {
      double s = cj[j];
      for (int64_t k = 0; k < j; ++k) s -= static_cast<double>(cj[k]) * cj[k];
      const float sf = static_cast<float>(s);
      if (!(sf > 0.0f) || !(sf < 3.4e38f)) return j + 1;
      r = std::sqrt(sf);
      cj[j] = r;
    }
    for (int64_t i = j + 1 > r0 ? j + 1 : r0; i < d; ++i) {
      float* ci = a + i * d;
      double t = ci[j];
      for (int64_t k = 0; k < j; ++k) t -= static_cast<double>(ci[k]) * cj[k];
      ci[j] = static_cast<float>(t) / r;
    }
  }
  for (int64_t i = 0; i + 1 < d; ++i) std::memset(a + i * d + i + 1, 0, static_cast<size_t>(d - i - 1) * 4);
  return 0;
}

std::string gaussian_kernel_name(bool cholesky) {
  const int simd = cholesky ? cholesky_simd() : syrk_simd();
  if (cholesky)
    return simd == 2 ? "AVX-512 left-looking, 32-column panels" : simd == 1 ? "AVX2/FMA left-looking, 16-column panels"
                                                                             : "portable Crout, float64 dot products";
  return simd == 2 ? "AVX-512 6x32 lower-SYRK tiles" : simd == 1 ? "AVX2/FMA 6x16 lower-SYRK tiles" : "portable lower SYRK";
}

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("cholesky_lower", &cholesky_lower_cpu);
  m.impl("gaussian_accumulate", &gaussian_accumulate_cpu);
  m.impl("gather_maps", &gather_maps_cpu);
  m.impl("gaussian_covariance", &gaussian_covariance_cpu);
}

}  // namespace fastad::cpu
