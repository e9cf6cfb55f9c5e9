// Ball tree of coreset(..., method="pruned"): see CoresetTree in csrc/cpu/coreset.h. Built once per call
// (a few passes over the bank), then every greedy step walks it from the root, skipping the subtrees and
// rows that the triangle inequality proves cannot get closer to the new centre. The distances of the rows
// it does read come from the same dists function as the exhaustive step, so the result is identical.
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

// Rows sampled per node to find its split direction (two far-apart rows of the sample).
constexpr int64_t kSplitSample = 64;

template <typename F>
void with_type(int dtype, F&& f) {
  switch (dtype) {
    case kCoresetF16: f(static_cast<const c10::Half*>(nullptr)); break;
    case kCoresetBF16: f(static_cast<const c10::BFloat16*>(nullptr)); break;
    default: f(static_cast<const float*>(nullptr)); break;
  }
}

}  // namespace

CoresetTree::CoresetTree(const void* bank, int dtype, int64_t N, int64_t D, CoresetDistsFn dists)
    : bank_(bank), dtype_(dtype), N_(N), D_(D), dists_(dists) {
  e2_ = 2.f * coreset_margin(D);
  tiny_ = static_cast<float>(D + 16) * 0x1p-100f;  // absolute error of underflowing squares (with FTZ)
  build();
}

void CoresetTree::build() {
  const int64_t N = N_, D = D_;
  perm_.resize(N);
  std::iota(perm_.begin(), perm_.end(), int64_t{0});
  t_.assign(N, 0.f);
  nodes_.clear();
  nodes_.reserve(static_cast<size_t>(4 * (N / kLeaf + 1)));
  nodes_.push_back({0, N, -1, -1});
  std::vector<float> row(D), v(D), sd(kSplitSample);
  std::vector<int64_t> sample(kSplitSample);
  std::vector<std::pair<float, int64_t>> keyed;
  auto row_f32 = [&](int64_t r, float* out) {
    with_type(dtype_, [&](auto tag) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
      const T* x = static_cast<const T*>(bank_) + r * D;
      for (int64_t t = 0; t < D; ++t) out[t] = static_cast<float>(x[t]);
    });
  };
  // Split nodes in creation order (parents before children: ids grow downwards).
  for (size_t id = 0; id < nodes_.size(); ++id) {
    const int64_t lo = nodes_[id].lo, hi = nodes_[id].hi, cnt = hi - lo;
    if (cnt <= kLeaf) continue;
    const int64_t s = std::min(cnt, kSplitSample);
    for (int64_t i = 0; i < s; ++i) sample[i] = perm_[lo + i * cnt / s];
    int64_t p1 = sample[0], p2 = sample[0];
    for (int pass = 0; pass < 2; ++pass) {  // p1: farthest from sample[0]; p2: farthest from p1
      row_f32(pass == 0 ? sample[0] : p1, row.data());
      dists_(bank_, dtype_, D, sample.data(), s, row.data(), sd.data());
      const int64_t far = sample[std::max_element(sd.begin(), sd.begin() + s) - sd.begin()];
      (pass == 0 ? p1 : p2) = far;
    }
    row_f32(p1, row.data());
    row_f32(p2, v.data());
    for (int64_t t = 0; t < D; ++t) v[t] -= row[t];
    keyed.resize(cnt);
    with_type(dtype_, [&](auto tag) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
      for (int64_t i = 0; i < cnt; ++i) {
        const T* x = static_cast<const T*>(bank_) + perm_[lo + i] * D;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent lanes: vectorisable
        int64_t t = 0;
        for (; t + 8 <= D; t += 8)
          for (int u = 0; u < 8; ++u) acc[u] += static_cast<float>(x[t + u]) * v[t + u];
        for (; t < D; ++t) acc[0] += static_cast<float>(x[t]) * v[t];
        const float key = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        keyed[i] = {key, perm_[lo + i]};
      }
    });
    const int64_t half = cnt / 2;
    std::nth_element(keyed.begin(), keyed.begin() + half, keyed.end());  // (key, row): deterministic
    for (int64_t i = 0; i < cnt; ++i) perm_[lo + i] = keyed[i].second;
    const int32_t l = static_cast<int32_t>(nodes_.size());
    nodes_[id].left = l;
    nodes_[id].right = l + 1;
    nodes_.push_back({lo, lo + half, -1, -1});
    nodes_.push_back({lo + half, hi, -1, -1});
  }
  const size_t M = nodes_.size();
  centre_.assign(M * D, 0.f);
  radius_.assign(M, 0.f);
  maxv_.assign(M, -2.f);
  maxi_.assign(M, -1);
  std::vector<double> acc(D);
  std::vector<float> d2(kLeaf);
  for (size_t k = M; k-- > 0;) {  // children before parents
    const Node& nd = nodes_[k];
    float* z = centre_.data() + k * D;
    const int64_t cnt = nd.hi - nd.lo;
    if (nd.left < 0) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = nd.lo; i < nd.hi; ++i) {
        row_f32(perm_[i], row.data());
        for (int64_t t = 0; t < D; ++t) acc[t] += row[t];
      }
      for (int64_t t = 0; t < D; ++t) z[t] = static_cast<float>(acc[t] / static_cast<double>(cnt));
      dists_(bank_, dtype_, D, perm_.data() + nd.lo, cnt, z, d2.data());
      float rad = 0.f;
      for (int64_t i = 0; i < cnt; ++i) {
        t_[nd.lo + i] = std::sqrt(d2[i]);
        rad = std::max(rad, t_[nd.lo + i]);
      }
      radius_[k] = rad;
    } else {
      const int64_t cl = nodes_[nd.left].hi - nodes_[nd.left].lo, cr = cnt - cl;
      const float* zl = centre_.data() + static_cast<size_t>(nd.left) * D;
      const float* zr = centre_.data() + static_cast<size_t>(nd.right) * D;
      for (int64_t t = 0; t < D; ++t)
        z[t] = static_cast<float>((static_cast<double>(zl[t]) * cl + static_cast<double>(zr[t]) * cr) / cnt);
      // rho <= d(z, z_child) + rho_child for each child (with the rounding margin, rounded up)
      float rad = 0.f;
      for (int32_t ch : {nd.left, nd.right}) {
        const int64_t c64 = ch;
        float dz2;
        dists_(centre_.data(), kCoresetF32, D, &c64, 1, z, &dz2);
        rad = std::max(rad, (std::sqrt(dz2) + radius_[ch]) * (1.f + e2_));
      }
      radius_[k] = rad;
    }
  }
  // The rows in tree order (a copy of the same stored values: every distance is the one the exhaustive
  // step computes from the original bank), so that a leaf is one contiguous block.
  const size_t esize = dtype_ == kCoresetF32 ? 4 : 2, rowb = static_cast<size_t>(D) * esize;
  data_.resize(static_cast<size_t>(N) * rowb);
  ipos_.resize(N);
  for (int64_t i = 0; i < N; ++i) {
    std::memcpy(data_.data() + i * rowb, static_cast<const char*>(bank_) + perm_[i] * rowb, rowb);
    ipos_[perm_[i]] = i;
  }
  mind_t_.assign(N, 0.f);
  cand_.resize(kLeaf);
  cand_d2_.resize(kLeaf);
}

void CoresetTree::leaf_max(int32_t node) {
  float bv = -2.f;
  int64_t bi = -1;
  for (int64_t i = nodes_[node].lo; i < nodes_[node].hi; ++i) {
    const int64_t r = perm_[i];
    const float m = mind_t_[i];
    if (m > bv || (m == bv && r < bi)) {
      bv = m;
      bi = r;
    }
  }
  maxv_[node] = bv;
  maxi_[node] = bi;
}

void CoresetTree::combine(int32_t node) {
  const int32_t l = nodes_[node].left, r = nodes_[node].right;
  const bool take_l = maxv_[l] > maxv_[r] || (maxv_[l] == maxv_[r] && maxi_[l] < maxi_[r]);
  maxv_[node] = take_l ? maxv_[l] : maxv_[r];
  maxi_[node] = take_l ? maxi_[l] : maxi_[r];
}

void CoresetTree::refresh(const float* mind) {
  for (int64_t i = 0; i < N_; ++i) mind_t_[i] = mind[perm_[i]];
  for (size_t k = nodes_.size(); k-- > 0;) {
    if (nodes_[k].left < 0) leaf_max(static_cast<int32_t>(k));
    else combine(static_cast<int32_t>(k));
  }
}

void CoresetTree::visit(int32_t node, const float* c, int32_t cid, float* mind, int32_t* assign, int64_t* read,
                        bool* bad) {
  const float mx = maxv_[node];
  if (mx < 0.f) return;  // every row of the node is chosen already
  const int64_t n64 = node;
  float dz2;
  dists_(centre_.data(), kCoresetF32, D_, &n64, 1, c, &dz2);
  const float d = std::sqrt(dz2);
  const float lo_f = 1.f - e2_, hi_f = 1.f + e2_;
  const float lb = d * lo_f - radius_[node] * hi_f;  // <= ||x - c|| for every row x of the node
  if (lb > 0.f && lb * lb * lo_f - tiny_ >= mx) return;  // no row can get below its running min
  const Node& nd = nodes_[node];
  if (nd.left >= 0) {
    visit(nd.left, c, cid, mind, assign, read, bad);
    visit(nd.right, c, cid, mind, assign, read, bad);
    combine(node);
    return;
  }
  const float dl = d * lo_f, dh = d * hi_f;
  int64_t k = 0;
  for (int64_t i = nd.lo; i < nd.hi; ++i) {
    const float m = mind_t_[i];
    if (m < 0.f) continue;  // chosen
    const float t = t_[i];
    const float lbr = std::max(dl - t * hi_f, t * lo_f - dh);  // <= ||x - c||
    if (lbr > 0.f && lbr * lbr * lo_f - tiny_ >= m) continue;
    cand_[k++] = i;  // a position in tree order
  }
  if (k > 0) {
    dists_(data_.data(), dtype_, D_, cand_.data(), k, c, cand_d2_.data());
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
  }
  leaf_max(node);
}

CoresetBest CoresetTree::step(const float* c, int64_t cur, int32_t cid, float* mind, int32_t* assign, int64_t* read,
                              bool* bad) {
  mind_t_[ipos_[cur]] = kCoresetChosen;  // the caller has marked mind[cur]
  visit(0, c, cid, mind, assign, read, bad);
  CoresetBest best;
  best.value = maxv_[0];
  best.index = maxi_[0];
  return best;
}

}  // namespace fastad::cpu
