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
is, per anomalous pixel, the integral of a ramp (closed form below, ``pro_area``). Those counts are
found without sorting the normal pixels: a monotone bucket index (``floor((x - lo) * scale)``, monotone
in ``x`` under any rounding) gives a histogram in one pass; only the normal pixels that share a bucket
with some anomalous score are sorted and compared exactly. Counts are int64 and sums float64.
Two shortcuts stay exact: ``aupro`` only ranks the normal pixels above an estimate of the FPR cut
(an anomalous pixel with more than ``fpr_limit * n`` normal pixels above it adds no area), and
``f1_max`` first looks only at thresholds with few false positives, keeping the result when it
provably bounds every other threshold (F1 <= 2P / (2P + FP)) and computing the whole curve otherwise.

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

from . import ranking  # its tuning knobs (SMALL_SORT_LIMIT, ...) are read there, at call time
from .ranking import (
    Ranked, as_pair, as_scores, groups,
    maps_and_masks, neg_counts, pro_area,
)

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


# 8-connectivity within an image (3x3 ones), as anomalib (cv2.connectedComponents default) and MuSc
# (skimage.measure.label default for 2-D) label regions; no connection across images.
_STRUCTURE_2D = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------


def _warn(msg: str) -> None:
    warnings.warn(msg, UndefinedMetricWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# core: exact counts of normal values below / at each query
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# image/pixel scalar metrics
# ----------------------------------------------------------------------------------------------
def _ranked_pair(scores, labels, fn):
    s, y = as_pair(scores, labels, fn)
    s, y = s.ravel(), y.ravel()
    r = Ranked(s[~y], s[y])
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
    s, y = as_pair(scores, labels, "f1_max")
    flat_s, flat_m = s.reshape(-1), y.reshape(-1)
    pos_idx = np.flatnonzero(flat_m)
    p, n = pos_idx.size, flat_s.size - pos_idx.size
    if p and n:
        # F1 at a threshold with FP false positives is at most 2P / (2P + FP): if the best F1 over
        # the thresholds with FP < top reaches 2P / (2P + top), no other threshold can beat it.
        top = min(8 * p + 1, n)
        got = _top_candidates(flat_s, flat_m, pos_idx, n, top)
        if got is not None:
            cand, cut = got
            pos = np.sort(flat_s.take(pos_idx))
            pos = pos[np.searchsorted(pos, cut, "left"):]  # all positives >= cut
            lt, _ = neg_counts(cand, pos)
            g = groups(pos)
            tp = (pos.size - g).astype(np.float64)
            fp = (cand.size - lt[g]).astype(np.float64)  # normal values >= v, all in cand
            if tp.size:
                best = float(np.max(2.0 * tp / (tp + fp + p)))
                if best >= 2.0 * p / (2.0 * p + top):
                    return best
    return _ranked_pair(scores, labels, "f1_max").f1_max()[0]


# ----------------------------------------------------------------------------------------------
# per-region overlap
# ----------------------------------------------------------------------------------------------
def _top_candidates(flat_s: np.ndarray, flat_m: np.ndarray, pos_idx: np.ndarray, n: int, top: int):
    """The normal values at or above ``cut``, an estimate (a quantile of a strided sample, with a
    margin) of the ``top``-th largest normal value, when that pays off: -> (cand, cut) with
    ``top <= cand.size < 0.9 n``, or None (small input, no saving, or the estimate fell short).
    Any anomalous value below ``cut`` has all of ``cand``, so at least ``top`` normal values, above it."""
    if not (n > ranking.SMALL_SORT_LIMIT and top < 0.8 * n and pos_idx.size * 8 <= n):
        return None
    step = max(1, flat_s.size // 65536)
    sample = flat_s[::step][~flat_m[::step]]
    k = int(sample.size * max(0.0, 1.0 - top / n - 0.02))
    cut = np.partition(sample, k)[k]
    sel = flat_s >= cut
    sel[pos_idx] = False
    cand = flat_s.take(np.flatnonzero(sel))
    return (cand, cut) if top <= cand.size < 0.9 * n else None


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """-> (1/|region| for every anomalous pixel in row-major [B, H, W] order, number of regions).
    Regions: 8-connected components of each image's mask (never across images)."""
    from scipy import ndimage

    labs, nreg = [np.zeros(0, np.int32)], 0
    for m in masks[masks.reshape(masks.shape[0], -1).any(axis=1)]:
        rows = np.flatnonzero(m.any(axis=1))  # label the mask's bounding box only
        cols = np.flatnonzero(m.any(axis=0))
        crop = m[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        lab, k = ndimage.label(crop, structure=_STRUCTURE_2D)
        labs.append(lab[crop] + nreg)  # row-major within the image: the order of the positives
        nreg += k
    lab = np.concatenate(labs)
    sizes = np.bincount(lab, minlength=nreg + 1).astype(np.float64)
    sizes[0] = 1.0
    return 1.0 / sizes[lab], int(nreg)


def _split_regions(maps: np.ndarray, masks: np.ndarray):
    """-> (normal scores, anomalous scores, their region weights 1/|region|, number of regions)."""
    flat_s, flat_m = maps.reshape(-1), masks.reshape(-1)
    neg = flat_s[~flat_m]
    pos = flat_s.take(np.flatnonzero(flat_m))
    w, nreg = _region_weights(masks)
    return neg, pos, w, nreg


def _aupro_from(r, nreg: int, n: int, fpr_limit: float) -> float:
    """``r``: a `Ranked` or (lt, le, w) of the anomalous pixels; n: number of normal pixels."""
    if nreg == 0 or n == 0:
        _warn(f"fastad.metrics.aupro: {'no anomalous region' if nreg == 0 else 'no normal pixel'} in masks; "
              "returning 0.0 as anomalib does")
        return 0.0
    area = (r.pro_area(fpr_limit) if isinstance(r, Ranked) else pro_area(n, *r, fpr_limit)) / (n * nreg)
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
    s, y = maps_and_masks(maps, masks, "aupro")
    flat_s, flat_m = s.reshape(-1), y.reshape(-1)
    pos_idx = np.flatnonzero(flat_m)
    pos = flat_s.take(pos_idx)
    w, nreg = _region_weights(y)
    n = flat_s.size - pos.size
    if nreg == 0 or n == 0:
        return _aupro_from(None, nreg, n, fpr_limit)
    # Anomalous pixels with >= fpr_limit * n normal pixels above them add nothing: only the normal
    # pixels above an estimate of the FPR cut (a quantile of a strided sample, with a margin) need
    # exact ranks; the others are only counted. Exact whatever the estimate (checked below).
    top = math.ceil(min(fpr_limit, 1.0) * n) + 1
    got = _top_candidates(flat_s, flat_m, pos_idx, n, top)
    if got is not None:
        # an anomalous pixel below `cut` has all of `cand` (>= top values) above it: its area is
        # 0 (>= top normal pixels above it), so it is dropped
        cand, cut = got
        near = np.flatnonzero(pos >= cut)
        pos, w = pos.take(near), w.take(near)
        order = np.argsort(pos)  # sorted queries: cache-friendly binary searches
        lt, le = neg_counts(cand, pos.take(order), top)
        n_low = n - cand.size
        return _aupro_from((lt + n_low, le + n_low, w.take(order)), nreg, n, fpr_limit)
    order = np.argsort(pos)
    pos, w = pos.take(order), w.take(order)
    lt, le = neg_counts(flat_s[~flat_m], pos, top)
    return _aupro_from((lt, le, w), nreg, n, fpr_limit)


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


def _pro_musc_from(neg, pos, w, nreg, lo, hi, num_thresholds, fpr_limit, r: Ranked | None = None):
    if nreg == 0 or neg.size == 0 or not hi > lo:
        why = "no anomalous region" if nreg == 0 else ("no normal pixel" if neg.size == 0 else "constant maps")
        _warn(f"fastad.metrics.pro_musc: {why}; MuSc's PRO is undefined, returning nan")
        return float("nan")
    ths = _musc_thresholds(lo, hi, num_thresholds)
    q = _round_down_to(ths, neg.dtype)
    if r is None:
        r = Ranked(neg, pos, w, extra_q=q)
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
    s, y = maps_and_masks(maps, masks, "pro_musc")
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
        s, y = maps_and_masks(maps, masks, "PixelMetrics.update")
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
        r = Ranked(neg, pos, w, extra_q=extra)
        if r.p == 0 or r.n == 0:
            _warn(f"fastad.metrics.PixelMetrics: only one class present ({r.p} anomalous, {r.n} normal pixels)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # warned once above
            out = {
                "pixel_auroc": r.auroc(),
                "pixel_ap": r.average_precision(),
                "pixel_f1_max": r.f1_max()[0],
                "aupro": _aupro_from(r, self._nreg, r.n, self.fpr_limit),
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
        s, y = as_pair(scores, labels, "ImageMetrics.update")
        self._s.append(s.ravel().copy())
        self._y.append(y.ravel().copy())

    def compute(self) -> dict[str, float]:
        if not self._s:
            raise ValueError("fastad.metrics.ImageMetrics.compute: no data; call update() first")
        s, y = np.concatenate(self._s), np.concatenate(self._y)
        r = Ranked(s[~y], s[y])
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
    s = as_scores(normal_scores, "normal_quantile_threshold", "normal_scores")
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
