// Running top-k selection for the CPU kernels: the k smallest (score, index) pairs seen so far.
// Ties in score are broken by the smaller index, so results are deterministic and independent of
// blocking and thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>

namespace fastad::cpu {

struct ScoreIdx {
  float s;
  int64_t i;
};

// a is strictly better than b: smaller score, or equal score and smaller index.
inline bool better(const ScoreIdx& a, const ScoreIdx& b) { return a.s < b.s || (a.s == b.s && a.i < b.i); }

// A bounded max-heap (worst on top) over a caller-owned buffer of capacity k.
// @param buf  storage for k entries, owned by the caller (reused across queries).
struct TopK {
  ScoreIdx* buf;
  int64_t k;
  int64_t size = 0;

  TopK(ScoreIdx* b, int64_t k_) : buf(b), k(k_) {}

  // Worst score kept so far, or +inf while the heap is not full: a candidate must beat it.
  float threshold() const { return size < k ? std::numeric_limits<float>::infinity() : buf[0].s; }

  void push(float s, int64_t i) {
    ScoreIdx c{s, i};
    auto worse_first = [](const ScoreIdx& a, const ScoreIdx& b) { return better(a, b); };
    if (size < k) {
      buf[size++] = c;
      std::push_heap(buf, buf + size, worse_first);
    } else if (better(c, buf[0])) {
      std::pop_heap(buf, buf + size, worse_first);
      buf[size - 1] = c;
      std::push_heap(buf, buf + size, worse_first);
    }
  }

  // Sorts the kept entries best first; returns how many there are.
  int64_t finish() {
    std::sort(buf, buf + size, better);
    return size;
  }
};

}  // namespace fastad::cpu
