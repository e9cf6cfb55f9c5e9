"""PaDiM (Defard et al., ICPR 2021) as anomalib 2.7 computes it: one Gaussian per patch position.

Every step below was checked against anomalib 2.7.0's source (PyPI wheel ``anomalib==2.7.0``:
``anomalib/models/image/padim/torch_model.py``, ``.../padim/anomaly_map.py``,
``anomalib/models/components/stats/multi_variate_gaussian.py``; the paper's official code is not
public, anomalib's is the common reference, see ``SPEC-gaussian.md`` (f)):

1. Embedding (``generate_embedding``): the first layer's map, then every later layer resized to the
   first layer's grid with ``F.interpolate(mode="nearest")``, concatenated along channels; then a
   random subset of ``n_features`` channels (anomalib: ``torch.randperm(C)[:n_features]`` on the global
   generator; here a seeded ``torch.Generator`` so a seed gives the same subset everywhere;
   ``n_features=None`` keeps every channel, as anomalib requires a number only for the backbones it has
   defaults for: resnet18 100, wide_resnet50_2 550).
2. Fit (``MultiVariateGaussian.forward``): per position ``p``, the mean over the training images and
   the covariance with ``ddof = 1`` (``np.cov``) plus ``0.01 I``, plus ``1e-5 I`` (anomalib's
   "stabilised" covariance), inverted. anomalib computes the covariance position by position in a
   Python loop and inverts in float32; fastad streams the batches through
   :class:`fastad.gaussian.GaussianAccumulator` (``fastad.ops.gaussian_accumulate``: shifted sums,
   lower-SYRK products in float32 chunks summed in float64, position block by position block), then per
   block a Cholesky factorisation (a clear error names the position when a covariance is not positive
   definite). float32 models (default) keep the covariance's Cholesky factor ``C`` (``cov = C C^T``:
   float32 ``spotrf`` as anomalib works in float32, redone in float64 where a position looks
   ill-conditioned; no inverse at all) and score by a triangular solve; float16 / bfloat16 models
   (half the model) keep the precision factor ``L`` (``precision = L L^T``: Cholesky + triangular
   inverse) and score by a triangular product (bf16 dot products where the CPU has them).
3. Score (``AnomalyMapGenerator.compute_distance``): ``d_p = sqrt(max((x_p - mu_p)^T P_p (x_p - mu_p), 0))``
   for every position (fastad: ``fastad.ops.mahalanobis``, the fused triangular solve / product), the ``[B, 1, h, w]`` grid resized to
   the image with ``F.interpolate(mode="bilinear", align_corners=False)``, then ``GaussianBlur2d`` with
   sigma 4 (33 taps, torch ``"reflect"`` padding); fastad applies both as one ``[H, h]`` / ``[W, w]``
   operator per axis (``_maps.resize_blur``: ``A_y S A_x^T``, same result up to float rounding); image
   score = the map's maximum (``torch.amax``).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .. import ops
from ..gaussian import FOLD_ROWS, GaussianAccumulator, GaussianModel, empty_large, precision_factor
from ._maps import resize_blur
from ._registry import register
from .base import BaseDetector, ModelFileError, StageTimer

# GaussianModel files (fastad.gaussian) use the detectors' model-file format: registered here, where the
# detectors package (the format's owner) is known to be imported.
register(GaussianModel)

#: anomalib's regularisation of every position's covariance (``+ 0.01 I``, then ``+ 1e-5 I``).
PADIM_EPS = 0.01
PADIM_STABILISER = 1e-5

#: ``recipe="anomalib"`` adds ``PADIM_STABILISER`` I to every covariance on top of ``eps`` I (anomalib
#: 2.7's ``MultiVariateGaussian``); ``"paper"`` adds only ``eps`` I, as the PaDiM authors' reference code
#: (``np.cov(...) + 0.01 * I``). The difference is tiny next to 0.01 but changes scores in the 5th digit.
PADIM_RECIPES = ("anomalib", "paper")


@contextlib.contextmanager
def _nonfinite_named(rows: torch.Tensor | None = None):
    """``ops.gaussian_accumulate``'s NaN / Inf error as PaDiM's ``ValueError``; also the accumulator's
    shared-rows check failing on ``rows`` that hold NaN (NaN != NaN), which is the same input error."""
    try:
        yield
    except RuntimeError as e:
        if "NaN or Inf" not in str(e):
            raise
        raise ValueError(f"PaDiM.fit: the training features hold NaN or Inf ({str(e).splitlines()[0]})") from None
    except ValueError as e:
        if "shared_rows" not in str(e) or rows is None or bool(torch.isfinite(rows).all()):
            raise
        raise ValueError("PaDiM.fit: the training features hold NaN or Inf") from None


def _nearest_cells(hl: int, wl: int, h: int, w: int) -> torch.Tensor:
    """``Tensor[h w]`` int64: the source cell (row-major on ``hl x wl``) of every position of an ``h x w`` grid
    under ``F.interpolate(mode="nearest")`` (as :meth:`PaDiM.embed` resizes)."""
    grid = torch.arange(hl * wl, dtype=torch.float64).view(1, 1, hl, wl)
    return F.interpolate(grid, size=(h, w), mode="nearest").view(-1).long()


def _coarse_first(idx: torch.Tensor, dims: list[int], grids: list[tuple[int, int]], grid: tuple[int, int]):
    """The kept channels ``idx`` (into the concatenation of layers with ``dims`` channels on ``grids``)
    reordered coarsest layer first (fewest cells; ties in layer order; each layer's channels in their
    order), and :class:`~fastad.gaussian.GaussianAccumulator`'s ``shared_rows`` for that order on the model
    ``grid``: positions whose nearest source cells agree on every layer up to a given one have the same
    leading features, so their covariance rows for those channels are formed once (owner: the first such
    position). A Mahalanobis distance does not depend on the order of the channels.
    Returns ``(idx, shared_rows)`` (``shared_rows`` None when no position shares rows)."""
    first = torch.tensor([0] + dims).cumsum(0)
    layer = torch.bucketize(idx, first[1:], right=True)  # the layer of each kept channel
    cells = [gh * gw for gh, gw in grids]
    rank = sorted(range(len(dims)), key=lambda l: (cells[l], l))
    order = torch.cat([torch.nonzero(layer == l).flatten() for l in rank])
    idx = idx[order]
    h, w = grid
    P = h * w
    pos = torch.arange(P)
    shared, end, key = [], 0, None
    for l in rank:
        n = int((layer == l).sum())
        if n == 0:
            continue
        src = _nearest_cells(grids[l][0], grids[l][1], h, w)
        key = src[:, None] if key is None else torch.cat([key, src[:, None]], 1)  # cells of the layers so far
        _, cls = torch.unique(key, dim=0, return_inverse=True)
        owner = torch.full((int(cls.max()) + 1,), P, dtype=torch.int64).scatter_reduce_(0, cls, pos, "amin")[cls]
        end += n
        if torch.equal(owner, pos):  # every position its own (and so for every finer layer)
            break
        shared.append((end, owner))
    return idx, (shared or None)


@register(cli="padim")
class PaDiM(BaseDetector):
    """PaDiM: a multivariate Gaussian per patch position, scored by Mahalanobis distance.

    Args:
        backbone: a ``fastad.features`` backbone name (default ``"efficientnet_lite0"``) or a
            ``Backbone`` object; ``None`` when only ``fit_features`` / ``score_features`` are used.
        layers: backbone taps, listed fine to coarse (the first one's grid is the model's grid);
            default: the backbone's ``default_layers``.
        weights: passed to ``fastad.features.get_backbone``.
        n_features: channels kept by the random subset (``None``: all). PaDiM's papers keep 100 of 448
            (ResNet-18) and 550 of 1792 (WideResNet-50); memory and fit time grow with its square.
        eps: added to every covariance's diagonal (anomalib / the paper: 0.01).
        blur_sigma: Gaussian sigma of the anomaly map (pixels); ``0``/``None`` = no blur.
        blur_border: border mode of the blur (``"reflect"`` is anomalib's).
        recipe: ``"anomalib"`` (default: ``eps`` I + 1e-5 I, anomalib 2.7) or ``"paper"`` (``eps`` I only, the
            PaDiM reference code); see :data:`PADIM_RECIPES`.
        fit_dtype: ``None`` (default: ``"float32"`` for a float32 model, ``"float64"`` for half-precision
            ones), ``"float32"`` or ``"float64"``: the dtype of the per-position factorisation (the sums
            are float64 either way; anomalib inverts in float32). float32 moves distances by ~0.1
            cond(cov) 6e-8 relative; for the float32 model's Cholesky factor, positions whose diagonal
            ratio flags them as ill-conditioned are redone in float64
            (``fastad.gaussian.F32_CHOL_MAX_DIAG_RATIO_SQ``; ``n_refactored_`` counts them).
        factor_dtype: storage of the precision factors: ``"float32"``, ``"float16"`` or ``"bfloat16"``
            (half the model; bfloat16 scores with AVX-512 BF16 dot products where the CPU has them).
        batch_size: images per backbone batch. device: where features and the model live (default: the
            input's device). random_state: seed of the channel subset. progress: show progress bars.

    Fitted attributes: ``mean_`` (``Tensor[P, C]``), ``factor_`` (``Tensor[P, C, C]``, lower triangular,
    ``factor_dtype``: with ``factor_kind_ == "cholesky"`` (float32 models) the regularised covariance is
    ``C C^T``, with ``"precision"`` (half-precision models) its inverse is ``L L^T``; ``precision_``
    forms the precision on demand), ``logdet_`` (``Tensor[P]`` float64 log-determinants of the covariances), ``channel_idx_`` (``Tensor[C]`` int64, the kept channels of the
    concatenated embedding, the coarsest layer's first: distances do not depend on the order, and positions
    that share a nearest-upsampled layer's cell then share the leading covariance rows, formed once and
    factorised once; anomalib's order is the random one), ``layers_``, ``layer_dims_``, ``feature_grid_`` ``(h, w)`` with
    ``P = h * w``, ``image_size_``, ``n_fit_images_``, ``fit_timings_``, ``threshold_``.
    """

    def __init__(
        self,
        backbone="efficientnet_lite0",
        layers=None,
        weights="default",
        n_features: int | None = None,
        eps: float = PADIM_EPS,
        blur_sigma: float | None = 4.0,
        blur_border: str = "reflect",
        batch_size: int = 16,
        factor_dtype: str = "float32",
        device=None,
        random_state: int = 0,
        progress: bool = True,
        recipe: str = "anomalib",
        fit_dtype: str | None = None,
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.n_features = n_features
        self.eps = eps
        self.blur_sigma = blur_sigma
        self.blur_border = blur_border
        self.batch_size = batch_size
        self.factor_dtype = factor_dtype
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.recipe = recipe
        self.fit_dtype = fit_dtype

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if self.n_features is not None and not (isinstance(self.n_features, int) and self.n_features >= 1):
            raise ValueError(f"PaDiM: n_features must be None or an int >= 1, got {self.n_features!r}")
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise ValueError(f"PaDiM: eps must be a number >= 0, got {self.eps!r}")
        self._check_blur()
        if self.recipe not in PADIM_RECIPES:
            raise ValueError(f"PaDiM: recipe must be one of {PADIM_RECIPES}, got {self.recipe!r}")
        self._factor_dtype()
        self._fit_dtype()

    # ------------------------------------------------------------------ embedding
    def embed(self, features: dict[str, torch.Tensor], layers: list[str] | None = None) -> torch.Tensor:
        """The concatenated multi-layer embedding ``Tensor[B, C_total, h, w]`` (float32, before the
        channel subset): later layers nearest-resized to the first layer's grid, as anomalib."""
        layers = list(self.layers_ if layers is None else layers)
        emb = features[layers[0]].float()
        parts = [emb]
        for layer in layers[1:]:
            parts.append(F.interpolate(features[layer].float(), size=emb.shape[-2:], mode="nearest"))
        return torch.cat(parts, dim=1) if len(parts) > 1 else emb

    def _positions(self, feats, dev, out: torch.Tensor | None = None) -> torch.Tensor:
        """``Tensor[B, P, C]`` float32, contiguous: the kept channels of every position of a batch.

        On the CPU :func:`fastad.ops.gather_maps` (one pass, image by image); elsewhere torch ops:
        Each layer's kept channels are gathered at the layer's own grid and written once into their
        slots of the output (the nearest resize by an integer factor as a broadcast, otherwise by an
        index gather): one pass instead of resize + concatenation + channel subset + transpose, with the
        same values as :meth:`embed` (checked by the tests). ``out``: a contiguous ``[B, P, C]`` float32
        tensor to write into (fit stages batches into one chunk this way, without a concatenation)."""
        first = feats[self.layers_[0]]
        B, _, h, w = first.shape
        if (h, w) != tuple(self.feature_grid_):
            from .base import MIXED_SIZES_HINT

            raise ValueError(f"PaDiM: the features have a {h}x{w} grid but the model was fitted on {tuple(self.feature_grid_)}"
                             f" (one Gaussian per position needs one grid){MIXED_SIZES_HINT}")
        idx = self.channel_idx_.to(dev)
        every = bool(getattr(self, "_all_channels", False))
        C = idx.numel()
        if dev.type == "cpu":  # one op: the maps read once, image by image, rows written position-major
            maps = [feats[layer].to(dev) for layer in self.layers_]
            out = torch.empty(B, h * w, C, dtype=torch.float32, device=dev) if out is None else out.view(B, h * w, C)
            return ops.gather_maps(maps, idx, out)
        out = torch.empty(B, h, w, C, dtype=torch.float32, device=dev) if out is None else out.view(B, h, w, C)
        c0 = 0
        for layer in self.layers_:
            f = feats[layer].to(dev)
            cl, hl, wl = f.shape[1:]
            if every:
                slots = None
            else:  # the output slots of this layer's kept channels, and those channels
                slots = torch.nonzero((idx >= c0) & (idx < c0 + cl)).flatten()
                f = f.index_select(1, idx[slots] - c0).float()  # (index_copy_ needs equal dtypes)
            c0 += cl
            if slots is not None and slots.numel() == 0:
                continue
            k = f.shape[1]
            src = f.permute(0, 2, 3, 1)  # [B, hl, wl, k] view
            if (hl, wl) == (h, w):
                dst, val = out.view(B, h * w, C), src.reshape(B, h * w, k)
            elif h % hl == 0 and w % wl == 0:  # nearest by an integer factor: cell (i, j) <- (i // s, j // t)
                shape = (B, hl, h // hl, wl, w // wl, k)
                dst, val = out.view(*shape[:-1], C), src[:, :, None, :, None, :].expand(shape)
            else:  # nearest indices exactly as F.interpolate(mode="nearest") picks them
                grid = torch.arange(hl * wl, dtype=torch.float64).view(1, 1, hl, wl)
                near = F.interpolate(grid, size=(h, w), mode="nearest").view(-1).long().to(dev)
                dst, val = out.view(B, h * w, C), src.reshape(B, hl * wl, k).index_select(1, near)
            if slots is None:
                dst[..., c0 - cl : c0].copy_(val)
            else:
                dst.index_copy_(dst.dim() - 1, slots, val)
        return out.view(B, h * w, C)

    # ------------------------------------------------------------------ fit
    def _fit_stream(self, batches, timings) -> None:
        self._check_params()
        timer = StageTimer(timings)
        dev = None
        acc = GaussianAccumulator()  # (replaced at the first batch: the layers' grids set its shared rows)
        # batches are written straight into chunks of `cap` images (no per-batch tensor, no concatenation
        # when the accumulator folds): cap > the raw rows it keeps before its first fold (C + 1) and >= its
        # fold size, so each chunk is folded (or, while everything fits, kept) as one tensor
        stage, filled = None, 0

        spare = None  # a folded chunk's buffer, reused (no fresh pages to fault in)

        def flush(acc):
            nonlocal stage, filled, spare
            if stage is not None and filled:
                with _nonfinite_named(stage[:filled]):
                    acc.update(stage[:filled], copy=False, give=True)  # NaN / Inf: detected when the rows are folded
                if not acc.holds_rows:
                    spare = stage
            stage, filled = None, 0

        for feats in batches:
            if self.layers_ is None:
                dev = self._start_fit(feats)
                total = sum(self.layer_dims_.values())
                keep = total if self.n_features is None else int(self.n_features)
                if keep > total:
                    raise ValueError(f"PaDiM: n_features={keep} but the layers {self.layers_} have {total} channels")
                g = torch.Generator().manual_seed(int(self.random_state))
                idx = torch.randperm(total, generator=g)[:keep] if keep < total else torch.arange(total)
                self.feature_grid_ = tuple(int(s) for s in feats[self.layers_[0]].shape[-2:])
                grids = [tuple(int(s) for s in feats[layer].shape[-2:]) for layer in self.layers_]
                idx, shared = _coarse_first(idx, [self.layer_dims_[layer] for layer in self.layers_], grids,
                                            self.feature_grid_)
                self.channel_idx_ = idx.to(dev)
                self._all_channels = torch.equal(idx, torch.arange(total))
                acc = GaussianAccumulator(shared_rows=shared)
            self._check_features(feats, self.layers_, "fit")
            with timer("aggregation"):
                B = int(feats[self.layers_[0]].shape[0])
                P, C = self.feature_grid_[0] * self.feature_grid_[1], int(self.channel_idx_.numel())
                cap = max(FOLD_ROWS, C + 2)
                if stage is not None and filled + B > stage.shape[0]:
                    flush(acc)
                if stage is None:
                    if spare is not None and spare.shape[0] >= B:
                        stage, spare = spare, None
                    else:
                        stage = empty_large((cap + B, P, C), torch.float32, dev)  # huge pages
                self._positions(feats, dev, out=stage[filled : filled + B])
                filled += B
                if filled >= cap:
                    flush(acc)
        with timer("aggregation"):
            flush(acc)
        # the spare fold buffer is freed before finalize allocates the model: the factor then reuses its
        # just-released pages (in a VM whose balloon takes freed memory back, fresh pages cost ~1 ms/MB)
        spare = None
        n = acc.n
        if n == 0:
            raise ValueError("PaDiM.fit: no training images / features given")
        if n < 2:
            raise ValueError("PaDiM.fit: the covariance (ddof = 1) needs at least 2 training images, got 1")
        with timer("gaussian"):
            with _nonfinite_named():
                kind = "cholesky" if self._factor_dtype() == torch.float32 else "precision"
                model = acc.finalize(ddof=1, reg=float(self.eps) + self._stabiliser(), factor_dtype=self._factor_dtype(),
                                     keep_covariance=False, compute_dtype=self._fit_dtype(), what="PaDiM.fit",
                                     factor_kind=kind, consume=True)
            self.n_refactored_ = getattr(acc, "n_refactored_", 0)
            # process CPU seconds of the Gaussian stages (SYRK sums, covariance, factorisation; benchmarks)
            self.fit_stage_cpu_ = dict(getattr(model, "fit_timings_", {}))
            self.fit_syrk_flops_ = int(getattr(model, "fit_flops_", 0))  # the SYRK products formed (x 2)
            del acc
            if not (bool(torch.isfinite(model.mean).all()) and bool(torch.isfinite(model.factor).all())):
                raise ValueError(
                    "PaDiM.fit: the Gaussians of the training features overflow float32 (features with magnitudes near "
                    "1e19 or more, whose squares exceed float32's range); give finite, normalised images / features"
                )
            self.mean_ = model.mean.float().contiguous()
            self.factor_ = model.factor.contiguous()
            self.factor_kind_ = kind
            self.logdet_ = model.logdet
        self.n_train_images_ = n

    def _factor_dtype(self) -> torch.dtype:
        fd = self.factor_dtype
        dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(fd, fd)
        if dt not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"PaDiM: factor_dtype must be 'float32', 'float16' or 'bfloat16', got {fd!r}")
        return dt

    def _fit_dtype(self) -> torch.dtype:
        fd = getattr(self, "fit_dtype", None)
        if fd is None:
            return torch.float32 if self._factor_dtype() == torch.float32 else torch.float64
        dt = {"float32": torch.float32, "float64": torch.float64}.get(fd, fd)
        if dt not in (torch.float32, torch.float64):
            raise ValueError(f"PaDiM: fit_dtype must be 'float32' or 'float64', got {fd!r}")
        return dt

    @property
    def precision_(self) -> torch.Tensor:
        """``Tensor[P, C, C]`` float32: the precision matrices (formed on demand from ``factor_``: ``L L^T``,
        or ``C^{-T} C^{-1}`` for a Cholesky factor)."""
        L = self.factor_.float().tril()
        if getattr(self, "factor_kind_", "precision") == "cholesky":
            return torch.cholesky_inverse(L.double()).float()
        return L @ L.transpose(1, 2)

    def _stabiliser(self) -> float:
        return PADIM_STABILISER if getattr(self, "recipe", "anomalib") == "anomalib" else 0.0

    def _chi2_threshold(self, q: float) -> float:
        """Under the fitted Gaussians each position's distance is chi(C); the image score is the maximum
        of the (blurred) map over ``P`` positions: per-position level ``q ** (1 / P)`` assuming
        independent positions. The blur averages neighbours and lowers the maximum, so this errs high
        (fewer alarms than ``1 - q``)."""
        from fastad import thresholds

        P, C = self.mean_.shape
        return thresholds.chi2(q, int(C), n_positions=int(P))

    # ------------------------------------------------------------------ scoring
    def _score_batch(self, feats, image_size, want_scores, want_maps, timings):
        timer = StageTimer(timings)
        dev = self.mean_.device
        with timer("scoring"):
            x = self._positions(feats, dev)  # [B, P, C]
            B = x.shape[0]
            chol = getattr(self, "factor_kind_", "precision") == "cholesky"
            d2 = ops.mahalanobis(x, self.mean_, self.factor_, cholesky=chol)  # [B, P]: fused, float32 sums
            h, w = self.feature_grid_
            grid = d2.clamp_min(0).sqrt().reshape(B, 1, h, w)
        with timer("maps"):
            # bilinear upsampling then the blur, both linear and separable: two small matrix products
            # per map (_maps.resize_blur; equal to F.interpolate + gaussian_blur up to float rounding)
            maps = resize_blur(grid[:, 0], tuple(image_size), self.blur_sigma, self.blur_border, "bilinear")
        scores = maps.amax(dim=(1, 2)) if want_scores else None
        return scores, (maps if want_maps else None)

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self):
        return {"mean": self.mean_, "factor": self.factor_, "channel_idx": self.channel_idx_}

    def _extra_meta(self):
        return {"feature_grid": list(self.feature_grid_), "n_train_images": getattr(self, "n_train_images_", None),
                "factor_kind": getattr(self, "factor_kind_", "precision"),
                "embedding_channels": sum(self.layer_dims_.values())}

    def _set_state_tensors(self, tensors, meta, path):
        if set(tensors) == {"mean", "precision", "channel_idx"}:  # files written before the factor (issue 13)
            tensors = dict(tensors)
            try:
                tensors["factor"] = precision_factor(torch.linalg.inv(tensors.pop("precision").double())).float()
            except (ValueError, RuntimeError) as e:
                raise ModelFileError(path, f"the stored precision matrices cannot be factorised: {e}") from None
        if set(tensors) != {"mean", "factor", "channel_idx"}:
            raise ModelFileError(path, f"a PaDiM file holds 'mean', 'factor', 'channel_idx', found {sorted(tensors)}")
        self.feature_grid_ = tuple(int(x) for x in (meta.get("feature_grid") or ()))
        mean, prec, idx = tensors["mean"], tensors["factor"], tensors["channel_idx"]
        total = sum(self.layer_dims_.values())
        if meta.get("embedding_channels") != total:
            raise ModelFileError(
                path, f"the layers' channels {self.layer_dims_} sum to {total}, but the model was fitted on an "
                f"embedding of {meta.get('embedding_channels')!r} channels"
            )
        if len(self.feature_grid_) != 2:
            raise ModelFileError(path, f"feature_grid must be [h, w], got {meta.get('feature_grid')!r}")
        P = self.feature_grid_[0] * self.feature_grid_[1]
        C = idx.numel()
        if idx.dim() != 1 or idx.dtype != torch.int64 or not (1 <= C <= total) or int(idx.min()) < 0 or int(idx.max()) >= total:
            raise ModelFileError(path, f"channel_idx must be int64 indices into {total} channels, got {tuple(idx.shape)} {idx.dtype}")
        if (tuple(mean.shape) != (P, C) or tuple(prec.shape) != (P, C, C) or mean.dtype != torch.float32
                or prec.dtype not in (torch.float32, torch.float16, torch.bfloat16)):
            raise ModelFileError(
                path, f"mean {tuple(mean.shape)} (float32) / factor {tuple(prec.shape)} {prec.dtype} (float32, float16 or "
                f"bfloat16) do not fit {P} positions x {C} channels"
            )
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self.device_ = dev
        self.mean_, self.factor_, self.channel_idx_ = mean.to(dev), prec.to(dev), idx.to(dev)
        self.factor_dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[prec.dtype]
        self._all_channels = C == total and torch.equal(idx.cpu(), torch.arange(total))
        self.n_train_images_ = meta.get("n_train_images")
        self.factor_kind_ = meta.get("factor_kind", "precision")
        if self.factor_kind_ not in ("precision", "cholesky"):
            raise ModelFileError(path, f"factor_kind must be 'precision' or 'cholesky', got {self.factor_kind_!r}")
