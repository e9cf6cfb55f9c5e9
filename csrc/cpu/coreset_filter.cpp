// Row filter of coreset(..., method="pruned"): see CoresetFilter in csrc/cpu/coreset.h.
//
// Every row x keeps a compact summary: its coordinates u_x on the top principal axes of the bank (float16,
// scaled by a power of two) and the norm of its residual off those axes. For the exact coordinates a and
// residuals e (x - mu = P a_x + e_x, P orthonormal),
//   ||x - c||^2 = ||a_x - a_c||^2 + ||e_x - e_c||^2 >= ||a_x - a_c||^2 + (||e_x|| - ||e_c||)^2,
// and ||a_x - a_c|| >= ||u_x scale - a_c|| - (the stored rounding error of u_x, computed exactly at build
// time). So the summary gives a rigorous lower bound of the distance to the new centre; a row whose bound
// (with the fp32 rounding margin of the exhaustive distance, coreset_margin(D)) is >= its running min cannot
// improve and is not read in full. Rows are ordered into blocks (recursive bisection in summary space);
// each block keeps a ball (centre, radius) around its rows' summaries, the range of their residual norms
// and the largest running min of its rows (value, smallest row index on ties), so a block whose lower bound
// is >= that maximum is skipped without touching its rows, and the argmax is a scan over blocks. Rows that
// are read get exactly the exhaustive step's distance (same dists function, same stored values, same
// centre), so the indices and distances are identical to the exhaustive method's.
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "cpu/coreset.h"

namespace fastad::cpu {

namespace {

constexpr int64_t kSplitSample = 64;      // rows sampled per node to find its split direction
constexpr int64_t kPcaSample = 32768;     // rows the principal axes are estimated from
constexpr int64_t kProjectRows = 8192;    // rows projected per float64 matmul block
constexpr double kRel = 1e-6;             // relative inflation of every stored error bound
constexpr float kSlopY = 4e-7f;           // residual-norm slop relative to ||x - mu|| (float64 + float32 rounding)

at::ScalarType scalar_type(int dtype) {
  return dtype == kCoresetF16 ? at::kHalf : dtype == kCoresetBF16 ? at::kBFloat16 : at::kFloat;
}

float round_up(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

float round_down(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

}  // namespace

CoresetFilter::CoresetFilter(const void* bank, int dtype, int64_t N, int64_t D, CoresetDistsFn dists)
    : bank_(bank), dtype_(dtype), N_(N), D_(D), dists_(dists) {
  mD_ = coreset_margin(D);
  tiny_ = static_cast<float>(D + 16) * 0x1p-100f;  // absolute error of underflowing squares (with FTZ)
  build();
}

void CoresetFilter::build() {
  const int64_t N = N_, D = D_;
  K_ = std::min<int64_t>(kMaxAxes, D);
  Kp_ = (K_ + 7) / 8 * 8;
  mK_ = coreset_margin(Kp_);
  const at::Tensor X = at::from_blob(const_cast<void*>(bank_), {N, D}, at::TensorOptions().dtype(scalar_type(dtype_)));
  // principal axes of a sample (any orthonormal P keeps the bounds rigorous; a good one makes them tight)
  const int64_t S = std::min(N, kPcaSample);
  const at::Tensor sidx = at::linspace(0, static_cast<double>(N - 1), S, at::kDouble).floor().to(at::kLong);
  const at::Tensor Xs = X.index_select(0, sidx).to(at::kDouble);
  const at::Tensor mu = Xs.mean(0);
  const at::Tensor Ys = Xs - mu;
  const auto eig = at::linalg_eigh(Ys.t().mm(Ys));
  at::Tensor P = at::zeros({D, Kp_}, at::kDouble);
  P.narrow(1, 0, K_).copy_(std::get<1>(eig).narrow(1, D - K_, K_).flip(1));  // largest variance first
  // the centres' projections are computed per step from these (float64)
  mu_.assign(mu.data_ptr<double>(), mu.data_ptr<double>() + D);
  const at::Tensor Pc = P.contiguous();
  p_.assign(Pc.data_ptr<double>(), Pc.data_ptr<double>() + D * Kp_);
  // scale: a power of two so that the sample's coordinates fill float16's range with headroom (a row
  // beyond it is clamped; its stored error, computed exactly below, then just gets larger)
  const double amax = Ys.mm(P).abs().max().item<double>();
  scale_ = amax > 0 ? std::ldexp(1.0, static_cast<int>(std::ceil(std::log2(amax / 8192.0)))) : 1.0;

  std::vector<uint16_t> h(static_cast<size_t>(N) * Kp_);
  std::vector<float> en(N), sa(N), se(N);
  std::vector<float> u(static_cast<size_t>(N) * Kp_);  // float32 copy of the summaries (build only)
  for (int64_t r0 = 0; r0 < N; r0 += kProjectRows) {
    const int64_t nb = std::min(kProjectRows, N - r0);
    const at::Tensor Y = X.narrow(0, r0, nb).to(at::kDouble) - mu;
    const at::Tensor A = Y.mm(P);
    const at::Tensor E = Y - A.mm(P.t());
    const at::Tensor en_b = E.norm(2, 1).contiguous(), yn_b = Y.norm(2, 1).contiguous(), Ac = A.contiguous();
    const double* a = Ac.data_ptr<double>();
    const double* enp = en_b.data_ptr<double>();
    const double* ynp = yn_b.data_ptr<double>();
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t r = r0 + i;
      double err2 = 0.0;
      for (int64_t j = 0; j < Kp_; ++j) {
        const double t = std::clamp(a[i * Kp_ + j] / scale_, -65504.0, 65504.0);
        const c10::Half hv(static_cast<float>(t));
        h[r * Kp_ + j] = hv.x;
        const float back = static_cast<float>(hv);
        u[r * Kp_ + j] = back;
        const double d = static_cast<double>(back) - a[i * Kp_ + j] / scale_;
        err2 += d * d;
      }
      en[r] = static_cast<float>(enp[i]);
      // ||u_x - a_x / scale|| (exact up to float64 rounding, covered by the ||x - mu|| term)
      sa[r] = round_up(std::sqrt(err2) * (1.0 + kRel) + 1e-7 * ynp[i] / scale_);
      se[r] = round_up(static_cast<double>(kSlopY) * ynp[i]);
    }
  }

  // blocks: recursive bisection of the summaries along the direction between two far-apart rows
  std::vector<int64_t> perm(N);
  std::iota(perm.begin(), perm.end(), int64_t{0});
  std::vector<std::pair<int64_t, int64_t>> todo{{0, N}}, leaves;
  std::vector<float> sd(kSplitSample), v(Kp_);
  std::vector<int64_t> sample(kSplitSample);
  std::vector<std::pair<float, int64_t>> keyed;
  while (!todo.empty()) {
    const auto [lo, hi] = todo.back();
    todo.pop_back();
    const int64_t cnt = hi - lo;
    if (cnt <= kBlock) {
      leaves.push_back({lo, hi});
      continue;
    }
    const int64_t s = std::min(cnt, kSplitSample);
    for (int64_t i = 0; i < s; ++i) sample[i] = perm[lo + i * cnt / s];
    int64_t p1 = sample[0], p2 = sample[0];
    for (int pass = 0; pass < 2; ++pass) {  // p1: farthest from sample[0]; p2: farthest from p1
      const float* from = u.data() + (pass == 0 ? sample[0] : p1) * Kp_;
      dists_(u.data(), kCoresetF32, Kp_, sample.data(), s, from, sd.data());
      (pass == 0 ? p1 : p2) = sample[std::max_element(sd.begin(), sd.begin() + s) - sd.begin()];
    }
    for (int64_t j = 0; j < Kp_; ++j) v[j] = u[p2 * Kp_ + j] - u[p1 * Kp_ + j];
    keyed.resize(cnt);
    for (int64_t i = 0; i < cnt; ++i) {
      const float* x = u.data() + perm[lo + i] * Kp_;
      float acc = 0.f;
      for (int64_t j = 0; j < Kp_; ++j) acc += x[j] * v[j];
      keyed[i] = {acc, perm[lo + i]};
    }
    const int64_t half = cnt / 2;
    std::nth_element(keyed.begin(), keyed.begin() + half, keyed.end());  // (key, row): deterministic
    for (int64_t i = 0; i < cnt; ++i) perm[lo + i] = keyed[i].second;
    todo.push_back({lo + half, hi});
    todo.push_back({lo, lo + half});
  }
  std::sort(leaves.begin(), leaves.end());
  perm_ = std::move(perm);

  // rows in block order: summaries, bounds and a copy of the stored rows (same values: every distance
  // is the one the exhaustive step computes from the original bank)
  const size_t esize = dtype_ == kCoresetF32 ? 4 : 2, rowb = static_cast<size_t>(D) * esize;
  data_.resize(static_cast<size_t>(N) * rowb);
  hs_.resize(static_cast<size_t>(N) * Kp_);
  rb_.resize(N);
  ipos_.resize(N);
  pos_.resize(N);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = perm_[i];
    std::memcpy(data_.data() + i * rowb, static_cast<const char*>(bank_) + r * rowb, rowb);
    std::memcpy(hs_.data() + i * Kp_, h.data() + r * Kp_, Kp_ * sizeof(uint16_t));
    rb_[i] = {en[r], sa[r], se[r]};
    ipos_[r] = i;
    pos_[i] = i;
  }
  const int64_t B = static_cast<int64_t>(leaves.size());
  blo_.resize(B + 1);
  q_.assign(static_cast<size_t>(B) * Kp_, 0.f);
  rho_.resize(B);
  emin_.resize(B);
  emax_.resize(B);
  bmaxv_.assign(B, -2.f);
  bmaxi_.assign(B, -1);
  bidx_.resize(B);
  dq2_.resize(B);
  std::vector<double> acc(Kp_);
  for (int64_t b = 0; b < B; ++b) {
    const auto [lo, hi] = leaves[b];
    blo_[b] = lo;
    bidx_[b] = b;
    std::fill(acc.begin(), acc.end(), 0.0);
    double lo_e = std::numeric_limits<double>::infinity(), hi_e = -lo_e;
    for (int64_t i = lo; i < hi; ++i) {
      const float* x = u.data() + perm_[i] * Kp_;
      for (int64_t j = 0; j < Kp_; ++j) acc[j] += x[j];
      lo_e = std::min(lo_e, static_cast<double>(rb_[i].en) - rb_[i].se);
      hi_e = std::max(hi_e, static_cast<double>(rb_[i].en) + rb_[i].se);
    }
    float* q = q_.data() + b * Kp_;
    for (int64_t j = 0; j < Kp_; ++j) q[j] = static_cast<float>(acc[j] / static_cast<double>(hi - lo));
    double rad = 0.0;
    for (int64_t i = lo; i < hi; ++i) {
      const float* x = u.data() + perm_[i] * Kp_;
      double d2 = 0.0;
      for (int64_t j = 0; j < Kp_; ++j) {
        const double d = static_cast<double>(x[j]) - q[j];
        d2 += d * d;
      }
      rad = std::max(rad, std::sqrt(d2) * (1.0 + kRel) + rb_[i].sa);  // >= ||a_x / scale - q||
    }
    rho_[b] = round_up(rad);
    emin_[b] = round_down(lo_e);
    emax_[b] = round_up(hi_e);
  }
  blo_[B] = N;
  mind_t_.assign(N, 0.f);
  cand_.resize(kBlock);
  cand_d2_.resize(kBlock);
  sum_d2_.resize(kBlock);
  ac_.resize(Kp_);
}

void CoresetFilter::block_max(int64_t b) {
  float bv = -2.f;
  int64_t bi = -1;
  for (int64_t i = blo_[b]; i < blo_[b + 1]; ++i) {
    const float m = mind_t_[i];
    const int64_t r = perm_[i];
    if (m > bv || (m == bv && r < bi)) {
      bv = m;
      bi = r;
    }
  }
  bmaxv_[b] = bv;
  bmaxi_[b] = bi;
}

void CoresetFilter::refresh(const float* mind) {
  for (int64_t i = 0; i < N_; ++i) mind_t_[i] = mind[perm_[i]];
  for (int64_t b = 0; b + 1 < static_cast<int64_t>(blo_.size()); ++b) block_max(b);
}

CoresetBest CoresetFilter::step(const float* c, int64_t cur, int32_t cid, float* mind, int32_t* assign,
                                int64_t* read, int64_t* summaries, bool* bad) {
  const int64_t D = D_, Kp = Kp_, B = static_cast<int64_t>(bmaxv_.size());
  {  // the caller has marked mind[cur]
    const int64_t i = ipos_[cur];
    mind_t_[i] = kCoresetChosen;
    block_max(std::upper_bound(blo_.begin(), blo_.end(), i) - blo_.begin() - 1);
  }
  // the centre's summary, in float64 from its fp32 values (the same as the rows')
  double yn2 = 0.0, an2 = 0.0, err2 = 0.0;
  std::vector<double>& y = y_;
  y.resize(D);
  for (int64_t t = 0; t < D; ++t) {
    y[t] = static_cast<double>(c[t]) - mu_[t];
    yn2 += y[t] * y[t];
  }
  std::vector<double> a(Kp, 0.0);
  for (int64_t t = 0; t < D; ++t) {
    const double* pr = p_.data() + t * Kp;
    for (int64_t j = 0; j < Kp; ++j) a[j] += y[t] * pr[j];
  }
  double e2 = 0.0;
  for (int64_t t = 0; t < D; ++t) {
    const double* pr = p_.data() + t * Kp;
    double pa = 0.0;
    for (int64_t j = 0; j < Kp; ++j) pa += pr[j] * a[j];
    const double d = y[t] - pa;
    e2 += d * d;
  }
  for (int64_t j = 0; j < Kp; ++j) {
    ac_[j] = static_cast<float>(a[j] / scale_);
    const double d = static_cast<double>(ac_[j]) - a[j] / scale_;
    err2 += d * d;
    an2 += a[j] * a[j];
  }
  const double yn = std::sqrt(yn2);
  const float s_c = round_up(std::sqrt(err2) * (1.0 + kRel) + 1e-7 * yn / scale_);  // scaled units
  const float en_c = static_cast<float>(std::sqrt(e2));
  const float se_c = round_up(static_cast<double>(kSlopY) * yn);
  const float sc = static_cast<float>(scale_), sc2 = sc * sc;
  const float lo_k = 1.f - mK_, fin = (1.f - 1e-6f) * (1.f - mD_);
  // lower bound of the computed squared distance, from a summary-space distance and a residual gap
  auto bound = [&](float dsum2, float slop, float egap) {
    const float A = std::max(0.f, std::sqrt(dsum2) * lo_k - slop - s_c);
    const float Bg = std::max(0.f, egap);
    return (A * A * sc2 + Bg * Bg) * fin - tiny_;
  };

  dists_(q_.data(), kCoresetF32, Kp, bidx_.data(), B, ac_.data(), dq2_.data());
  CoresetBest best;
  const size_t esize = dtype_ == kCoresetF32 ? 4 : 2;
  (void)esize;
  for (int64_t b = 0; b < B; ++b) {
    const float mx = bmaxv_[b];
    if (mx >= 0.f) {
      const float eg = std::max(emin_[b] - (en_c + se_c), (en_c - se_c) - emax_[b]);
      if (!(bound(dq2_[b], rho_[b], eg) >= mx)) {
        const int64_t lo = blo_[b], cnt = blo_[b + 1] - lo;
        dists_(hs_.data(), kCoresetF16, Kp, pos_.data() + lo, cnt, ac_.data(), sum_d2_.data());
        *summaries += cnt;
        int64_t k = 0;
        for (int64_t j = 0; j < cnt; ++j) {
          const int64_t i = lo + j;
          const float m = mind_t_[i];
          if (m < 0.f) continue;  // chosen
          const RowBound& rb = rb_[i];
          const float egr = std::abs(rb.en - en_c) - rb.se - se_c;
          if (bound(sum_d2_[j], rb.sa, egr) >= m) continue;
          cand_[k++] = i;
        }
        if (k > 0) {
          dists_(data_.data(), dtype_, D, cand_.data(), k, c, cand_d2_.data());
          *read += k;
          bool nonfinite = false;
          for (int64_t j = 0; j < k; ++j) {
            const float d2 = cand_d2_[j];
            nonfinite |= !(d2 < std::numeric_limits<float>::infinity());
            const int64_t i = cand_[j];
            if (d2 < mind_t_[i]) {  // the exhaustive step's update, on the exhaustive step's value
              mind_t_[i] = d2;
              mind[perm_[i]] = d2;
              assign[perm_[i]] = cid;
            }
          }
          if (nonfinite) *bad = true;
          block_max(b);
        }
      }
    }
    const float v = bmaxv_[b];
    if (v > best.value || (v == best.value && bmaxi_[b] < best.index)) {
      best.value = v;
      best.index = bmaxi_[b];
    }
  }
  (void)an2;
  return best;
}

}  // namespace fastad::cpu
