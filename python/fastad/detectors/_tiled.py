"""Tiled fit and scoring for every image detector (a mixin of :class:`~fastad.detectors.base.BaseDetector`).

``det.set_tiling(S, overlap=F)`` before ``fit``: each image (at whatever size it is given: its
native resolution, or a multiple) is cut into overlapping ``S x S`` tiles
(:class:`fastad.features.Tiler`); the backbone and the detector see tiles only, ``tile_batch_size``
tiles at a time (default: the detector's ``batch_size``), so memory is bounded by one batch of tiles
plus the image's own map.

- fit: the tiles of the normal images are the training set (PatchCore's bank holds their patches, so
  it grows with the number of tiles; PaDiM fits one Gaussian per position *within* a tile, over all
  tiles). ``image_size_`` is the tile size; ``n_fit_tiles_`` counts the tiles.
- score: per tile, the detector's map and image score; maps are stitched (overlaps averaged) into a
  map of the input's size; the image score is the maximum of its tiles' scores.
- Images of one batch share a size; different batches may differ (``fastad.data.batches(...,
  ragged=True)`` groups them), so native-resolution data with mixed sizes works.

The tiling is part of the fitted model (``tiling_``, saved in the model file and used when scoring).

``fuse="global"`` (multi-scale fusion): a second model of the same kind and settings, the *global*
one, is fitted on the whole images squashed to ``fuse_size`` (the usual 224 x 224 view: wide context,
which large diffuse defects need), and every map is ``w * global + (1 - w) * tiled`` (the global map
resized to the image; image scores alike), with ``w = fuse_weight``. ``fuse_norm="none"`` averages the
maps as they are (raw): the same detector on the same features, but their levels can differ (on MTD,
PaDiM's global scores run ~4-8x the tiled ones, so ``w = 0.5`` there leans on the global map).
``fuse_norm="zscore"`` first standardises each branch by the mean and standard deviation of its pixel
scores (maps) and of its image scores on held-out *normal* images, so ``w`` weighs two maps on one
scale (in units of each branch's normal spread). Those statistics come from
:meth:`~TilingMixin.calibrate_fusion` (``fastad fit`` calls it on its ``--calibration`` images) and are
saved with the model; scoring without them is refused. The fit holds the images at
``fuse_size`` in float16 until the global model is fitted (0.3 MB per 224 x 224 image), so one-shot
iterables work; scoring resizes each batch. The global model is saved with the tiled one.
"""
from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F

__all__ = ["TilingMixin", "FUSE_NORMS"]

FUSE_NORMS = ("none", "zscore")
#: Held-out normal images below which :meth:`TilingMixin.calibrate_fusion` warns (a standard deviation from
#: n values has a relative standard error of ~1 / sqrt(2 (n - 1)): 24% at 10 images, 50% at 3).
FUSE_MIN_IMAGES = 10


class TilingMixin:
    """``set_tiling`` and the tiled fit / score paths used by ``BaseDetector``."""

    def set_tiling(self, tile_size: int | None, overlap: float = 0.25, tile_batch_size: int | None = None,
                   scale: float = 1.0, small: str = "pad", blur: str = "tile", fuse: str | None = None,
                   fuse_weight: float = 0.5, fuse_size=224, fuse_norm: str = "none"):
        """Fit and score on overlapping ``tile_size x tile_size`` tiles (None: whole images, the default).

        Args:
            tile_size: tile side in pixels of the input images (e.g. 224), or None to switch tiling off.
            overlap: share of a tile overlapping its neighbour, in ``[0, 1)`` (default 0.25).
            tile_batch_size: tiles per backbone batch (default: ``batch_size``).
            scale: each tile is resized by this factor before the backbone (bilinear), and its map
                back: ``tile_size=112, scale=2`` equals 224-px tiles of the image upscaled 2x (finer
                maps for small defects) without holding the upscaled image.
            small: an image (of a batch) narrower or shorter than a tile: ``"pad"`` (default) pads it
                to a tile (bottom / right, zeros); ``"fit"`` shrinks the tile to fit the image
                (``min(H / th, W / tw)``, the tile's aspect kept) and resizes it to the backbone's tile
                size like ``scale`` does (so no tile holds padding; such images are seen magnified).
            blur: where the detector's Gaussian blur is applied. ``"tile"`` (default): each tile's map
                is blurred by the detector (``blur_sigma`` in backbone-tile pixels), then stitched.
            ``"image"``: tile maps are stitched unblurred and the stitched map is blurred once, with
                ``blur_sigma`` scaled from backbone-tile pixels to image pixels (sigma 4 at a 224-px
                backbone tile covering 112 image pixels is sigma 2): no seams at tile borders. The
                image score is then the maximum of the tiles' unblurred scores.
            fuse: None (default): the tiled map alone. ``"global"``: fuse it with the map of a global
                model fitted on whole images squashed to ``fuse_size`` (see the module's docstring):
                small defects keep the tiles' resolution, large diffuse ones the global context.
            fuse_weight: the global map's weight ``w`` in ``[0, 1]`` (default 0.5).
            fuse_size: the global model's image size, int or ``(H, W)`` (default 224).
            fuse_norm: ``"none"`` (default): fuse the raw maps / scores. ``"zscore"``: standardise each
                branch by its pixel-score and image-score mean / std on held-out normal images before
                fusing (call :meth:`calibrate_fusion` after ``fit``; saved with the model). Use it
                when the two branches' score levels differ (PaDiM: always; PatchCore: tiles and the
                whole image see different neighbourhoods).

        Takes effect at the next ``fit`` (a fitted model scores with the tiling it was fitted with).
        Returns ``self``.
        """
        from fastad.features.tiling import Tiler

        if tile_size is None:
            self._tiling_cfg = None
            return self
        if tile_batch_size is not None and not (isinstance(tile_batch_size, int) and tile_batch_size >= 1):
            raise ValueError(f"{type(self).__name__}.set_tiling: tile_batch_size must be an int >= 1 or None, got {tile_batch_size!r}")
        t = Tiler(tile_size, overlap)  # checks tile_size and overlap
        if not (isinstance(scale, (int, float)) and 0 < scale <= 16):
            raise ValueError(f"{type(self).__name__}.set_tiling: scale must be a number in (0, 16], got {scale!r}")
        if small not in ("pad", "fit"):
            raise ValueError(f"{type(self).__name__}.set_tiling: small must be 'pad' or 'fit', got {small!r}")
        if blur not in ("tile", "image"):
            raise ValueError(f"{type(self).__name__}.set_tiling: blur must be 'tile' or 'image', got {blur!r}")
        if fuse not in (None, "global"):
            raise ValueError(f"{type(self).__name__}.set_tiling: fuse must be None or 'global', got {fuse!r}")
        if isinstance(fuse_weight, bool) or not (isinstance(fuse_weight, (int, float)) and 0 <= fuse_weight <= 1):
            raise ValueError(f"{type(self).__name__}.set_tiling: fuse_weight must be a number in [0, 1], got {fuse_weight!r}")
        if fuse_norm not in FUSE_NORMS:
            raise ValueError(f"{type(self).__name__}.set_tiling: fuse_norm must be one of {FUSE_NORMS}, got {fuse_norm!r}")
        fs = (fuse_size, fuse_size) if isinstance(fuse_size, int) and not isinstance(fuse_size, bool) else fuse_size
        if not (isinstance(fs, (tuple, list)) and len(fs) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in fs)):
            raise ValueError(f"{type(self).__name__}.set_tiling: fuse_size must be an int or (H, W) of ints >= 1, got {fuse_size!r}")
        self._tiling_cfg = {"tile_size": list(t.tile_size), "overlap": t.overlap, "tile_batch_size": tile_batch_size,
                            "scale": float(scale), "small": small, "blur": blur}
        if fuse:
            self._tiling_cfg["fuse"] = {"mode": fuse, "weight": float(fuse_weight), "size": [int(v) for v in fs],
                                        "norm": fuse_norm}
        return self

    # ------------------------------------------------------------------ fusion with a global model
    def _fuse_cfg(self) -> dict | None:
        return self._tiling_now().get("fuse") or None

    def _global_twin(self):
        """A new, unfitted detector of this kind and settings, without tiling (the global model)."""
        twin = type(self)(**self.get_params())
        twin._tiling_cfg = None
        if hasattr(twin, "progress"):
            twin.progress = False
        return twin

    def _fuse_resize(self, batch: torch.Tensor) -> torch.Tensor:
        size = tuple(self._fuse_cfg()["size"])
        if tuple(batch.shape[-2:]) == size:
            return batch
        return F.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False,
                             antialias=batch.shape[-2] > size[0] or batch.shape[-1] > size[1])

    def _fit_global(self, stash: list) -> None:
        """Fit ``global_`` on the fit images held (float16, at ``fuse_size``) in ``stash``."""
        twin = self._global_twin()
        twin.fit(b.float() for b in stash)  # one batch at a time in float32
        stash.clear()
        self.global_ = twin

    def _fused_parts(self, X, want_scores: bool, want_maps: bool, what: str, tiler, timings: dict):
        """Per image batch: ``(tiled scores, tiled maps, global scores, global maps resized to the tiled
        maps)``, raw (None where not wanted)."""
        for batch in self._image_batches(X, ragged=True):
            st, mt = self._score_tiled(batch, want_scores, want_maps, what, tiler)
            tt = self.score_timings_
            sg, mg = self.global_._score(self._fuse_resize(batch), want_scores, want_maps, what)
            for k, v in list(tt.items()) + [(f"global/{k}", v) for k, v in self.global_.score_timings_.items()]:
                if k != "total":
                    timings[k] = timings.get(k, 0.0) + v
            if want_scores:
                sg = sg.to(st.device, st.dtype)
            if want_maps:
                mg = F.interpolate(mg[:, None].float(), size=tuple(mt.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
                mg = mg.to(mt.device, mt.dtype)
            yield st, mt, sg, mg

    def _fuse_stats(self, what: str) -> dict | None:
        """The branches' normal statistics with ``fuse_norm="zscore"`` (refused when not calibrated), else None."""
        cfg = self._fuse_cfg()
        if cfg.get("norm", "none") == "none":
            return None
        stats = cfg.get("stats")
        if not stats:
            from ._util import NotFittedError

            raise NotFittedError(
                f"{type(self).__name__}.{what}: tiling with fuse_norm={cfg['norm']!r} needs the branches' statistics on "
                "held-out normal images: call calibrate_fusion(normal_images) after fit (fastad fit does it on its "
                "--calibration images)"
            )
        return stats

    def _fuse(self, g: torch.Tensor, t: torch.Tensor, kind: str, stats: dict | None) -> torch.Tensor:
        """``w * global + (1 - w) * tiled`` of ``kind`` ("map" or "score"), each z-normalised first when ``stats``."""
        w = float(self._fuse_cfg()["weight"])
        if stats is not None:
            gs, ts = stats["global"], stats["tiled"]
            g = (g - gs[f"{kind}_mean"]) / gs[f"{kind}_std"]
            t = (t - ts[f"{kind}_mean"]) / ts[f"{kind}_std"]
        return w * g + (1 - w) * t

    def _score_fused(self, X, want_scores: bool, want_maps: bool, what: str, tiler):
        """Per image batch: the tiled and the global model's scores / maps, ``w * global + (1 - w) * tiled``
        (each branch z-normalised first with ``fuse_norm="zscore"``)."""
        stats = self._fuse_stats(what)
        scores, maps = [], []
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        for st, mt, sg, mg in self._fused_parts(X, want_scores, want_maps, what, tiler, timings):
            if want_scores:
                scores.append(self._fuse(sg, st, "score", stats))
            if want_maps:
                maps.append(self._fuse(mg, mt, "map", stats))
        timings["total"] = time.perf_counter() - t0
        self.score_timings_ = timings
        if not scores and not maps:
            raise ValueError(f"{type(self).__name__}.{what}: X holds no images")
        return (torch.cat(scores) if want_scores else None), (torch.cat(maps) if want_maps else None)

    def needs_fusion_calibration(self) -> bool:
        """Whether this detector's tiling (the fitted one, else the next fit's) fuses with
        ``fuse_norm`` other than ``"none"``, i.e. needs :meth:`calibrate_fusion` after ``fit``."""
        return (self._tiling_now().get("fuse") or {}).get("norm", "none") != "none"

    def calibrate_fusion(self, normal) -> torch.Tensor:
        """Measure, on held-out normal images ``normal`` (any accepted X; at least 2 images, not the
        fit images), the mean and standard deviation of each branch's pixel scores and image scores,
        and store them in ``tiling_["fuse"]["stats"]`` (saved with the model) for ``fuse_norm="zscore"``.

        Returns the fused image scores of ``normal`` (``Tensor[N]``, after calibration), e.g. for
        ``set_threshold(normal_scores=...)`` without scoring the images again.
        """
        name = f"{type(self).__name__}.calibrate_fusion"
        self._check_fitted("calibrate_fusion")
        cfg = self._fuse_cfg()
        if not cfg or getattr(self, "global_", None) is None:
            raise ValueError(f"{name}: the model is not tiled with fuse='global' (set_tiling(..., fuse='global') before fit)")
        acc = {b: {"sum": 0.0, "sq": 0.0, "n": 0} for b in ("global", "tiled")}
        sc: dict[str, list] = {"global": [], "tiled": []}
        timings: dict[str, float] = {}
        for st, mt, sg, mg in self._fused_parts(normal, True, True, "calibrate_fusion", self._tiler(), timings):
            for b, s, m in (("global", sg, mg), ("tiled", st, mt)):
                m = m.detach().double()
                acc[b]["sum"] += float(m.sum())
                acc[b]["sq"] += float((m * m).sum())
                acc[b]["n"] += m.numel()
                sc[b].append(s.detach().double().cpu())
        n_img = sum(int(s.numel()) for s in sc["tiled"])
        if n_img < 2:
            raise ValueError(f"{name}: needs at least 2 normal images, got {n_img}")
        if n_img < FUSE_MIN_IMAGES:
            warnings.warn(f"{name}: the branches' image-score standard deviations rest on {n_img} held-out normal images "
                          f"(relative standard error ~{100 / (2 * (n_img - 1)) ** 0.5:.0f}%), and so do the fused image "
                          f"scores and their threshold; give at least {FUSE_MIN_IMAGES}", UserWarning, stacklevel=2)
        stats: dict = {"n_images": n_img}
        for b in ("global", "tiled"):
            a = acc[b]
            mean = a["sum"] / a["n"]
            var = max(0.0, a["sq"] / a["n"] - mean * mean)
            s = torch.cat(sc[b])
            stats[b] = {"map_mean": mean, "map_std": var ** 0.5, "score_mean": float(s.mean()), "score_std": float(s.std())}
            for k in ("map_std", "score_std"):
                if not stats[b][k] > 0:
                    raise ValueError(f"{name}: the {b} branch's {k.split('_')[0]} scores are constant on these images "
                                     f"(std {stats[b][k]}); give more, or more varied, normal images")
        self.tiling_ = {**self.tiling_, "fuse": {**cfg, "stats": stats}}  # a copy: _tiling_cfg (the next fit's) keeps none
        return self._fuse(torch.cat(sc["global"]), torch.cat(sc["tiled"]), "score", stats).float()

    def _tiler(self):
        """The :class:`Tiler` of the current fit or of the fitted model; None without tiling."""
        cfg = getattr(self, "tiling_", None) if self._is_fitted() else getattr(self, "_tiling_cfg", None)
        if cfg is None:
            return None
        from fastad.features.tiling import Tiler

        return Tiler(tuple(cfg["tile_size"]), cfg["overlap"])

    def _tiling_now(self) -> dict:
        """The tiling settings in force (the fitted model's, else the next fit's); {} without tiling."""
        return (getattr(self, "tiling_", None) if self._is_fitted() else None) or getattr(self, "_tiling_cfg", None) or {}

    def _tile_input_size(self, tiler) -> tuple[int, int]:
        """The size the backbone sees a tile at (``tile_size * scale``)."""
        f = float(self._tiling_now().get("scale", 1.0))
        return tuple(max(1, round(v * f)) for v in tiler.tile_size)

    def _tile_batch_size(self) -> int:
        return int(self._tiling_now().get("tile_batch_size") or max(1, int(self.batch_size)))

    def _batch_tiler(self, tiler, H: int, W: int):
        """The tiler of an ``H x W`` batch: ``tiler``, or with ``small="fit"`` and an image smaller than
        a tile, a tiler whose tiles are shrunk (aspect kept) to fit inside it."""
        th, tw = tiler.tile_size
        if self._tiling_now().get("small", "pad") != "fit" or (H >= th and W >= tw):
            return tiler
        from fastad.features.tiling import Tiler

        f = min(H / th, W / tw)
        return Tiler((max(1, min(H, int(th * f))), max(1, min(W, int(tw * f)))), tiler.overlap)

    def _tile_feature_batches(self, X, timings: dict, tiler):
        """Like ``_feature_batches`` but per chunk of tiles: ``(features, (th, tw), device, image
        batch index, first tile index, image batch)``."""
        from ._util import StageTimer

        timer = StageTimer(timings)
        tb = self._tile_batch_size()
        in_hw = self._tile_input_size(tiler)
        self._n_tiled_images = 0
        stash = getattr(self, "_fuse_stash", None)  # fit with fuse="global": the images at fuse_size
        for bi, batch in enumerate(self._image_batches(X, ragged=True)):
            device = self._run_device(batch)
            self._n_tiled_images += int(batch.shape[0])
            if stash is not None:
                stash.append(self._fuse_resize(batch).to(torch.float16))
            bt = self._batch_tiler(tiler, batch.shape[-2], batch.shape[-1])
            for start, tiles in bt.iter_cut(batch, tb):
                if tuple(tiles.shape[-2:]) != in_hw:
                    tiles = F.interpolate(tiles, size=in_hw, mode="bilinear", align_corners=False,
                                          antialias=in_hw[0] < tiles.shape[-2])
                with timer("extraction"), torch.no_grad():
                    feats = self._as_maps(self._get_extractor(device)(tiles.to(device)), tuple(tiles.shape[-2:]))
                yield feats, tuple(tiles.shape[-2:]), batch.device, bi, start, batch, bt

    def _score_tiled(self, X, want_scores: bool, want_maps: bool, what: str, tiler):
        from fastad.features.tiling import Stitcher

        from ._maps import gaussian_blur

        timings: dict[str, float] = {}
        scores, maps = [], []
        t0 = time.perf_counter()
        cur = None  # (batch index, tile scores Tensor[B * n], tiles per image n, Stitcher or None, image-pixel sigma)
        image_blur = self._tiling_now().get("blur", "tile") == "image" and hasattr(self, "blur_sigma")
        sigma = getattr(self, "blur_sigma", None)

        def flush(cur):
            if cur is not None:
                _, ts, n, st, sig = cur
                scores.append(ts.view(-1, n).amax(1))
                if st is not None:
                    m = st.result()
                    maps.append(gaussian_blur(m, sig, self.blur_border) if image_blur and sig else m)

        if image_blur:
            self.blur_sigma = None  # tiles unblurred; the stitched map is blurred in flush
        try:
            for feats, size, out_dev, bi, start, batch, bt in self._tile_feature_batches(X, timings, tiler):
                if cur is None or cur[0] != bi:
                    flush(cur)
                    B, H, W = batch.shape[0], batch.shape[-2], batch.shape[-1]
                    n = bt.n_tiles(H, W)
                    st = Stitcher(bt, B, (H, W), device=out_dev) if want_maps else None
                    sig = sigma * bt.tile_size[0] / size[0] if (image_blur and sigma) else None
                    cur = (bi, torch.empty(B * n, dtype=torch.float32, device=out_dev), n, st, sig)
                s, m = self._score_checked(feats, size, True, want_maps, timings, what)
                cur[1][start : start + s.shape[0]] = s.to(out_dev, torch.float32)
                if cur[3] is not None:
                    if m is None:
                        raise ValueError(f"{type(self).__name__}.{what}: this detector gives no maps to stitch")
                    if tuple(m.shape[-2:]) != tuple(bt.tile_size):  # scale != 1: the map back at tile size
                        m = F.interpolate(m[:, None].float(), size=bt.tile_size, mode="bilinear", align_corners=False,
                                          antialias=m.shape[-2] > bt.tile_size[0])[:, 0]
                    cur[3].add(start, m.to(out_dev))
            flush(cur)
        finally:
            if image_blur:
                self.blur_sigma = sigma
        timings["total"] = time.perf_counter() - t0
        self.score_timings_ = timings
        if not scores:
            raise ValueError(f"{type(self).__name__}.{what}: X holds no images")
        return (torch.cat(scores) if want_scores else None), (torch.cat(maps) if want_maps else None)
