"""Lee, Lee, Lee & Shin (NeurIPS 2018), "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks": class-conditional Gaussians with one tied covariance per feature
layer; the score is the Mahalanobis distance to the closest class mean.

Reference code ``pokaxpoka/deep_Mahalanobis_detector`` (``lib_generation.py``: ``sample_estimator``,
``get_Mahalanobis_score``; ``OOD_Regression_Mahalanobis.py``), summarised in ``SPEC-gaussian.md`` (b):

- per layer ``l``, features spatially mean-pooled; class means ``mu_{l,c}`` over the training samples
  of class ``c``; one tied covariance = scikit-learn's ``EmpiricalCovariance`` of the class-centred
  features (divided by N, no shrinkage); ``M_l(x) = max_c -1/2 (f_l - mu_{l,c})^T P_l (f_l - mu_{l,c})``.
  fastad returns ``min_c d_{l,c}(x) = sqrt(-2 M_l(x))`` (same ranking, higher = more anomalous).
- **input pre-processing** (optional): ``x_hat = x - eps * sign(grad_x min_c d2_{l,c}(x))`` through
  the backbone, one gradient per layer (the reference's ``tempInputs = data - magnitude * gradient``),
  then ``M_l(x_hat)``; ``eps`` from a grid, chosen on validation data (the reference tries
  ``[0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01, 0.05, 0.1, 0.2]``). fastad perturbs the normalised
  input the detector receives (the reference divides the sign by the normalisation std per channel).
- **feature ensemble** (optional): the per-layer scores combined by a logistic regression fitted on a
  small labelled validation set (scikit-learn's ``LogisticRegression``; the reference's
  ``LogisticRegressionCV``).

:class:`ClassConditionalMahalanobis` is the embedding-level model (``Tensor[N, D]`` in, one layer);
:class:`LeeMahalanobis` the image detector on a backbone, with both options off by default (the plain
detector: the mean over layers of the per-layer distances). Without class labels every training image
is one class (Rippel's single Gaussian with Lee's unshrunk tied covariance). Measured on MTD
(``benchmarks/lee_mtd.py``): calibrating eps and the ensemble on 40 labelled validation images
overfits (test AUROC 0.667 against 0.801 plain): give :meth:`LeeMahalanobis.calibrate` hundreds of images.
"""
from __future__ import annotations

import torch

from ._io import ModelFileError
from ._registry import register
from .base import BaseDetector, StageTimer
from .embedding import Mahalanobis, shrinkage_coefficient
from .gaussian import PooledFeaturesMixin

SHRINKAGES = ("ledoit_wolf", "oas", "none")

#: largest whitened |value| whose float32 squared distance (summed over up to ~1e6 dims) stays finite
_KNN_MAX_ABS = 1e16


def _mahalanobis_sq(x: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances ``Tensor[N]`` of ``x: Tensor[N, d]`` to ``mean: Tensor[d]`` with
    precision ``L L^T`` (``factor = L: Tensor[d, d]``, lower triangular); differentiable in ``x``.
    Kept in plain torch on purpose: float64 scores (scikit-learn parity to 1e-10) and the input
    pre-processing gradient; ``fastad.ops.mahalanobis`` returns float32."""
    return ((x - mean) @ factor).square().sum(-1)


def _check_shrinkage(sh, name: str) -> None:
    if not (sh in SHRINKAGES or (isinstance(sh, (int, float)) and not isinstance(sh, bool) and sh >= 0)):
        raise ValueError(f"{name}: shrinkage must be 'ledoit_wolf', 'oas', 'none' or a float >= 0, got {sh!r}")


def tied_gaussian(X: torch.Tensor, y: torch.Tensor, shrinkage, name: str):
    """``(classes Tensor[K], means Tensor[K, D], covariance Tensor[D, D], shrinkage coefficient, Cholesky
    factor of the covariance)`` (float64) of ``X: Tensor[N, D]`` with integer labels ``y: Tensor[N]``: the
    pooled within-class covariance divided by N (scikit-learn's ``EmpiricalCovariance`` of the
    class-centred features), shrunk by ``shrinkage`` (``"none"``, ``"ledoit_wolf"``, ``"oas"``, float eps)."""
    X = X.double()
    classes, inv = torch.unique(y.to(X.device), return_inverse=True)
    K = classes.numel()
    counts = torch.bincount(inv, minlength=K).double()
    means = torch.zeros(K, X.shape[1], dtype=torch.float64, device=X.device).index_add_(0, inv, X) / counts[:, None]
    Xc = X - means[inv]
    n, p = Xc.shape
    S = Xc.T @ Xc / n
    positive_eps = isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and shrinkage > 0
    if not positive_eps and float(torch.diagonal(S).sum()) == 0.0:
        raise ValueError(
            f"{name}: the {n} training samples of {p} dims have zero variance around their class means (identical "
            f"samples, or one sample per class: {K} classes): the tied covariance is all zeros, even with "
            f"shrinkage={shrinkage!r}; give each class at least 2 distinct samples, or a float shrinkage eps > 0"
        )
    if shrinkage in ("ledoit_wolf", "oas"):
        a = shrinkage_coefficient(Xc, shrinkage)
        cov = (1.0 - a) * S
        cov.diagonal().add_(a * float(torch.diagonal(S).sum()) / p)
    else:
        a = 0.0 if shrinkage == "none" else float(shrinkage)
        cov = S.clone()
        cov.diagonal().add_(a)
    C, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError(
            f"{name}: the shared covariance of {n} samples of {p} dims is not positive definite with "
            f"shrinkage={shrinkage!r}; use 'ledoit_wolf' / 'oas' or a float eps > 0"
        )
    return classes, means, cov, a, C


def _as_labels(y, N: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != N or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name}: y must be Tensor[N={N}] of integer labels, got shape {list(y.shape)} {y.dtype}")
    return y.long()


@register
class ClassConditionalMahalanobis(Mahalanobis):
    """Lee et al. on embeddings: class means with one shared (tied) covariance; the score of ``x`` is
    its Mahalanobis distance to the closest class mean.

    The reference fits scikit-learn's ``EmpiricalCovariance`` on the class-centred features (divided
    by N, no shrinkage) and scores ``M(x) = max_c -1/2 d_c(x)^2``; ``decision_function`` here returns
    ``min_c d_c(x) = sqrt(-2 M(x))`` (the same ranking, higher = more anomalous). Scoring whitens ``x``
    and the class means with the Cholesky factor and takes the nearest mean with ``fastad.ops.knn``.

    Args:
        shrinkage: of the shared covariance (default ``"none"``, as Lee; ``"ledoit_wolf"``, ``"oas"``
            or a float eps help when N is not much larger than D). contamination: as the other detectors.

    ``fit(X, y)`` needs integer class labels ``y: Tensor[N]``; fitted ``classes_`` (``Tensor[K]``),
    ``means_`` (``Tensor[K, D]``) and the attributes of :class:`Mahalanobis`; ``predict_class(X)``
    returns the closest class.
    """

    def __init__(self, shrinkage="none", contamination: float = 0.1):
        super().__init__(shrinkage=shrinkage, contamination=contamination)

    def fit(self, X, y=None) -> "ClassConditionalMahalanobis":
        if y is None:
            raise ValueError("ClassConditionalMahalanobis.fit: needs class labels y (Tensor[N] of ints)")
        X0 = torch.as_tensor(X)
        if X0.dim() != 2:
            raise ValueError(f"ClassConditionalMahalanobis.fit: X must be 2-D [N, D], got shape {list(X0.shape)}")
        if X0.shape[1] < 1:
            raise ValueError(f"ClassConditionalMahalanobis.fit: X must have D >= 1 features, got shape {list(X0.shape)}")
        self._y = _as_labels(y, X0.shape[0], "ClassConditionalMahalanobis.fit").to(X0.device)
        return super().fit(X0)

    def _state(self) -> dict:
        return {"train": self.train_, "decision_scores": self.decision_scores_, "labels": self._y.to(self.train_.device)}

    def _state_names(self):
        return ("train", "decision_scores", "labels")

    def _fit_gaussian(self):
        classes, means, cov, a, L = tied_gaussian(self.train_, self._y, self.shrinkage, "ClassConditionalMahalanobis.fit")
        self.classes_, self.means_, self.covariance_, self.shrinkage_, self._chol = classes, means, cov, a, L
        self.location_ = means.mean(0)
        self._white_means = torch.linalg.solve_triangular(L, means.T, upper=False).T.float().contiguous()

    def _nearest_class(self, X):
        import fastad.ops as ops

        X = self._query(X, "decision_function")
        z = torch.linalg.solve_triangular(self._chol.to(X.device), X.double().T, upper=False).T
        if z.numel() and float(z.abs().amax()) > _KNN_MAX_ABS:  # the float32 k-NN's squared norms would overflow
            raise ValueError(
                f"ClassConditionalMahalanobis.decision_function: X is too far from the training data for float32 "
                f"distances (whitened values up to {float(z.abs().amax()):.3g}); give finite, comparably scaled embeddings"
            )
        return ops.knn(z.float().contiguous(), self._white_means.to(X.device), 1, "l2")

    def decision_function(self, X) -> torch.Tensor:
        """``Tensor[N]`` float32 Mahalanobis distances to the closest class mean (higher = more anomalous)."""
        return self._nearest_class(X)[0][:, 0]

    def predict_class(self, X) -> torch.Tensor:
        """``Tensor[N]`` the label of the closest class mean."""
        return self.classes_.to(X.device if isinstance(X, torch.Tensor) else "cpu")[self._nearest_class(X)[1][:, 0]]

    def _set_extra_state(self, tensors, dev):
        self._y = tensors["labels"].to(dev)
        self._fit_gaussian()


def _auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC with ties counted one half (Mann-Whitney), ``labels`` 1 = anomalous."""
    s, y = scores.double().cpu(), labels.bool().cpu()
    pos, neg = s[y], s[~y]
    gt = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return float(gt / (pos.numel() * neg.numel()))


class _Stop(Exception):
    pass


@register
class LeeMahalanobis(PooledFeaturesMixin, BaseDetector):
    """Lee et al.'s Mahalanobis detector on a backbone's layers (image-level), with the optional input
    pre-processing and feature ensemble (see the module docstring).

    Args:
        backbone, layers, weights, batch_size, device, progress: as :class:`~fastad.detectors.GaussianAD`
            (``layers`` default: the backbone's ``default_layers``).
        shrinkage: of each layer's tied covariance (``"none"``: Lee's ``EmpiricalCovariance``;
            ``"ledoit_wolf"``, ``"oas"`` or a float eps when N is not much larger than the channels).
        noise_magnitudes: the pre-processing grid of ``eps`` (``(0.0,)``: none). With more than one
            value, :meth:`calibrate` picks one; until then ``eps_`` is the first.
        ensemble: combine the per-layer scores with a logistic regression fitted by :meth:`calibrate`
            (until then, and when False: the mean over layers).

    ``fit(X, y=None)``: ``y`` are optional integer class labels of the training images (one class
    when None). Fitted: ``classes_``, ``layers_``, ``eps_``, ``ensemble_coef_`` (``Tensor[L]``,
    ``None`` until calibrated) and ``ensemble_intercept_``; :meth:`layer_scores` gives ``Tensor[N, L]``.
    """

    def __init__(self, backbone="efficientnet_lite0", layers=None, weights="default", shrinkage="none",
                 noise_magnitudes=(0.0,), ensemble: bool = False, batch_size: int = 16, device=None,
                 progress: bool = True):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.shrinkage = shrinkage
        self.noise_magnitudes = noise_magnitudes
        self.ensemble = ensemble
        self.batch_size = batch_size
        self.device = device
        self.progress = progress

    def _check_params(self) -> list[float]:
        _check_shrinkage(self.shrinkage, "LeeMahalanobis")
        grid = self.noise_magnitudes
        try:
            grid = [float(e) for e in grid]
        except (TypeError, ValueError):
            raise ValueError(f"LeeMahalanobis: noise_magnitudes must be a sequence of floats >= 0, got {grid!r}") from None
        if not grid or any(not (e >= 0) for e in grid):
            raise ValueError(f"LeeMahalanobis: noise_magnitudes must be a non-empty sequence of floats >= 0, got {self.noise_magnitudes!r}")
        return grid

    # ---- fit
    def fit(self, X, y=None) -> "LeeMahalanobis":
        """Fit the class-conditional Gaussians on training images ``X`` with optional class labels ``y``."""
        self._fit_y = y
        return super().fit(X)

    def fit_features(self, features, y=None, *, image_size=None) -> "LeeMahalanobis":
        """Fit on precomputed feature maps (``dict[layer, Tensor[B, C, h, w]]`` or batches of them) with
        optional class labels ``y: Tensor[N]``."""
        self._fit_y = y
        return super().fit_features(features, image_size=image_size)

    def _fit_stream(self, batches, timings) -> None:
        grid = self._check_params()
        timer = StageTimer(timings)
        X, dev = self._pooled_fit_features(batches, timer)
        N = X[self.layers_[0]].shape[0]
        y = torch.zeros(N, dtype=torch.long) if self._fit_y is None else _as_labels(self._fit_y, N, "LeeMahalanobis.fit")
        with timer("gaussian"):
            self._fit_levels(X, y.to(dev))
        self.eps_ = grid[0]
        self.ensemble_coef_, self.ensemble_intercept_ = None, None

    def _fit_levels(self, X: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        self._means, self._factors = {}, {}
        for k in self.layers_:
            if not bool(torch.isfinite(X[k]).all()):
                raise ValueError(f"LeeMahalanobis.fit: the training features of {k!r} hold NaN or Inf")
            classes, means, _, _, C = tied_gaussian(X[k], y, self.shrinkage, f"LeeMahalanobis.fit, layer {k!r}")
            self._means[k] = means
            L, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(C))  # precision = L L^T
            if int(info) != 0:
                raise ValueError(
                    f"LeeMahalanobis.fit, layer {k!r}: the shared covariance of {X[k].shape[0]} samples of {X[k].shape[1]} "
                    f"dims is not positive definite with shrinkage={self.shrinkage!r}; use 'ledoit_wolf' / 'oas' or a float eps > 0"
                )
            self._factors[k] = L
        self.classes_ = classes

    # ---- scoring
    def _layer_distance(self, k: str, f: torch.Tensor) -> torch.Tensor:
        """``Tensor[B]`` min over classes of the squared distance of pooled features ``f: Tensor[B, C]``."""
        f = f.double()
        L = self._factors[k].to(f.device)
        means = self._means[k].to(f.device)
        return torch.stack([_mahalanobis_sq(f, m, L) for m in means], 1).min(1).values

    def _combine(self, D: torch.Tensor) -> torch.Tensor:
        if self.ensemble and self.ensemble_coef_ is not None:
            return (D.double() @ self.ensemble_coef_.to(D.device) + self.ensemble_intercept_).float()
        return D.mean(1).float()

    def _score_batch(self, feats, image_size, want_scores, want_maps, timings):
        with StageTimer(timings)("scoring"):
            return self._combine(self._feature_layer_scores(feats)), None

    def _feature_layer_scores(self, feats) -> torch.Tensor:
        cols = []
        for k in self.layers_:
            f = feats[k].float().mean(dim=(2, 3))
            if not bool(torch.isfinite(f).all()):
                raise ValueError(f"LeeMahalanobis: the features of layer {k!r} hold NaN or Inf")
            cols.append(self._layer_distance(k, f).clamp_min(0).sqrt())
        return torch.stack(cols, 1)

    def _tap(self, x: torch.Tensor, k: str) -> torch.Tensor:
        """Pooled features ``Tensor[B, C]`` of layer ``k`` for images ``x`` (differentiable; the forward
        stops at the layer)."""
        bb = self._resolve_backbone()
        out = {}

        def hook(_m, _i, o):
            out["f"] = o[0] if isinstance(o, (tuple, list)) else o
            raise _Stop

        h = bb.model.get_submodule(k).register_forward_hook(hook)
        try:
            bb.model(x)
        except _Stop:
            pass
        finally:
            h.remove()
        f = self._as_maps({k: out["f"]}, tuple(x.shape[-2:]))[k]
        return f.float().mean(dim=(2, 3))

    def _preprocessed_layer_scores(self, batch: torch.Tensor, eps: float) -> torch.Tensor:
        """``Tensor[B, L]`` per-layer distances after Lee's input pre-processing with ``eps``."""
        bb = self._resolve_backbone()
        dev = self._run_device(batch)
        bb.model.to(dev).eval()
        x0 = batch.to(dev).float()
        cols = []
        for k in self.layers_:
            x = x0.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = self._layer_distance(k, self._tap(x, k)).sum()  # per-sample gradients: samples independent (eval)
                (g,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                d = self._layer_distance(k, self._tap(x0 - eps * torch.sign(g), k))
            cols.append(d.clamp_min(0).sqrt())
        return torch.stack(cols, 1)

    def _images_layer_scores(self, X, eps: float, what: str) -> torch.Tensor:
        self._check_fitted(what)
        if eps == 0:
            out = []
            for feats, size, out_dev in self._feature_batches(X, {}, desc=f"LeeMahalanobis: {what}"):
                self._check_features(feats, self.layers_, what)
                out.append(self._feature_layer_scores(feats).float().to(out_dev))
        else:
            out = [self._preprocessed_layer_scores(b, eps).float().to(b.device) for b in self._image_batches(X)]
        if not out:
            raise ValueError(f"LeeMahalanobis.{what}: X holds no images")
        return torch.cat(out)

    def layer_scores(self, X, eps: float | None = None) -> torch.Tensor:
        """``Tensor[N, L]`` float32 per-layer Mahalanobis distances to the closest class mean of images
        ``X``, after pre-processing with ``eps`` (default ``eps_``)."""
        return self._images_layer_scores(X, float(self.eps_ if eps is None else eps), "layer_scores")

    def decision_function(self, X) -> torch.Tensor:
        """``Tensor[N]`` image scores (higher = more anomalous): the per-layer distances after the
        pre-processing ``eps_``, combined by the ensemble when calibrated, else their mean."""
        if getattr(self, "eps_", 0.0) == 0:
            return super().decision_function(X)
        return self._combine(self.layer_scores(X))

    def score(self, X):
        """``(image scores Tensor[N], None)``: image-level, no anomaly maps."""
        return self.decision_function(X), None

    def score_map(self, X):
        raise NotImplementedError("LeeMahalanobis is image-level (pooled features): it has no anomaly maps")

    def score_features(self, features, *, image_size=None):
        """``(image scores Tensor[N], None)`` of precomputed feature maps (needs ``eps_ == 0``: the
        pre-processing runs the backbone on the images)."""
        self._check_fitted("score_features")
        if self.eps_ != 0:
            raise ValueError(f"LeeMahalanobis.score_features: eps_={self.eps_} needs the images (input pre-processing "
                             "goes through the backbone); use decision_function(images)")
        out = []
        for feats in self._as_feature_batches(features):
            self._check_features(feats, self.layers_, "score_features")
            out.append(self._combine(self._feature_layer_scores(feats)))
        return torch.cat(out), None

    def calibrate(self, X_val, y_val) -> "LeeMahalanobis":
        """Choose ``eps_`` from ``noise_magnitudes`` and (``ensemble=True``) fit the logistic regression on
        labelled validation images ``X_val`` (``y_val: Tensor[N]``, 1 = anomalous, 0 = normal; both
        needed): for each ``eps`` the per-layer scores, combined (ensemble: the regression fitted on
        them; else their mean), scored by validation AUROC; the best ``eps`` (the smallest on ties) is
        kept with its regression. The AUROC is in-sample on the validation set (as the reference):
        report test numbers on other images. Sets ``calibration_auroc_`` (``{eps: AUROC}``)."""
        grid = self._check_params()
        self._check_fitted("calibrate")
        y = torch.as_tensor(y_val)
        if y.dim() != 1 or not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"LeeMahalanobis.calibrate: y_val must be Tensor[N] of 0 (normal) / 1 (anomalous), got shape "
                             f"{list(y.shape)} {y.dtype}")
        y = y.long()
        if int(y.sum()) in (0, y.numel()):
            raise ValueError("LeeMahalanobis.calibrate: y_val must hold both 0 (normal) and 1 (anomalous) labels")
        results = {}
        best = None
        for eps in grid:
            D = self.layer_scores(X_val, eps)
            if D.shape[0] != y.numel():
                raise ValueError(f"LeeMahalanobis.calibrate: y_val has {y.numel()} labels for {D.shape[0]} images")
            coef = icpt = None
            if self.ensemble:
                from sklearn.linear_model import LogisticRegression

                lr = LogisticRegression(max_iter=1000).fit(D.double().numpy(), y.numpy())
                coef, icpt = torch.from_numpy(lr.coef_[0].copy()), float(lr.intercept_[0])
                s = D.double() @ coef + icpt
            else:
                s = D.mean(1)
            results[eps] = _auroc(s, y)
            if best is None or results[eps] > best[0]:
                best = (results[eps], eps, coef, icpt)
        _, self.eps_, self.ensemble_coef_, self.ensemble_intercept_ = best
        self.calibration_auroc_ = results
        return self

    # ---- persistence: per layer the class means and the precision factor (float64)
    def _state_tensors(self):
        t = {"classes": self.classes_}
        for i, k in enumerate(self.layers_):
            t[f"means.{i}"] = self._means[k]
            t[f"factor.{i}"] = self._factors[k]
        if self.ensemble_coef_ is not None:
            t["ensemble_coef"] = self.ensemble_coef_
        return t

    def _extra_meta(self):
        return {"eps": self.eps_, "ensemble_intercept": self.ensemble_intercept_}

    def _set_state_tensors(self, tensors, meta, path):
        n = len(self.layers_)
        expect = {"classes"} | {f"means.{i}" for i in range(n)} | {f"factor.{i}" for i in range(n)}
        if set(tensors) - {"ensemble_coef"} != expect:
            raise ModelFileError(path, f"a LeeMahalanobis file with {n} layers holds {sorted(expect)}, found {sorted(tensors)}")
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self.device_ = dev
        self.classes_ = tensors["classes"].to(dev)
        K = self.classes_.numel()
        self._means, self._factors = {}, {}
        for i, k in enumerate(self.layers_):
            C = self.layer_dims_[k]
            m, f = tensors[f"means.{i}"], tensors[f"factor.{i}"]
            if tuple(m.shape) != (K, C) or tuple(f.shape) != (C, C) or m.dtype != torch.float64 or f.dtype != torch.float64:
                raise ModelFileError(path, f"layer {k!r}: means {tuple(m.shape)} {m.dtype} / factor {tuple(f.shape)} {f.dtype}, "
                                           f"expected [{K}, {C}] / [{C}, {C}] float64")
            self._means[k], self._factors[k] = m.to(dev), f.to(dev)
        self.eps_ = float(meta.get("eps", 0.0))
        coef = tensors.get("ensemble_coef")
        if coef is not None and tuple(coef.shape) != (n,):
            raise ModelFileError(path, f"ensemble_coef is {tuple(coef.shape)}, expected [{n}]")
        self.ensemble_coef_ = None if coef is None else coef.double()
        icpt = meta.get("ensemble_intercept")
        self.ensemble_intercept_ = None if icpt is None else float(icpt)
