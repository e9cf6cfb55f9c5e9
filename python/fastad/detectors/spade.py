"""SPADE (Cohen & Hoshen, 2020): image k-NN retrieval, then patch 1-NN among the retrieved images.

There is no official code; the common reference is ``byungjae89/SPADE-pytorch`` (``src/main.py``),
summarised in ``SPEC-gaussian.md`` (f):

- Image score: mean Euclidean distance from the test image's globally average-pooled feature to its
  ``K`` nearest training images' pooled features (the paper uses ``K = 50``).
- Pixel score, per layer: the gallery is every spatial feature of the ``K`` retrieved training images;
  each test position takes its minimum Euclidean distance to the gallery; the per-layer maps are
  resized bilinearly (``align_corners=False``) to the image size and averaged over layers, then a
  Gaussian blur of sigma 4 (scipy ``gaussian_filter``: border ``"symmetric"`` here).
- The reference walks the gallery in chunks with ``range(G // 100)`` and so silently drops the last
  ``G mod 100`` gallery features; fastad searches the whole gallery (no such bug).

fastad searches each test image's gallery (``K * h * w`` rows, gathered from the stored training
patches with their cached squared norms) with the blocked exact :func:`fastad.ops.knn`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._registry import register
from ._screen import detector_screen
from .base import BaseDetector, ModelFileError, StageTimer
from ._maps import BORDER_MODES, gaussian_blur


@register(cli="spade")
class SPADE(BaseDetector):
    """Semantic Pyramid Anomaly Detection.

    Args:
        backbone: ``fastad.features`` backbone name or ``Backbone`` object (``None``: features only).
        k_images: ``K``, training images retrieved per test image (clamped to the training-set size).
        layers: taps whose patches give the pixel maps (default: the backbone's ``default_layers``).
        global_layer: tap whose global average pool gives the image feature (default: the last of
            ``layers``; the paper uses the backbone's final pooled feature).
        weights: passed to ``fastad.features.get_backbone``.
        blur_sigma: Gaussian sigma of the map; ``0``/``None`` = none.
        blur_border: border mode (default ``"symmetric"`` = scipy's default, as the reference).
        batch_size, device, progress: as :class:`fastad.detectors.PatchCore`.

    Fitted attributes: ``train_global_`` (``Tensor[N, C_g]``), ``train_patches_`` (dict layer ->
    ``Tensor[N, h*w, C]``), ``layers_``, ``layer_dims_``, ``global_layer_``, ``feature_grids_``,
    ``image_size_``, ``n_fit_images_``, ``threshold_``.
    """

    def __init__(
        self,
        backbone="efficientnet_lite0",
        k_images: int = 50,
        layers=None,
        global_layer: str | None = None,
        weights="default",
        blur_sigma: float | None = 4.0,
        blur_border: str = "symmetric",
        batch_size: int = 16,
        device=None,
        progress: bool = True,
    ):
        self.backbone = backbone
        self.k_images = k_images
        self.layers = layers
        self.global_layer = global_layer
        self.weights = weights
        self.blur_sigma = blur_sigma
        self.blur_border = blur_border
        self.batch_size = batch_size
        self.device = device
        self.progress = progress

    def _check_params(self):
        if not (isinstance(self.k_images, int) and self.k_images >= 1):
            raise ValueError(f"SPADE: k_images must be an int >= 1, got {self.k_images!r}")
        if self.blur_border not in BORDER_MODES:
            raise ValueError(f"SPADE: blur_border must be one of {BORDER_MODES}, got {self.blur_border!r}")

    def _global_name(self, layers: list[str]) -> str:
        return str(self.global_layer) if self.global_layer is not None else layers[-1]

    def _layers_to_extract(self) -> list[str]:
        if self._is_fitted():
            return self._layers_to_extract_fitted()
        layers = self._default_layers()
        g = self._global_name(layers)
        return layers + ([g] if g not in layers else [])

    def _layers_to_extract_fitted(self) -> list[str]:
        return list(self.layers_) + ([self.global_layer_] if self.global_layer_ not in self.layers_ else [])

    # ------------------------------------------------------------------ fit
    def _fit_stream(self, batches, timings):
        self._check_params()
        timer = StageTimer(timings)
        glob, patches, dev = [], None, None
        for feats in batches:
            if self.layers_ is None:
                if self._pending_layers is not None:  # fit(X), or layers given
                    layers = self._default_layers()
                else:  # fit_features without layers: every given layer but an explicit global one
                    layers = [x for x in feats if x != self.global_layer] or list(feats)
                self.layers_ = layers
                self.global_layer_ = self._global_name(layers)
                self._check_features(feats, self._layers_to_extract_fitted(), "fit")
                self.layer_dims_ = {k: int(feats[k].shape[1]) for k in self._layers_to_extract_fitted()}
                dev = self._run_device(feats[layers[0]])
                self.device_ = dev
                patches = {k: [] for k in layers}
                self.feature_grids_ = {k: tuple(int(s) for s in feats[k].shape[-2:]) for k in layers}
            self._check_features(feats, self._layers_to_extract_fitted(), "fit")
            with timer("aggregation"):
                glob.append(feats[self.global_layer_].to(dev).float().mean(dim=(2, 3)))
                for k in self.layers_:
                    f = feats[k].to(dev).float()
                    if tuple(f.shape[-2:]) != self.feature_grids_[k]:
                        raise ValueError(f"SPADE.fit: layer {k!r} grids differ between batches")
                    patches[k].append(f.flatten(2).transpose(1, 2))  # [B, h*w, C]
        if not glob:
            raise ValueError("SPADE.fit: no training images / features given")
        with timer("aggregation"):
            self.train_global_ = torch.cat(glob).contiguous()
            self.train_patches_ = {k: torch.cat(v).contiguous() for k, v in patches.items()}
        for k, v in [("global", self.train_global_), *self.train_patches_.items()]:
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"SPADE.fit: the training features of {k!r} hold NaN or Inf")
        self._cache_norms()
        g2 = self.train_global_.square().sum(1)
        for k, v in [("global", g2), *self._patch_norms.items()]:
            if not bool(torch.isfinite(v).all()):  # the k-NN's |x|^2 - 2 x.y + |y|^2 would overflow at scoring
                raise ValueError(f"SPADE.fit: the training features of {k!r} are too large for float32 distances (their "
                                 "squared norms overflow); give finite, normalised images / features")

    def _cache_norms(self):
        self._patch_norms = {k: v.square().sum(2) for k, v in self.train_patches_.items()}  # [N, h*w]

    # ------------------------------------------------------------------ scoring
    def _score_batch(self, feats, image_size, want_scores, want_maps, timings):
        import fastad.ops as ops

        timer = StageTimer(timings)
        dev = self.train_global_.device
        with timer("scoring"):
            g = feats[self.global_layer_].to(dev).float().mean(dim=(2, 3))
            N = self.train_global_.shape[0]
            K = min(int(self.k_images), N)
            screen = detector_screen()
            gd, gi = ops.knn(g.contiguous(), self.train_global_, K, "l2", screen=screen)  # [B, K]
            scores = gd.mean(1)
        maps = None
        if want_maps:
            B = g.shape[0]
            total = None
            for k in self.layers_:
                with timer("scoring"):
                    q = feats[k].to(dev).float()
                    h, w = q.shape[-2:]
                    if (h, w) != tuple(self.feature_grids_[k]):
                        raise ValueError(
                            f"SPADE: layer {k!r} has a {h}x{w} grid but the model was fitted on {self.feature_grids_[k]}"
                        )
                    q = q.flatten(2).transpose(1, 2)  # [B, h*w, C]
                    bank, norms = self.train_patches_[k], self._patch_norms[k]
                    layer_map = torch.empty(B, h * w, device=dev)
                    for b in range(B):
                        # the whole gallery of the K retrieved images: K * h * w rows (no remainder dropped)
                        gallery = bank.index_select(0, gi[b]).reshape(-1, bank.shape[2])
                        gnorm = norms.index_select(0, gi[b]).reshape(-1)
                        d, _ = ops.knn(q[b].contiguous(), gallery, 1, "l2", bank_norms=gnorm, screen=screen)
                        layer_map[b] = d[:, 0]
                with timer("maps"):
                    up = F.interpolate(layer_map.view(B, 1, h, w), size=tuple(image_size), mode="bilinear", align_corners=False)
                    total = up if total is None else total + up
            with timer("maps"):
                maps = gaussian_blur(total / len(self.layers_), self.blur_sigma, self.blur_border)[:, 0]
        return scores, maps

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self):
        out = {"train_global": self.train_global_}
        for i, k in enumerate(self.layers_):
            out[f"patches.{i}"] = self.train_patches_[k]
        return out

    def _extra_meta(self):
        return {"global_layer": self.global_layer_, "feature_grids": {k: list(v) for k, v in self.feature_grids_.items()}}

    def _set_state_tensors(self, tensors, meta, path):
        self.global_layer_ = str(meta["global_layer"])
        self.feature_grids_ = {str(k): tuple(int(x) for x in v) for k, v in meta["feature_grids"].items()}
        expected = {"train_global"} | {f"patches.{i}" for i in range(len(self.layers_))}
        if set(tensors) != expected:
            raise ModelFileError(path, f"a SPADE file with {len(self.layers_)} layers holds {sorted(expected)}, found {sorted(tensors)}")
        g = tensors["train_global"]
        cg = self.layer_dims_.get(self.global_layer_)
        if g.dim() != 2 or g.shape[1] != cg:
            raise ModelFileError(path, f"train_global is {tuple(g.shape)}, expected [N, {cg}] for layer {self.global_layer_!r}")
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self.device_ = dev
        self.train_global_ = g.to(dev)
        self.train_patches_ = {}
        for i, k in enumerate(self.layers_):
            p = tensors[f"patches.{i}"]
            h, w = self.feature_grids_[k]
            if p.dim() != 3 or tuple(p.shape) != (g.shape[0], h * w, self.layer_dims_[k]):
                raise ModelFileError(
                    path, f"patches of layer {k!r} are {tuple(p.shape)}, expected ({g.shape[0]}, {h * w}, {self.layer_dims_[k]})"
                )
            self.train_patches_[k] = p.to(dev)
        self._cache_norms()
