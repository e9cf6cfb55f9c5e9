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

Image detectors on precomputed patch embeddings (a backbone's feature grid per image, e.g. PatchCore's
locally aggregated features): :class:`PatchCore`, :class:`PaDiM` and :class:`SPADE` take ``X`` as
``[n_images, h * w * d]`` rows with ``feature_shape=(h, w, d)`` (each row is one image's ``[h, w, d]``
grid, C order: ``grid.reshape(n, -1)``), or as 4-D ``[n_images, h, w, d]`` arrays / tensors; the
score is the detector's image score (higher = more anomalous). ``detector_`` is the fitted fastad
detector (e.g. ``clf.detector_.score_embeddings(grids)`` gives PatchCore's anomaly maps).
"""
from __future__ import annotations

import numbers
import time

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

__all__ = ["KNN", "LOF", "Mahalanobis", "PatchCore", "PaDiM", "SPADE"]

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

    def _torch_device(self, what: str) -> torch.device:
        try:
            return torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{type(self).__name__}.{what}: device must be a torch device such as 'cpu' or "
                             f"'cuda', got {self.device!r}") from e

    def _to_tensor(self, X, what: str) -> torch.Tensor:
        X = check_array(X, dtype=[np.float64, np.float32], ensure_min_samples=1)
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(self._torch_device(what))

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


# ---- image detectors on precomputed patch embeddings -------------------------------------------------
class _ImageFeaturesPyOD(_FastadPyOD):
    """``X`` as ``[n, h*w*d]`` with ``feature_shape=(h, w, d)``, or ``[n, h, w, d]``; subclasses fit
    (``_fit_grids``, returning the training scores) and score (``_score_grids``) ``Tensor[n, h, w, d]``."""

    def _keep_params(self, params: dict) -> None:
        """``__init__``: PyOD's contamination check, then every other argument stored as given (scikit-learn's
        rule: ``get_params`` / ``clone`` read them back by name). ``params`` is the ``__init__``'s ``locals()``."""
        BaseDetector.__init__(self, contamination=params["contamination"])
        for name, value in params.items():
            if name not in ("self", "contamination", "__class__"):
                setattr(self, name, value)

    def _fit_grids(self, E: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score_grids(self, E: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_shape(self, shape, where: str):
        ok = (isinstance(shape, (tuple, list)) and len(shape) == 3
              and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in shape))
        if not ok:
            raise ValueError(f"{where}: feature_shape must be None or (h, w, d), three ints >= 1, got {shape!r}")
        return tuple(int(v) for v in shape)

    def _grids(self, X, what: str) -> torch.Tensor:
        """``Tensor[n, h, w, d]`` float32 on ``device`` (checked: finite, at least one image)."""
        where = f"{type(self).__name__}.{what}"
        shape = None if self.feature_shape is None else self._check_shape(self.feature_shape, where)
        said = "feature_shape is"
        if shape is None and what != "fit" and getattr(self, "feature_shape_", None) is not None:
            shape, said = self.feature_shape_, "the detector was fitted on"
        if isinstance(X, torch.Tensor):  # NumPy has no bfloat16: other dtypes via float32
            X = X.detach().cpu()
            X = X if X.dtype in (torch.float32, torch.float64) else X.float()
        arr = X.numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        if arr.ndim == 4:
            if shape is not None and tuple(arr.shape[1:]) != shape:
                raise ValueError(f"{where}: X is [n, h, w, d] = {list(arr.shape)} but {said} {shape}")
            shape = tuple(int(v) for v in arr.shape[1:])
            arr = arr.reshape(arr.shape[0], -1)
        elif arr.ndim == 2:
            if shape is None:
                raise ValueError(f"{where}: X is 2-D [n_images, n_features]: pass feature_shape=(h, w, d) with "
                                 f"h * w * d == n_features = {arr.shape[1]}, or give X as [n_images, h, w, d]")
            if arr.shape[1] != shape[0] * shape[1] * shape[2]:
                raise ValueError(f"{where}: X has {arr.shape[1]} features per image but feature_shape {shape} "
                                 f"needs h * w * d = {shape[0] * shape[1] * shape[2]}")
        else:
            raise ValueError(f"{where}: X must be [n_images, h * w * d] (with feature_shape) or [n_images, h, w, d], "
                             f"got shape {list(arr.shape)}")
        flat = check_array(arr, dtype=[np.float64, np.float32], ensure_min_samples=1)
        t = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)).to(self._torch_device(what))
        return t.view(t.shape[0], *shape)

    def fit(self, X, y=None):
        """Fit on training images' patch embeddings ``X`` (see the module docstring); ``y`` is ignored.
        Returns ``self``."""
        E = self._grids(X, "fit")
        self._set_n_classes(y)
        scores = self._fit_grids(E)
        self.feature_shape_ = tuple(int(v) for v in E.shape[1:])
        self.decision_scores_ = scores.double().cpu().numpy().ravel()
        self._process_decision_scores()
        return self

    def decision_function(self, X):
        """Image anomaly scores of ``X`` (``[n, h*w*d]`` or ``[n, h, w, d]``, the fitted grid) as float64 NumPy."""
        check_is_fitted(self, ["decision_scores_", "threshold_", "labels_"])
        E = self._grids(X, "decision_function")
        if tuple(E.shape[1:]) != self.feature_shape_:
            raise ValueError(f"{type(self).__name__}.decision_function: X has [h, w, d] = {list(E.shape[1:])} but the "
                             f"detector was fitted on {list(self.feature_shape_)}")
        return self._score_grids(E).double().cpu().numpy().ravel()


class PatchCore(_ImageFeaturesPyOD):
    """PatchCore (:class:`fastad.detectors.PatchCore`) on precomputed patch embeddings.

    The memory bank is the training patches (``n * h * w`` rows of ``d`` dims), reduced by fastad's
    greedy k-center coreset (:func:`fastad.ops.coreset`, PatchCore's seeded start, ``projection_dim``)
    when ``coreset_ratio < 1``; the image score is PatchCore's (anomalib's nearest-patch score
    re-weighted over ``num_neighbors`` bank neighbours), through
    :meth:`fastad.detectors.PatchCore.from_bank` / ``score_embeddings`` (the embeddings are used as
    given: no 3 x 3 averaging).

    ``decision_scores_`` are leave-one-image-out, as PyOD's ``KNN`` leaves each point out: image ``i``
    is scored against the bank without the rows that came from image ``i`` (the coreset is selected
    once, on all training images; ``fit_timings_`` gives the seconds of the bank and of these scores).
    Needs at least 2 training images; a bank left empty for an image
    (or with one row while ``num_neighbors > 1``) is a ``ValueError`` naming ``coreset_ratio``.

    Args:
        contamination: as :class:`KNN`.
        feature_shape: ``(h, w, d)`` of each image's grid when ``X`` is ``[n, h*w*d]``.
        coreset_ratio: share of the training patches kept, in (0, 1] (1: every patch).
        num_neighbors: the image score's re-weighting neighbours (anomalib's default 9; 1 = max patch score).
        projection_dim, coreset_method, random_state: as :class:`fastad.detectors.PatchCore`.
        device: where fastad computes.
    """

    def __init__(self, contamination=0.1, feature_shape=None, coreset_ratio=0.1, num_neighbors=9, projection_dim="auto",
                 coreset_method="pruned", random_state=0, device="cpu"):
        self._keep_params(locals())

    def _make(self, bank: torch.Tensor):
        return _det.PatchCore.from_bank(bank, num_neighbors=_as_int(self.num_neighbors))

    def _fit_grids(self, E: torch.Tensor) -> torch.Tensor:
        from fastad import ops

        n, h, w, d = E.shape
        r = self.coreset_ratio
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r <= 1:
            raise ValueError(f"PatchCore.fit: coreset_ratio must be in (0, 1], got {r!r}")
        if n < 2:
            raise ValueError("PatchCore.fit: leave-one-out training scores need at least 2 training images, got 1")
        rows = E.reshape(n * h * w, d)
        N = rows.shape[0]
        t0 = time.perf_counter()
        if r < 1:
            m = max(1, int(N * float(r)))  # PatchCore's size and seeded start
            start = int(torch.randint(N, (1,), generator=torch.Generator().manual_seed(int(self.random_state))))
            idx, _ = ops.coreset(rows, m, projection_dim=self.projection_dim, seed=int(self.random_state), start=start,
                                 method=self.coreset_method)
            idx = idx.to(rows.device)
        else:
            idx = torch.arange(N, device=rows.device)
        bank = rows.index_select(0, idx)
        self.detector_ = self._make(bank)
        t1 = time.perf_counter()
        owner = idx // (h * w)  # the training image each bank row came from
        need = 2 if _as_int(self.num_neighbors) > 1 else 1
        scores = torch.empty(n, dtype=torch.float32, device=rows.device)
        for i in range(n):
            keep = owner != i
            if int(keep.sum()) < need:
                raise ValueError(f"PatchCore.fit: without training image {i}'s own rows the memory bank has "
                                 f"{int(keep.sum())} row(s), too few to score it (num_neighbors={self.num_neighbors}); "
                                 f"raise coreset_ratio (now {r})")
            scores[i] = self._make(bank[keep]).score_embeddings(E[i : i + 1])[0][0]
        self.fit_timings_ = {"coreset": t1 - t0, "leave_one_out": time.perf_counter() - t1}
        return scores

    def _score_grids(self, E: torch.Tensor) -> torch.Tensor:
        return self.detector_.score_embeddings(E)[0]


class PaDiM(_ImageFeaturesPyOD):
    """PaDiM (:class:`fastad.detectors.PaDiM`, anomalib's recipe) on precomputed patch embeddings: one
    Gaussian per grid position, the image score is the maximum of the Mahalanobis map (resized to
    ``image_size`` and blurred, as PaDiM's maps).

    ``decision_scores_`` are in-sample (each image is part of the Gaussians that score it), as PyOD's
    ``MCD`` / ``PCA`` and this module's :class:`Mahalanobis`.

    Args:
        contamination, feature_shape, device: as :class:`PatchCore`.
        n_features: channels kept by PaDiM's seeded random subset (``None``: all ``d``); memory is
            ``h * w * n_features^2`` floats.
        eps, recipe, factor_dtype, random_state: as :class:`fastad.detectors.PaDiM`.
        image_size: ``(H, W)`` the maps are resized to before the blur and the maximum (``None``: the
            grid ``(h, w)``; pass the images' size for anomalib's image scores).
        blur_sigma: the maps' Gaussian blur in pixels of ``image_size`` (``0``/``None``: none).
        batch_size: images per accumulation batch (bounds fit's temporary memory).
    """

    def __init__(self, contamination=0.1, feature_shape=None, n_features=None, eps=0.01, recipe="anomalib",
                 factor_dtype="float32", image_size=None, blur_sigma=4.0, random_state=0, batch_size=64, device="cpu"):
        self._keep_params(locals())

    def _batches(self, E: torch.Tensor):
        b = _as_int(self.batch_size)
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"PaDiM: batch_size must be an int >= 1, got {self.batch_size!r}")
        for i in range(0, E.shape[0], b):
            yield {"embedding": E[i : i + b].permute(0, 3, 1, 2)}

    def _fit_grids(self, E: torch.Tensor) -> torch.Tensor:
        det = _det.PaDiM(backbone=None, n_features=_as_int(self.n_features), eps=self.eps, recipe=self.recipe,
                         factor_dtype=self.factor_dtype, blur_sigma=self.blur_sigma, random_state=_as_int(self.random_state),
                         device=str(E.device), progress=False)
        size = self.image_size if self.image_size is not None else tuple(E.shape[1:3])
        self.detector_ = det.fit_features(self._batches(E), image_size=size)
        return self._score_grids(E)

    def _score_grids(self, E: torch.Tensor) -> torch.Tensor:
        return self.detector_.score_features(self._batches(E))[0]


class SPADE(_ImageFeaturesPyOD):
    """SPADE's image score (:class:`fastad.detectors.SPADE`) on precomputed patch embeddings: the mean
    Euclidean distance from an image's average-pooled embedding (the mean over its ``h * w`` positions)
    to those of its ``K`` nearest training images (fastad's exact k-NN).

    ``decision_scores_`` are leave-one-out (a training image is not its own neighbour), as PyOD's
    ``KNN(method="mean")``. ``K = min(k_images, n_train - 1)`` for training and new images alike (so
    both average ``K`` distances; fastad's SPADE clamps to ``n_train`` instead, the same whenever
    ``k_images < n_train``). SPADE's pixel maps are not computed here (``detector_`` is the k-NN on the
    pooled embeddings).

    Args:
        contamination, feature_shape, device: as :class:`PatchCore`.
        k_images: ``K`` (the paper: 50).
    """

    def __init__(self, contamination=0.1, feature_shape=None, k_images=50, device="cpu"):
        self._keep_params(locals())

    def _fit_grids(self, E: torch.Tensor) -> torch.Tensor:
        k = _as_int(self.k_images)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"SPADE.fit: k_images must be an int >= 1, got {self.k_images!r}")
        if E.shape[0] < 2:
            raise ValueError("SPADE.fit: leave-one-out training scores need at least 2 training images, got 1")
        self.detector_ = _det.KNN(n_neighbors=min(k, E.shape[0] - 1), method="mean",
                                  contamination=self._contamination_for_inner()).fit(E.mean(dim=(1, 2)))
        return self.detector_.decision_scores_

    def _score_grids(self, E: torch.Tensor) -> torch.Tensor:
        return self.detector_.decision_function(E.mean(dim=(1, 2)))
