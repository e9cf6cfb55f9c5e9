"""Gaussian AD (Rippel, Mertens & Merhof, ICPR 2020): one Gaussian per backbone level of globally
average-pooled features; the image score is the mean over levels of the Mahalanobis distances.

Reference code ``ORippler/gaussian-ad-mvtec`` (``src/gaussian/model.py``), summarised in
``SPEC-gaussian.md`` (a): each level's feature map is reduced by spatial mean (GAP); per level the mean
and scikit-learn's ``LedoitWolf`` covariance (maximum likelihood, divided by N, shrunk) of the training
vectors; score ``d_l(x) = sqrt((x - mu_l)^T P_l (x - mu_l))``; image score = ``mean_l d_l``. The paper
uses EfficientNet-B4's 9 levels at 380 px; fastad's default backbone is EfficientNet-Lite0, whose
levels are the last block of each of its 7 stages (``_blocks.0, 2, 4, 7, 10, 14, 15``). Each level's
Gaussian is fitted by :class:`fastad.detectors.Mahalanobis` (closed-form Ledoit-Wolf, float64) and
scored through the precision factor ``L`` (``P = L L^T``). The method is image-level: :meth:`score`
returns ``(scores, None)`` and :meth:`score_map` raises.

**PCA / NPCA** (the paper's section 4.3, ``--pca`` / ``--npca --variance_threshold t``): per level,
scikit-learn's ``PCA(n_components=None)`` of the pooled training vectors (``min(N, C)`` components,
ordered by decreasing variance); ``i`` = the first index whose cumulative explained-variance ratio
exceeds ``t``; ``"pca"`` keeps components ``[0, i]`` (most variance), ``"npca"`` keeps ``[i - 1, end)``
(least variance; both deliberately share components ``i - 1`` and ``i``, as the reference code). The
reference's ``components_[i - 1:]`` with ``i = 0`` would keep only the last component; here it keeps
all (``max(i - 1, 0)``). With ``N <= C`` scikit-learn's last component is an arbitrary direction of zero
training variance (any null-space vector); fastad drops such components (keeps the rank, ``<= N - 1``). Features are projected as ``(x - mean) V^T`` before the level's Gaussian.

**Chi-square threshold** (the paper's section 3 and ``compute_mahalanobis_threshold``): under the
Gaussian model the squared distance of a normal sample at a level of ``d_l`` dimensions follows
``chi2(d_l)``, so a threshold for a false-positive rate ``fpr`` needs no anomalous data:
``t_l = sqrt(chi2.ppf(1 - fpr, d_l))`` (``level_thresholds_``). The image score averages ``L``
levels; ``chi2_rule`` says how the levels' thresholds combine into ``threshold_`` on that mean:

- ``"bonferroni"``: ``mean_l sqrt(chi2.ppf(1 - fpr / L, d_l))``. The mean can only exceed it if some
  level exceeds its own ``1 - fpr / L`` quantile, so FPR <= ``fpr`` for *any* dependence between levels
  (conservative).
- ``"independent"``: the exact ``1 - fpr`` quantile of the mean of independent chi variables
  (``sqrt(chi2(d_l))``), by numerical convolution of their probability masses on a grid of step 1e-3
  (error below 1e-3 in the threshold).
- ``"comonotone"``: ``mean_l sqrt(chi2.ppf(1 - fpr, d_l))``: exact when the levels are perfectly
  dependent (the quantile of a sum of comonotone variables is the sum of their quantiles).

The chi-square law assumes the true mean and covariance; with shrinkage and N not much larger than
``d_l`` the empirical FPR of normal test images is higher (``benchmarks/gaussian_mtd.py`` measures
it). ``threshold="quantile"`` instead takes the ``1 - fpr`` quantile of the training images' own
(in-sample) scores; ``set_threshold(normal=...)`` calibrates on held-out normal images.
"""
from __future__ import annotations

import math

import torch

from ._registry import register
from .base import BaseDetector, ModelFileError, StageTimer
from .embedding import Mahalanobis

#: Rippel's levels on EfficientNet-Lite0: the last block of each stage.
EFFICIENTNET_LITE0_LEVELS = ["_blocks.0", "_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10", "_blocks.14", "_blocks.15"]
REDUCTIONS = (None, "pca", "npca")
THRESHOLDS = (None, "quantile", "chi2")
CHI2_RULES = ("bonferroni", "independent", "comonotone")


def _mahalanobis_sq(x: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances ``Tensor[N]`` of ``x: Tensor[N, d]`` to one Gaussian with
    ``mean: Tensor[d]`` and precision ``L L^T`` (``factor = L: Tensor[d, d]``, lower triangular).
    Kept in plain torch on purpose: the fit and the chi-square checks need float64 distances (scikit-learn
    parity to 1e-10); ``fastad.ops.mahalanobis`` returns float32."""
    return ((x - mean) @ factor).square().sum(-1)


def precision_factor(covariance: torch.Tensor) -> torch.Tensor:
    """The lower-triangular ``L`` with ``L L^T = covariance^-1`` (float64), from the covariance's
    Cholesky factor (raises ``ValueError`` naming ``covariance`` if it is not positive definite)."""
    C, info = torch.linalg.cholesky_ex(covariance.double())
    if int(info) != 0:
        raise ValueError(f"precision_factor: covariance {tuple(covariance.shape)} is not positive definite")
    L, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(C))
    if int(info) != 0:
        raise ValueError(f"precision_factor: the inverse of covariance {tuple(covariance.shape)} is numerically singular")
    return L


def pca_components(X: torch.Tensor, reduction: str, variance_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean Tensor[C], components Tensor[k, C])`` (float64) of Rippel's PCA / NPCA of ``X: Tensor[N, C]``
    (see the module docstring): scikit-learn's ``PCA(n_components=None)`` components (``min(N, C)``, by
    decreasing variance), cut at the first index whose cumulative explained-variance ratio exceeds
    ``variance_threshold``."""
    X = X.double()
    N, C = X.shape
    mean = X.mean(0)
    Xc = X - mean
    ev, V = torch.linalg.eigh(Xc.T @ Xc / max(N - 1, 1))  # ascending
    # scikit-learn keeps min(N, C) components; with N <= C the last is a zero-variance direction of the null
    # space, arbitrary (solver-dependent) yet decisive for NPCA's scores: keep only the rank <= N - 1 ones
    rank = int((ev > ev.max().clamp_min(0) * 1e-10 * C).sum()) if N <= C else C
    ev, V = ev.flip(0)[:rank], V.flip(1)[:, :rank].T  # [k, C], decreasing variance
    ratio = ev.clamp_min(0) / ev.clamp_min(0).sum()
    above = (torch.cumsum(ratio, 0) > variance_threshold).nonzero()
    i = int(above[0]) if above.numel() else ev.numel() - 1
    keep = V[: i + 1] if reduction == "pca" else V[max(i - 1, 0) :]
    return mean, keep.contiguous()


def chi2_threshold(dims: list[int], fpr: float, rule: str) -> float:
    """Threshold on ``mean_l sqrt(d2_l)`` for a false-positive rate ``fpr`` when ``d2_l ~ chi2(dims[l])``,
    combined over the levels by ``rule`` (``"bonferroni"``, ``"independent"``, ``"comonotone"``; see
    the module docstring)."""
    from scipy import stats

    L = len(dims)
    if rule == "comonotone":
        return float(sum(math.sqrt(stats.chi2.ppf(1.0 - fpr, d)) for d in dims) / L)
    if rule == "bonferroni":
        return float(sum(math.sqrt(stats.chi2.ppf(1.0 - fpr / L, d)) for d in dims) / L)
    if rule != "independent":
        raise ValueError(f"chi2_threshold: rule must be one of {CHI2_RULES}, got {rule!r}")
    import numpy as np
    from scipy.signal import fftconvolve

    # distribution of the sum of independent chi(d_l) variables on a grid of step h: each as the
    # probability mass of [k h, (k + 1) h), convolved (the sum's grid offset grows by h/2 per level)
    h = 1e-3
    pmf, lo = np.ones(1), 0.0
    for d in dims:
        a, b = stats.chi.ppf(1e-12, d), stats.chi.ppf(1 - 1e-12, d)
        k0 = int(np.floor(a / h))
        edges = (np.arange(k0, int(np.ceil(b / h)) + 2)) * h
        p = np.diff(stats.chi.cdf(edges, d))
        pmf = fftconvolve(pmf, p).clip(min=0)
        lo += k0 * h
    cdf = np.cumsum(pmf) / pmf.sum()
    j = int(np.searchsorted(cdf, 1.0 - fpr))
    return float((lo + (j + 0.5 * L) * h) / L)  # a sum cell J spans [lo + J h, lo + (J + L) h): its midpoint


class PooledFeaturesMixin:
    """Fit-time gathering of globally average-pooled feature maps per layer, for the image-level
    Gaussian detectors (GaussianAD, LeeMahalanobis); a mixin of :class:`BaseDetector`."""

    def _pooled_fit_features(self, batches, timer: StageTimer) -> tuple[dict[str, torch.Tensor], torch.device]:
        """``({layer: Tensor[N, C]} float32, device)`` of the training batches' pooled maps."""
        pooled, dev = None, None
        for feats in batches:
            if self.layers_ is None:
                dev = self._start_fit(feats)
                pooled = {k: [] for k in self.layers_}
            self._check_features(feats, self.layers_, "fit")
            with timer("aggregation"):
                for k in self.layers_:
                    pooled[k].append(feats[k].to(dev).float().mean(dim=(2, 3)))
        if pooled is None:
            raise ValueError(f"{type(self).__name__}.fit: no training images / features given")
        return {k: torch.cat(v) for k, v in pooled.items()}, dev


@register(cli="gaussian")
class GaussianAD(PooledFeaturesMixin, BaseDetector):
    """Gaussian AD: a Ledoit-Wolf Gaussian per backbone level of globally pooled features.

    Args:
        backbone: a ``fastad.features`` backbone name (default ``"efficientnet_lite0"``) or object;
            ``None`` for ``fit_features`` / ``score_features`` only.
        layers: the levels (default: the stage ends for ``efficientnet_lite0``, else the backbone's
            ``default_layers``).
        weights: passed to ``fastad.features.get_backbone``.
        shrinkage: per-level covariance shrinkage, as :class:`~fastad.detectors.Mahalanobis`
            (``"ledoit_wolf"``, Rippel's; ``"oas"``; ``"none"``; a float eps).
        reduction: ``None`` (all channels), ``"pca"`` (the components of most variance) or ``"npca"``
            (of least variance; the paper's best), cut at ``variance_threshold`` (e.g. 0.95, 0.99).
        threshold: how ``fit`` sets ``threshold_``: ``None`` (not set: call :meth:`set_threshold`),
            ``"quantile"`` (the ``1 - fpr`` quantile of the training images' in-sample scores) or
            ``"chi2"`` (from the chi-square law, no anomalous or held-out data; ``chi2_rule``).
        fpr: the target false-positive rate of ``threshold``.
        chi2_rule: ``"bonferroni"`` (FPR <= fpr for any dependence between levels),
            ``"independent"`` or ``"comonotone"`` (see the module docstring).
        batch_size, device, progress: as :class:`fastad.detectors.PatchCore`.

    Fitted attributes: ``level_models_`` (one fitted ``Mahalanobis`` per level, on the projected
    features), ``level_dims_`` (dimensions after reduction), ``level_thresholds_`` (per-level chi
    thresholds ``sqrt(chi2.ppf(1 - fpr, d_l))``), ``layers_``, ``layer_dims_``, ``image_size_``,
    ``n_fit_images_``, ``fit_timings_``, ``threshold_``. :meth:`level_scores` gives the per-level
    distances ``Tensor[N, L]``.
    """

    def __init__(self, backbone="efficientnet_lite0", layers=None, weights="default", shrinkage="ledoit_wolf",
                 reduction=None, variance_threshold: float = 0.99, threshold=None, fpr: float = 0.01,
                 chi2_rule: str = "bonferroni", batch_size: int = 16, device=None, progress: bool = True):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.shrinkage = shrinkage
        self.reduction = reduction
        self.variance_threshold = variance_threshold
        self.threshold = threshold
        self.fpr = fpr
        self.chi2_rule = chi2_rule
        self.batch_size = batch_size
        self.device = device
        self.progress = progress

    def _check_params(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"GaussianAD: reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        vt = self.variance_threshold
        if self.reduction is not None and not (isinstance(vt, (int, float)) and 0.0 < vt < 1.0):
            raise ValueError(f"GaussianAD: variance_threshold must be in (0, 1), got {vt!r}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"GaussianAD: threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        if not (isinstance(self.fpr, (int, float)) and 0.0 < self.fpr < 1.0):
            raise ValueError(f"GaussianAD: fpr must be in (0, 1), got {self.fpr!r}")
        if self.chi2_rule not in CHI2_RULES:
            raise ValueError(f"GaussianAD: chi2_rule must be one of {CHI2_RULES}, got {self.chi2_rule!r}")

    def _default_layers(self) -> list[str]:
        if self.layers is None and self.backbone is not None:
            bb = self._resolve_backbone()
            if getattr(bb, "name", None) == "efficientnet_lite0":
                return list(EFFICIENTNET_LITE0_LEVELS)
        return super()._default_layers()

    def _fit_stream(self, batches, timings) -> None:
        self._check_params()
        timer = StageTimer(timings)
        X, _ = self._pooled_fit_features(batches, timer)
        with timer("gaussian"):
            self._fit_levels(X)
        self._train_scores = self._mean_score(self._level_distances({k: self.train_[k] for k in self.layers_}))

    def _fit_from(self, batches, timings) -> None:
        super()._fit_from(batches, timings)  # resets threshold_
        self._set_fit_threshold()

    def _fit_levels(self, pooled: dict[str, torch.Tensor]) -> None:
        """Per level: (reduction) and the Gaussian of the pooled training vectors ``Tensor[N, C]``."""
        self.train_, self._proj, self.level_models_, self._factors = {}, {}, {}, {}
        for k in self.layers_:
            X = pooled[k]
            if not bool(torch.isfinite(X).all()):
                raise ValueError(f"GaussianAD.fit: the training features of {k!r} hold NaN or Inf")
            self.train_[k] = X
            if self.reduction is not None:
                if X.shape[0] < 2:
                    raise ValueError(f"GaussianAD.fit: reduction={self.reduction!r} needs >= 2 training images, got {X.shape[0]}")
                mean, V = pca_components(X, self.reduction, float(self.variance_threshold))
                self._proj[k] = (mean, V)
                X = self._project(k, X)
            sh = self.shrinkage
            positive_eps = isinstance(sh, (int, float)) and not isinstance(sh, bool) and sh > 0
            if not positive_eps and X.shape[0] >= 2 and bool((X == X[:1]).all()):
                raise ValueError(
                    f"GaussianAD.fit, level {k!r}: the pooled features of all {X.shape[0]} training images are identical "
                    f"(zero variance): the covariance is all zeros, even with shrinkage={sh!r}; give varied normal "
                    "images, or a float shrinkage eps > 0"
                )
            try:
                m = Mahalanobis(shrinkage=self.shrinkage).fit(X.float())
            except ValueError as e:
                raise ValueError(f"GaussianAD.fit, level {k!r}: {e}") from None
            try:
                factor = precision_factor(m.covariance_)
            except ValueError:
                raise ValueError(
                    f"GaussianAD.fit, level {k!r}: the covariance of {X.shape[0]} vectors of {X.shape[1]} dims is not "
                    f"positive definite with shrinkage={self.shrinkage!r}; use 'ledoit_wolf' / 'oas' or a float eps > 0"
                ) from None
            self.level_models_[k] = m
            self._factors[k] = (m.location_.double(), factor)
        self.level_dims_ = {k: int(self._factors[k][0].numel()) for k in self.layers_}
        from scipy import stats

        self.level_thresholds_ = {k: float(math.sqrt(stats.chi2.ppf(1.0 - self.fpr, d))) for k, d in self.level_dims_.items()}

    def _project(self, k: str, X: torch.Tensor) -> torch.Tensor:
        if k not in self._proj:
            return X
        mean, V = self._proj[k]
        return (X.double() - mean.to(X.device)) @ V.to(X.device).T

    def _level_distances(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """``Tensor[N, L]`` float64 Mahalanobis distances of pooled vectors, one column per level."""
        cols = []
        for k in self.layers_:
            x = self._project(k, pooled[k]).double()
            mean, L = self._factors[k]
            cols.append(_mahalanobis_sq(x, mean.to(x.device), L.to(x.device)).clamp_min(0).sqrt())
        return torch.stack(cols, 1)

    @staticmethod
    def _mean_score(d: torch.Tensor) -> torch.Tensor:
        return d.mean(1).float()

    def _set_fit_threshold(self) -> None:
        if self.threshold == "quantile":
            self.threshold_ = float(torch.quantile(self._train_scores.double().cpu(), 1.0 - float(self.fpr)))
        elif self.threshold == "chi2":
            self.threshold_ = self.chi2_threshold()

    def chi2_threshold(self, fpr: float | None = None, rule: str | None = None) -> float:
        """The chi-square threshold on the image score for ``fpr`` (default ``self.fpr``) and ``rule``
        (default ``self.chi2_rule``), from the fitted levels' dimensions; does not set ``threshold_``."""
        self._check_fitted("chi2_threshold")
        fpr = self.fpr if fpr is None else fpr
        rule = self.chi2_rule if rule is None else rule
        if not (isinstance(fpr, (int, float)) and 0.0 < fpr < 1.0):
            raise ValueError(f"GaussianAD.chi2_threshold: fpr must be in (0, 1), got {fpr!r}")
        if rule not in CHI2_RULES:
            raise ValueError(f"GaussianAD.chi2_threshold: rule must be one of {CHI2_RULES}, got {rule!r}")
        return chi2_threshold([self.level_dims_[k] for k in self.layers_], float(fpr), rule)

    def _pooled(self, feats) -> dict[str, torch.Tensor]:
        return {k: feats[k].float().mean(dim=(2, 3)) for k in self.layers_}

    def _score_batch(self, feats, image_size, want_scores, want_maps, timings):
        timer = StageTimer(timings)
        with timer("scoring"):
            pooled = self._pooled(feats)
            for k, x in pooled.items():
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"GaussianAD: the features of level {k!r} hold NaN or Inf")
            scores = self._mean_score(self._level_distances(pooled))
        return scores, None

    def score(self, X) -> tuple[torch.Tensor, None]:
        """``(image scores Tensor[N], None)``: Gaussian AD has no anomaly maps."""
        return self._score(X, True, False, "score")[0], None

    def score_map(self, X):
        raise NotImplementedError("GaussianAD is image-level (globally pooled features): it has no anomaly maps; "
                                  "use decision_function, or PaDiM / PatchCore for maps")

    def score_features(self, features, *, image_size=None):
        """``(image scores Tensor[N], None)`` of precomputed feature maps."""
        self._check_fitted("score_features")
        scores = []
        for feats in self._as_feature_batches(features):
            self._check_features(feats, self.layers_, "score_features")
            scores.append(self._score_batch(feats, None, True, False, {})[0])
        return torch.cat(scores), None

    def _chi2_threshold(self, q: float) -> float:
        """``set_threshold(method="chi2", quantile=q)``: the chi-square threshold for FPR ``1 - q`` with
        this detector's ``chi2_rule`` (see the module docstring)."""
        return chi2_threshold(list(self.level_dims_.values()), 1.0 - float(q), self.chi2_rule)

    def level_scores(self, features) -> torch.Tensor:
        """``Tensor[N, L]`` float32 per-level Mahalanobis distances of precomputed feature maps
        (``dict[layer, Tensor[B, C, h, w]]`` or an iterable of them); compare column ``l`` with
        ``level_thresholds_[layers_[l]]``."""
        self._check_fitted("level_scores")
        out = []
        for feats in self._as_feature_batches(features):
            self._check_features(feats, self.layers_, "level_scores")
            out.append(self._level_distances(self._pooled(feats)).float())
        return torch.cat(out)

    # ---- persistence: the pooled training features of each level (the reductions and Gaussians are
    # refitted on load, deterministically, in float64)
    def _state_tensors(self):
        return {f"level.{i}": self.train_[k] for i, k in enumerate(self.layers_)}

    def _extra_meta(self):
        return {"shrinkage_used": {k: m.shrinkage_ for k, m in self.level_models_.items()}}

    def _set_state_tensors(self, tensors, meta, path):
        expect = {f"level.{i}" for i in range(len(self.layers_))}
        if set(tensors) != expect:
            raise ModelFileError(path, f"a GaussianAD file with {len(self.layers_)} levels holds {sorted(expect)}, found {sorted(tensors)}")
        self._check_params()
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self.device_ = dev
        pooled = {}
        for i, k in enumerate(self.layers_):
            X = tensors[f"level.{i}"]
            if X.dim() != 2 or X.shape[1] != self.layer_dims_[k] or X.dtype != torch.float32:
                raise ModelFileError(path, f"level {k!r}: pooled features {tuple(X.shape)} {X.dtype}, expected [N, {self.layer_dims_[k]}] float32")
            pooled[k] = X.to(dev)
        self._fit_levels(pooled)
