"""Gaussian AD (Rippel, Mertens & Merhof, ICPR 2020): one Gaussian per backbone level of globally
average-pooled features; the image score is the mean over levels of the Mahalanobis distances.

Reference code ``ORippler/gaussian-ad-mvtec`` (``src/gaussian/model.py``), summarised in
``SPEC-gaussian.md`` (a): each level's feature map is reduced by spatial mean (GAP); per level the mean
and scikit-learn's ``LedoitWolf`` covariance (maximum likelihood, divided by N, shrunk) of the training
vectors; score ``d_l(x) = sqrt((x - mu_l)^T P_l (x - mu_l))``; image score = ``mean_l d_l``. The paper
uses EfficientNet-B4's 9 levels at 380 px; fastad's default backbone is EfficientNet-Lite0, whose
levels are the last block of each of its 7 stages (``_blocks.0, 2, 4, 7, 10, 14, 15``). Each level's
Gaussian is a :class:`fastad.detectors.Mahalanobis` (closed-form Ledoit-Wolf, float64 Cholesky).
The method is image-level: :meth:`score` returns ``(scores, None)`` and :meth:`score_map` raises.
"""
from __future__ import annotations

import torch

from ._registry import register
from .base import BaseDetector, ModelFileError, StageTimer
from .embedding import Mahalanobis

#: Rippel's levels on EfficientNet-Lite0: the last block of each stage.
EFFICIENTNET_LITE0_LEVELS = ["_blocks.0", "_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10", "_blocks.14", "_blocks.15"]


@register(cli="gaussian")
class GaussianAD(BaseDetector):
    """Gaussian AD: a Ledoit-Wolf Gaussian per backbone level of globally pooled features.

    Args:
        backbone: a ``fastad.features`` backbone name (default ``"efficientnet_lite0"``) or object;
            ``None`` for ``fit_features`` / ``score_features`` only.
        layers: the levels (default: the stage ends for ``efficientnet_lite0``, else the backbone's
            ``default_layers``).
        weights: passed to ``fastad.features.get_backbone``.
        shrinkage: per-level covariance shrinkage, as :class:`~fastad.detectors.Mahalanobis`
            (``"ledoit_wolf"``, Rippel's; ``"oas"``; ``"none"``; a float eps).
        batch_size, device, progress: as :class:`fastad.detectors.PatchCore`.

    Fitted attributes: ``level_models_`` (one fitted ``Mahalanobis`` per level), ``layers_``,
    ``layer_dims_``, ``image_size_``, ``n_fit_images_``, ``fit_timings_``, ``threshold_``.
    """

    def __init__(self, backbone="efficientnet_lite0", layers=None, weights="default", shrinkage="ledoit_wolf",
                 batch_size: int = 16, device=None, progress: bool = True):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.shrinkage = shrinkage
        self.batch_size = batch_size
        self.device = device
        self.progress = progress

    def _default_layers(self) -> list[str]:
        if self.layers is None and self.backbone is not None:
            bb = self._resolve_backbone()
            if getattr(bb, "name", None) == "efficientnet_lite0":
                return list(EFFICIENTNET_LITE0_LEVELS)
        return super()._default_layers()

    def _fit_stream(self, batches, timings) -> None:
        timer = StageTimer(timings)
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
            raise ValueError("GaussianAD.fit: no training images / features given")
        with timer("gaussian"):
            self.level_models_ = {}
            for k in self.layers_:
                X = torch.cat(pooled[k])
                if not bool(torch.isfinite(X).all()):
                    raise ValueError(f"GaussianAD.fit: the training features of {k!r} hold NaN or Inf")
                try:
                    self.level_models_[k] = Mahalanobis(shrinkage=self.shrinkage).fit(X)
                except ValueError as e:
                    raise ValueError(f"GaussianAD.fit, level {k!r}: {e}") from None

    def _score_batch(self, feats, image_size, want_scores, want_maps, timings):
        timer = StageTimer(timings)
        with timer("scoring"):
            d = [self.level_models_[k].decision_function(feats[k].float().mean(dim=(2, 3))) for k in self.layers_]
            scores = torch.stack(d).mean(0)
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
        """The image score is the mean over levels of Mahalanobis distances, each chi(C_l) under the
        fitted model: its ``q`` quantile by Monte Carlo (200,000 seeded draws, levels independent)."""
        dfs = [int(self.layer_dims_[k]) for k in self.layers_]
        g = torch.Generator().manual_seed(0)
        n = 200_000
        total = torch.zeros(n, dtype=torch.float64)
        for d in dfs:  # chi2(d) = sum of d squared normals, drawn in chunks of dimensions
            acc = torch.zeros(n, dtype=torch.float64)
            for s in range(0, d, 64):
                acc += torch.randn(n, min(64, d - s), generator=g, dtype=torch.float64).square().sum(1)
            total += acc.sqrt()
        return float(torch.quantile(total / len(dfs), float(q)))

    # ---- persistence: the pooled training features of each level (the Gaussians are refitted on load,
    # deterministically, in float64)
    def _state_tensors(self):
        return {f"level.{i}": self.level_models_[k].train_ for i, k in enumerate(self.layers_)}

    def _extra_meta(self):
        return {"shrinkage_used": {k: m.shrinkage_ for k, m in self.level_models_.items()}}

    def _set_state_tensors(self, tensors, meta, path):
        expect = {f"level.{i}" for i in range(len(self.layers_))}
        if set(tensors) != expect:
            raise ModelFileError(path, f"a GaussianAD file with {len(self.layers_)} levels holds {sorted(expect)}, found {sorted(tensors)}")
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self.device_ = dev
        self.level_models_ = {}
        for i, k in enumerate(self.layers_):
            X = tensors[f"level.{i}"]
            if X.dim() != 2 or X.shape[1] != self.layer_dims_[k] or X.dtype != torch.float32:
                raise ModelFileError(path, f"level {k!r}: pooled features {tuple(X.shape)} {X.dtype}, expected [N, {self.layer_dims_[k]}] float32")
            self.level_models_[k] = Mahalanobis(shrinkage=self.shrinkage).fit(X.to(dev))
