"""Range-based PR AUC and VUS-PR (Paparrizos et al., "Volume Under the Surface", PVLDB 2022), as
aeon 1.6.0 defines them (``aeon.benchmarking.metrics.anomaly_detection.range_pr_auc_score`` and
``range_pr_vus_score``: labels extended by ``buffer_size // 2`` square-root slopes on both sides of
each anomaly, 250 thresholds sampled uniformly from the sorted scores, an existence reward per
anomaly range), vectorised over thresholds: O(T log T) per buffer size instead of aeon's
O(250 T). Checked against aeon in ``tests/timeseries/test_metrics.py``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["range_pr_auc", "vus_pr"]


def _check(labels, scores, fn: str):
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{fn}: labels and scores must have the same length, got {y.shape[0]} and {s.shape[0]}")
    if not np.isfinite(s).all():
        raise ValueError(f"{fn}: scores hold NaN or Inf")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{fn}: labels must be 0/1")
    if y.sum() == 0:
        raise ValueError(f"{fn}: labels hold no anomaly (the metric is undefined)")
    return y.astype(np.float64), s


def _bounds(y: np.ndarray):
    d = np.diff(np.r_[0, (y > 0).astype(np.int8), 0])
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)  # starts, ends (exclusive)


def _extend(y: np.ndarray, buffer_size: int):
    starts, ends = _bounds(y)
    if buffer_size <= 1:
        return y.copy(), starts, ends - 1
    yc = y.copy()
    half, T = buffer_size // 2, y.shape[0]
    for s, e in zip(starts, ends - 1):
        x1 = np.arange(e, min(e + half, T))
        yc[x1] += np.sqrt(1 - (x1 - e) / buffer_size)
        x2 = np.arange(max(s - half, 0), s)
        yc[x2] += np.sqrt(1 - (s - x2) / buffer_size)
    yc = np.clip(yc, 0, 1)
    s2, e2 = _bounds(yc)
    return yc, s2, e2 - 1


def _prep(s: np.ndarray):
    """Scores sorted descending (their order), aeon's 250 thresholds and, per threshold, the number
    of scores >= it."""
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    thr = s_sorted[np.linspace(0, s.shape[0] - 1, 250, dtype=np.int_)]
    counts = np.searchsorted(-s_sorted, -thr, side="right")
    return order, thr, counts


def _pr_auc(y, yc, rs, re, s, order, thr, counts) -> float:
    """PR AUC for one buffer size (extended labels ``yc``, ranges ``[rs, re]`` inclusive)."""
    p = (y.sum() + yc.sum()) / 2
    tp = np.cumsum(yc[order])[counts - 1]
    # existence reward: a range is hit at threshold t when its largest score is >= t
    rmax = np.array([s[a : b + 1].max() for a, b in zip(rs, re)])
    hits = (rmax[None, :] >= thr[:, None]).sum(1) / len(rs)
    recall = np.minimum(tp / p, 1) * hits
    precision = tp / counts
    recalls = np.r_[0.0, recall, 1.0]
    precisions = np.r_[1.0, precision]
    return float(np.sum((recalls[1:-1] - recalls[:-2]) * (precisions[1:] + precisions[:-1]) / 2))


def range_pr_auc(labels, scores, buffer_size: int | None = None) -> float:
    """Range-based PR AUC (aeon's ``range_pr_auc_score``); ``buffer_size=None``: the median anomaly
    length. ``labels``: 0/1 per point; ``scores``: per point, higher = more anomalous."""
    y, s = _check(labels, scores, "range_pr_auc")
    if np.unique(s).shape[0] == 1:
        return 0.0
    if buffer_size is None:
        st, en = _bounds(y)
        buffer_size = int(np.median(en - st))
    yc, rs, re = _extend(y, int(buffer_size))
    return _pr_auc(y, yc, rs, re, s, *_prep(s))


def vus_pr(labels, scores, max_buffer_size: int = 500) -> float:
    """VUS-PR: the mean of :func:`range_pr_auc` over buffer sizes ``0 .. max_buffer_size`` (aeon's
    ``range_pr_vus_score``); 0.0 for a constant score, as aeon."""
    y, s = _check(labels, scores, "vus_pr")
    if np.unique(s).shape[0] == 1:
        return 0.0
    pre = _prep(s)
    tot = 0.0
    for b in range(int(max_buffer_size) + 1):
        yc, rs, re = _extend(y, b)
        tot += _pr_auc(y, yc, rs, re, s, *pre)
    return tot / (max_buffer_size + 1)
