"""Exact ranking primitives under :mod:`fastad.metrics`: input checks (tensors or arrays -> finite
scores, binary labels), and exact counts of normal values below / at each query (a plain sort for
small inputs, a monotone bucket histogram with exact refinement for large ones), shared by AUROC,
AP, F1-max, AUPRO and PRO. Tuning constants are module globals (see ``benchmarks/bench_metrics.py``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Below this many normal values the counts come from a plain sort; above it, from the bucket
# histogram (see `neg_counts`). Measured in benchmarks/bench_metrics.py: the histogram path wins
# from ~10^5 values on.
SMALL_SORT_LIMIT = 1 << 16
# Buckets per normal value for the histogram path (fewer buckets = more values to sort exactly,
# more buckets = a larger, cache-unfriendly histogram), clamped to [2^10, MAX_BUCKETS]. Tuned with
# benchmarks/bench_metrics.py.
BUCKETS_PER_VALUE = 0.5
MAX_BUCKETS = 1 << 20


def to_numpy(x: Any, fn: str, arg: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"fastad.metrics.{fn}: {arg} must be a tensor or array-like, got {type(x).__name__}") from e


def as_scores(x: Any, fn: str, arg: str) -> np.ndarray:
    """Scores as a float32/float64 array; rejects NaN/inf and non-numeric dtypes."""
    a = to_numpy(x, fn, arg)
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)  # exact for |ints| < 2^53
    elif a.dtype == np.float16:
        a = a.astype(np.float32)  # exact
    elif a.dtype not in (np.float32, np.float64):
        raise ValueError(f"fastad.metrics.{fn}: {arg} must be real numbers, got dtype {a.dtype}")
    if a.size and not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "inf"
        raise ValueError(f"fastad.metrics.{fn}: {arg} contain {bad}; scores must be finite")
    return a


def as_binary(x: Any, fn: str, arg: str) -> np.ndarray:
    """Labels/masks as a bool array; only 0/1 (or False/True) allowed."""
    a = to_numpy(x, fn, arg)
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"fastad.metrics.{fn}: {arg} must be binary (0/1 or bool), got dtype {a.dtype}")
    b = a != 0
    bad = b & (a != 1)
    if bad.any():
        vals = np.unique(a[bad])[:5]
        raise ValueError(
            f"fastad.metrics.{fn}: {arg} must be binary (0/1 or bool); found other values {vals.tolist()}"
        )
    return b


def as_pair(scores: Any, labels: Any, fn: str, sname: str = "scores", lname: str = "labels"):
    s = as_scores(scores, fn, sname)
    y = as_binary(labels, fn, lname)
    if s.shape != y.shape:
        raise ValueError(f"fastad.metrics.{fn}: {sname} and {lname} must have the same shape, got "
                         f"{tuple(s.shape)} and {tuple(y.shape)}")
    if s.size == 0:
        raise ValueError(f"fastad.metrics.{fn}: empty input ({sname} has shape {tuple(s.shape)})")
    return s, y


def maps_and_masks(maps: Any, masks: Any, fn: str):
    """Maps [H, W] or [B, H, W] or [B, 1, H, W] (any leading dims) -> float [B, H, W], bool [B, H, W]."""
    s, y = as_pair(maps, masks, fn, "maps", "masks")
    if s.ndim < 2:
        raise ValueError(f"fastad.metrics.{fn}: maps must have at least 2 dims [..., H, W], got shape {tuple(s.shape)}")
    h, w = s.shape[-2:]
    return s.reshape(-1, h, w), y.reshape(-1, h, w)


def bucket(x: np.ndarray, scale, offset, nb: int) -> np.ndarray:
    """clip(x * scale + offset, 0, nb + 1) truncated to int32: a monotone non-decreasing function
    of x (every rounding step is monotone), so bucket(a) < bucket(b) implies a < b. Correctness
    needs nothing else; scale/offset only decide which values share a bucket."""
    t = np.multiply(x, scale, dtype=x.dtype)
    np.add(t, offset, out=t)
    np.clip(t, 0, nb + 1, out=t)
    return t.astype(np.int32)


def neg_counts(neg: np.ndarray, q: np.ndarray, top: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """lt[i] = #(neg < q[i]) and le[i] = #(neg <= q[i]), int64, exact. ``q`` has neg's dtype.

    With ``top``, exactness is only promised for queries with fewer than ``top`` normal values
    above them; for the others lt = le = an upper bound of #(neg <= q) that still leaves at least
    ``top`` values above (enough for a PRO curve cut at FPR = top / n, where they contribute 0).

    Large inputs: a monotone bucket index (``nb`` buckets spread over the range where normal values
    and queries overlap, one bucket below and one above it) gives a histogram of the normal values
    in one pass; only the normal values in buckets that also hold a query are sorted and compared
    exactly; the others are counted by bucket (a value in a lower bucket is smaller, in a higher
    one larger)."""
    n = neg.size
    q = np.asarray(q, dtype=neg.dtype)
    if n <= SMALL_SORT_LIMIT or q.size * 8 > n or q.size == 0:
        return sorted_counts(np.sort(neg), q, 0)
    lo, hi = max(neg.min(), q.min()), min(neg.max(), q.max())
    nb = int(min(max(n * BUCKETS_PER_VALUE, 1 << 10), MAX_BUCKETS))
    bucketed = None
    if hi > lo:
        for work in (neg.dtype, np.dtype(np.float64)):
            with np.errstate(over="ignore", invalid="ignore"):
                scale = np.asarray(nb / (float(hi) - float(lo)), dtype=work)
                offset = np.asarray(1.0 - float(lo) * float(scale), dtype=work)
                ext = np.asarray(max(abs(float(neg.min())), abs(float(neg.max())), abs(float(q.min())),
                                     abs(float(q.max()))), dtype=work) * scale
            if np.isfinite(scale) and np.isfinite(offset) and np.isfinite(ext):
                bucketed = (work, scale, offset)
                break
    if bucketed is None:  # no overlap, a single value, or a range that overflows: sort
        return sorted_counts(np.sort(neg), q, 0)
    work, scale, offset = bucketed
    bn = bucket(neg.astype(work, copy=False), scale, offset, nb)
    bq = bucket(q.astype(work, copy=False), scale, offset, nb)
    hist = torch.bincount(torch.from_numpy(bn), minlength=nb + 2).numpy()  # faster than np.bincount
    mixed = np.zeros(hist.size, dtype=bool)
    far = None
    if top is not None:  # queries with >= top normal values in higher buckets: no exact count needed
        above = np.zeros(hist.size + 1, dtype=np.int64)
        np.cumsum(hist[::-1], out=above[1:])
        n_above = above[hist.size - 1 - bq]  # normal values in buckets > bq
        far = n_above >= top
        mixed[bq[~far]] = True
    else:
        mixed[bq] = True
    # normal values sharing a bucket with some query: resolved exactly (take(flatnonzero) is ~3x
    # faster than boolean indexing at this selectivity)
    nz = neg.take(np.flatnonzero(mixed[bn]))
    nz.sort()
    below = np.zeros(hist.size + 1, dtype=np.int64)  # unsorted normal values in lower buckets
    np.cumsum(np.where(mixed, 0, hist), out=below[1:])
    if far is None or not far.any():
        return sorted_counts(nz, q, below[bq])
    lt = np.empty(q.size, np.int64)
    le = np.empty(q.size, np.int64)
    near = np.flatnonzero(~far)
    lt[near], le[near] = sorted_counts(nz, q[near], below[bq[near]])
    lt[far] = le[far] = n - n_above[far]
    return lt, le


def sorted_counts(s: np.ndarray, q: np.ndarray, base) -> tuple[np.ndarray, np.ndarray]:
    """base + (#(s < q), #(s <= q)) for ascending ``s``; the second from the first by walking over
    ties (few in practice), falling back to a second binary search when ties run long."""
    lt = np.searchsorted(s, q, "left")
    le = lt.copy()
    for _ in range(4):
        inb = le < s.size
        idx = np.flatnonzero(inb)
        eq = s[le[idx]] == q[idx]
        if not eq.any():
            break
        le[idx[eq]] += 1
    else:
        le = np.searchsorted(s, q, "right")
    return (base + lt).astype(np.int64), (base + le).astype(np.int64)


def groups(sorted_vals: np.ndarray) -> np.ndarray:
    """Start indices of the runs of equal values in an ascending array."""
    if sorted_vals.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])


class Ranked:
    """Positives sorted ascending (with optional weights) and their exact ranks among negatives."""

    def __init__(self, neg: np.ndarray, pos: np.ndarray, w: np.ndarray | None = None,
                 extra_q: np.ndarray | None = None):
        """``extra_q``: more query values (e.g. PRO-MuSc thresholds) ranked in the same pass."""
        self.n = int(neg.size)
        self.p = int(pos.size)
        order = np.argsort(pos) if w is not None else None  # order within ties is irrelevant
        self.pos = pos[order] if order is not None else np.sort(pos)
        self.w = w[order] if order is not None else None
        q = self.pos if extra_q is None else np.concatenate([self.pos, extra_q.astype(pos.dtype)])
        lt, le = neg_counts(neg, q)
        self.lt, self.le = lt[: self.p], le[: self.p]
        self.extra_lt, self.extra_le = lt[self.p:], le[self.p:]

    def auroc(self) -> float:
        if self.p == 0 or self.n == 0:
            return float("nan")
        twice_u = int(self.lt.sum()) + int(self.le.sum())  # exact integer Mann-Whitney * 2
        return twice_u / (2.0 * self.p * self.n)

    def _curve(self):
        """At each distinct positive value v (descending order irrelevant): TP(>= v), FP(>= v), ties."""
        g = groups(self.pos)
        tp = (self.p - g).astype(np.float64)
        fp = (self.n - self.lt[g]).astype(np.float64)
        cnt = np.diff(np.r_[g, self.p]).astype(np.float64)
        return tp, fp, cnt, g

    def average_precision(self) -> float:
        if self.p == 0:
            return float("nan")
        tp, fp, cnt, _ = self._curve()
        return float(np.sum(cnt * (tp / (tp + fp))) / self.p)

    def f1_max(self) -> tuple[float, float]:
        """(max F1, threshold t: `score >= t` reaches it)."""
        if self.p == 0:
            return float("nan"), float("nan")
        tp, fp, _, g = self._curve()
        f1 = 2.0 * tp / (tp + fp + self.p)
        k = int(np.argmax(f1))
        return float(f1[k]), float(self.pos[g[k]])

    def pro_area(self, fpr_limit: float) -> float:
        return pro_area(self.n, self.lt, self.le, self.w, fpr_limit)


def pro_area(n: int, lt: np.ndarray, le: np.ndarray, w: np.ndarray, fpr_limit: float) -> float:
    """Area (FPR x mean region overlap) under anomalib's PRO polyline up to FPR = fpr_limit, times
    n * sum(w). Per positive of weight w with a = #(neg > p) and e = #(neg == p), its overlap rises
    from 0 at F = a to w at F = a + e (a ramp over the tied negatives, a step if e = 0), so its area
    up to F_lim is w * ramp_integral(F_lim)."""
    f_lim = min(fpr_limit, 1.0) * n
    a = (n - le).astype(np.float64)
    e = (le - lt).astype(np.float64)
    x = f_lim - a  # distance past the start of the ramp
    area = np.where(x <= 0, 0.0, np.where(x >= e, x - 0.5 * e, 0.5 * x * x / np.where(e > 0, e, 1.0)))
    return float(np.dot(w, area))
