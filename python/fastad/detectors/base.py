"""The detector base class: scikit-learn / PyOD conventions, input handling, thresholds, save/load.

Conventions (scikit-learn / PyOD):

- ``__init__`` stores hyper-parameters only (no work, no validation beyond what is cheap);
  ``get_params`` / ``set_params`` read and write them.
- ``fit(X)`` returns ``self`` and sets attributes ending in ``_`` (``memory_bank_``, ``layers_``, ...).
- ``decision_function(X)`` -> ``Tensor[B]`` image scores, higher = more anomalous;
  ``score_map(X)`` -> ``Tensor[B, H, W]`` pixel scores at the input image size;
  ``score(X)`` -> both in one pass; ``predict(X)`` -> ``bool Tensor[B]`` (``score > threshold_``).
- Every output is on the device of the input.

``X`` may be a normalised image batch ``Tensor[B, 3, H, W]`` (or one image ``Tensor[3, H, W]``), an
iterable of such batches (or of dicts with an ``"image"`` entry), or a dataset (anything with
``__len__`` and ``__getitem__`` returning a dict with ``"image"``, e.g. ``fastad.data.MVTecDataset``).
``fit_features`` / ``score_features`` take precomputed feature maps ``dict[layer, Tensor[B, C, h, w]]``
(or an iterable of such dicts) and bypass the backbone.

Persistence: one ``.safetensors`` file. The tensors are the fitted state; the header's metadata
holds one JSON document (hyper-parameters, backbone name, layers and their channel counts, image size,
threshold, fastad version, format version and a SHA-256 of every tensor). Never pickle.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import nonfinite_as_value_error
from ._io import FORMAT_VERSION, ModelFileError, write_model_file
from ._io import load as load_model_file
from ._threshold import ThresholdMixin
from ._tiled import TilingMixin

from ._util import NotFittedError, StageTimer, progress_bar

__all__ = ["BaseDetector", "FORMAT_VERSION", "ModelFileError", "NotFittedError", "StageTimer"]


MIXED_SIZES_HINT = ("; images of different aspect ratios (e.g. resize 'keep-aspect'): letterbox them to one size "
                    "(resize 'pad' / --resize pad), tile them (--resize none --tile S), or use PatchCore, whose fit "
                    "accepts mixed sizes")


class BaseDetector(TilingMixin, ThresholdMixin):
    """Base of fastad's image anomaly detectors (see the module docstring for the conventions).

    Subclasses implement ``_layers_to_extract()``, ``_fit_stream(batches)`` and
    ``_score_batch(features, image_size, want_scores, want_maps)`` and list the tensors of their
    fitted state in ``_state_tensors()`` / ``_set_state_tensors()``.
    """

    #: whether ``fit`` accepts images of different sizes (batches of one size each; e.g. ``resize="keep-aspect"``
    #: on images of different aspect ratios): PatchCore's bank pools patches of any grid; per-position
    #: models (PaDiM) need one grid
    _FIT_SIZES_MAY_VARY = False

    # ------------------------------------------------------------------ parameters (sklearn)
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "BaseDetector":
        """Set hyper-parameters (takes effect at the next ``fit``)."""
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"{type(self).__name__}.set_params: unknown parameter {k!r}; valid: {sorted(valid)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        parts = []
        for name, p in sig.parameters.items():
            if name == "self":
                continue
            v = getattr(self, name, p.default)
            if p.default is inspect.Parameter.empty or v is not p.default and v != p.default:
                parts.append(f"{name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # ------------------------------------------------------------------ fitted-state checks
    def _is_fitted(self) -> bool:
        return getattr(self, "layers_", None) is not None

    def _check_fitted(self, what: str) -> None:
        if not self._is_fitted():
            raise NotFittedError(
                f"{type(self).__name__}.{what}: this detector is not fitted yet; call fit(X) or fit_features(...) "
                "first (or fastad.detectors.load(path))"
            )

    def _reset(self) -> None:
        for name in list(vars(self)):
            if name.endswith("_") and not name.startswith("__"):
                delattr(self, name)
        self._backbone_obj = None
        self._extractor = None

    # ------------------------------------------------------------------ backbone and extraction
    def _backbone_name(self) -> str | None:
        bb = self.backbone
        if isinstance(bb, str):
            return bb
        return getattr(bb, "name", None) or type(getattr(bb, "model", bb)).__name__

    def _resolve_backbone(self):
        """The Backbone object (``model``, ``default_layers``, ...) for ``self.backbone``."""
        if getattr(self, "_backbone_obj", None) is not None:
            return self._backbone_obj
        bb = self.backbone
        if isinstance(bb, str):
            if getattr(self, "custom_backbone_", False):
                raise ValueError(
                    f"{type(self).__name__}: this model was fitted with a custom backbone {bb!r}; pass the same "
                    "backbone object: fastad.detectors.load(path, backbone=...)"
                )
            try:
                from fastad.features import get_backbone
            except ImportError as e:  # pragma: no cover - fastad.features is part of the package
                raise ImportError(f"{type(self).__name__}: fastad.features is needed to extract features ({e})") from e
            bb = get_backbone(bb, weights=getattr(self, "weights", "default"))
        elif bb is None:
            raise ValueError(
                f"{type(self).__name__}: no backbone; give backbone=<name or Backbone>, or use fit_features/score_features"
            )
        if not hasattr(bb, "model"):
            raise TypeError(
                f"{type(self).__name__}: backbone must be a name or a fastad.features Backbone (with .model and "
                f".default_layers), got {type(bb).__name__}"
            )
        self._backbone_obj = bb
        return bb

    def _default_layers(self) -> list[str]:
        layers = getattr(self, "layers", None)
        if layers is not None:
            return [str(x) for x in ([layers] if isinstance(layers, str) else layers)]
        bb = self._resolve_backbone()
        return [str(x) for x in bb.default_layers]

    def _layers_to_extract(self) -> list[str]:
        """Backbone taps the detector needs (defaults: ``layers`` or the backbone's default layers)."""
        return self._default_layers()

    def _run_device(self, like: torch.Tensor | None) -> torch.device:
        if getattr(self, "device_", None) is not None:
            return self.device_
        if self.device is not None:
            return torch.device(self.device)
        return like.device if like is not None else torch.device("cpu")

    def _get_extractor(self, device: torch.device):
        ext = getattr(self, "_extractor", None)
        if ext is not None and getattr(self, "_extractor_device", None) == device:
            return ext
        from fastad.features import FeatureExtractor

        bb = self._resolve_backbone()
        # CNNs on CPU run in channels_last (NHWC): oneDNN's depthwise/pointwise convolutions are ~1.5-2x
        # faster that way (EfficientNet-Lite0, 224 px, 1 thread). FeatureExtractor converts the module
        # in place (as it moves it to the device) and hands back NCHW-contiguous maps.
        channels_last = getattr(bb, "kind", "cnn") == "cnn" and device.type == "cpu"
        ext = FeatureExtractor(
            bb.model, self._layers_to_extract(), batch_size=self.batch_size, device=device, progress=False,
            channels_last=channels_last,
        )
        self._extractor, self._extractor_device = ext, device
        return ext

    # ------------------------------------------------------------------ input handling
    def _image_batches(self, X, ragged: bool = False) -> Iterator[torch.Tensor]:
        """Yield ``Tensor[b, 3, H, W]`` batches of at most ``batch_size`` images from any accepted ``X``
        (``ragged``: a fastad dataset's images may differ in size, batches are split where it changes)."""
        bs = max(1, int(self.batch_size))
        name = type(self).__name__

        def as_image(t, where):
            if isinstance(t, Mapping):
                if "image" not in t:
                    raise TypeError(f"{name}: {where} is a dict without an 'image' entry")
                t = t["image"]
            if isinstance(t, np.ndarray):  # numpy images: as scikit-learn, taken as they are (CPU tensors)
                t = torch.from_numpy(np.ascontiguousarray(t))
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: {where} must be an image Tensor, got {type(t).__name__}")
            if t.dim() == 3:
                t = t.unsqueeze(0)
            if t.dim() != 4:
                raise ValueError(f"{name}: images must be Tensor[B, C, H, W] or Tensor[C, H, W], got {tuple(t.shape)}")
            if not t.is_floating_point():  # e.g. uint8 0..255 pixels: the backbone needs normalised floats
                raise TypeError(
                    f"{name}: {where} must be a floating-point image Tensor (normalised, e.g. MVTecDataset's), got "
                    f"{t.dtype}; convert it: x.float() / 255, then normalise with the backbone's mean / std"
                )
            if t.shape[-1] < 1 or t.shape[-2] < 1:
                raise ValueError(f"{name}: {where} has an empty image size {tuple(t.shape[-2:])}; images need H, W >= 1")
            want = self._image_channels()
            if want is not None and t.shape[1] != want:
                raise ValueError(
                    f"{name}: {where} must have {want} channels (Tensor[B, {want}, H, W]) for the backbone, got "
                    f"{t.shape[1]} (shape {tuple(t.shape)})"
                )
            return t

        if isinstance(X, np.ndarray):
            X = torch.from_numpy(np.ascontiguousarray(X))
        if isinstance(X, torch.Tensor):
            X = as_image(X, "X")
            for s in range(0, X.shape[0], bs):
                yield X[s : s + bs]
            return
        if isinstance(X, Mapping):
            yield from self._image_batches(as_image(X, "X"))
            return
        if hasattr(X, "__len__") and hasattr(X, "__getitem__") and not isinstance(X, (list, tuple)):
            # a dataset of single items (e.g. fastad.data.MVTecDataset)
            try:
                from fastad.data import batches
            except ImportError:  # pragma: no cover
                batches = None
            if batches is not None and hasattr(X, "paths"):
                # fastad.data datasets: fastad.data.batches skips unreadable images with a warning
                # naming them (scores then follow the readable images, in order)
                for j, b in enumerate(batches(X, bs, ragged=ragged)):
                    yield as_image(b, f"batch {j}")
                return
            n = len(X)
            for s in range(0, n, bs):
                items = [as_image(X[i], f"item {i} of the dataset") for i in range(s, min(n, s + bs))]
                yield torch.cat(items, dim=0)
            return
        if isinstance(X, Iterable):
            for j, b in enumerate(X):
                b = as_image(b, f"batch {j}")
                for s in range(0, b.shape[0], bs):
                    yield b[s : s + bs]
            return
        raise TypeError(
            f"{type(self).__name__}: X must be an image Tensor[B, 3, H, W], an iterable of batches or a dataset, "
            f"got {type(X).__name__}"
        )

    def _image_channels(self) -> int | None:
        """Channels the backbone takes (the length of its normalisation ``mean``), None when unknown."""
        if getattr(self, "backbone", None) is None:
            return None
        try:
            mean = getattr(self._resolve_backbone(), "mean", None)
        except (ValueError, TypeError, ImportError):  # reported where the backbone is used
            return None
        try:
            return len(mean) if mean is not None else None
        except TypeError:
            return None

    def _n_images(self, X) -> int | None:
        if isinstance(X, np.ndarray):
            return 1 if X.ndim == 3 else (X.shape[0] if X.ndim else None)
        if isinstance(X, torch.Tensor):
            return 1 if X.dim() == 3 else X.shape[0]
        try:
            return len(X) if not isinstance(X, Mapping) else 1
        except TypeError:
            return None

    def _feature_batches(self, X, timings: dict[str, float], desc: str):
        """Yield ``(features dict, (H, W), input device)`` per image batch, timing the extraction."""
        tiler = self._tiler()
        if tiler is not None:  # tiled: chunks of tiles (see _tiled.py)
            for feats, size, dev, *_ in self._tile_feature_batches(X, timings, tiler):
                yield feats, size, dev
            return
        timer = StageTimer(timings)
        n = self._n_images(X)
        total = None if n is None else math.ceil(n / max(1, int(self.batch_size)))
        it = self._image_batches(X)
        p = getattr(self, "progress", False)  # "coreset" (PatchCore): only the coreset's bar
        for batch in progress_bar(it, enabled=bool(p) and p != "coreset", desc=desc, total=total):
            device = self._run_device(batch)
            with timer("extraction"), torch.no_grad():
                feats = self._as_maps(self._get_extractor(device)(batch.to(device)), tuple(batch.shape[-2:]))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            yield feats, tuple(batch.shape[-2:]), batch.device

    def _as_maps(self, feats: dict[str, torch.Tensor], image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """ViT taps ``Tensor[B, 1 + L, C]`` (CLS first) -> patch-token maps ``Tensor[B, C, h, w]``.

        ``h, w = H // patch_size, W // patch_size``; the last ``h * w`` tokens are the patch tokens (in
        row-major order), the CLS (and any register) tokens before them are dropped. CNN maps pass through.
        """
        out = {}
        for k, f in feats.items():
            if f.dim() == 3:
                ps = getattr(self._resolve_backbone(), "patch_size", None)
                if not ps:
                    raise ValueError(f"{type(self).__name__}: layer {k!r} gives tokens {tuple(f.shape)} but the backbone has no patch_size")
                h, w = image_hw[0] // ps, image_hw[1] // ps
                if f.shape[1] < h * w:
                    raise ValueError(f"{type(self).__name__}: layer {k!r} has {f.shape[1]} tokens, fewer than the {h}x{w} patch grid")
                f = f[:, f.shape[1] - h * w :].transpose(1, 2).reshape(f.shape[0], f.shape[2], h, w)
            out[k] = f
        return out

    @staticmethod
    def _as_feature_batches(features) -> Iterator[dict[str, torch.Tensor]]:
        if isinstance(features, Mapping):
            if not features:
                raise ValueError("features must be a dict[layer, Tensor[B, C, h, w]] with at least one layer, got an empty dict")
            yield dict(features)
            return
        if isinstance(features, Iterable):
            for j, f in enumerate(features):
                if not isinstance(f, Mapping):
                    raise TypeError(f"features: batch {j} must be a dict[layer, Tensor[B, C, h, w]], got {type(f).__name__}")
                if not f:
                    raise ValueError(f"features: batch {j} is an empty dict; it must map layers to Tensor[B, C, h, w]")
                yield dict(f)
            return
        raise TypeError(f"features must be a dict[layer, Tensor[B, C, h, w]] or an iterable of them, got {type(features).__name__}")

    def _check_features(self, feats: Mapping[str, torch.Tensor], layers: list[str], where: str) -> None:
        missing = [layer for layer in layers if layer not in feats]
        if missing:
            raise KeyError(f"{type(self).__name__}.{where}: features lack layer(s) {missing}; given {sorted(feats)}")
        B = None
        for layer in layers:
            f = feats[layer]
            if not isinstance(f, torch.Tensor) or f.dim() != 4:
                raise ValueError(
                    f"{type(self).__name__}.{where}: features[{layer!r}] must be Tensor[B, C, h, w], got "
                    f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}"
                )
            if B is None:
                B = f.shape[0]
            elif f.shape[0] != B:
                raise ValueError(f"{type(self).__name__}.{where}: layers disagree on the batch size ({B} vs {f.shape[0]})")
            dims = getattr(self, "layer_dims_", None)
            if dims is not None and layer in dims and f.shape[1] != dims[layer]:
                raise ValueError(
                    f"{type(self).__name__}.{where}: features of layer {layer!r} have {f.shape[1]} channels but the model "
                    f"was fitted with {dims[layer]} (another backbone or layer? fitted backbone: {getattr(self, 'backbone_name_', None)!r})"
                )
            if not torch.is_floating_point(f):
                raise ValueError(f"{type(self).__name__}.{where}: features[{layer!r}] must be floating point, got {f.dtype}")
            if min(f.shape[1:]) < 1:
                raise ValueError(f"{type(self).__name__}.{where}: features[{layer!r}] must have C, h, w >= 1, got "
                                 f"{tuple(f.shape)}")

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None) -> "BaseDetector":
        """Fit on normal images (``y`` is ignored; present for scikit-learn compatibility). Returns ``self``."""
        self._reset()
        self.backbone_name_ = self._backbone_name()
        self.custom_backbone_ = not isinstance(self.backbone, str)
        self.layers_ = None
        self.tiling_ = getattr(self, "_tiling_cfg", None)
        if (self.tiling_ or {}).get("fuse", {}).get("stats") is not None:  # a loaded model's calibration is not this fit's
            self.tiling_ = {**self.tiling_, "fuse": {k: v for k, v in self.tiling_["fuse"].items() if k != "stats"}}
        self._pending_layers = self._layers_to_extract()
        timings: dict[str, float] = {}
        sizes = []
        self._fuse_stash = [] if (self.tiling_ or {}).get("fuse") else None

        def stream():
            for feats, size, _ in self._feature_batches(X, timings, desc=f"{type(self).__name__} fit: features"):
                sizes.append(size)
                yield feats

        self._fit_from(self._counting(stream()), timings)
        if not sizes:
            self.layers_ = None
            raise ValueError(f"{type(self).__name__}.fit: X holds no images")
        if len(set(sizes)) != 1 and not (self._FIT_SIZES_MAY_VARY and self.tiling_ is None):
            raise ValueError(f"{type(self).__name__}.fit: images must all have one size, got {sorted(set(sizes))}"
                             f"{MIXED_SIZES_HINT}")
        self.image_size_ = tuple(int(s) for s in sizes[0])  # sizes vary (PatchCore): the first batch's
        if self.tiling_ is not None:  # image_size_ is the tile's; count images and tiles apart
            self.n_fit_tiles_, self.n_fit_images_ = self.n_fit_images_, self._n_tiled_images
        if self._fuse_stash is not None:  # tiling with fuse="global": fit the global model too
            t0 = time.perf_counter()
            try:
                self._fit_global(self._fuse_stash)
            finally:
                self._fuse_stash = None
            self.fit_timings_ = {**(getattr(self, "fit_timings_", None) or {}), "global": time.perf_counter() - t0}
        return self

    def fit_features(self, features, *, image_size: tuple[int, int] | None = None) -> "BaseDetector":
        """Fit on precomputed feature maps, bypassing the backbone.

        Args:
            features: ``dict[layer, Tensor[B, C, h, w]]`` or an iterable of such dicts (batches). ViT
                tokens must be reshaped to maps by the caller.
            image_size: ``(H, W)`` of the images the features came from (the default map size).

        The ``backbone`` hyper-parameter is recorded as the features' origin when saving: set it to
        the backbone that produced them (or ``None``). ``layers`` default to the dict's keys in order.
        """
        self._reset()
        self.backbone_name_ = self._backbone_name() if self.backbone is not None else None
        self.custom_backbone_ = self.backbone is not None and not isinstance(self.backbone, str)
        self.layers_ = None
        layers = self.layers
        self._pending_layers = None if layers is None else [str(x) for x in ([layers] if isinstance(layers, str) else layers)]
        self._fit_from(self._counting(self._as_feature_batches(features)), {})
        self.image_size_ = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        return self

    def _counting(self, batches):
        """Pass feature batches through, counting images into ``n_fit_images_``."""
        self.n_fit_images_ = 0
        for feats in batches:
            first = next(iter(feats.values()), None)
            self.n_fit_images_ += 0 if first is None else int(first.shape[0])
            yield feats

    def _fit_from(self, batches: Iterable[dict[str, torch.Tensor]], timings: dict[str, float]) -> None:
        t0 = time.perf_counter()
        try:
            with self._nonfinite_as_value_error("fit"):
                self._fit_stream(batches, timings)
        except BaseException:
            self.layers_ = None
            raise
        timings["total"] = time.perf_counter() - t0
        self.fit_timings_ = timings
        self.threshold_ = None

    def _fit_stream(self, batches, timings):  # pragma: no cover - abstract
        raise NotImplementedError

    def _start_fit(self, feats: Mapping[str, torch.Tensor]) -> torch.device:
        """At the first fit batch: ``layers_`` (the pending layers or every given one), checked, their
        ``layer_dims_`` and ``device_``. Returns the device."""
        self.layers_ = self._pending_layers or list(feats)
        self._check_features(feats, self.layers_, "fit")
        self.layer_dims_ = {layer: int(feats[layer].shape[1]) for layer in self.layers_}
        self.device_ = self._run_device(feats[self.layers_[0]])
        return self.device_

    def _check_blur(self) -> None:
        """``blur_border`` in :data:`BORDER_MODES` and ``blur_sigma`` >= 0 or None."""
        from ._maps import BORDER_MODES

        name = type(self).__name__
        if self.blur_border not in BORDER_MODES:
            raise ValueError(f"{name}: blur_border must be one of {BORDER_MODES}, got {self.blur_border!r}")
        if self.blur_sigma is not None and not self.blur_sigma >= 0:
            raise ValueError(f"{name}: blur_sigma must be >= 0 or None, got {self.blur_sigma!r}")

    # ------------------------------------------------------------------ scoring
    def _score(self, X, want_scores: bool, want_maps: bool, what: str):
        self._check_fitted(what)
        if self._tiler() is not None:
            if self._fuse_cfg():
                return self._score_fused(X, want_scores, want_maps, what, self._tiler())
            return self._score_tiled(X, want_scores, want_maps, what, self._tiler())
        timings: dict[str, float] = {}
        scores, maps = [], []
        t0 = time.perf_counter()
        for feats, size, out_dev in self._feature_batches(X, timings, desc=f"{type(self).__name__}: scoring"):
            s, m = self._score_checked(feats, size, want_scores, want_maps, timings, what)
            if want_scores:
                scores.append(s.to(out_dev))
            if want_maps:
                maps.append(m.to(out_dev))
        timings["total"] = time.perf_counter() - t0
        self.score_timings_ = timings
        if not scores and not maps:
            raise ValueError(f"{type(self).__name__}.{what}: X holds no images")
        return (torch.cat(scores) if want_scores else None), (torch.cat(maps) if want_maps else None)

    def _score_checked(self, feats, size, want_scores, want_maps, timings, what):
        layers = self._layers_to_extract_fitted()
        self._check_features(feats, layers, what)
        first = feats[layers[0]]
        if first.shape[0] == 0:  # an empty batch: empty scores / maps (some detectors' ops need B >= 1)
            H, W = (int(size[0]), int(size[1])) if size is not None else (0, 0)
            return (torch.empty(0, device=first.device) if want_scores else None,
                    torch.empty(0, H, W, device=first.device) if want_maps else None)
        with self._nonfinite_as_value_error(what):
            return self._score_batch(feats, size, want_scores, want_maps, timings)

    def _nonfinite_as_value_error(self, what: str):
        """The kernels' non-finite-input ``RuntimeError`` as a ``ValueError`` naming the detector and the
        call, as the other input checks (:func:`._checks.nonfinite_as_value_error`)."""
        return nonfinite_as_value_error(
            f"{type(self).__name__}.{what}: the input's features hold NaN or Inf, or values too large for float32 "
            "arithmetic (check the input: finite, normalised values)"
        )

    def _layers_to_extract_fitted(self) -> list[str]:
        return list(self.layers_)

    def _score_batch(self, feats, image_size, want_scores, want_maps, timings):  # pragma: no cover - abstract
        raise NotImplementedError

    def decision_function(self, X) -> torch.Tensor:
        """Image anomaly scores ``Tensor[B]`` (float32, higher = more anomalous), on X's device."""
        return self._score(X, True, False, "decision_function")[0]

    def score_map(self, X) -> torch.Tensor:
        """Pixel anomaly maps ``Tensor[B, H, W]`` at the input image size, on X's device."""
        return self._score(X, False, True, "score_map")[1]

    def score(self, X) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores Tensor[B], maps Tensor[B, H, W])`` in one pass over X."""
        return self._score(X, True, True, "score")

    def score_features(self, features, *, image_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores Tensor[B], maps Tensor[B, H, W])`` from precomputed feature maps.

        Args:
            features: ``dict[layer, Tensor[B, C, h, w]]`` or an iterable of them.
            image_size: map size ``(H, W)``; defaults to the fitted ``image_size_``.
        """
        self._check_fitted("score_features")
        size = image_size if image_size is not None else getattr(self, "image_size_", None)
        if size is None:
            raise ValueError(
                f"{type(self).__name__}.score_features: image_size is unknown (the detector was fitted from features "
                "without image_size); pass image_size=(H, W)"
            )
        size = (int(size[0]), int(size[1]))
        timings: dict[str, float] = {}
        scores, maps = [], []
        t0 = time.perf_counter()
        for feats in self._as_feature_batches(features):
            dev = next(iter(feats.values())).device
            s, m = self._score_checked(feats, size, True, True, timings, "score_features")
            scores.append(s.to(dev))
            maps.append(m.to(dev))
        timings["total"] = time.perf_counter() - t0
        self.score_timings_ = timings
        if not scores:
            raise ValueError(f"{type(self).__name__}.score_features: no feature batches given")
        return torch.cat(scores), torch.cat(maps)

    # ------------------------------------------------------------------ thresholds
    def predict(self, X) -> torch.Tensor:
        """``bool Tensor[B]``: True where the image score exceeds ``threshold_``."""
        self._check_fitted("predict")
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(
                f"{type(self).__name__}.predict: no threshold set; call set_threshold(threshold) or "
                "set_threshold(normal=held_out_normal_images) first"
            )
        return self.decision_function(X) > self.threshold_

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict, path: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def _extra_meta(self) -> dict:
        return {}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted detector to ``path`` (one safetensors file with JSON metadata; no pickle)."""
        self._check_fitted("save")
        params = {}
        for k, v in self.get_params().items():
            if k == "backbone":
                v = self.backbone_name_
            elif isinstance(v, torch.device):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            try:
                json.dumps(v)
            except TypeError:
                v = repr(v)
            params[k] = v
        fields = {
            "params": params,
            "backbone": self.backbone_name_,
            "custom_backbone": bool(getattr(self, "custom_backbone_", False)),
            "layers": list(self.layers_),
            "layer_dims": {k: int(v) for k, v in self.layer_dims_.items()},
            "image_size": None if getattr(self, "image_size_", None) is None else list(self.image_size_),
            "threshold": getattr(self, "threshold_", None),
            "n_fit_images": getattr(self, "n_fit_images_", None),
            "preprocess": getattr(self, "preprocess_", None),
            "tiling": getattr(self, "tiling_", None),
            "threshold_info": getattr(self, "threshold_info_", None),
            **self._extra_meta(),
        }
        tensors = dict(self._state_tensors())
        g = getattr(self, "global_", None)  # tiling with fuse="global": the global model rides along
        if g is not None:
            tensors.update({f"global.{k}": v for k, v in g._state_tensors().items()})
            fields["global_model"] = {"layers": list(g.layers_), "layer_dims": {k: int(v) for k, v in g.layer_dims_.items()},
                                      "image_size": list(g.image_size_), "n_fit_images": getattr(g, "n_fit_images_", None),
                                      "blur_sigma": getattr(g, "blur_sigma", None),
                                      **g._extra_meta()}
        return write_model_file(path, type(self).__name__, tensors, fields)

    @classmethod
    def load(cls, path: str | os.PathLike, *, backbone=None, device=None) -> "BaseDetector":
        """Read a detector written by :meth:`save`. See :func:`fastad.detectors.load`."""
        det = load_model_file(path, backbone=backbone, device=device)
        if not isinstance(det, cls):
            raise ModelFileError(path, f"holds a {type(det).__name__}, not a {cls.__name__}")
        return det

    @classmethod
    def _from_file(cls, path: Path, meta: dict, tensors: dict[str, torch.Tensor], *, device=None, backbone=None):
        """Build a fitted detector from a verified model file (called by :func:`fastad.detectors._io.load`)."""
        try:
            params = dict(meta["params"])
            layers = [str(x) for x in meta["layers"]]
            layer_dims = {str(k): int(v) for k, v in meta["layer_dims"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(path, f"the metadata lacks or garbles {e}") from None
        if backbone is not None:
            given = backbone if isinstance(backbone, str) else (getattr(backbone, "name", None))
            if isinstance(backbone, str) and backbone != meta.get("backbone"):
                raise ModelFileError(
                    path, f"the model was fitted with backbone {meta.get('backbone')!r}, but backbone {given!r} was given"
                )
            if given is not None and meta.get("backbone") is not None and given != meta.get("backbone"):
                raise ModelFileError(
                    path, f"the model was fitted with backbone {meta.get('backbone')!r}, but backbone {given!r} was given"
                )
            params["backbone"] = backbone
        # the device the model was fitted on is not a property of the file: CPU unless asked
        params["device"] = None if device is None else str(device)
        valid = set(cls._param_names())
        det = cls(**{k: v for k, v in params.items() if k in valid})
        det._reset()
        det.backbone_name_ = meta.get("backbone")
        det.custom_backbone_ = bool(meta.get("custom_backbone")) and backbone is None
        det.layers_ = layers
        det.layer_dims_ = layer_dims
        det.image_size_ = None if meta.get("image_size") is None else tuple(int(s) for s in meta["image_size"])
        det.threshold_ = meta.get("threshold")
        det.n_fit_images_ = meta.get("n_fit_images")
        det.preprocess_ = meta.get("preprocess")  # e.g. {"resize": "squash"} from `fastad fit`; None if unknown
        det.tiling_ = det._tiling_cfg = meta.get("tiling")  # {"tile_size", "overlap", ...} or None
        det.threshold_info_ = meta.get("threshold_info")  # {"method", "quantile", "n_images"} or None
        det.fit_timings_ = {}
        tensors = dict(tensors)
        g_tensors = {k[len("global."):]: tensors.pop(k) for k in list(tensors) if k.startswith("global.")}
        gmeta = meta.get("global_model")
        if bool(g_tensors) != isinstance(gmeta, dict) or (gmeta is not None and not (det.tiling_ or {}).get("fuse")):
            raise ModelFileError(path, "the global model of tiling with fuse='global' is incomplete (its tensors, metadata and tiling disagree)")
        try:
            det._set_state_tensors(tensors, meta, str(path))
            if gmeta is not None:
                g = det._global_twin()
                g._reset()
                g.backbone_name_, g.custom_backbone_ = det.backbone_name_, det.custom_backbone_
                g.layers_ = [str(x) for x in gmeta["layers"]]
                g.layer_dims_ = {str(k): int(v) for k, v in gmeta["layer_dims"].items()}
                g.image_size_ = tuple(int(s) for s in gmeta["image_size"])
                g.n_fit_images_ = gmeta.get("n_fit_images")
                if hasattr(g, "blur_sigma"):
                    g.blur_sigma = gmeta.get("blur_sigma")
                g.threshold_, g.preprocess_, g.tiling_, g.threshold_info_, g.fit_timings_ = None, None, None, None, {}
                g._set_state_tensors(g_tensors, gmeta, str(path))
                det.global_ = g
        except ModelFileError:
            raise
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            det.layers_ = None
            raise ModelFileError(path, f"incompatible contents: {e}") from None
        return det
