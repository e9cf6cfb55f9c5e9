"""Decision thresholds for image scores (``score > threshold`` = anomalous). Imports only torch, so
that every layer (detectors' ``set_threshold``, the CLI, benchmarks) may use it.

Which one to use:

- :func:`quantile` (``"quantile"``, fastad's historic default): the ``q`` quantile of held-out normal
  scores, linearly interpolated. Fine with many held-out images; with ``n < 1 / (1 - q)`` it is
  (close to) their maximum and its false-positive rate on new normal images is larger than ``1 - q``.
- :func:`quantile_corrected` (``"quantile-corrected"``): the conformal (finite-sample) quantile, the
  ``ceil((n + 1) q)``-th smallest held-out score. For exchangeable normal scores it guarantees
  ``P(new normal score > t) <= 1 - q``. It needs ``n >= q / (1 - q)`` held-out images (99 for
  ``q = 0.99``, 19 for 0.95); with fewer, no order statistic gives the guarantee: it warns
  (:class:`ThresholdWarning`) and returns the maximum. Use it when false alarms must be bounded and
  only normal images are available.
- :func:`chi2` (``"chi2"``): for Gaussian detectors (PaDiM, GaussianAD), no held-out data: under the
  fitted model a squared Mahalanobis distance in ``d`` dimensions is ``chi^2(d)``; the threshold on
  the distance is ``sqrt(chi2.ppf(q, d))`` (for the maximum of ``P`` positions, the per-position level
  ``q ** (1 / P)``, assuming independence). Real features are not Gaussian and the covariance is
  regularised and estimated, so this is a model-based guess: check it on data.
- :func:`f1` (``"f1"``): with labelled validation images (normal and defective), the threshold that
  maximises F1 on them. The best choice when such images exist; it overfits when there are few.

:func:`recall_precision` gives the recall / precision / false-positive rate of a threshold.
"""
from __future__ import annotations

import math
import warnings

import torch

__all__ = ["METHODS", "ThresholdWarning", "quantile", "quantile_corrected", "chi2", "chi2_ppf", "f1", "recall_precision"]

METHODS = ("quantile", "quantile-corrected", "chi2", "f1")


class ThresholdWarning(UserWarning):
    """A threshold computed from too little data to mean what was asked."""


def _scores(scores, what: str) -> torch.Tensor:
    s = torch.as_tensor(scores).detach().reshape(-1).double().cpu()
    if s.numel() == 0:
        raise ValueError(f"{what}: no scores given")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{what}: scores hold NaN or Inf")
    return s


def _check_q(q: float, what: str) -> float:
    q = float(q)
    if not 0.0 < q < 1.0:
        raise ValueError(f"{what}: q must be in (0, 1), got {q}")
    return q


def quantile(normal_scores, q: float = 0.99) -> float:
    """The ``q`` quantile (linear interpolation, ``torch.quantile``) of held-out normal scores."""
    s = _scores(normal_scores, "thresholds.quantile")
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"thresholds.quantile: q must be in [0, 1], got {q}")
    return float(torch.quantile(s, float(q)))


def min_images(q: float) -> int:
    """The fewest held-out images for which :func:`quantile_corrected` has its guarantee."""
    q = _check_q(q, "thresholds.min_images")
    n = math.ceil(q / (1.0 - q) - 1e-9)
    return max(1, n)


def quantile_corrected(normal_scores, q: float = 0.99, *, warn: bool = True) -> float:
    """The conformal quantile: the ``k = ceil((n + 1) q)``-th smallest of ``n`` held-out normal scores.

    When ``k > n`` (fewer than ``q / (1 - q)`` images) it warns with :class:`ThresholdWarning` and
    returns the maximum score (whose false-positive guarantee is only ``1 / (n + 1)``)."""
    q = _check_q(q, "thresholds.quantile_corrected")
    s = _scores(normal_scores, "thresholds.quantile_corrected")
    n = s.numel()
    k = math.ceil((n + 1) * q - 1e-9)
    srt = torch.sort(s).values
    if k > n:
        if warn:
            warnings.warn(
                f"threshold: {n} held-out normal images are too few for the {q:g} quantile (need at least "
                f"{min_images(q)}); using their maximum, whose false-positive rate on new normal images can be up to "
                f"{1 / (n + 1):.3f} instead of {1 - q:.3g}: hold out more images, lower the quantile, or use labelled "
                "validation images (f1)",
                ThresholdWarning,
                stacklevel=2,
            )
        return float(srt[-1])
    return float(srt[max(k, 1) - 1])


def chi2_ppf(p: float, df: float) -> float:
    """Inverse CDF of the chi-square distribution with ``df`` degrees of freedom at ``p`` in (0, 1)
    (bisection on ``torch.special.gammainc`` in float64, relative precision ~1e-12)."""
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"thresholds.chi2_ppf: p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"thresholds.chi2_ppf: df must be > 0, got {df}")
    a = torch.tensor(float(df) / 2.0, dtype=torch.float64)

    def cdf(x: float) -> float:
        return float(torch.special.gammainc(a, torch.tensor(x / 2.0, dtype=torch.float64)))

    lo, hi = 0.0, max(1.0, float(df))
    while cdf(hi) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def chi2(q: float, df: int, *, n_positions: int = 1, distance: bool = True) -> float:
    """Threshold on a Mahalanobis distance (``distance=True``) or its square, such that a sample of the
    fitted Gaussian in ``df`` dimensions exceeds it with probability ``1 - q``; for the maximum over
    ``n_positions`` independent positions the per-position level is ``q ** (1 / n_positions)``."""
    q = _check_q(q, "thresholds.chi2")
    if not (int(df) == df and df >= 1):
        raise ValueError(f"thresholds.chi2: df must be an int >= 1, got {df!r}")
    if not (int(n_positions) == n_positions and n_positions >= 1):
        raise ValueError(f"thresholds.chi2: n_positions must be an int >= 1, got {n_positions!r}")
    level = q ** (1.0 / int(n_positions))
    t = chi2_ppf(level, int(df))
    return math.sqrt(t) if distance else t


def f1(scores, labels) -> tuple[float, float]:
    """``(threshold, F1)``: the threshold maximising F1 of ``score > threshold`` on labelled
    validation scores (``labels``: 1 = defective, 0 = normal; both must occur). The threshold is the
    midpoint between the last score predicted normal and the next (ties stay together); among equal
    F1 the highest threshold (fewest alarms) wins."""
    s = _scores(scores, "thresholds.f1")
    y = torch.as_tensor(labels).reshape(-1).cpu()
    if y.numel() != s.numel():
        raise ValueError(f"thresholds.f1: {s.numel()} scores but {y.numel()} labels")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("thresholds.f1: labels must be 0 (normal) or 1 (defective)")
    y = y.long()
    npos = int(y.sum())
    if npos == 0 or npos == y.numel():
        raise ValueError(f"thresholds.f1: labels must hold normal and defective images, got {npos} defective of {y.numel()}")
    order = torch.argsort(s, descending=True)
    ss, yy = s[order], y[order]
    tp = torch.cumsum(yy, 0).double()
    fp = torch.cumsum(1 - yy, 0).double()
    # candidate cuts: after position i (predict the top i+1 as anomalous) where the next score differs
    last = torch.ones_like(ss, dtype=torch.bool)
    last[:-1] = ss[:-1] != ss[1:]
    f = 2 * tp / (tp + fp + npos)
    f = torch.where(last, f, torch.full_like(f, -1.0))
    best = float(f.max())
    i = int(torch.nonzero(f == best).flatten()[0])  # fewest alarms among the best
    nxt = float(ss[i + 1]) if i + 1 < ss.numel() else float(ss[i]) - max(1.0, abs(float(ss[i])))
    return 0.5 * (float(ss[i]) + nxt), best


def recall_precision(scores, labels, threshold: float) -> dict:
    """``{"recall", "precision", "fpr", "f1", "tp", "fp", "fn", "tn"}`` of ``score > threshold``
    (precision is 0 when nothing is flagged)."""
    s = _scores(scores, "thresholds.recall_precision")
    y = torch.as_tensor(labels).reshape(-1).cpu().bool()
    pred = s > float(threshold)
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    rec = tp / (tp + fn) if tp + fn else 0.0
    prec = tp / (tp + fp) if tp + fp else 0.0
    return {"recall": rec, "precision": prec, "fpr": fp / (fp + tn) if fp + tn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
