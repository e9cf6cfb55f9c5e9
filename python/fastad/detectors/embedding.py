"""Outlier detectors on any embeddings (``Tensor[N, D]``: text, image or audio vectors), PyOD-style,
on fastad's exact k-NN kernel (CPU and CUDA).

- :class:`KNN`: the distance to the k-th nearest training embedding (``method="largest"``, PyOD's
  default), or the mean / median of the k distances (Ramaswamy et al. 2000; Angiulli & Pizzuti 2002).
- :class:`Mahalanobis`: the Mahalanobis distance to one Gaussian with Ledoit-Wolf / OAS / fixed
  shrinkage (scikit-learn's estimators in closed form, float64): Rippel et al.'s per-level model.
- :class:`LOF`: the local outlier factor (Breunig et al. 2000) in scikit-learn's novelty mode
  (``LocalOutlierFactor(novelty=True)``): reachability distances to the k nearest training points,
  local reachability densities with scikit-learn's ``1e-10`` guard; the score is the LOF itself
  (scikit-learn's ``-score_samples``).

Conventions (PyOD): ``fit(X)`` returns ``self`` and sets ``decision_scores_`` (the training
embeddings' own scores, each point left out of its own neighbourhood), ``threshold_`` (their
``1 - contamination`` quantile, PyOD's percentile rule) and ``labels_``; ``decision_function(X)`` is
higher-is-more-anomalous; ``predict(X)`` is ``decision_function(X) > threshold_`` as int64;
``save(path)`` / :func:`fastad.detectors.load` use the detectors' safetensors + JSON format.
Tensors in, tensors out, on the input's device. The reference implementations (PyOD's ``KNN`` loops
over test points with a tree query; scikit-learn's LOF runs float64 on the CPU) are the anchors of
``benchmarks/bench_embedding.py``.
"""
from __future__ import annotations

import torch

from ._io import ModelFileError, write_model_file
from ._registry import register
from ._screen import detector_screen

_METHODS = ("largest", "mean", "median")


def _as_embeddings(X, name: str, what: str) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(X)
    if X.dim() != 2:
        raise ValueError(f"{name}.{what}: X must be 2-D [N, D], got shape {list(X.shape)}")
    if X.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"{name}.{what}: X must be floating point, got {X.dtype}")
    if X.dtype == torch.float64:
        X = X.float()
    if X.numel() and not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name}.{what}: X holds NaN or Inf")
    return X.contiguous()


class _EmbeddingDetector:
    def __init__(self, n_neighbors: int, metric: str, contamination: float):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.contamination = contamination

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._params}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in self._params:
                raise ValueError(f"{type(self).__name__}: unknown parameter {k!r} (known: {list(self._params)})")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self._params)})"

    def _check_common(self, N: int) -> None:
        name = type(self).__name__
        if not (isinstance(self.contamination, (int, float)) and 0 < self.contamination <= 0.5):
            raise ValueError(f"{name}: contamination must be in (0, 0.5], got {self.contamination!r}")
        if N < 2:
            raise ValueError(f"{name}.fit: needs at least 2 training embeddings, got {N}")

    def _check_params(self, N: int) -> int:
        name = type(self).__name__
        if not (isinstance(self.n_neighbors, int) and self.n_neighbors >= 1):
            raise ValueError(f"{name}: n_neighbors must be an int >= 1, got {self.n_neighbors!r}")
        if self.metric not in ("l2", "cosine"):
            raise ValueError(f"{name}: metric must be 'l2' or 'cosine', got {self.metric!r}")
        self._check_common(N)
        if self.n_neighbors > N - 1:
            raise ValueError(
                f"{name}.fit: n_neighbors={self.n_neighbors} but only {N - 1} other training embeddings per point "
                f"(N={N}); use n_neighbors <= N - 1"
            )
        return int(self.n_neighbors)

    def _check_fitted(self, what: str):
        if getattr(self, "train_", None) is None:
            raise RuntimeError(f"{type(self).__name__}.{what}: not fitted yet; call fit(X) first")

    def _neighbours(self, Q: torch.Tensor, k: int, exclude_self: bool = False):
        import fastad.ops as ops

        return ops.knn(Q, self.train_, k, self.metric, bank_norms=self._norms, exclude_self=exclude_self,
                       screen=detector_screen())

    def _set_threshold(self, scores: torch.Tensor):
        self.decision_scores_ = scores
        self.threshold_ = float(torch.quantile(scores.double().cpu(), 1.0 - float(self.contamination)))
        self.labels_ = (scores > self.threshold_).long()

    def _prepare(self, X):
        name = type(self).__name__
        X = _as_embeddings(X, name, "fit")
        k = self._check_params(X.shape[0])
        self.train_ = X
        self._norms = X.float().square().sum(1) if self.metric == "cosine" else None
        self.n_features_in_ = int(X.shape[1])
        return X, k

    def _query(self, X, what: str) -> torch.Tensor:
        self._check_fitted(what)
        X = _as_embeddings(X, type(self).__name__, what)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"{type(self).__name__}.{what}: X has {X.shape[1]} features, the model {self.n_features_in_}")
        if X.dtype != self.train_.dtype or X.device != self.train_.device:
            X = X.to(device=self.train_.device, dtype=self.train_.dtype)
        return X

    # ---- persistence (the detectors' safetensors + JSON format; no pickle) ------------------------
    def _state(self) -> dict:
        return {"train": self.train_, "decision_scores": self.decision_scores_}

    def save(self, path):
        """Write the fitted detector to ``path`` (one safetensors file with JSON metadata and per-tensor
        SHA-256; read back with :func:`fastad.detectors.load`)."""
        self._check_fitted("save")
        fields = {"params": self.get_params(), "threshold": self.threshold_, "n_features_in": self.n_features_in_}
        return write_model_file(path, type(self).__name__, self._state(), fields)

    @classmethod
    def _from_file(cls, path, meta, tensors, *, device=None, backbone=None):
        """Build a fitted detector from a verified model file (``backbone`` is unused: embeddings in)."""
        try:
            params = {k: v for k, v in dict(meta["params"]).items() if k in cls._params}
            det = cls(**params)
            D = int(meta["n_features_in"])
            thr = float(meta["threshold"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(path, f"the metadata lacks or garbles {e}") from None
        expect = set(det._state_names())
        if set(tensors) != expect:
            raise ModelFileError(path, f"a {cls.__name__} file holds {sorted(expect)}, found {sorted(tensors)}")
        train = tensors["train"]
        if train.dim() != 2 or train.shape[1] != D or not train.is_floating_point() or train.shape[0] < 2:
            raise ModelFileError(path, f"train is {tuple(train.shape)} {train.dtype}, expected [N >= 2, {D}] floating point")
        N = train.shape[0]
        for k in expect - {"train"}:
            t = tensors[k]
            want = torch.int64 if k == "labels" else torch.float32
            if tuple(t.shape) != (N,) or t.dtype != want:
                raise ModelFileError(path, f"{k} is {tuple(t.shape)} {t.dtype}, expected [{N}] {want}")
        try:
            det._check_params(N)
        except ValueError as e:
            raise ModelFileError(path, f"incompatible contents: {e}") from None
        dev = torch.device(device) if device is not None else torch.device("cpu")
        det.train_ = train.to(dev)
        det._norms = det.train_.float().square().sum(1) if det.metric == "cosine" else None
        det.n_features_in_ = D
        det.decision_scores_ = tensors["decision_scores"].to(dev)
        det.threshold_ = thr
        det.labels_ = (det.decision_scores_ > thr).long()
        det._set_extra_state(tensors, dev)
        return det

    def _state_names(self):
        return ("train", "decision_scores")

    def _set_extra_state(self, tensors, dev):
        pass

    def predict(self, X) -> torch.Tensor:
        """``Tensor[N]`` int64: 1 where ``decision_function(X) > threshold_``."""
        return (self.decision_function(X) > self.threshold_).long()

    def fit_predict(self, X) -> torch.Tensor:
        return self.fit(X).labels_


@register
class KNN(_EmbeddingDetector):
    """k-NN outlier score: the distance to the k-th nearest training embedding (``"largest"``), or the
    mean / median of the k nearest distances.

    Args:
        n_neighbors: k (PyOD default 5; Text-ADBench uses 3).
        method: ``"largest"`` (PyOD's default), ``"mean"`` or ``"median"``.
        metric: ``"l2"`` (Euclidean, PyOD's minkowski p=2) or ``"cosine"`` (1 - cosine similarity).
        contamination: share of the training set above ``threshold_``.
    """

    _params = ("n_neighbors", "method", "metric", "contamination")

    def __init__(self, n_neighbors: int = 5, method: str = "largest", metric: str = "l2", contamination: float = 0.1):
        super().__init__(n_neighbors, metric, contamination)
        self.method = method

    def _reduce(self, d: torch.Tensor) -> torch.Tensor:
        if self.method == "largest":
            return d[:, -1]
        if self.method == "mean":
            return d.mean(1)
        return d.median(1).values if d.shape[1] % 2 else d.sort(1).values[:, d.shape[1] // 2 - 1 : d.shape[1] // 2 + 1].mean(1)

    def fit(self, X, y=None) -> "KNN":
        """Stores the training embeddings ``X: Tensor[N, D]``; each one's own score leaves it out of
        its neighbourhood (``decision_scores_``)."""
        if self.method not in _METHODS:
            raise ValueError(f"KNN: method must be one of {_METHODS}, got {self.method!r}")
        X, k = self._prepare(X)
        d, _ = self._neighbours(X, k, exclude_self=True)
        self._set_threshold(self._reduce(d))
        return self

    def decision_function(self, X) -> torch.Tensor:
        """``Tensor[N]`` float32 outlier scores of ``X: Tensor[N, D]`` (higher = more anomalous)."""
        X = self._query(X, "decision_function")
        d, _ = self._neighbours(X, int(self.n_neighbors))
        return self._reduce(d)


@register
class LOF(_EmbeddingDetector):
    """Local outlier factor in novelty mode (scikit-learn's ``LocalOutlierFactor(novelty=True)``).

    For a point ``x`` with k nearest training points ``o``: ``reach(x, o) = max(d(x, o), kdist(o))``
    with ``kdist(o)`` the distance from ``o`` to its own k-th nearest training point (itself left
    out); ``lrd(x) = 1 / (mean_o reach(x, o) + 1e-10)``; ``LOF(x) = mean_o lrd(o) / lrd(x)``.
    ``decision_function`` returns the LOF (about 1 for inliers; scikit-learn's ``-score_samples``).

    Args:
        n_neighbors: k (scikit-learn default 20; Text-ADBench uses 30).
        metric: ``"l2"`` or ``"cosine"``. contamination: share of the training set above ``threshold_``.
    """

    _params = ("n_neighbors", "metric", "contamination")

    def __init__(self, n_neighbors: int = 20, metric: str = "l2", contamination: float = 0.1):
        super().__init__(n_neighbors, metric, contamination)

    def fit(self, X, y=None) -> "LOF":
        """Training k-distances and local reachability densities of ``X: Tensor[N, D]``."""
        X, k = self._prepare(X)
        d, i = self._neighbours(X, k, exclude_self=True)
        self.k_distance_ = d[:, -1].contiguous()
        self.lrd_ = self._lrd(d, i)
        self._set_threshold(self._lof(d, i))
        return self

    def _state(self) -> dict:
        return {"train": self.train_, "decision_scores": self.decision_scores_, "k_distance": self.k_distance_,
                "lrd": self.lrd_}

    def _state_names(self):
        return ("train", "decision_scores", "k_distance", "lrd")

    def _set_extra_state(self, tensors, dev):
        self.k_distance_ = tensors["k_distance"].to(dev)
        self.lrd_ = tensors["lrd"].to(dev)

    def _lrd(self, d: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        reach = torch.maximum(d, self.k_distance_[i])
        return 1.0 / (reach.mean(1) + 1e-10)

    def _lof(self, d: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.lrd_[i].mean(1) / self._lrd(d, i)

    def decision_function(self, X) -> torch.Tensor:
        """``Tensor[N]`` float32 LOF values of ``X: Tensor[N, D]`` (higher = more anomalous)."""
        X = self._query(X, "decision_function")
        d, i = self._neighbours(X, int(self.n_neighbors))
        return self._lof(d, i)


def shrinkage_coefficient(Xc: torch.Tensor, method: str) -> float:
    """The shrinkage ``alpha`` of scikit-learn's ``LedoitWolf`` / ``OAS`` (1.9) for centred data
    ``Xc: Tensor[n, p]`` (float64), in closed form without a ``p x p`` product beyond ``S``
    (SPEC-gaussian.md, "Shared numerics"): the shrunk covariance is ``(1 - alpha) S + alpha mu I``
    with ``S = Xc^T Xc / n`` and ``mu = tr(S) / p``."""
    n, p = Xc.shape
    S = Xc.T @ Xc / n
    mu = float(torch.diagonal(S).sum()) / p
    if method == "ledoit_wolf":
        delta_ = float(S.square().sum())  # |Xc^T Xc|_F^2 / n^2
        beta_ = float(Xc.square().sum(1).square().sum())  # sum_i |x_i|^4
        beta = (beta_ / n - delta_) / (p * n)
        delta = (delta_ - 2.0 * mu * float(torch.diagonal(S).sum()) + p * mu * mu) / p
        beta = min(beta, delta)
        return 0.0 if beta == 0 else beta / delta
    if method == "oas":
        a = float(S.square().mean())
        den = (n + 1) * (a - mu * mu / p)
        return 1.0 if den == 0 else min((a + mu * mu) / den, 1.0)
    raise ValueError(f"shrinkage method must be 'ledoit_wolf' or 'oas', got {method!r}")


@register
class Mahalanobis(_EmbeddingDetector):
    """One Gaussian on the embeddings; the score is the Mahalanobis distance (not squared) to it.

    This is the per-level model of Rippel et al.'s Gaussian AD (ICPR 2020; their score is the mean of
    these distances over backbone levels of globally pooled features) and of Lee et al.'s Mahalanobis
    score with one class. The covariance is the maximum-likelihood one (divided by N, as
    scikit-learn), shrunk by ``shrinkage``: ``"ledoit_wolf"`` (scikit-learn's ``LedoitWolf``, Rippel's
    choice), ``"oas"`` (``OAS``), ``"none"`` (``EmpiricalCovariance``: needs N > D) or a float
    ``eps`` (``S + eps I``). Everything is fitted and factorised (Cholesky) in float64.

    Args:
        shrinkage: see above. contamination: share of the training set above ``threshold_``.

    Fitted: ``location_`` (``Tensor[D]``), ``covariance_`` (``Tensor[D, D]`` float64),
    ``shrinkage_`` (the coefficient used, 0 for ``"none"``), ``decision_scores_``, ``threshold_``,
    ``labels_``. The training scores are in-sample (the model includes each point), as PyOD's MCD/ECOD.
    Fitted through :func:`fastad.gaussian.gaussian_fit` (float64 sums, Cholesky and precision factor);
    scored by :func:`fastad.ops.mahalanobis` with the float32 factor (fused, triangular kernel).
    """

    _params = ("shrinkage", "contamination")
    metric = "l2"  # the stored embeddings need no cosine norms (the distance is in the whitened space)

    def __init__(self, shrinkage="ledoit_wolf", contamination: float = 0.1):
        self.shrinkage = shrinkage
        self.contamination = contamination

    def _check_params(self, N: int) -> int:
        self._check_common(N)
        return 1

    def fit(self, X, y=None) -> "Mahalanobis":
        """Mean and shrunk covariance of ``X: Tensor[N, D]``."""
        sh = self.shrinkage
        if not (sh in ("ledoit_wolf", "oas", "none") or (isinstance(sh, (int, float)) and not isinstance(sh, bool) and sh >= 0)):
            raise ValueError(f"Mahalanobis: shrinkage must be 'ledoit_wolf', 'oas', 'none' or a float >= 0, got {sh!r}")
        X, _ = self._prepare(X)
        self._fit_gaussian()
        self._set_threshold(self.decision_function(X))
        return self

    def _fit_gaussian(self):
        from ..gaussian import gaussian_fit

        X = self.train_.double()  # float64 sums: covariance_ equals scikit-learn's to ~1e-12
        sh = self.shrinkage
        n, p = X.shape
        try:
            g = gaussian_fit(X, shrinkage=sh if sh in ("ledoit_wolf", "oas") else None,
                             reg=0.0 if isinstance(sh, str) else float(sh), factor_dtype=torch.float64)
        except ValueError as e:
            raise ValueError(
                f"{type(self).__name__}.fit: the covariance of {n} embeddings of {p} dims is not positive definite with "
                f"shrinkage={sh!r}; use 'ledoit_wolf' / 'oas' or a float eps > 0 ({e})"
            ) from None
        self.location_, self.covariance_, self.shrinkage_ = g.mean, g.covariance, float(g.shrinkage_)
        self._gaussian = g
        # scoring: fastad.ops.mahalanobis with the float32 precision factor (fused, triangular)
        self._factor32, self._mean32 = g.factor.float().contiguous(), g.mean.float().contiguous()

    def _factorise(self, Xc: torch.Tensor, what: str):
        """``(covariance, shrinkage coefficient, Cholesky factor)`` of centred ``Xc: Tensor[n, p]``
        (float64): the maximum-likelihood covariance shrunk by ``self.shrinkage``."""
        n, p = Xc.shape
        S = Xc.T @ Xc / n
        if self.shrinkage in ("ledoit_wolf", "oas"):
            a = shrinkage_coefficient(Xc, self.shrinkage)
            cov = (1.0 - a) * S
            cov.diagonal().add_(a * float(torch.diagonal(S).sum()) / p)
        else:
            a = 0.0 if self.shrinkage == "none" else float(self.shrinkage)
            cov = S.clone()
            cov.diagonal().add_(a)
        L, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError(
                f"{type(self).__name__}.fit: the {what} of {n} embeddings of {p} dims is not positive definite with "
                f"shrinkage={self.shrinkage!r}; use 'ledoit_wolf' / 'oas' or a float eps > 0"
            )
        return cov, a, L

    def decision_function(self, X) -> torch.Tensor:
        """``Tensor[N]`` float32 Mahalanobis distances of ``X: Tensor[N, D]`` (higher = more anomalous)."""
        import fastad.ops as ops

        X = self._query(X, "decision_function")
        return ops.mahalanobis(X, self._mean32.to(X.device), self._factor32.to(X.device)).clamp_min(0).sqrt()

    def _set_extra_state(self, tensors, dev):
        self._fit_gaussian()
