"""Exact, fast, streaming anomaly-detection metrics (image and pixel level).

Functions (scores higher = more anomalous; labels/masks binary, 1 = anomalous):

==========================  =========================================================================
``auroc``                   area under the ROC curve; equals ``sklearn.metrics.roc_auc_score``
``average_precision``       equals ``sklearn.metrics.average_precision_score``
``f1_max``                  max F1 over the precision-recall curve's thresholds (anomalib ``F1Max``,
                            MuSc's "max of the finite F1 values")
``aupro``                   area under the per-region-overlap curve up to ``fpr_limit`` divided by
                            ``fpr_limit``, exactly as anomalib 2.7 ``AUPRO`` computes it
``pro_musc``                MuSc's PRO (``utils/metrics.py::cal_pro_score``): 200 thresholds, FPR < 0.3,
                            min-max rescaled FPR axis
``PixelMetrics``            streaming accumulator over (map, mask) batches -> all pixel metrics
``ImageMetrics``            streaming accumulator over (score, label) batches -> image metrics
``f1_optimal_threshold``    threshold maximising F1 on a validation set (``score >= t`` = anomalous)
``normal_quantile_threshold``  a quantile of normal scores
``binarize``                ``scores >= threshold``
==========================  =========================================================================

**aupro vs pro_musc (name them apart).** Both average, over the ground-truth regions (8-connected
components of each image's mask), the fraction of the region above a threshold, against the global
false-positive rate of the normal pixels.

* ``aupro`` (anomalib 2.7, ``anomalib/metrics/aupro.py``): one curve point per distinct score (every
  threshold), cut at FPR = ``fpr_limit`` with linear interpolation of the last segment, trapezoidal
  area divided by ``fpr_limit``. The curve's points with tied scores form one diagonal segment.
* ``pro_musc`` (MuSc ``utils/metrics.py``, after cflow-ad): thresholds ``np.arange(min, max, (max -
  min) / 200)`` over all maps, a pixel counts when ``score > threshold``, keep points with FPR <
  ``fpr_limit`` (strictly, no interpolation), rescale those FPRs to [0, 1] by their own min and max,
  trapezoidal area. It is coarser (200 points) and its normalisation differs: on the same maps the two
  differ (e.g. 0.8274 vs 0.8255).

**How it is exact and fast.** Every metric here is a function of, for each anomalous pixel/image
``p``, the counts ``#(normal < p)`` and ``#(normal <= p)`` (plus per-region weights for PRO): AUROC is
the Mann-Whitney statistic (ties count 1/2, which is what the trapezoidal ROC area gives); AP and
F1-max need the curve only at distinct anomalous scores (between them, only false positives grow,
which adds nothing to AP and only lowers F1); the area under anomalib's PRO polyline up to the FPR cut
is, per anomalous pixel, the integral of a ramp (closed form below, ``_pro_area``). Those counts are
found without sorting the normal pixels: a monotone bucket index (``floor((x - lo) * scale)``, monotone
in ``x`` under any rounding) gives a histogram in one pass; only the normal pixels that share a bucket
with some anomalous score are sorted and compared exactly. Counts are int64 and sums float64.

**Streaming and memory.** ``PixelMetrics.update`` labels the mask's connected components at once
and keeps only the normal pixels' scores (one float32 per pixel for float32 maps: less than map +
mask) and the anomalous pixels' scores and region weights; no maps or masks are kept. Exactness
needs the values themselves (two normal pixels whose scores differ in the last bit can be separated
by an anomalous one), so the state grows with the number of pixels; no quantisation is done.

Undefined cases: with no positive or no negative, ``auroc``/``average_precision``/``f1_max`` return
``nan`` with a ``UndefinedMetricWarning``; ``aupro`` returns 0.0 like anomalib (no region, or no
normal pixel) with the same warning; ``pro_musc`` returns ``nan`` with the warning when MuSc's formula
is undefined (no region, no normal pixel, constant maps, fewer than two thresholds with FPR below the
limit). Invalid input (NaN/inf scores, non-binary labels, mismatched shapes, empty input) raises
``ValueError`` naming the function and the argument.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

__all__ = [
    "UndefinedMetricWarning",
    "auroc",
    "average_precision",
    "f1_max",
    "aupro",
    "pro_musc",
    "PixelMetrics",
    "ImageMetrics",
    "f1_optimal_threshold",
    "normal_quantile_threshold",
    "binarize",
]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on this input (e.g. only one class present)."""


# Below this many normal values the counts come from a plain sort; above it, from the bucket
# histogram (see `_neg_counts`). Measured in benchmarks/bench_metrics.py: the histogram path wins
# from ~10^5 values on.
SMALL_SORT_LIMIT = 1 << 16
# Buckets per normal value for the histogram path (fewer buckets = more values to sort exactly,
# more buckets = a larger histogram); clamped to [2^10, 2^22].
BUCKETS_PER_VALUE = 0.25

# 8-connectivity within an image (3x3 ones), as anomalib (cv2.connectedComponents default) and MuSc
# (skimage.measure.label default for 2-D) label regions; no connection across images.
_STRUCTURE_2D = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def _to_numpy(x: Any, fn: str, arg: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"fastad.metrics.{fn}: {arg} must be a tensor or array-like, got {type(x).__name__}") from e


def _scores(x: Any, fn: str, arg: str) -> np.ndarray:
    """Scores as a float32/float64 array; rejects NaN/inf and non-numeric dtypes."""
    a = _to_numpy(x, fn, arg)
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


def _binary(x: Any, fn: str, arg: str) -> np.ndarray:
    """Labels/masks as a bool array; only 0/1 (or False/True) allowed."""
    a = _to_numpy(x, fn, arg)
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


def _pair(scores: Any, labels: Any, fn: str, sname: str = "scores", lname: str = "labels"):
    s = _scores(scores, fn, sname)
    y = _binary(labels, fn, lname)
    if s.shape != y.shape:
        raise ValueError(f"fastad.metrics.{fn}: {sname} and {lname} must have the same shape, got "
                         f"{tuple(s.shape)} and {tuple(y.shape)}")
    if s.size == 0:
        raise ValueError(f"fastad.metrics.{fn}: empty input ({sname} has shape {tuple(s.shape)})")
    return s, y


def _maps_masks(maps: Any, masks: Any, fn: str):
    """Maps [H, W] or [B, H, W] or [B, 1, H, W] (any leading dims) -> float [B, H, W], bool [B, H, W]."""
    s, y = _pair(maps, masks, fn, "maps", "masks")
    if s.ndim < 2:
        raise ValueError(f"fastad.metrics.{fn}: maps must have at least 2 dims [..., H, W], got shape {tuple(s.shape)}")
    h, w = s.shape[-2:]
    return s.reshape(-1, h, w), y.reshape(-1, h, w)


def _warn(msg: str) -> None:
    warnings.warn(msg, UndefinedMetricWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# core: exact counts of normal values below / at each query
# ----------------------------------------------------------------------------------------------
def _bucket(x: np.ndarray, scale, offset, nb: int) -> np.ndarray:
    """clip(x * scale + offset, 0, nb + 1) truncated to int32: a monotone non-decreasing function
    of x (every rounding step is monotone), so bucket(a) < bucket(b) implies a < b. Correctness
    needs nothing else; scale/offset only decide which values share a bucket."""
    t = np.multiply(x, scale, dtype=x.dtype)
    np.add(t, offset, out=t)
    np.clip(t, 0, nb + 1, out=t)
    return t.astype(np.int32)


def _neg_counts(neg: np.ndarray, q: np.ndarray, top: float | None = None) -> tuple[np.ndarray, np.ndarray]:
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
        return _sorted_counts(np.sort(neg), q, 0)
    if top is not None and top < 0.8 * n:
        # Only the top `top` normal values need resolving: keep the normal values above an estimate
        # of that cut (a quantile of a strided sample, with a margin) and count the rest. If the
        # estimate kept fewer than `top`, fall through to the full computation.
        sample = neg[:: max(1, n // 65536)]
        k = int(sample.size * max(0.0, 1.0 - top / n - 0.02))
        cut = np.partition(sample, k)[k]
        cand = neg.take(np.flatnonzero(neg >= cut))
        if top <= cand.size < 0.9 * n:
            # a query below `cut` has all of `cand` (>= top values) above it: it gets le = n_low,
            # an upper bound of #(neg <= q) that leaves cand.size >= top above, as promised
            lt, le = _neg_counts(cand, q, top)
            n_low = n - cand.size
            return lt + n_low, le + n_low
    lo, hi = max(neg.min(), q.min()), min(neg.max(), q.max())
    nb = int(min(max(n * BUCKETS_PER_VALUE, 1 << 10), 1 << 22))
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
        return _sorted_counts(np.sort(neg), q, 0)
    work, scale, offset = bucketed
    bn = _bucket(neg.astype(work, copy=False), scale, offset, nb)
    bq = _bucket(q.astype(work, copy=False), scale, offset, nb)
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
        return _sorted_counts(nz, q, below[bq])
    lt = np.empty(q.size, np.int64)
    le = np.empty(q.size, np.int64)
    near = np.flatnonzero(~far)
    lt[near], le[near] = _sorted_counts(nz, q[near], below[bq[near]])
    lt[far] = le[far] = n - n_above[far]
    return lt, le


def _sorted_counts(s: np.ndarray, q: np.ndarray, base) -> tuple[np.ndarray, np.ndarray]:
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


def _groups(sorted_vals: np.ndarray) -> np.ndarray:
    """Start indices of the runs of equal values in an ascending array."""
    if sorted_vals.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])


class _Ranked:
    """Positives sorted ascending (with optional weights) and their exact ranks among negatives."""

    def __init__(self, neg: np.ndarray, pos: np.ndarray, w: np.ndarray | None = None,
                 extra_q: np.ndarray | None = None, top: float | None = None):
        """``top``: only PRO up to that many false positives is needed (see `_neg_counts`); then
        only `pro_area` is valid."""
        self.n = int(neg.size)
        self.p = int(pos.size)
        order = np.argsort(pos) if w is not None else None  # order within ties is irrelevant
        self.pos = pos[order] if order is not None else np.sort(pos)
        self.w = w[order] if order is not None else None
        q = self.pos if extra_q is None else np.concatenate([self.pos, extra_q.astype(pos.dtype)])
        lt, le = _neg_counts(neg, q, top)
        self.lt, self.le = lt[: self.p], le[: self.p]
        self.extra_lt, self.extra_le = lt[self.p:], le[self.p:]

    def auroc(self) -> float:
        if self.p == 0 or self.n == 0:
            return float("nan")
        twice_u = int(self.lt.sum()) + int(self.le.sum())  # exact integer Mann-Whitney * 2
        return twice_u / (2.0 * self.p * self.n)

    def _curve(self):
        """At each distinct positive value v (descending order irrelevant): TP(>= v), FP(>= v), ties."""
        g = _groups(self.pos)
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
        """Area (FPR x mean region overlap) under anomalib's PRO polyline up to FPR = fpr_limit,
        times n * sum(w). Per positive of weight w with a = #(neg > p) and e = #(neg == p), its
        overlap rises from 0 at F = a to w at F = a + e (a ramp over the tied negatives, a step if
        e = 0), so its area up to F_lim is w * ramp_integral(F_lim)."""
        f_lim = min(fpr_limit, 1.0) * self.n
        a = (self.n - self.le).astype(np.float64)
        e = (self.le - self.lt).astype(np.float64)
        x = f_lim - a  # distance past the start of the ramp
        area = np.where(x <= 0, 0.0,
                        np.where(x >= e, x - 0.5 * e, 0.5 * x * x / np.where(e > 0, e, 1.0)))
        return float(np.dot(self.w, area))


# ----------------------------------------------------------------------------------------------
# image/pixel scalar metrics
# ----------------------------------------------------------------------------------------------
def _ranked_pair(scores, labels, fn):
    s, y = _pair(scores, labels, fn)
    s, y = s.ravel(), y.ravel()
    r = _Ranked(s[~y], s[y])
    if r.p == 0 or r.n == 0:
        _warn(f"fastad.metrics.{fn}: only one class present in labels ({r.p} positive, {r.n} negative); returning nan")
    return r


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve, exact with ties (equals ``sklearn.metrics.roc_auc_score``).

    Args:
        scores: ``Tensor[N]`` or any shape (flattened; pixel level: maps ``[B, H, W]``), higher = anomalous.
        labels: same shape, binary (0/1 or bool), 1 = anomalous.

    Returns:
        float; ``nan`` (with ``UndefinedMetricWarning``) when only one class is present.

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    return _ranked_pair(scores, labels, "auroc").auroc()


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision, ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds (equals
    ``sklearn.metrics.average_precision_score``). Shapes as :func:`auroc`; ``nan`` without positives.

    Example:
        >>> round(average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])), 4)
        0.8333
    """
    return _ranked_pair(scores, labels, "average_precision").average_precision()


def f1_max(scores: Any, labels: Any) -> float:
    """Maximum F1 over the precision-recall curve's thresholds (``score >= t``), as anomalib's
    ``F1Max`` (which adds 1e-10 to the denominator) and MuSc (max of the finite F1 values) compute it.
    Shapes as :func:`auroc`; ``nan`` without positives.

    Example:
        >>> f1_max(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.8
    """
    return _ranked_pair(scores, labels, "f1_max").f1_max()[0]


# ----------------------------------------------------------------------------------------------
# per-region overlap
# ----------------------------------------------------------------------------------------------
def _split_regions(maps: np.ndarray, masks: np.ndarray):
    """-> (normal scores, anomalous scores, their region weights 1/|region|, number of regions).
    Regions: 8-connected components of each image's mask (never across images)."""
    from scipy import ndimage

    flat_s, flat_m = maps.reshape(-1), masks.reshape(-1)
    neg = flat_s[~flat_m]
    pos = flat_s[flat_m]
    if pos.size == 0:
        return neg, pos, np.zeros(0), 0
    labs, nreg = [], 0
    for m in masks[masks.reshape(masks.shape[0], -1).any(axis=1)]:
        rows = np.flatnonzero(m.any(axis=1))  # label the mask's bounding box only
        cols = np.flatnonzero(m.any(axis=0))
        crop = m[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        lab, k = ndimage.label(crop, structure=_STRUCTURE_2D)
        labs.append(lab[crop] + nreg)  # row-major within the image: the order of `pos`
        nreg += k
    lab = np.concatenate(labs)
    sizes = np.bincount(lab, minlength=nreg + 1).astype(np.float64)
    sizes[0] = 1.0
    w = 1.0 / sizes[lab]
    return neg, pos, w, int(nreg)


def _aupro_from(r: _Ranked, nreg: int, fpr_limit: float) -> float:
    if nreg == 0 or r.n == 0:
        _warn(f"fastad.metrics.aupro: {'no anomalous region' if nreg == 0 else 'no normal pixel'} in masks; "
              "returning 0.0 as anomalib does")
        return 0.0
    area = r.pro_area(fpr_limit) / (r.n * nreg)
    return area / min(fpr_limit, 1.0)


def _check_fpr_limit(fpr_limit: float, fn: str) -> float:
    fpr_limit = float(fpr_limit)
    if not fpr_limit > 0:
        raise ValueError(f"fastad.metrics.{fn}: fpr_limit must be > 0, got {fpr_limit}")
    return fpr_limit


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve, as anomalib 2.7 ``AUPRO`` computes it.

    The curve: for every distinct score threshold (``score >= t``), x = FPR over all normal pixels,
    y = mean over all regions (8-connected components of each image's mask) of the fraction of the
    region's pixels above the threshold. The area up to x = ``fpr_limit`` (last segment linearly
    interpolated) is divided by ``fpr_limit``. anomalib returns 0.0 when there is no region or no
    normal pixel; so does this (with ``UndefinedMetricWarning``).

    Note: anomalib casts maps to float32 and accumulates in float32; this computes in the maps' own
    precision (float64 maps are not rounded) with int64 counts and float64 sums.

    Args:
        maps: ``Tensor[B, H, W]`` (or ``[H, W]``, ``[B, 1, H, W]``) anomaly maps.
        masks: same shape, binary ground truth.
        fpr_limit: FPR cut, default 0.3.

    Example:
        >>> m = torch.zeros(1, 8, 8); m[0, 2:4, 2:4] = 1
        >>> aupro(m * 0.5 + 0.1, m)
        1.0
    """
    fpr_limit = _check_fpr_limit(fpr_limit, "aupro")
    s, y = _maps_masks(maps, masks, "aupro")
    neg, pos, w, nreg = _split_regions(s, y)
    # anomalous pixels with >= fpr_limit * n normal pixels above them add nothing: skip their exact ranks
    top = math.ceil(min(fpr_limit, 1.0) * neg.size) + 1
    return _aupro_from(_Ranked(neg, pos, w, top=top), nreg, fpr_limit)


def _musc_thresholds(lo: np.generic, hi: np.generic, num_thresholds: int) -> np.ndarray:
    """MuSc's thresholds: ``np.arange(min, max, (max - min) / num_thresholds)`` with the maps' dtype
    scalars (np.arange returns float64 here, and the comparison ``map > th`` runs in float64)."""
    delta = (hi - lo) / num_thresholds
    return np.arange(lo, hi, delta)


def _round_down_to(th: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Largest value of ``dtype`` <= th (so that ``x > th`` == ``x > result`` for x of that dtype)."""
    t = th.astype(dtype)
    over = t.astype(np.float64) > th
    t[over] = np.nextafter(t[over], dtype.type(-np.inf))
    return t


def _pro_musc_from(neg, pos, w, nreg, lo, hi, num_thresholds, fpr_limit, r: _Ranked | None = None):
    if nreg == 0 or neg.size == 0 or not hi > lo:
        why = "no anomalous region" if nreg == 0 else ("no normal pixel" if neg.size == 0 else "constant maps")
        _warn(f"fastad.metrics.pro_musc: {why}; MuSc's PRO is undefined, returning nan")
        return float("nan")
    ths = _musc_thresholds(lo, hi, num_thresholds)
    q = _round_down_to(ths, neg.dtype)
    if r is None:
        r = _Ranked(neg, pos, w, extra_q=q)
    n = neg.size
    fprs = (n - r.extra_le) / n  # #(normal > th) / #normal
    # mean over regions of the fraction above th = sum of 1/|region| over positives > th, / nreg
    cw = np.r_[0.0, np.cumsum(r.w)]
    pros = (cw[-1] - cw[np.searchsorted(r.pos, q, "right")]) / nreg
    keep = fprs < fpr_limit
    f, p = fprs[keep], pros[keep]
    if f.size < 2 or not f.max() > f.min():
        _warn("fastad.metrics.pro_musc: fewer than two distinct FPR values below the limit; returning nan")
        return float("nan")
    f = (f - f.min()) / (f.max() - f.min())
    return float(abs(np.sum(np.diff(f) * (p[1:] + p[:-1]) * 0.5)))  # FPR is monotone: trapezoid


def pro_musc(maps: Any, masks: Any, num_thresholds: int = 200, fpr_limit: float = 0.3) -> float:
    """PRO as MuSc's evaluation computes it (``utils/metrics.py::cal_pro_score``, from cflow-ad).

    Thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` over all maps (200 or 201 of
    them, as np.arange rounds); at each, a pixel is predicted anomalous when ``score > th``; y = mean
    over all regions (8-connected components of each mask) of the region's fraction predicted
    anomalous, x = FPR over normal pixels. Keep the points with FPR < ``fpr_limit``, rescale their
    FPRs to [0, 1] by their min and max (not divide by the limit), trapezoidal area. Differs from
    :func:`aupro` (see the module docstring). ``nan`` where MuSc's formula is undefined.

    Args:
        maps: ``Tensor[B, H, W]`` (or ``[H, W]``, ``[B, 1, H, W]``) anomaly maps.
        masks: same shape, binary ground truth.
    """
    fpr_limit = _check_fpr_limit(fpr_limit, "pro_musc")
    s, y = _maps_masks(maps, masks, "pro_musc")
    neg, pos, w, nreg = _split_regions(s, y)
    return _pro_musc_from(neg, pos, w, nreg, s.min(), s.max(), int(num_thresholds), fpr_limit)


# ----------------------------------------------------------------------------------------------
# streaming accumulators
# ----------------------------------------------------------------------------------------------
class PixelMetrics:
    """Streaming pixel metrics: ``update(maps, masks)`` batch by batch, then ``compute()``.

    Exact: ``compute()`` equals :func:`auroc`, :func:`average_precision`, :func:`f1_max`,
    :func:`aupro` and :func:`pro_musc` on the concatenated maps. Each update labels the batch's
    regions and keeps the normal pixels' scores and the anomalous pixels' scores and region weights
    (no maps, no masks): one score per pixel (4 bytes for float32 maps) plus 8 bytes per anomalous
    pixel.

    Args:
        fpr_limit: FPR cut for ``aupro`` and ``pro_musc`` (default 0.3).
        pro_thresholds: number of thresholds for ``pro_musc`` (default 200).

    Example:
        >>> pm = PixelMetrics()
        >>> for maps, masks in batches:  # doctest: +SKIP
        ...     pm.update(maps, masks)
        >>> pm.compute()  # doctest: +SKIP
        {'pixel_auroc': ..., 'pixel_ap': ..., 'pixel_f1_max': ..., 'aupro': ..., 'pro_musc': ...}
    """

    def __init__(self, fpr_limit: float = 0.3, pro_thresholds: int = 200):
        self.fpr_limit = _check_fpr_limit(fpr_limit, "PixelMetrics")
        self.pro_thresholds = int(pro_thresholds)
        self.reset()

    def reset(self) -> None:
        self._neg: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._w: list[np.ndarray] = []
        self._nreg = 0
        self._lo = None
        self._hi = None
        self._shape = None

    def update(self, maps: Any, masks: Any) -> None:
        """Add a batch: maps ``Tensor[B, H, W]`` (or ``[H, W]``, ``[B, 1, H, W]``), masks same shape, binary."""
        s, y = _maps_masks(maps, masks, "PixelMetrics.update")
        neg, pos, w, nreg = _split_regions(s, y)
        self._neg.append(neg.copy())
        self._pos.append(pos.copy())
        self._w.append(w)
        self._nreg += nreg
        lo, hi = s.min(), s.max()
        self._lo = lo if self._lo is None else min(self._lo, lo)
        self._hi = hi if self._hi is None else max(self._hi, hi)

    def compute(self) -> dict[str, float]:
        """-> {'pixel_auroc', 'pixel_ap', 'pixel_f1_max', 'aupro', 'pro_musc'} as Python floats."""
        if not self._neg:
            raise ValueError("fastad.metrics.PixelMetrics.compute: no data; call update() first")
        neg = np.concatenate(self._neg)
        pos = np.concatenate(self._pos).astype(neg.dtype, copy=False)
        w = np.concatenate(self._w)
        if pos.dtype != neg.dtype:  # mixed dtypes across updates
            dt = np.result_type(neg, pos)
            neg, pos = neg.astype(dt), pos.astype(dt)
        lo, hi = np.asarray(self._lo, neg.dtype)[()], np.asarray(self._hi, neg.dtype)[()]
        extra = _round_down_to(_musc_thresholds(lo, hi, self.pro_thresholds), neg.dtype) if hi > lo else None
        r = _Ranked(neg, pos, w, extra_q=extra)
        if r.p == 0 or r.n == 0:
            _warn(f"fastad.metrics.PixelMetrics: only one class present ({r.p} anomalous, {r.n} normal pixels)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # warned once above
            out = {
                "pixel_auroc": r.auroc(),
                "pixel_ap": r.average_precision(),
                "pixel_f1_max": r.f1_max()[0],
                "aupro": _aupro_from(r, self._nreg, self.fpr_limit),
                "pro_musc": _pro_musc_from(neg, pos, w, self._nreg, lo, hi, self.pro_thresholds,
                                           self.fpr_limit, r=r if extra is not None else None),
            }
        return out


class ImageMetrics:
    """Streaming image-level metrics: ``update(scores, labels)`` then ``compute()`` ->
    ``{'image_auroc', 'image_ap', 'image_f1_max', 'f1_threshold'}`` (``f1_threshold``: scores
    ``>=`` it are called anomalous at the F1-max point)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._s: list[np.ndarray] = []
        self._y: list[np.ndarray] = []

    def update(self, scores: Any, labels: Any) -> None:
        """Add ``Tensor[N]`` scores and ``Tensor[N]`` binary labels."""
        s, y = _pair(scores, labels, "ImageMetrics.update")
        self._s.append(s.ravel().copy())
        self._y.append(y.ravel().copy())

    def compute(self) -> dict[str, float]:
        if not self._s:
            raise ValueError("fastad.metrics.ImageMetrics.compute: no data; call update() first")
        s, y = np.concatenate(self._s), np.concatenate(self._y)
        r = _Ranked(s[~y], s[y])
        if r.p == 0 or r.n == 0:
            _warn(f"fastad.metrics.ImageMetrics: only one class present ({r.p} anomalous, {r.n} normal images)")
        f1, t = r.f1_max()
        return {"image_auroc": r.auroc(), "image_ap": r.average_precision(), "image_f1_max": f1, "f1_threshold": t}


# ----------------------------------------------------------------------------------------------
# thresholds for detectors (`threshold_`)
# ----------------------------------------------------------------------------------------------
def f1_optimal_threshold(scores: Any, labels: Any) -> float:
    """The threshold ``t`` (one of the anomalous scores) such that ``scores >= t`` maximises F1 on a
    labelled validation set (anomalib's ``F1AdaptiveThreshold`` picks the same point). Raises
    ``ValueError`` without anomalous examples.

    Example:
        >>> f1_optimal_threshold(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.3499999940395355
    """
    r = _ranked_pair(scores, labels, "f1_optimal_threshold")
    if r.p == 0:
        raise ValueError("fastad.metrics.f1_optimal_threshold: labels contain no anomalous example")
    return r.f1_max()[1]


def normal_quantile_threshold(normal_scores: Any, q: float = 0.99) -> float:
    """``np.quantile(normal_scores, q)`` (linear interpolation): with :func:`binarize`, about a
    fraction ``1 - q`` of normal data is flagged. For unlabelled settings (only normal data).

    Example:
        >>> normal_quantile_threshold(torch.arange(101.0), 0.99)
        99.0
    """
    s = _scores(normal_scores, "normal_quantile_threshold", "normal_scores")
    if s.size == 0:
        raise ValueError("fastad.metrics.normal_quantile_threshold: normal_scores is empty")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"fastad.metrics.normal_quantile_threshold: q must be in [0, 1], got {q}")
    return float(np.quantile(s.ravel().astype(np.float64), q))


def binarize(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """``scores >= threshold`` as a bool tensor on the scores' device (the convention of
    :func:`f1_optimal_threshold`)."""
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    return scores >= threshold
