// Row filter of coreset(..., method="pruned"): see CoresetFilter in csrc/cpu/coreset.h.
//
// Every row x keeps a compact summary: its coordinates u_x on the top principal axes of the bank (float16,
// scaled by a power of two) and the norm of its residual off those axes. For the exact coordinates a and
// residuals e (x - mu = P a_x + e_x, P orthonormal),
//   ||x - c||^2 = ||a_x - a_c||^2 + ||e_x - e_c||^2 >= ||a_x - a_c||^2 + (||e_x|| - ||e_c||)^2,
// and ||a_x - a_c|| >= ||u_x scale - a_c|| - (the stored rounding error of u_x, computed exactly at build
// time). So the summary gives a rigorous lower bound of the distance to the new centre; a row whose bound
// (with the fp32 rounding margin of the exhaustive distance, coreset_margin(D)) is >= its running min cannot
// improve and is not read in full. The rows are ordered as the leaves of a binary tree (recursive bisection
// in summary space, every split at a multiple of 8 rows); each node keeps a ball (centre, radius) around its
// rows' summaries, the range of their residual norms and the largest running min of its rows (value,
// smallest row index on ties). A step descends from the root and skips a node whose lower bound (the
// larger of its own and its parent's) is >= that maximum, tests the rows of the leaves it reaches
// (8 at a time), reads the rows that pass in full and recomputes the maxima of the changed leaves and
// their ancestors only; the argmax is the root's. Rows that are read get exactly the exhaustive step's
// distance (same dists function, same stored values, same centre), so the indices and distances are
// identical to the exhaustive method's.
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
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

CoresetFilter::CoresetFilter(const void* bank, int dtype, int64_t N, int64_t D, CoresetDistsFn dists,
                             CoresetLeafFn leaf, CoresetSqDistFn sqd)
    : bank_(bank), dtype_(dtype), N_(N), D_(D), dists_(dists), leaf_(leaf), sqd_(sqd) {
  // FASTAD_CORESET_LEAF=n: leaves of at most n rows (a multiple of 8, >= 8): the tests use small leaves to
  // get deep trees on small banks
  if (const char* e = std::getenv("FASTAD_CORESET_LEAF")) leaf_rows_ = std::max<int64_t>(8, std::atoi(e) / 8 * 8);
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

  // the tree: recursive bisection of the summaries along the direction between two far-apart rows
  perm_.resize(N);
  std::iota(perm_.begin(), perm_.end(), int64_t{0});
  nodes_.clear();
  nodes_.reserve(static_cast<size_t>(N / 4 + 2));
  make_node(0, N, -1, u);
  const int64_t nn = static_cast<int64_t>(nodes_.size());

  // rows in tree order, padded to a multiple of 8 positions: summaries (groups of 8), bounds and a copy of
  // the stored rows (same values: every distance is the one the exhaustive step computes from the bank)
  N8_ = (N + 7) / 8 * 8;
  const size_t esize = dtype_ == kCoresetF32 ? 4 : 2, rowb = static_cast<size_t>(D) * esize;
  data_.resize(static_cast<size_t>(N) * rowb);
  const int64_t J0 = std::min<int64_t>(8, Kp_);
  hs1_.assign(static_cast<size_t>(N8_) * J0, 0);
  hs2_.assign(static_cast<size_t>(N8_) * (Kp_ - J0), 0);
  en_.assign(N8_, 0.f);
  sa_.assign(N8_, 0.f);
  se_.assign(N8_, 0.f);
  ipos_.resize(N);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = perm_[i];
    std::memcpy(data_.data() + i * rowb, static_cast<const char*>(bank_) + r * rowb, rowb);
    uint16_t* g1 = hs1_.data() + (i / 8) * J0 * 8 + (i % 8);
    uint16_t* g2 = hs2_.data() + (i / 8) * (Kp_ - J0) * 8 + (i % 8);
    for (int64_t j = 0; j < J0; ++j) g1[j * 8] = h[r * Kp_ + j];
    for (int64_t j = J0; j < Kp_; ++j) g2[(j - J0) * 8] = h[r * Kp_ + j];
    en_[i] = en[r];
    sa_[i] = sa[r];
    se_[i] = se[r];
    ipos_[r] = i;
  }
  // float32 rows: a float16 copy and the norm of its rounding error (float64, rounded up): for a candidate,
  // ||x - c|| >= ||h - c|| - ||x - h|| decides most cases at half the bytes of the full row
  if (dtype_ == kCoresetF32) {
    h16_.resize(static_cast<size_t>(N) * D);
    h16err_.resize(N);
    const float* rows = reinterpret_cast<const float*>(data_.data());
    for (int64_t i = 0; i < N; ++i) {
      double e2 = 0.0, n2 = 0.0;
      bool finite = true;
      for (int64_t t = 0; t < D; ++t) {
        const float x = rows[i * D + t];
        const c10::Half hv(x);
        h16_[i * D + t] = hv.x;
        const double d = static_cast<double>(x) - static_cast<double>(static_cast<float>(hv));
        finite &= std::isfinite(d);
        e2 += d * d;
        n2 += static_cast<double>(x) * x;
      }
      // (float64 rounding of the sum: covered by kRel and the 1e-12 ||x|| term)
      h16err_[i] = finite ? round_up(std::sqrt(e2) * (1.0 + kRel) + 1e-12 * std::sqrt(n2))
                          : std::numeric_limits<float>::infinity();
    }
  }
  // per group of 8 positions: bounds of its rows' terms (a first, weaker test per group)
  gb_.assign(static_cast<size_t>(N8_ / 8) * 4, 0.f);
  for (int64_t g = 0; g < N8_ / 8; ++g) {
    float* b = gb_.data() + g * 4;
    b[0] = 0.f;
    b[1] = std::numeric_limits<float>::infinity();
    b[2] = -b[1];
    for (int64_t i = g * 8; i < std::min(N, g * 8 + 8); ++i) {
      b[0] = std::max(b[0], sa_[i]);
      b[1] = std::min(b[1], round_down(static_cast<double>(en_[i]) - se_[i]));
      b[2] = std::max(b[2], round_up(static_cast<double>(en_[i]) + se_[i]));
    }
  }
  // balls: mean of the summaries and the largest distance to it (plus the row's stored error)
  q_.assign(static_cast<size_t>(nn) * Kp_, 0.f);
  leaf_of_.assign(N8_ / 8, -1);
  std::vector<double> acc(Kp_);
  for (int64_t n = 0; n < nn; ++n) {
    Node& nd = nodes_[n];
    const int64_t lo = nd.lo, hi = nd.hi;
    if (nd.left < 0)
      for (int64_t g = lo / 8; g < (hi + 7) / 8; ++g) leaf_of_[g] = static_cast<int32_t>(n);
    std::fill(acc.begin(), acc.end(), 0.0);
    double lo_e = std::numeric_limits<double>::infinity(), hi_e = -lo_e;
    for (int64_t i = lo; i < hi; ++i) {
      const float* x = u.data() + perm_[i] * Kp_;
      for (int64_t j = 0; j < Kp_; ++j) acc[j] += x[j];
      lo_e = std::min(lo_e, static_cast<double>(en_[i]) - se_[i]);
      hi_e = std::max(hi_e, static_cast<double>(en_[i]) + se_[i]);
    }
    float* q = q_.data() + n * Kp_;
    for (int64_t j = 0; j < Kp_; ++j) q[j] = static_cast<float>(acc[j] / static_cast<double>(hi - lo));
    double rad = 0.0;
    for (int64_t i = lo; i < hi; ++i) {
      const float* x = u.data() + perm_[i] * Kp_;
      double d2 = 0.0;
      for (int64_t j = 0; j < Kp_; ++j) {
        const double d = static_cast<double>(x[j]) - q[j];
        d2 += d * d;
      }
      rad = std::max(rad, std::sqrt(d2) * (1.0 + kRel) + sa_[i]);  // >= ||a_x / scale - q||
    }
    nd.rho = round_up(rad);
    nd.emin = round_down(lo_e);
    nd.emax = round_up(hi_e);
  }
  mind_t_.assign(N8_, kCoresetChosen);
  cand_.resize(static_cast<size_t>(kMaxBatch) * (leaf_rows_ + 8));
  cand_d2_.resize(leaf_rows_ + 8);
  cand2_.resize(leaf_rows_ + 8);
  cv_.resize(static_cast<size_t>(kMaxBatch) * D);
  acs_.resize(static_cast<size_t>(kMaxBatch) * Kp_);
}

int32_t CoresetFilter::make_node(int64_t lo, int64_t hi, int32_t parent, const std::vector<float>& u) {
  const int32_t idx = static_cast<int32_t>(nodes_.size());
  nodes_.push_back(Node{lo, hi, -1, -1, parent});
  const int64_t cnt = hi - lo;
  if (cnt <= leaf_rows_) return idx;
  const int64_t s = std::min(cnt, kSplitSample);
  std::vector<int64_t> sample(s);
  std::vector<float> sd(s), v(Kp_);
  for (int64_t i = 0; i < s; ++i) sample[i] = perm_[lo + i * cnt / s];
  int64_t p1 = sample[0], p2 = sample[0];
  for (int pass = 0; pass < 2; ++pass) {  // p1: farthest from sample[0]; p2: farthest from p1
    const float* from = u.data() + (pass == 0 ? sample[0] : p1) * Kp_;
    dists_(u.data(), kCoresetF32, Kp_, sample.data(), s, from, sd.data());
    (pass == 0 ? p1 : p2) = sample[std::max_element(sd.begin(), sd.end()) - sd.begin()];
  }
  for (int64_t j = 0; j < Kp_; ++j) v[j] = u[p2 * Kp_ + j] - u[p1 * Kp_ + j];
  std::vector<std::pair<float, int64_t>> keyed(cnt);
  for (int64_t i = 0; i < cnt; ++i) {
    const float* x = u.data() + perm_[lo + i] * Kp_;
    float a = 0.f;
    for (int64_t j = 0; j < Kp_; ++j) a += x[j] * v[j];
    keyed[i] = {a, perm_[lo + i]};
  }
  // split at a multiple of 8 rows (lo is one), near the middle: leaves hold 8 or 16 rows (the last one less)
  const int64_t half = std::max<int64_t>(8, cnt / 16 * 8);  // cnt > leaf_rows_ >= 8
  std::nth_element(keyed.begin(), keyed.begin() + half, keyed.end());  // (key, row): deterministic
  for (int64_t i = 0; i < cnt; ++i) perm_[lo + i] = keyed[i].second;
  keyed.clear();
  keyed.shrink_to_fit();
  const int32_t l = make_node(lo, lo + half, idx, u);
  const int32_t r = make_node(lo + half, hi, idx, u);
  nodes_[idx].left = l;
  nodes_[idx].right = r;
  return idx;
}

void CoresetFilter::leaf_max(int32_t n) {
  Node& nd = nodes_[n];
  float bv = -2.f;
  int64_t bi = -1;
  for (int64_t i = nd.lo; i < nd.hi; ++i) {
    const float m = mind_t_[i];
    const int64_t r = perm_[i];
    if (m > bv || (m == bv && r < bi)) {
      bv = m;
      bi = r;
    }
  }
  nd.maxv = bv;
  nd.maxi = bi;
}

void CoresetFilter::combine(int32_t n) {
  Node& nd = nodes_[n];
  const Node& a = nodes_[nd.left];
  const Node& b = nodes_[nd.right];
  const bool take_b = b.maxv > a.maxv || (b.maxv == a.maxv && b.maxi < a.maxi);
  nd.maxv = take_b ? b.maxv : a.maxv;
  nd.maxi = take_b ? b.maxi : a.maxi;
}

void CoresetFilter::refresh(const float* mind) {
  for (int64_t i = 0; i < N_; ++i) mind_t_[i] = mind[perm_[i]];
  for (int64_t n = static_cast<int64_t>(nodes_.size()) - 1; n >= 0; --n) {
    if (nodes_[n].left < 0) leaf_max(static_cast<int32_t>(n));
    else combine(static_cast<int32_t>(n));
  }
}

bool CoresetFilter::visit(int32_t n, uint32_t active) {
  const Node& nd = nodes_[n];
  if (nd.maxv < 0.f) return false;  // every row chosen
  // the batch's centres that might improve a row below: a subtree skips the others (their bound here
  // holds for every row below, whose running minima are <= this node's maximum)
  const float* q = q_.data() + static_cast<int64_t>(n) * Kp_;
  uint32_t act = 0;
  for (uint32_t bits = active; bits != 0; bits &= bits - 1) {
    const int i = __builtin_ctz(bits);
    const CoresetCentreSummary& cs = cs_[i];
    const float dq2 = sqd_(q, cs.ac, Kp_);
    const float eg = std::max(nd.emin - (cs.en_c + cs.se_c), (cs.en_c - cs.se_c) - nd.emax);
    if (!(coreset_summary_bound(dq2, nd.rho, cs.s_c, eg, la_) >= nd.maxv)) act |= 1u << i;
  }
  if (act == 0) return false;
  if (nd.left >= 0) {
    const bool a = visit(nd.left, act);
    const bool b = visit(nodes_[n].right, act);
    if (a || b) combine(n);
    return a || b;
  }
  const int64_t lo = nd.lo, p1 = (nd.hi + 7) / 8 * 8, cap = leaf_rows_ + 8;
  summ_ += p1 - lo;
  if (leaf_(la_, lo, p1, act, cand_.data(), cap, counts_) == 0) return false;
  {  // the candidates' rows are scattered: start loading them all before the first distance
    const size_t rowb = static_cast<size_t>(D_) * (h16_.empty() ? (dtype_ == kCoresetF32 ? 4 : 2) : 2);
    const char* base = h16_.empty() ? data_.data() : reinterpret_cast<const char*>(h16_.data());
    for (int i = 0; i < nc_; ++i)
      for (int64_t j = 0; j < counts_[i]; ++j) {
        const char* r = base + static_cast<size_t>(cand_[i * cap + j]) * rowb;
        for (size_t o = 0; o < rowb; o += 64) __builtin_prefetch(r + o);
      }
  }
  // running minima only decrease: the leaf's maximum (value, smallest row) changes only if its own row does
  bool changed = false;
  const int64_t top = nd.maxi;
  for (int i = 0; i < nc_; ++i) {  // centres in order: each row sees the exhaustive steps' sequence of updates
    int64_t k = counts_[i];
    if (k == 0) continue;
    int64_t* cand = cand_.data() + i * cap;
    const float* c = cv_.data() + static_cast<int64_t>(i) * D_;
    if (!h16_.empty()) {  // the float16 copy's bound first: the computed full distance is >= it
      dists_(h16_.data(), kCoresetF16, D_, cand, k, c, cand_d2_.data());
      int64_t k2 = 0;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = cand[j];
        // (1 - mD_) bounds ||h - c|| below from the computed sum; 2^-21 more absorbs the roundings of the
        // square root, the product and the difference (absolute, relative to sqrt(d2))
        const float A = std::max(0.f, std::sqrt(cand_d2_[j]) * (1.f - mD_ - 0x1p-21f) - h16err_[r]);
        if (!((A * A) * la_.fin - tiny_ >= mind_t_[r])) cand2_[k2++] = r;  // NaN/Inf: read in full
      }
      k = k2;
      cand = cand2_.data();
      if (k == 0) continue;
    }
    dists_(data_.data(), dtype_, D_, cand, k, c, cand_d2_.data());
    read_ += k;
    for (int64_t j = 0; j < k; ++j) {
      const float d2 = cand_d2_[j];
      bad_ |= !(d2 < std::numeric_limits<float>::infinity());
      const int64_t pi = cand[j];
      if (d2 < mind_t_[pi]) {  // the exhaustive step's update, on the exhaustive step's value
        mind_t_[pi] = d2;
        const int64_t r = perm_[pi];
        mind_[r] = d2;
        assign_[r] = cids_[i];
        changed |= r == top;
      }
    }
  }
  if (changed) leaf_max(n);
  return changed;
}

void CoresetFilter::mark_chosen(int64_t row) {
  const int64_t i = ipos_[row];
  mind_t_[i] = kCoresetChosen;
  int32_t n = leaf_of_[i / 8];
  leaf_max(n);
  for (n = nodes_[n].parent; n >= 0; n = nodes_[n].parent) combine(n);
}

void CoresetFilter::centre_summary(const float* c, int i) {
  // the centre's summary, in float64 from its fp32 values (the same as the rows')
  const int64_t D = D_, Kp = Kp_;
  double yn2 = 0.0, err2 = 0.0;
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
  float* ac = acs_.data() + static_cast<int64_t>(i) * Kp;
  for (int64_t j = 0; j < Kp; ++j) {
    ac[j] = static_cast<float>(a[j] / scale_);
    const double d = static_cast<double>(ac[j]) - a[j] / scale_;
    err2 += d * d;
  }
  const double yn = std::sqrt(yn2);
  CoresetCentreSummary& cs = cs_[i];
  cs.ac = ac;
  cs.s_c = round_up(std::sqrt(err2) * (1.0 + kRel) + 1e-7 * yn / scale_);  // scaled units
  cs.en_c = static_cast<float>(std::sqrt(e2));
  cs.se_c = round_up(static_cast<double>(kSlopY) * yn);
}

CoresetBest CoresetFilter::step(int64_t cur, int32_t cid, int64_t max_batch, float* mind, int32_t* assign,
                                int64_t* more_rows, float* more_vals, int64_t* n_more, int64_t* read,
                                int64_t* summaries, bool* bad) {
  const int64_t D = D_;
  const size_t esize = dtype_ == kCoresetF32 ? 4 : 2;
  mind_ = mind;
  assign_ = assign;
  read_ = summ_ = 0;
  bad_ = false;
  // the centre in fp32, converted from the same stored values as the exhaustive step's
  auto load_centre = [&](int64_t row, int i) {
    const char* src = data_.data() + static_cast<size_t>(ipos_[row]) * D * esize;
    float* c = cv_.data() + static_cast<int64_t>(i) * D;
    if (dtype_ == kCoresetF32) {
      std::memcpy(c, src, D * sizeof(float));
    } else if (dtype_ == kCoresetF16) {
      for (int64_t t = 0; t < D; ++t) c[t] = static_cast<float>(reinterpret_cast<const c10::Half*>(src)[t]);
    } else {
      for (int64_t t = 0; t < D; ++t) c[t] = static_cast<float>(reinterpret_cast<const c10::BFloat16*>(src)[t]);
    }
  };
  nc_ = 0;
  load_centre(cur, 0);
  cids_[0] = cid;
  nc_ = 1;
  mark_chosen(cur);  // the caller has marked mind[cur]
  // the batch: while the current maximum (over the running minima before this batch, upper bounds of the
  // ones after it) is not improved by a centre of the batch, it is the next greedy choice
  *n_more = 0;
  const int64_t cap_batch = std::min<int64_t>(kMaxBatch, max_batch);
  while (nc_ < cap_batch) {
    const float v = nodes_[0].maxv;
    const int64_t r = nodes_[0].maxi;
    if (v < 0.f) break;
    const int64_t pos = ipos_[r];
    bool improved = false;
    for (int i = 0; i < nc_ && !improved; ++i) {
      float d2;
      dists_(data_.data(), dtype_, D, &pos, 1, cv_.data() + static_cast<int64_t>(i) * D, &d2);
      bad_ |= !(d2 < std::numeric_limits<float>::infinity());
      improved = d2 < v;
    }
    read_ += nc_;
    if (improved) break;
    more_rows[*n_more] = r;
    more_vals[*n_more] = v;
    ++*n_more;
    mind[r] = kCoresetChosen;
    mark_chosen(r);
    load_centre(r, nc_);
    cids_[nc_] = cid + nc_;
    ++nc_;
  }
  for (int i = 0; i < nc_; ++i) centre_summary(cv_.data() + static_cast<int64_t>(i) * D, i);
  la_.hs1 = hs1_.data();
  la_.hs2 = hs2_.data();
  la_.Kp = Kp_;
  la_.en = en_.data();
  la_.sa = sa_.data();
  la_.se = se_.data();
  la_.mind = mind_t_.data();
  la_.gb = gb_.data();
  la_.cs = cs_;
  const float sc = static_cast<float>(scale_);
  la_.sc2 = sc * sc;
  la_.lo_k = 1.f - mK_;
  la_.fin = (1.f - 1e-6f) * (1.f - mD_);
  la_.tiny = tiny_;
  visit(0, nc_ == 32 ? ~0u : (1u << nc_) - 1u);
  *read += read_;
  *summaries += summ_;
  if (bad_) *bad = true;
  CoresetBest best;
  best.value = nodes_[0].maxv;
  best.index = nodes_[0].maxi;
  return best;
}

float coreset_sq_dist32_generic(const float* q, const float* ac, int64_t Kp) {
  float s = 0.f;
  for (int64_t j = 0; j < Kp; ++j) {
    const float d = q[j] - ac[j];
    s += d * d;
  }
  return s;
}

int64_t coreset_leaf_test_generic(const CoresetLeafArgs& a, int64_t p0, int64_t p1, uint32_t active, int64_t* cand,
                                  int64_t cap, int64_t* counts) {
  int64_t total = 0;
  const int64_t Kp = a.Kp, J0 = std::min<int64_t>(8, Kp);
  float d2[8];
  for (int i = 0; i < CoresetFilter::kMaxBatch; ++i) counts[i] = 0;
  for (uint32_t bits = active; bits != 0; bits &= bits - 1) {
    const int ci = __builtin_ctz(bits);
    const CoresetCentreSummary& cs = a.cs[ci];
    int64_t k = 0;
    for (int64_t p = p0; p < p1; p += 8) {
      const uint16_t* h1 = a.hs1 + (p / 8) * J0 * 8;
      const uint16_t* h2 = a.hs2 + (p / 8) * (Kp - J0) * 8;
      for (int r = 0; r < 8; ++r) d2[r] = 0.f;
      for (int64_t j = 0; j < Kp; ++j)
        for (int r = 0; r < 8; ++r) {
          const uint16_t hb = j < J0 ? h1[j * 8 + r] : h2[(j - J0) * 8 + r];
          const float d = static_cast<float>(c10::Half(hb, c10::Half::from_bits())) - cs.ac[j];
          d2[r] += d * d;
        }
      for (int r = 0; r < 8; ++r) {
        const int64_t i = p + r;
        const float m = a.mind[i];
        if (!(m >= 0.f)) continue;  // chosen or padding
        const float egr = std::abs(a.en[i] - cs.en_c) - a.se[i] - cs.se_c;
        if (!(coreset_summary_bound(d2[r], a.sa[i], cs.s_c, egr, a) >= m)) cand[ci * cap + k++] = i;
      }
    }
    counts[ci] = k;
    total += k;
  }
  return total;
}

}  // namespace fastad::cpu
