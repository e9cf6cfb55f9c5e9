"""fastad's embedding detectors as PyOD detectors (``pyod.models.base.BaseDetector`` subclasses).

>>> from fastad.integrations.pyod import KNN                       # doctest: +SKIP
>>> clf = KNN(n_neighbors=5, contamination=0.1).fit(X_train)       # doctest: +SKIP
>>> clf.decision_scores_, clf.threshold_, clf.labels_              # doctest: +SKIP
>>> clf.decision_function(X_test), clf.predict(X_test)             # doctest: +SKIP

Each class follows PyOD's contract, so PyOD's own tooling (``predict_proba``, ``predict_confidence``,
``_predict_rank``, ``fit_predict_score``, ``sklearn.base.clone``, ``pyod.models.combination``,
``LSCP``, ``FeatureBagging``) works on it:

- ``fit(X)`` returns ``self`` and sets ``decision_scores_`` (the training points' own scores; for
  KNN and LOF each point is left out of its own neighbourhood, as PyOD's ``KNN`` and scikit-learn's
  LOF do), then ``threshold_`` / ``labels_`` through PyOD's ``_process_decision_scores`` (its
  percentile rule, or a PyThresh object given as ``contamination``).
- ``decision_function(X)`` returns float64 NumPy scores, higher = more anomalous.

Inputs are array-likes (NumPy arrays, lists, CPU tensors) of shape ``[n_samples, n_features]``;
outputs are NumPy arrays, as in PyOD. ``device`` picks where fastad computes (``"cpu"`` or
``"cuda"``); the search itself runs in float32 (fastad's exact blocked k-NN kernel), so scores
agree with PyOD's float64 ones to about 1e-6 relative, not bit for bit. LOF can differ more where a
point's k-th and (k+1)-th neighbours are closer than float32 resolution (then either may be the
k-th): in ``benchmarks/bench_integrations.py --part pyod`` (10,000 x 64), 18 of 10,000 training LOF
values differ by more than 1e-5 relative, at most 2e-3, all at neighbour gaps below 1e-5.
"""
from __future__ import annotations

import numbers

import numpy as np

try:
    from pyod.models.base import BaseDetector
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "fastad.integrations.pyod needs PyOD, which is not installed: "
        "pip install 'fastad[pyod]'  (or: pip install pyod)"
    ) from e
import torch
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted

from fastad import detectors as _det

__all__ = ["KNN", "LOF", "Mahalanobis"]

_METRICS = {"l2": "l2", "euclidean": "l2", "minkowski": "l2", "cosine": "cosine"}


def _as_int(v):
    """NumPy integers (from grid searches) pass fastad's ``int`` check; anything else is left to it."""
    return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v


class _FastadPyOD(BaseDetector):
    """Shared plumbing: array checks, the wrapped fastad detector, PyOD's thresholding."""

    def _inner(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _contamination_for_inner(self) -> float:
        # PyOD also accepts a PyThresh object; fastad's detector only needs a valid number, its own
        # threshold is not used (PyOD's _process_decision_scores sets threshold_ and labels_).
        c = self.contamination
        return float(c) if isinstance(c, numbers.Real) and 0 < c <= 0.5 else 0.1

    def _fastad_metric(self) -> str:
        if self.metric not in _METRICS:
            raise ValueError(f"{type(self).__name__}: metric must be one of {sorted(_METRICS)}, got {self.metric!r}")
        return _METRICS[self.metric]

    def _to_tensor(self, X, what: str) -> torch.Tensor:
        X = check_array(X, dtype=[np.float64, np.float32], ensure_min_samples=1)
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{type(self).__name__}.{what}: device must be a torch device such as 'cpu' or "
                             f"'cuda', got {self.device!r}") from e
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)

    def fit(self, X, y=None):
        """Fit on ``X: [n_samples, n_features]``; ``y`` is ignored (unsupervised). Returns ``self``."""
        Xt = self._to_tensor(X, "fit")
        self._set_n_classes(y)
        self.detector_ = self._inner().fit(Xt)
        self.decision_scores_ = self.detector_.decision_scores_.double().cpu().numpy().ravel()
        self._process_decision_scores()
        return self

    def decision_function(self, X):
        """Outlier scores of ``X: [n_samples, n_features]`` as a float64 NumPy array (higher = more anomalous)."""
        check_is_fitted(self, ["decision_scores_", "threshold_", "labels_"])
        Xt = self._to_tensor(X, "decision_function")
        return self.detector_.decision_function(Xt).double().cpu().numpy().ravel()


class KNN(_FastadPyOD):
    """PyOD's ``KNN`` on fastad's exact k-NN kernel.

    Args:
        contamination: share of outliers in the training data (PyOD's meaning), or a PyThresh object.
        n_neighbors: k.
        method: ``"largest"`` (distance to the k-th neighbour, PyOD's default), ``"mean"`` or ``"median"``.
        metric: ``"euclidean"`` (also ``"l2"`` / ``"minkowski"``, meaning p=2) or ``"cosine"``.
        device: where fastad computes (``"cpu"``, ``"cuda"``).
    """

    def __init__(self, contamination=0.1, n_neighbors=5, method="largest", metric="euclidean", device="cpu"):
        super().__init__(contamination=contamination)
        self.n_neighbors = n_neighbors
        self.method = method
        self.metric = metric
        self.device = device

    def _inner(self):
        return _det.KNN(n_neighbors=_as_int(self.n_neighbors), method=self.method, metric=self._fastad_metric(),
                        contamination=self._contamination_for_inner())


class LOF(_FastadPyOD):
    """PyOD's ``LOF`` (scikit-learn's ``LocalOutlierFactor(novelty=True)``) on fastad's k-NN kernel.

    ``decision_scores_`` are the training points' LOF (scikit-learn's ``-negative_outlier_factor_``),
    ``decision_function`` the LOF of new points (``-score_samples``).

    Args: as :class:`KNN` (``n_neighbors`` default 20, no ``method``).
    """

    def __init__(self, contamination=0.1, n_neighbors=20, metric="euclidean", device="cpu"):
        super().__init__(contamination=contamination)
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.device = device

    def _inner(self):
        return _det.LOF(n_neighbors=_as_int(self.n_neighbors), metric=self._fastad_metric(),
                        contamination=self._contamination_for_inner())


class Mahalanobis(_FastadPyOD):
    """Mahalanobis distance to one Gaussian (mean and shrunk covariance fitted in float64).

    Args:
        contamination: as :class:`KNN`.
        shrinkage: ``"ledoit_wolf"`` (scikit-learn's ``LedoitWolf``), ``"oas"``, ``"none"``
            (``EmpiricalCovariance``; needs more samples than features) or a float ``eps`` added to the
            diagonal.
        device: where fastad computes.

    The training scores are in-sample (the Gaussian includes each point), as PyOD's ``MCD`` / ``ECOD``.
    """

    def __init__(self, contamination=0.1, shrinkage="ledoit_wolf", device="cpu"):
        super().__init__(contamination=contamination)
        self.shrinkage = shrinkage
        self.device = device

    def _inner(self):
        return _det.Mahalanobis(shrinkage=self.shrinkage, contamination=self._contamination_for_inner())
