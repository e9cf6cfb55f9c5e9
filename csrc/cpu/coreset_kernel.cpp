// CPU greedy k-center (farthest point sampling) selection: fastad::coreset.
//
// Each step is ONE streaming pass over the bank: the squared distance of every row to the newly
// chosen centre (exact difference form sum((x - c)^2), fp32), the running-min update and the argmax
// are fused, with no temporaries. Rows that the triangle inequality proves cannot improve are not
// read (adaptive pruning, see coreset_select); the result is the same either way (up to fp32
// rounding of rows within 1e-4 relative of the bound). Rows are split into contiguous chunks (at
// least kCoresetMinRowsPerTask rows each), one per at::parallel_for task; each task returns its own
// (max, smallest index) and the partials are reduced in task order, so the result does not depend
// on the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <time.h>

#include <chrono>
#include <memory>
#include <string_view>
#include <vector>

#include "cpu/coreset.h"
#include "common/build_info.h"
#include "common/checks.h"

namespace fastad::cpu {

// Smallest number of bank rows given to one parallel task (below it, a step runs on fewer threads).
constexpr int64_t kCoresetMinRowsPerTask = 2048;

namespace {

template <typename T>
inline float to_f32(T x) {
  return static_cast<float>(x);
}

template <typename T>
inline float sq_dist_generic(const T* x, const float* c, int64_t D) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= D; t += 8)
    for (int u = 0; u < 8; ++u) {
      const float d = to_f32(x[t + u]) - c[t + u];
      acc[u] += d * d;
    }
  float d2 = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; t < D; ++t) {
    const float d = to_f32(x[t]) - c[t];
    d2 += d * d;
  }
  return d2;
}

template <typename T>
CoresetBest update_generic(const T* bank, int64_t D, int64_t r0, int64_t r1, const CoresetStep& st,
                           int64_t* skipped, bool* bad) {
  return coreset_update_rows(
      r0, r1, st, [&](int64_t r) { return sq_dist_generic(bank + r * D, st.c, D); }, skipped, bad);
}

template <typename T>
void row_dists_generic(const T* bank, int64_t D, const int64_t* rows, int64_t count, const float* c, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = sq_dist_generic(bank + rows[i] * D, c, D);
}

}  // namespace

CoresetBest coreset_update_generic(const void* bank, int dtype, int64_t D, int64_t r0, int64_t r1,
                                   const CoresetStep& st, int64_t* skipped, bool* bad) {
  switch (dtype) {
    case kCoresetF16: return update_generic(static_cast<const c10::Half*>(bank), D, r0, r1, st, skipped, bad);
    case kCoresetBF16: return update_generic(static_cast<const c10::BFloat16*>(bank), D, r0, r1, st, skipped, bad);
    default: return update_generic(static_cast<const float*>(bank), D, r0, r1, st, skipped, bad);
  }
}

void coreset_row_dists_generic(const void* bank, int dtype, int64_t D, const int64_t* rows, int64_t count,
                               const float* c, float* out) {
  switch (dtype) {
    case kCoresetF16: return row_dists_generic(static_cast<const c10::Half*>(bank), D, rows, count, c, out);
    case kCoresetBF16: return row_dists_generic(static_cast<const c10::BFloat16*>(bank), D, rows, count, c, out);
    default: return row_dists_generic(static_cast<const float*>(bank), D, rows, count, c, out);
  }
}

/// Greedy k-center selection over a row-major bank.
/// @param bank     N * D elements of storage type `dtype` (CoresetDType)
/// @param n        centres to choose, 1 <= n <= N
/// @param start    the first centre (row index)
/// @param mind     workspace, N floats (running squared min distance; chosen rows hold kCoresetChosen)
/// @param assign   workspace, N int32 (position of the centre that gave mind[r], for pruning)
/// @param out_idx  n int64: the chosen rows in order
/// @param out_d    n floats: Euclidean distance of each chosen row to the rows chosen before it
///                 (out_d[0] = +inf: the distance to the empty set)
/// @param prune    allow triangle-inequality pruning (adaptive, see below); results are identical
/// @param progress nullptr, or a counter set to the number of centres chosen so far after every step
///                 (relaxed atomic stores: another thread polls it for a progress bar)
/// @return false if some squared distance was NaN or Inf (the bank holds NaN/Inf or overflows fp32)
///
/// Pruning policy: a step that prunes needs the distances from the new centre to all s chosen
/// centres (s rows of work); it is kept up while it skips more than kCoresetPruneGain * s rows, and
/// otherwise retried after an exponentially growing number of steps (at most kCoresetPruneMaxBackoff),
/// so data where nothing prunes (high-dimensional noise) pays almost nothing for it.
constexpr int64_t kCoresetPruneGain = 2;
constexpr int64_t kCoresetPruneMaxBackoff = 256;
constexpr double kTreeBuildSkip = 0.05;
constexpr int64_t kTreeMinBackoff = 16, kTreeMaxBackoff = 1024, kExhProbeEvery = 2048;

bool coreset_select(const void* bank, int dtype, int64_t N, int64_t D, int64_t n, int64_t start, float* mind,
                    int32_t* assign, int64_t* out_idx, float* out_d, bool prune, bool use_tree, int64_t* progress,
                    int64_t progress_len) {
  int64_t rows_read = 0, rows_all = 0;
  auto report = [&](int64_t chosen) {
    if (!progress) return;
    __atomic_store_n(progress, chosen, __ATOMIC_RELAXED);
    if (progress_len >= 3) {
      __atomic_store_n(progress + 1, rows_read, __ATOMIC_RELAXED);
      __atomic_store_n(progress + 2, rows_all, __ATOMIC_RELAXED);
    }
  };
  const size_t esize = dtype == kCoresetF32 ? 4 : 2;
  const char* base = static_cast<const char*>(bank);
  // FASTAD_SIMD=generic forces the portable path (used by the tests to cover it on AVX2 machines).
  const char* simd_env = std::getenv("FASTAD_SIMD");
  const bool force_generic = simd_env != nullptr && std::string_view(simd_env) == "generic";
  const bool avx2 = FASTAD_HAVE_AVX2 && cpu_has_avx2_fma() && !force_generic;
  auto step_fn = avx2 ? &coreset_update_avx2 : &coreset_update_generic;
  auto dists_fn = avx2 ? &coreset_row_dists_avx2 : &coreset_row_dists_generic;
  auto leaf_fn = avx2 ? &coreset_leaf_test_avx2 : &coreset_leaf_test_generic;
  auto sqd_fn = avx2 ? &coreset_sq_dist32_avx2 : &coreset_sq_dist32_generic;

  const int64_t tasks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (N + kCoresetMinRowsPerTask - 1) / kCoresetMinRowsPerTask));
  std::vector<CoresetBest> partial(tasks);
  std::vector<int64_t> skipped(tasks);
  std::vector<char> bad(tasks, 0);  // per-task non-finite flags
  std::vector<float> centre(D);
  std::vector<float> cc2(prune ? n : 0);

  for (int64_t r = 0; r < N; ++r) {
    mind[r] = std::numeric_limits<float>::infinity();
    assign[r] = 0;
  }
  int64_t cur = start;
  out_idx[0] = start;
  out_d[0] = std::numeric_limits<float>::infinity();
  report(1);
  int64_t next_try = 2, backoff = 1;  // pruning needs >= 2 centres
  // method="pruned": the ball tree is built once an exhaustive step's own (per-row) pruning skips at
  // least kTreeBuildSkip of the rows (the data has structure the triangle inequality can use; on
  // high-dimensional noise it skips nothing and the tree is never built). Afterwards each step takes
  // the kind of step (tree / exhaustive) with the lower measured time per step (exponential moving
  // averages): after a tree step slower than the exhaustive average, exhaustive steps run for
  // tree_backoff steps (doubling up to kTreeMaxBackoff) before the tree is tried again; while the tree
  // wins, one exhaustive step every kExhProbeEvery steps keeps the exhaustive average current. The
  // choice changes only the time: both kinds of step give identical results.
  // Step times: this thread's CPU time when the op runs on one thread (not inflated by other processes
  // on a shared machine), wall time otherwise (the exhaustive step then runs on several threads).
  const bool one_thread = at::get_num_threads() == 1;
  auto now_s = [one_thread]() {
    if (one_thread) {
      timespec ts;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
      return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  };
  std::unique_ptr<CoresetFilter> tree;
  std::vector<int64_t> more_rows(CoresetFilter::kMaxBatch);
  std::vector<float> more_vals(CoresetFilter::kMaxBatch);
  bool tree_stale = true;
  int64_t tree_next = prune ? std::numeric_limits<int64_t>::max() : 2;  // FASTAD_CORESET_PRUNE=0: build at once
  int64_t tree_backoff = kTreeMinBackoff, tree_run = 0;
  double ema_tree = -1.0, ema_exh = -1.0;
  auto ema = [](double& e, double v) { e = e < 0 ? v : 0.75 * e + 0.25 * v; };
  const float prune_slack = kCoresetPruneSlack + 4.f * coreset_margin(D);
  int64_t st_filter_steps = 0, st_summaries = 0;  // FASTAD_CORESET_STATS=1: a summary on stderr
  double st_filter_s = 0, st_build_s = 0, st_exh_s = 0;
  for (int64_t step = 1; step < n; ++step) {
    // The centre in fp32, converted from the same storage as the rows: d(c, c) is exactly 0.
    const char* crow = base + static_cast<size_t>(cur) * D * esize;
    if (dtype == kCoresetF32) {
      std::copy_n(reinterpret_cast<const float*>(crow), D, centre.data());
    } else if (dtype == kCoresetF16) {
      for (int64_t t = 0; t < D; ++t) centre[t] = static_cast<float>(reinterpret_cast<const c10::Half*>(crow)[t]);
    } else {
      for (int64_t t = 0; t < D; ++t) centre[t] = static_cast<float>(reinterpret_cast<const c10::BFloat16*>(crow)[t]);
    }
    mind[cur] = kCoresetChosen;
    CoresetStep st;
    st.c = centre.data();
    st.cid = static_cast<int32_t>(step - 1);
    st.mind = mind;
    st.assign = assign;
    const double t_start = now_s();
    if (use_tree && step >= tree_next) {
      if (!tree) tree = std::make_unique<CoresetFilter>(bank, dtype, N, D, dists_fn, leaf_fn, sqd_fn);
      const double t_built = now_s();
      if (tree_stale) tree->refresh(mind);
      tree_stale = false;
      int64_t rd = 0, ns = 0, nmore = 0;
      bool b = false;
      // a batch of steps: centres that are provably the next greedy choices, applied in one pass
      const CoresetBest best = tree->step(cur, static_cast<int32_t>(step - 1), n - step, mind, assign, more_rows.data(),
                                          more_vals.data(), &nmore, &rd, &ns, &b);
      if (b) return false;
      for (int64_t j = 0; j < nmore; ++j) {
        out_idx[step + j] = more_rows[j];
        out_d[step + j] = std::sqrt(std::max(more_vals[j], 0.f));
        report(step + j + 1);
      }
      step += nmore;
      rows_read += rd;
      rows_all += N * (1 + nmore);
      st_filter_steps += 1 + nmore;
      st_summaries += ns;
      st_filter_s += now_s() - t_built;
      st_build_s += t_built - t_start;
      ema(ema_tree, (now_s() - t_built) / static_cast<double>(1 + nmore));
      ++tree_run;
      if (tree_run >= 2 && ema_exh > 0 && ema_tree > ema_exh) {  // the tree does not pay (yet): back off
        tree_next = step + 1 + tree_backoff;
        tree_backoff = std::min(2 * tree_backoff, kTreeMaxBackoff);
        tree_run = 0;
        ema_tree = -1.0;
      } else if (tree_run % kExhProbeEvery == 0) {
        tree_next = step + 2;  // one exhaustive step next (keeps its average current)
        tree_backoff = kTreeMinBackoff;
      }
      cur = best.index;
      out_idx[step] = cur;
      out_d[step] = std::sqrt(std::max(best.value, 0.f));
      report(step + 1);
      continue;
    }
    tree_stale = true;
    st.slack = prune_slack;
    const bool try_prune = prune && step >= next_try;
    if (try_prune) {
      // squared distances from the new centre to the step - 1 earlier centres (and 0 to itself)
      const int64_t ncent = step - 1;
      at::parallel_for(0, ncent, 64, [&](int64_t j0, int64_t j1) {
        dists_fn(bank, dtype, D, out_idx + j0, j1 - j0, centre.data(), cc2.data() + j0);
      });
      cc2[step - 1] = 0.f;
      st.cc2 = cc2.data();
    }
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = N * t / tasks, r1 = N * (t + 1) / tasks;
        bool b = false;
        int64_t sk = 0;
        partial[t] = step_fn(bank, dtype, D, r0, r1, st, &sk, &b);
        bad[t] = b;
        skipped[t] = sk;
      }
    });
    CoresetBest best = partial[0];
    for (int64_t t = 1; t < tasks; ++t)
      if (partial[t].value > best.value) best = partial[t];  // strict: earlier task = smaller index wins ties
    if (std::find(bad.begin(), bad.end(), 1) != bad.end()) return false;
    if (step == 1 && best.value > std::numeric_limits<float>::max() / 16.f)
      use_tree = false;  // distances between other rows might overflow: the bounds would not hold
    int64_t sk_all = 0;
    for (int64_t t = 0; t < tasks; ++t) sk_all += skipped[t];
    rows_read += N - sk_all;
    rows_all += N;
    ema(ema_exh, now_s() - t_start);
    st_exh_s += now_s() - t_start;
    if (use_tree && !tree && try_prune && static_cast<double>(sk_all - step) >= kTreeBuildSkip * static_cast<double>(N))
      tree_next = step + 1;
    if (tree) tree_run = 0;
    if (try_prune) {
      int64_t sk = 0;
      for (int64_t t = 0; t < tasks; ++t) sk += skipped[t];
      // chosen rows are always skipped and were never worth reading: do not count them
      if (sk - step > kCoresetPruneGain * step) {
        backoff = 1;
        next_try = step + 1;
      } else {
        backoff = std::min(backoff * 2, kCoresetPruneMaxBackoff);
        next_try = step + backoff;
      }
    }
    cur = best.index;
    out_idx[step] = cur;
    out_d[step] = std::sqrt(std::max(best.value, 0.f));
    report(step + 1);
  }
  if (std::getenv("FASTAD_CORESET_STATS"))
    std::fprintf(stderr, "coreset stats: %lld filter steps (%.3f s, build %.3f s), %lld exhaustive steps (%.3f s), "
                 "summaries %.2f%%, rows read %.2f%%\n", static_cast<long long>(st_filter_steps), st_filter_s, st_build_s,
                 static_cast<long long>(n - 1 - st_filter_steps), st_exh_s,
                 100.0 * static_cast<double>(st_summaries) / std::max<double>(1.0, static_cast<double>(st_filter_steps) * N),
                 100.0 * static_cast<double>(rows_read) / std::max<double>(1.0, static_cast<double>(rows_all)));
  return true;
}

namespace {

std::tuple<at::Tensor, at::Tensor> coreset_cpu(const at::Tensor& bank, int64_t n, int64_t start,
                                               const std::optional<at::Tensor>& progress, c10::string_view method) {
  check_coreset_args("coreset", bank, n, start);
  const bool use_tree = coreset_method_is_pruned("coreset", method);
  int64_t* prog = coreset_progress_ptr("coreset", progress);
  const int64_t N = bank.size(0), D = bank.size(1);
  const at::Tensor b = bank.contiguous();
  const int dtype = b.scalar_type() == at::kHalf ? kCoresetF16 : b.scalar_type() == at::kBFloat16 ? kCoresetBF16
                                                                                                  : kCoresetF32;
  auto out_idx = at::empty({n}, b.options().dtype(at::kLong));
  auto out_d = at::empty({n}, b.options().dtype(at::kFloat));
  auto mind = at::empty({N}, b.options().dtype(at::kFloat));
  auto assign = at::empty({N}, b.options().dtype(at::kInt));
  // FASTAD_CORESET_PRUNE=0 turns the (exact, adaptive) triangle-inequality pruning off (tests compare both).
  const char* prune_env = std::getenv("FASTAD_CORESET_PRUNE");
  const bool prune = prune_env == nullptr || std::string_view(prune_env) != "0";
  const bool ok = coreset_select(b.data_ptr(), dtype, N, D, n, start, mind.data_ptr<float>(),
                                 assign.data_ptr<int32_t>(), out_idx.data_ptr<int64_t>(), out_d.data_ptr<float>(),
                                 prune, use_tree, prog, progress ? progress->numel() : 0);
  TORCH_CHECK(ok, "coreset: bank must hold finite values, but a squared distance was NaN or Inf "
                  "(the bank contains NaN/Inf, or values whose squared differences overflow float32)");
  return {out_idx, out_d};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) { m.impl("coreset", &coreset_cpu); }

}  // namespace fastad::cpu
