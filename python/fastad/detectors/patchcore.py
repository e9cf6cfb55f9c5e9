"""PatchCore (Roth et al., CVPR 2022) as anomalib 2.7 computes it, on fastad's kernels.

Every step below was checked against anomalib 2.7.0's source (PyPI wheel ``anomalib==2.7.0``:
``anomalib/models/image/patchcore/torch_model.py``, ``.../patchcore/anomaly_map.py``,
``anomalib/models/components/filters/blur.py``, ``.../sampling/k_center_greedy.py``):

1. Embedding (``PatchcoreModel.forward`` / ``generate_embedding`` / ``reshape_embedding``): each layer
   through ``AvgPool2d(3, 1, 1)`` (zero padding, ``count_include_pad=True``), later layers resized to
   the first layer's grid with ``F.interpolate(mode="bilinear")`` (``align_corners=False``),
   concatenated along channels in layer order, then ``permute(0, 2, 3, 1).reshape(-1, C)``:
   rows are ordered image, row ``y``, column ``x``.
2. Memory bank (``subsample_embedding``): all training rows, then ``KCenterGreedy`` keeps
   ``int(N * ratio)`` of them. fastad uses :func:`fastad.ops.coreset` (same greedy k-center, seeded,
   ``+inf`` start distances, no ``N x k`` temporaries). With ``coreset_ratio=1.0`` the bank is every row.
3. Patch scores (``nearest_neighbors(n_neighbors=1)``): Euclidean distance to the nearest bank row via
   ``|x|^2 - 2 x.y + |y|^2``, clamped at 0, square root (anomalib: ``euclidean_dist`` in chunks of
   1024 queries, bank norms recomputed per call). fastad: :func:`fastad.ops.knn` (``k=1``, the same
   expansion, blocked) with the bank's squared norms cached at fit.
4. Image score (``compute_anomaly_score``): with ``num_neighbors == 1`` the max patch score.
   Otherwise, per image: ``max_patches = argmax(patch_scores)`` (first maximal patch); ``score`` its
   patch score ``s*``; ``nn_index`` its nearest bank row ``m*``; the support set = the
   ``min(num_neighbors, len(bank))`` nearest bank rows of ``m*`` (``m*`` itself first, at distance 0);
   ``distances`` = Euclidean distances from the max patch's feature to those support rows in support
   order; ``weights = (1 - softmax(distances, dim=1))[..., 0]``, i.e. one minus the softmax weight of
   the *first* support row (``m*``); image score = ``weights * s*``.
5. Anomaly map (``AnomalyMapGenerator``): the ``[B, 1, h, w]`` patch-score grid is resized to the
   input size with ``F.interpolate``'s default mode (``"nearest"``, not bilinear), then
   ``GaussianBlur2d(sigma=4)``: kernel ``2 * int(4 * sigma + 0.5) + 1 = 33`` taps, normalised kornia
   Gaussian, input padded by 16 with torch ``"reflect"`` padding, ``conv2d``. fastad blurs separably
   (a row then a column 1-D pass: same result, ~12x fewer operations), border mode a parameter.
"""
from __future__ import annotations

import warnings
import sys

import torch
import torch.nn.functional as F

from ._registry import register
from ._screen import detector_screen
from .base import BaseDetector, ModelFileError, StageTimer
from ._maps import adaptive_patch_pool, gaussian_blur, local_average, to_finest_grid


#: Estimated coreset seconds above which fit's estimate line suggests a cheaper setting.
SLOW_CORESET_S = 180.0


def coreset_estimate_message(info: dict) -> str:
    """The line fit prints from :func:`fastad.ops.coreset`'s ``on_estimate`` ``info`` dict: the
    estimated coreset time, and above :data:`SLOW_CORESET_S` what makes it cheaper (names given both as
    PatchCore parameters and as ``fastad fit`` options)."""
    msg = (f"coreset: {info['done']:,} of {info['centres']:,} centres in {info['elapsed_s']:.0f} s, "
           f"estimated total <= {info['estimate_s']:.0f} s (rate of the recent steps; "
           f"{100.0 * info['read_fraction']:.0f}% of the rows read so far)")
    if info["estimate_s"] > SLOW_CORESET_S:
        msg += ("; to make it faster use coreset_storage='float16' (--coreset-storage float16) or a smaller "
                "coreset_ratio (--coreset-ratio)")
    return msg


def _say(msg: str) -> None:
    """Print a line on stderr without breaking a tqdm bar."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)
    except ImportError:
        print(msg, file=sys.stderr, flush=True)


@register(cli="patchcore")
class PatchCore(BaseDetector):
    """PatchCore: a coreset memory bank of locally aggregated patch features, scored by 1-NN distance.

    Args:
        backbone: a ``fastad.features`` backbone name (default ``"efficientnet_lite0"``) or a
            ``Backbone`` object; ``None`` when only ``fit_features`` / ``score_features`` are used.
        layers: backbone taps (default: the backbone's ``default_layers``), listed shallow to deep.
        weights: passed to ``fastad.features.get_backbone``.
        coreset_ratio: fraction of training patches kept by greedy k-center selection; ``1.0`` keeps
            every patch (no selection).
        num_neighbors: the paper's image-score re-weighting uses this many bank neighbours of the
            nearest bank row (anomalib default 9); ``1`` = max patch score. A one-row bank with
            ``num_neighbors > 1`` (every score would be 0) is a ``ValueError`` naming a
            ``coreset_ratio`` that works; a bank of 2 to ``num_neighbors - 1`` rows warns and uses them
            all (as anomalib). Feature maps of the images smaller than the 3x3 aggregation window are
            a ``ValueError`` naming the smallest image size that works (a warning for
            ``fit_features``). :meth:`check_fit_size` checks both before any work.
        projection_dim: random projection before the coreset (``"auto"`` = the Johnson-Lindenstrauss
            size anomalib uses, ``None`` = none, or an int); see :func:`fastad.ops.coreset`.
        blur_sigma: Gaussian sigma of the anomaly map (pixels); ``0``/``None`` = no blur.
        blur_border: border mode of the blur (:data:`fastad.detectors._maps.BORDER_MODES`);
            ``"reflect"`` is anomalib's.
        target_dim: ``None`` (anomalib: concatenate the layers) or an int (the paper's adaptive average
            pooling of every patch vector to ``target_dim``, e.g. 1024).
        batch_size: images per backbone batch.
        device: where features are extracted and the bank lives (default: the input's device).
        random_state: seed of the coreset selection.
        coreset_storage: dtype the (projected) bank is stored in while the coreset is selected:
            ``None`` (float32, as anomalib), ``"float16"`` or ``"bfloat16"`` (half the bytes streamed per
            greedy step: ~2x faster selection on CPU, where each step reads the whole bank; the
            arithmetic stays float32, but rounding can change which of two near-equal rows is chosen).
        progress: show progress bars (``True``: feature extraction and coreset selection;
            ``"coreset"``: only the coreset selection's; ``False``: none). With a bar, fit also prints the
            bank size and number of centres, and (when selection takes over a few seconds) an estimate of
            the coreset time with advice when it exceeds :data:`SLOW_CORESET_S`.
        coreset_method: ``"pruned"`` (default: a float16 PCA summary of every row bounds its distance
            to each new centre, so a step reads a few percent of the bank on real features) or
            ``"exhaustive"`` (one full pass per step); both select identical rows (see
            :func:`fastad.ops.coreset`).
        distributed: run under ``torch.distributed`` (e.g. ``torchrun``; a process group must be
            initialised): ``fit`` on every rank with that rank's share of the training images
            (``fastad.distributed.shard(images)``); the coreset is selected across ranks
            (:func:`fastad.distributed.coreset`, the indices of the single-process fit) and each rank
            keeps its part of the bank; ``score`` / ``predict`` with the same images on every rank
            (the sharded k-NN, :func:`fastad.distributed.knn`; every rank gets all results);
            ``save`` on every rank writes one single-process model file from rank 0.

    Fitted attributes: ``memory_bank_`` (``Tensor[M, D]``), ``layers_``, ``layer_dims_``,
    ``feature_grid_`` ``(h, w)``, ``image_size_`` ``(H, W)``, ``n_fit_images_``, ``n_train_patches_``, ``fit_timings_``
    (seconds per stage), ``threshold_`` (``None`` until :meth:`set_threshold`).

    The training images may differ in size (batches of one size each, e.g. ``resize="keep-aspect"`` on
    images of different aspect ratios): every patch joins the one bank, and ``feature_grid_`` /
    ``image_size_`` are the first batch's.
    """

    _FIT_SIZES_MAY_VARY = True

    def __init__(
        self,
        backbone="efficientnet_lite0",
        layers=None,
        weights="default",
        coreset_ratio: float = 0.1,
        num_neighbors: int = 9,
        projection_dim="auto",
        blur_sigma: float | None = 4.0,
        blur_border: str = "reflect",
        target_dim: int | None = None,
        batch_size: int = 16,
        device=None,
        random_state: int = 0,
        progress: bool | str = True,
        coreset_storage: str | None = None,
        distributed: bool = False,
        coreset_method: str = "pruned",
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.coreset_ratio = coreset_ratio
        self.num_neighbors = num_neighbors
        self.projection_dim = projection_dim
        self.blur_sigma = blur_sigma
        self.blur_border = blur_border
        self.target_dim = target_dim
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.coreset_storage = coreset_storage
        self.distributed = distributed
        self.coreset_method = coreset_method

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        name = type(self).__name__
        if not (isinstance(self.coreset_ratio, (int, float)) and 0 < self.coreset_ratio <= 1):
            raise ValueError(f"{name}: coreset_ratio must be in (0, 1], got {self.coreset_ratio!r}")
        if not (isinstance(self.num_neighbors, int) and self.num_neighbors >= 1):
            raise ValueError(f"{name}: num_neighbors must be an int >= 1, got {self.num_neighbors!r}")
        self._check_blur()
        if self.target_dim is not None and not (isinstance(self.target_dim, int) and self.target_dim >= 1):
            raise ValueError(f"{name}: target_dim must be None or an int >= 1, got {self.target_dim!r}")
        if self.coreset_storage not in (None, "float32", "float16", "bfloat16"):
            raise ValueError(
                f"{name}: coreset_storage must be None, 'float32', 'float16' or 'bfloat16', got {self.coreset_storage!r}"
            )

        if self.coreset_method not in ("pruned", "exhaustive"):
            raise ValueError(f"{name}: coreset_method must be 'pruned' or 'exhaustive', got {self.coreset_method!r}")

    # ------------------------------------------------------------------ degenerate settings
    #: side of the local aggregation window (anomalib's ``AvgPool2d(3, 1, 1)``)
    AGGREGATION_WINDOW = 3

    def _min_image_size(self, layers) -> int | None:
        """Smallest square image side whose feature maps are at least the aggregation window at every layer."""
        bb = getattr(self, "_backbone_obj", None)
        if bb is None or not hasattr(bb, "grid_size"):
            return None
        try:
            for side in range(1, 4097):
                if all(min(bb.grid_size(side, side, layer)) >= self.AGGREGATION_WINDOW for layer in layers):
                    return side
        except (KeyError, TypeError, ZeroDivisionError):
            return None
        return None

    def _check_grid(self, grids: dict, image_size, strict: bool = True) -> None:
        """Feature maps smaller than the aggregation window: a ``ValueError`` naming the smallest image
        size that works (``strict``), else a warning (precomputed features, whose maps the caller chose)."""
        win = self.AGGREGATION_WINDOW
        small = {layer: g for layer, g in grids.items() if min(g) < win}
        if not small:
            return
        layer, g = next(iter(small.items()))
        side = self._min_image_size(list(grids))
        if image_size is None:
            size = ""
        elif int(image_size[0]) == int(image_size[1]):
            size = f"with image_size={int(image_size[0])} "
        else:
            size = f"with images of {int(image_size[0])}x{int(image_size[1])} px "
        fix = f"; use image_size={side} or larger" if side else "; use larger images"
        msg = (f"PatchCore: {size}the feature map at layer {layer!r} is {g[0]}x{g[1]}, smaller than the "
               f"{win}x{win} aggregation window (the patches would be mostly padding and the scores meaningless){fix}")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=4)

    def _check_bank(self, n_patches: int, strict: bool = True) -> None:
        """A memory bank smaller than ``num_neighbors``: a ``ValueError`` naming a value that works when
        ``strict`` or when the bank has one row (every image score would be 0); otherwise a warning
        (anomalib clamps the neighbours to the bank size, and so does fastad)."""
        nn_ = int(self.num_neighbors)
        ratio = float(self.coreset_ratio)
        m = n_patches if ratio >= 1 else max(1, int(n_patches * ratio))
        if m >= nn_:
            return
        if not strict and m > 1:
            warnings.warn(
                f"PatchCore: the memory bank has {m} rows, fewer than num_neighbors={nn_}: the image scores use "
                f"{m} neighbours (as anomalib); use a larger coreset_ratio or more images",
                stacklevel=4,
            )
            return
        if n_patches < nn_:
            raise ValueError(
                f"PatchCore: only {n_patches} training patches, fewer than num_neighbors={nn_}; fit on more (or "
                f"larger) images, or use num_neighbors={max(1, n_patches)}"
            )
        need = nn_ / n_patches
        works = min(1.0, float(f"{need * 1.05:.2g}"))
        while works < 1.0 and int(n_patches * works) < nn_:
            works = min(1.0, float(f"{works * 1.2:.2g}"))
        raise ValueError(
            f"PatchCore: coreset_ratio={self.coreset_ratio:g} keeps {m} of {n_patches} training patches, fewer than "
            f"num_neighbors={nn_} (the image scores would be degenerate); use coreset_ratio={works:g} or larger"
        )

    def check_fit_size(self, n_images: int, image_size) -> None:
        """Refuse, before any work, a fit that would give degenerate scores: feature maps of ``image_size``
        ``(H, W)`` smaller than the 3x3 aggregation window, or a memory bank of ``n_images`` images
        smaller than ``num_neighbors``. Raises ``ValueError`` naming the parameter and a value that works.
        (``fit`` checks the same on the real features.)"""
        self._check_params()
        grids = self.check_image_size(image_size)
        if grids:
            h, w = next(iter(grids.values()))  # the finest (first) layer's grid is the patch grid
            self._check_bank(int(n_images) * h * w)

    def check_image_size(self, image_size) -> dict:
        """Refuse (``ValueError`` naming the smallest size that works) images of ``image_size``
        (``int`` or ``(H, W)``) whose feature maps are smaller than the 3x3 aggregation window, before
        any work (fit or scoring). Returns the feature grid per layer (empty when unknown)."""
        bb = self._resolve_backbone()
        if bb is None or not hasattr(bb, "grid_size"):
            return {}
        H, W = (int(image_size), int(image_size)) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
        layers = [str(x) for x in self._layers_to_extract()]
        try:
            grids = {layer: bb.grid_size(H, W, layer) for layer in layers}
        except (KeyError, TypeError, ZeroDivisionError):
            return {}
        self._check_grid(grids, (H, W))
        return grids

    # ------------------------------------------------------------------ embedding
    def embed(self, features: dict[str, torch.Tensor], layers: list[str] | None = None) -> torch.Tensor:
        """Locally aggregated multi-layer embedding ``Tensor[B, D, h, w]`` (float32) of feature maps.

        ``features``: ``dict[layer, Tensor[B, C_l, h_l, w_l]]``; ``layers`` defaults to the fitted ones.
        """
        layers = list(self.layers_ if layers is None else layers)
        maps = to_finest_grid([local_average(features[layer].float()) for layer in layers])
        if self.target_dim is not None:
            return adaptive_patch_pool(maps, int(self.target_dim))
        return torch.cat(maps, dim=1)

    @staticmethod
    def _rows(emb: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, D, h, w] -> Tensor[B*h*w, D]`` (anomalib's ``reshape_embedding`` order)."""
        return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])

    # ------------------------------------------------------------------ fit
    def _fit_stream(self, batches, timings) -> None:
        import fastad.ops as ops

        self._check_params()
        timer = StageTimer(timings)
        rows, grid, dev = [], None, None
        for feats in batches:
            if self.layers_ is None:
                dev = self._start_fit(feats)
                self._check_grid({k: tuple(feats[k].shape[-2:]) for k in self.layers_}, None,
                                 strict=getattr(self, "_backbone_obj", None) is not None)
            self._check_features(feats, self.layers_, "fit")
            with timer("aggregation"):
                emb = self.embed({k: feats[k].to(dev) for k in self.layers_})
                if grid is None:  # images of other sizes (other grids) pool their patches into the same bank
                    grid = tuple(emb.shape[-2:])
                rows.append(self._rows(emb))
        if not rows:
            raise ValueError("PatchCore.fit: no training images / features given")
        with timer("aggregation"):
            bank = torch.cat(rows) if len(rows) > 1 else rows[0]
            del rows
        if not bool(torch.isfinite(bank).all()):
            raise ValueError("PatchCore.fit: the training features hold NaN or Inf")
        self.feature_grid_ = grid
        self.n_train_patches_ = int(bank.shape[0])
        n = bank.shape[0]
        if self.distributed:
            with timer("coreset"):
                self._fit_sharded_bank(bank)
            return
        self._check_bank(n, strict=False)
        with timer("coreset"):
            if self.coreset_ratio < 1:
                # anomalib: coreset_size = int(N * ratio) (an error when 0); here at least one row.
                m = max(1, int(n * float(self.coreset_ratio)))
                # anomalib starts from torch.randint(N) on the global generator; here a seeded draw.
                g = torch.Generator().manual_seed(int(self.random_state))
                start = int(torch.randint(n, (1,), generator=g))
                storage = getattr(torch, self.coreset_storage) if self.coreset_storage else None
                if self.progress:
                    _say(f"coreset: memory bank of {n:,} patches x {bank.shape[1]} dims -> {m:,} centres "
                         f"(greedy k-center, method {self.coreset_method})")
                idx, _ = ops.coreset(bank, m, projection_dim=self.projection_dim, seed=int(self.random_state), start=start,
                                     storage_dtype=storage, progress=bool(self.progress), method=self.coreset_method,
                                     on_estimate=(lambda info: _say(coreset_estimate_message(info))) if self.progress else None)
                bank = bank.index_select(0, idx.to(bank.device)).contiguous()
        self.memory_bank_ = bank.contiguous()
        self._bank_norms = self.memory_bank_.square().sum(1)
        self._check_bank_norms("fit")

    def _check_bank_norms(self, what: str) -> None:
        """The bank's squared norms overflow float32 (features near 1e19 or larger): every k-NN distance
        would be NaN / Inf, so refuse the bank now rather than at scoring."""
        if not bool(torch.isfinite(self._bank_norms).all()):
            raise ValueError(f"PatchCore.{what}: the memory bank's features are too large for float32 distances (their "
                             "squared norms overflow); give finite, normalised images / features")

    def _fit_sharded_bank(self, bank: torch.Tensor) -> None:
        """distributed=True: the coreset over every rank's rows (global row order = rank order, the rows
        of the single-process fit on the concatenated images); this rank keeps its selected rows."""
        import torch.distributed as dist

        import fastad.distributed as fd

        counts = fd.all_rows(torch.tensor([[bank.shape[0], int(getattr(self, "n_fit_images_", 0) or 0)]]))
        sizes = counts[:, 0].tolist()
        n, off = sum(sizes), sum(sizes[: dist.get_rank()])
        self.n_fit_images_ = int(counts[:, 1].sum())  # every rank's images
        self.n_train_patches_ = int(n)
        self.n_bank_rows_ = int(n)
        if self.coreset_ratio < 1:
            m = max(1, int(n * float(self.coreset_ratio)))
            g = torch.Generator().manual_seed(int(self.random_state))
            start = int(torch.randint(n, (1,), generator=g))  # the single-process fit's start
            storage = getattr(torch, self.coreset_storage) if self.coreset_storage else None
            idx, _ = fd.coreset(bank, m, projection_dim=self.projection_dim, seed=int(self.random_state), start=start,
                                storage_dtype=storage)
            local = idx[(idx >= off) & (idx < off + bank.shape[0])] - off
            bank = bank.index_select(0, local.to(bank.device))
            self.n_bank_rows_ = int(m)
        self.memory_bank_ = bank.contiguous()
        self._bank_norms = self.memory_bank_.square().sum(1)

    def _bank_rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            import fastad.distributed as fd

            return fd.rows_by_index(self.memory_bank_, idx)
        return self.memory_bank_[idx]

    # ------------------------------------------------------------------ scoring
    def _layers_to_extract(self) -> list[str]:
        return list(self.layers_) if self._is_fitted() else self._default_layers()

    def _nearest(self, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        import fastad.ops as ops

        if self.distributed:
            import fastad.distributed as fd

            return fd.knn(rows, self.memory_bank_, k, "l2")
        norms = getattr(self, "_bank_norms", None)
        if norms is None or norms.device != self.memory_bank_.device:
            norms = self._bank_norms = self.memory_bank_.square().sum(1)
        return ops.knn(rows, self.memory_bank_, k, "l2", bank_norms=norms, screen=detector_screen())

    def _image_scores(self, patch: torch.Tensor, nn_idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """anomalib's ``compute_anomaly_score`` (see the module docstring, step 4).

        Args:
            patch: ``Tensor[B, P]`` patch scores; nn_idx: ``Tensor[B, P]`` their nearest bank rows;
            rows: ``Tensor[B*P, D]`` the test embeddings.
        """
        if self.num_neighbors == 1:
            return patch.amax(1)
        B, P = patch.shape
        best = patch.argmax(1)  # first maximal patch, as torch.argmax in anomalib
        ar = torch.arange(B, device=patch.device)
        s_star = patch[ar, best]
        m_star = nn_idx[ar, best]
        feat = rows.view(B, P, -1)[ar, best]  # [B, D]
        # anomalib clamps k to the bank size too. With a one-row bank its min() branch returns [B] indices
        # and the [B, 1, D] x [B, D] broadcast then softmaxes over the batch (a batch-size-dependent
        # weight); here k = 1 gives the plain softmax of one distance (weight 0). Only a 1-row bank differs.
        k = min(int(self.num_neighbors), getattr(self, "n_bank_rows_", None) or self.memory_bank_.shape[0])
        _, support = self._nearest(self._bank_rows(m_star), k)  # [B, k], m* first
        sup = self._bank_rows(support)  # [B, k, D]
        dist = (sup - feat[:, None, :]).square().sum(2).sqrt()  # [B, k]
        weights = 1.0 - torch.softmax(dist, dim=1)[:, 0]
        return weights * s_star

    def _score_batch(self, feats, image_size, want_scores, want_maps, timings):
        timer = StageTimer(timings)
        dev = self.memory_bank_.device
        self._check_grid({k: tuple(feats[k].shape[-2:]) for k in self.layers_}, tuple(image_size),
                         strict=getattr(self, "_backbone_obj", None) is not None)
        with timer("aggregation"):
            emb = self.embed({k: feats[k].to(dev) for k in self.layers_})
            B, _, h, w = emb.shape
            rows = self._rows(emb).contiguous()
        if tuple(self.memory_bank_.shape[1:]) != (rows.shape[1],):
            raise ValueError(
                f"PatchCore: the embedding has {rows.shape[1]} dims but the memory bank {self.memory_bank_.shape[1]}"
            )
        with timer("scoring"):
            d, i = self._nearest(rows, 1)
            patch = d[:, 0].view(B, h * w)
            scores = self._image_scores(patch, i[:, 0].view(B, h * w), rows) if want_scores else None
        maps = None
        if want_maps:
            with timer("maps"):
                grid = patch.view(B, 1, h, w)
                up = F.interpolate(grid, size=tuple(image_size))  # mode="nearest", as anomalib
                maps = gaussian_blur(up, self.blur_sigma, self.blur_border)[:, 0]
        return scores, maps

    # ------------------------------------------------------------------ embedding-level API
    @classmethod
    def from_bank(cls, bank: torch.Tensor, *, num_neighbors: int = 9, blur_sigma: float | None = 4.0,
                  blur_border: str = "reflect", image_size=None, device=None) -> "PatchCore":
        """A fitted PatchCore around a memory bank of your own patch embeddings (no backbone, no 3 x 3
        averaging, no coreset): score with :meth:`score_embeddings`; ``save`` / ``load`` work.

        Args:
            bank: ``Tensor[M, D]`` float (the rows a coreset or any other selection kept), finite.
            num_neighbors, blur_sigma, blur_border: as in :class:`PatchCore`.
            image_size: ``(H, W)`` of the maps :meth:`score_embeddings` returns by default (None: the
                embedding grid's size).
            device: where the bank lives (default: the bank's device).
        """
        if not isinstance(bank, torch.Tensor) or bank.dim() != 2 or bank.shape[0] < 1 or bank.shape[1] < 1:
            got = tuple(bank.shape) if isinstance(bank, torch.Tensor) else type(bank).__name__
            raise ValueError(f"PatchCore.from_bank: bank must be a non-empty Tensor[M, D], got {got}")
        if not torch.is_floating_point(bank) or not bool(torch.isfinite(bank).all()):
            raise ValueError(f"PatchCore.from_bank: bank must be finite floating point, got {bank.dtype} (NaN/Inf?)")
        det = cls(backbone=None, coreset_ratio=1.0, num_neighbors=num_neighbors, blur_sigma=blur_sigma,
                  blur_border=blur_border, device=None if device is None else str(device), progress=False)
        det._check_params()
        det._reset()
        dev = torch.device(device) if device is not None else bank.device
        det.backbone_name_, det.custom_backbone_ = None, False
        det.layers_, det.layer_dims_ = ["embedding"], {"embedding": int(bank.shape[1])}
        det.device_ = dev
        det.memory_bank_ = bank.detach().to(dev, torch.float32).contiguous()
        det._bank_norms = det.memory_bank_.square().sum(1)
        det._check_bank_norms("from_bank")
        # a bank smaller than num_neighbors: one row is an error (every image score would be 0), more warn
        det._check_bank(int(bank.shape[0]), strict=False)
        det.feature_grid_, det.n_train_patches_ = (), int(bank.shape[0])
        det.image_size_ = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        det.threshold_, det.n_fit_images_, det.fit_timings_ = None, None, {}
        return det

    def score_embeddings(self, patch_embeddings: torch.Tensor, *, image_size=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores Tensor[N], maps Tensor[N, H, W])`` of final patch embeddings, used as given (no
        3 x 3 averaging, no layer resizing: bring them as you built the bank; :meth:`embed` gives
        PatchCore's own, as ``embed(feats).permute(0, 2, 3, 1)``).

        Args:
            patch_embeddings: ``Tensor[N, h, w, D]`` (D = the bank's width).
            image_size: ``(H, W)`` of the maps (nearest upsampling then the blur, as :meth:`score`);
                default ``image_size_``, else the grid ``(h, w)``.
        """
        self._check_fitted("score_embeddings")
        e = patch_embeddings
        if not isinstance(e, torch.Tensor) or e.dim() != 4:
            got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"PatchCore.score_embeddings: patch_embeddings must be Tensor[N, h, w, D], got {got}")
        if e.shape[3] != self.memory_bank_.shape[1]:
            raise ValueError(f"PatchCore.score_embeddings: patch_embeddings have D={e.shape[3]} but the memory bank "
                             f"has {self.memory_bank_.shape[1]} dims")
        if e.shape[0] == 0:
            raise ValueError("PatchCore.score_embeddings: no embeddings given (N = 0)")
        if not e.is_floating_point():
            raise TypeError(f"PatchCore.score_embeddings: patch_embeddings must be floating point, got {e.dtype}")
        N, h, w, D = e.shape
        if h < 1 or w < 1:
            raise ValueError(f"PatchCore.score_embeddings: patch_embeddings must have h, w >= 1, got {tuple(e.shape)}")
        size = image_size if image_size is not None else getattr(self, "image_size_", None) or (h, w)
        if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
            raise ValueError(f"PatchCore.score_embeddings: image_size must be (H, W) with H, W >= 1, got {size!r}")
        rows = e.detach().to(self.memory_bank_.device, torch.float32).reshape(N * h * w, D).contiguous()
        with self._nonfinite_as_value_error("score_embeddings"):
            d, i = self._nearest(rows, 1)
        patch = d[:, 0].view(N, h * w)
        with self._nonfinite_as_value_error("score_embeddings"):
            scores = self._image_scores(patch, i[:, 0].view(N, h * w), rows)
        up = F.interpolate(patch.view(N, 1, h, w), size=(int(size[0]), int(size[1])))  # nearest, as anomalib
        maps = gaussian_blur(up, self.blur_sigma, self.blur_border)[:, 0]
        return scores.to(e.device), maps.to(e.device)

    # ------------------------------------------------------------------ persistence
    def save(self, path, *, shard: bool = False):
        """Write the model file (see :meth:`BaseDetector.save`). ``distributed=True``: call on every rank;
        the shards are gathered and rank 0 writes one single-process file (``distributed=False`` in it);
        with ``shard=True`` each rank writes its rows to its own file and rank 0 a small index at
        ``path`` (see :mod:`fastad.detectors._shards`; :meth:`load` reads it in one process or, with
        ``distributed=True``, under as many ranks as shards). Returns the path on every rank."""
        if not self.distributed:
            if shard:
                raise ValueError("PatchCore.save: shard=True saves a bank split across ranks: it needs distributed=True")
            return super().save(path)
        import copy
        from pathlib import Path

        import fastad.distributed as fd

        self._check_fitted("save")
        one = copy.copy(self)
        if shard:  # each rank its rows, then rank 0 the index (a 0-row bank + the shard list)
            from . import _shards

            return _shards.save_sharded(self.memory_bank_, Path(path), one, lambda m: super(PatchCore, m).save(path))
        full = fd.all_rows(self.memory_bank_)
        if not fd.is_main_process():
            return Path(path)
        one.distributed, one.memory_bank_, one._bank_norms = False, full, None
        return super(PatchCore, one).save(path)

    @classmethod
    def load(cls, path, *, backbone=None, device=None, distributed: bool = False) -> "PatchCore":
        """:meth:`BaseDetector.load`; ``distributed=True`` (every rank of a process group, as many as the
        file's shards, see :meth:`save`): each rank loads its shard and the model scores as fitted with
        ``distributed=True``. A one-file model, or ``distributed=False``, loads whole."""
        if not distributed:
            return super().load(path, backbone=backbone, device=device)
        import torch.distributed as dist

        from . import _shards

        if not dist.is_initialized():
            raise ValueError("PatchCore.load(distributed=True) needs a torch.distributed process group (torchrun)")
        token = _shards.LOADING_RANK.set((dist.get_rank(), dist.get_world_size()))
        try:
            return super().load(path, backbone=backbone, device=device)
        finally:
            _shards.LOADING_RANK.reset(token)

    @staticmethod
    def shard_count(path) -> int | None:
        """How many shard files the model at ``path`` has (None: a one-file model)."""
        from . import _shards

        return _shards.shard_count(path)

    def _state_tensors(self):
        return {"memory_bank": self.memory_bank_}

    def _extra_meta(self):
        shards = getattr(self, "_shard_entries", None)
        return {"feature_grid": list(self.feature_grid_), "n_train_patches": self.n_train_patches_,
                **({"shards": shards} if shards else {})}

    def _set_state_tensors(self, tensors, meta, path):
        if set(tensors) != {"memory_bank"}:
            raise ModelFileError(path, f"a PatchCore file holds one tensor 'memory_bank', found {sorted(tensors)}")
        bank = tensors["memory_bank"]
        expect = self.target_dim if self.target_dim is not None else sum(self.layer_dims_.values())
        if bank.dim() != 2 or bank.shape[1] != expect or bank.dtype != torch.float32:
            raise ModelFileError(
                path,
                f"memory_bank is {tuple(bank.shape)} {bank.dtype}, but layers {self.layers_} with channels "
                f"{list(self.layer_dims_.values())} need [M, {expect}] float32",
            )
        if isinstance(meta.get("shards"), list):  # saved with shard=True: the index of the shard files
            from . import _shards

            bank, local = _shards.load_bank(path, meta["shards"], expect)
            self.distributed, self.n_bank_rows_ = local, sum(int(e["rows"]) for e in meta["shards"])
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self.device_ = dev
        self.memory_bank_ = bank.to(dev)
        self._bank_norms = self.memory_bank_.square().sum(1)
        self.feature_grid_ = tuple(meta.get("feature_grid") or ())
        self.n_train_patches_ = meta.get("n_train_patches")
