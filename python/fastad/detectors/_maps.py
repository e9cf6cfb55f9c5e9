"""Feature aggregation and anomaly-map post-processing shared by the patch detectors.

Everything here is plain torch (no custom op is needed): 3x3 local averaging of feature maps,
multi-layer concatenation on one grid, the paper's optional adaptive pooling, and a separable
Gaussian blur whose border handling is a parameter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: Border modes of :func:`gaussian_blur`, with their equivalents elsewhere:
#:
#: - ``"reflect"``: ``d c b | a b c d | c b a`` (edge not repeated). torch ``F.pad(mode="reflect")``,
#:   kornia's and anomalib's ``GaussianBlur2d`` default, scipy ``mode="mirror"``.
#: - ``"symmetric"``: ``c b a | a b c d | d c b`` (edge repeated). scipy ``gaussian_filter``'s default
#:   ``mode="reflect"`` (used by the PaDiM / SPADE reference code), numpy ``pad(mode="symmetric")``.
#: - ``"replicate"``: ``a a a | a b c d | d d d``. scipy ``mode="nearest"``.
#: - ``"constant"``: zeros outside. scipy ``mode="constant", cval=0``.
BORDER_MODES = ("reflect", "symmetric", "replicate", "constant")

#: Maps blurred per chunk in :func:`gaussian_blur` (bounds the ``[chunk, H, W, taps]`` temporary the
#: sliding-window product may materialise: 16 maps of 224 x 224 with 33 taps ~ 110 MB).
BLUR_CHUNK = 16


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, ``Tensor[2 * int(truncate * sigma + 0.5) + 1]``.

    The size is anomalib's ``compute_kernel_size`` (anomalib 2.7,
    ``models/components/filters/blur.py``: ``2 * int(4.0 * sigma + 0.5) + 1``, 33 taps for sigma 4),
    which is also scipy's ``gaussian_filter`` radius with ``truncate=4``. The taps are
    ``exp(-x^2 / (2 sigma^2))`` for integer ``x`` centred on 0, divided by their sum (kornia's
    ``get_gaussian_kernel1d``; anomalib's 2-D kernel is the outer product of two of these, normalised again).
    """
    if not sigma > 0:
        raise ValueError(f"gaussian_kernel1d: sigma must be > 0, got {sigma}")
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x * x) / (2.0 * float(sigma) ** 2))
    return (k / k.sum()).to(dtype=dtype, device=device)


def _pad_index(n: int, pad: int, mode: str, device) -> torch.Tensor:
    """Source indices ``Tensor[n + 2 pad]`` that pad a length-``n`` axis by ``pad`` on each side.

    Works for any ``pad`` (also larger than ``n``, unlike ``F.pad(mode="reflect")``) by folding the
    index periodically. ``"constant"`` is handled by the caller (zero padding).
    """
    i = torch.arange(-pad, n + pad, device=device)
    if mode == "replicate" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect":  # period 2(n-1): -1 -> 1, n -> n-2
        p = 2 * (n - 1)
        i = i.remainder(p)
        return torch.where(i >= n, p - i, i)
    if mode == "symmetric":  # period 2n: -1 -> 0, n -> n-1
        p = 2 * n
        i = i.remainder(p)
        return torch.where(i >= n, p - 1 - i, i)
    raise ValueError(f"gaussian_blur: border must be one of {BORDER_MODES}, got {mode!r}")


def gaussian_blur(maps: torch.Tensor, sigma: float | None, border: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of a batch of maps.

    Args:
        maps: ``Tensor[B, H, W]`` (or ``Tensor[B, 1, H, W]``), floating point.
        sigma: standard deviation in pixels; ``None`` or ``0`` returns ``maps`` unchanged.
        border: one of :data:`BORDER_MODES` (``"reflect"`` = anomalib / torch reflect padding).

    Returns:
        ``Tensor`` of the input's shape. The kernel has ``2 * int(4 sigma + 0.5) + 1`` taps per axis;
        a row pass then a column pass equal anomalib's 2-D ``conv2d`` with the outer-product kernel
        (anomalib 2.7 ``GaussianBlur2d``: ``F.pad(..., mode="reflect")`` by ``kernel // 2`` on each
        side, then a ``33 x 33`` ``conv2d``) up to float rounding, for ~12x fewer operations.
    """
    if sigma is None or sigma == 0:
        return maps
    if border not in BORDER_MODES:
        raise ValueError(f"gaussian_blur: border must be one of {BORDER_MODES}, got {border!r}")
    squeeze = maps.dim() == 3
    x = maps.unsqueeze(1) if squeeze else maps
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"gaussian_blur: maps must be [B, H, W] or [B, 1, H, W], got {tuple(maps.shape)}")
    if x.numel() == 0:
        return maps
    k = gaussian_kernel1d(sigma, dtype=x.dtype, device=x.device)
    r = (k.numel() - 1) // 2
    H, W = x.shape[-2:]
    if border == "constant":
        x = F.pad(x, (r, r, r, r))
    else:
        x = x.index_select(3, _pad_index(W, r, border, x.device))
        x = x.index_select(2, _pad_index(H, r, border, x.device))
    # Each pass is a matrix-vector product over a sliding-window view (unfold): on CPU this is ~3x
    # faster than a 1 x K conv2d of one channel. Rows first, then the transposed image's rows (columns).
    out = torch.empty(x.shape[0], H, W, dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], BLUR_CHUNK):
        xs = x[s : s + BLUR_CHUNK, 0]  # [b, H + 2r, W + 2r]
        rows = xs.unfold(2, k.numel(), 1).matmul(k)  # [b, H + 2r, W]
        cols = rows.transpose(1, 2).contiguous().unfold(2, k.numel(), 1).matmul(k)  # [b, W, H]
        out[s : s + BLUR_CHUNK] = cols.transpose(1, 2)
    return out if squeeze else out.unsqueeze(1)


#: Resize modes of :func:`resize_blur` (``F.interpolate`` modes that are linear and separable per axis).
RESIZE_MODES = ("bilinear", "nearest")

_OPERATOR_CACHE: dict = {}
_OPERATOR_CACHE_MAX = 32


def resize_blur_operator(n_in: int, n_out: int, sigma: float | None, border: str = "reflect",
                         mode: str = "bilinear", dtype=torch.float32, device=None) -> torch.Tensor:
    """The ``Tensor[n_out, n_in]`` matrix of one axis of "resize ``n_in -> n_out``, then blur".

    ``A = Blur_{n_out} @ Resize_{n_out <- n_in}``: the resize rows are ``F.interpolate`` applied to the
    identity (``mode="linear"`` for ``"bilinear"``, ``align_corners=False``; or ``"nearest"``), so the
    weights are torch's own; the blur rows are the taps of :func:`gaussian_kernel1d` folded onto the
    axis by the padding of ``border`` (zeros outside for ``"constant"``), as :func:`gaussian_blur`
    pads. Built in float64, cast to ``dtype``, cached per ``(n_in, n_out, sigma, border, mode, dtype,
    device)``.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_blur: mode must be one of {RESIZE_MODES}, got {mode!r}")
    if border not in BORDER_MODES:
        raise ValueError(f"resize_blur: border must be one of {BORDER_MODES}, got {border!r}")
    key = (int(n_in), int(n_out), None if not sigma else float(sigma), border, mode, dtype, str(device))
    hit = _OPERATOR_CACHE.get(key)
    if hit is not None:
        return hit
    eye = torch.eye(n_in, dtype=torch.float64)[None]  # [1, n_in (channels = unit vectors), n_in]
    if mode == "bilinear":
        up = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T  # [n_out, n_in]
    else:
        up = F.interpolate(eye, size=n_out, mode="nearest")[0].T
    A = up
    if sigma:
        k = gaussian_kernel1d(sigma, dtype=torch.float64)
        r = (k.numel() - 1) // 2
        blur = torch.zeros(n_out, n_out, dtype=torch.float64)
        rows = torch.arange(n_out)[:, None].expand(n_out, k.numel())
        taps = k[None].expand(n_out, k.numel())
        if border == "constant":
            src = torch.arange(n_out)[:, None] + torch.arange(-r, r + 1)[None]
            ok = (src >= 0) & (src < n_out)
            blur.index_put_((rows[ok], src[ok]), taps[ok], accumulate=True)
        else:
            idx = _pad_index(n_out, r, border, None)  # [n_out + 2r]
            src = idx[torch.arange(n_out)[:, None] + torch.arange(k.numel())[None]]
            blur.index_put_((rows.reshape(-1), src.reshape(-1)), taps.reshape(-1), accumulate=True)
        A = blur @ up
    A = A.to(dtype=dtype, device=device).contiguous()
    if len(_OPERATOR_CACHE) >= _OPERATOR_CACHE_MAX:
        _OPERATOR_CACHE.pop(next(iter(_OPERATOR_CACHE)))
    _OPERATOR_CACHE[key] = A
    return A


def resize_blur(grid: torch.Tensor, size, sigma: float | None, border: str = "reflect",
                mode: str = "bilinear") -> torch.Tensor:
    """``gaussian_blur(F.interpolate(grid, size, mode), sigma, border)`` as two small matrix products.

    Both steps are linear and separable, so the map is ``A_y @ S @ A_x^T`` with the per-axis operators
    of :func:`resize_blur_operator` (PaDiM's 28 x 28 -> 224 x 224: ~3 MFLOP per map instead of a 33-tap
    blur of the full map in both directions). Equal to the two-step path up to float rounding.

    Args:
        grid: ``Tensor[B, h, w]`` or ``Tensor[B, 1, h, w]``, floating point.
        size: ``(H, W)`` of the output. sigma / border: as :func:`gaussian_blur` (``None``/``0``: no
            blur). mode: ``"bilinear"`` (``align_corners=False``) or ``"nearest"``.

    Returns:
        ``Tensor[B, H, W]`` (``[B, 1, H, W]`` for a 4-D input), ``grid``'s dtype and device.
    """
    squeeze = grid.dim() == 3
    if not (grid.dim() == 3 or (grid.dim() == 4 and grid.shape[1] == 1)):
        raise ValueError(f"resize_blur: grid must be [B, h, w] or [B, 1, h, w], got {tuple(grid.shape)}")
    if not grid.is_floating_point():
        raise ValueError(f"resize_blur: grid must be floating point, got {grid.dtype}")
    H, W = (int(s) for s in size)
    if H < 1 or W < 1:
        raise ValueError(f"resize_blur: size must be two positive ints, got {tuple(size)}")
    g = grid if squeeze else grid[:, 0]
    h, w = g.shape[-2:]
    Ay = resize_blur_operator(h, H, sigma, border, mode, g.dtype, g.device)
    Ax = resize_blur_operator(w, W, sigma, border, mode, g.dtype, g.device)
    out = torch.matmul(Ay, torch.matmul(g, Ax.T))  # [B, H, W]: (S A_x^T) first, the small product
    return out if squeeze else out[:, None]


def local_average(feature: torch.Tensor) -> torch.Tensor:
    """PatchCore's local neighbourhood aggregation: ``AvgPool2d(3, stride=1, padding=1)``.

    anomalib 2.7 ``PatchcoreModel.feature_pooler = torch.nn.AvgPool2d(3, 1, 1)``: zero padding with the
    default ``count_include_pad=True``, so border cells are divided by 9 too. Applied per layer,
    *before* the layers are resized to a common grid. ``Tensor[B, C, h, w] -> Tensor[B, C, h, w]``.
    """
    return F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1, count_include_pad=True)


def to_finest_grid(features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Resize every map to the finest grid among them (bilinear, ``align_corners=False``).

    anomalib 2.7 ``generate_embedding`` resizes every later layer to the grid of ``layers[0]`` with
    ``F.interpolate(mode="bilinear")`` (``align_corners`` unset = False); with layers listed shallow to
    deep (the usual case) ``layers[0]`` is the finest grid, so the two agree. Maps already on the target
    grid are left untouched (a same-size bilinear resize is the identity).

    Args:
        features: list of ``Tensor[B, C_l, h_l, w_l]``.

    Returns:
        list of ``Tensor[B, C_l, h, w]`` with ``(h, w)`` the largest grid.
    """
    size = tuple(max((tuple(f.shape[-2:]) for f in features), key=lambda s: (s[0] * s[1], s[0])))
    return [
        f if tuple(f.shape[-2:]) == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in features
    ]


def concat_layers(features: list[torch.Tensor]) -> torch.Tensor:
    """:func:`to_finest_grid` then concatenate along channels in list order: ``Tensor[B, sum C_l, h, w]``."""
    return torch.cat(to_finest_grid(features), dim=1)


def adaptive_patch_pool(features: list[torch.Tensor], target_dim: int) -> torch.Tensor:
    """The original PatchCore paper's dimension reduction (optional in :class:`PatchCore`).

    The paper's code (amazon-science/patchcore-inspection) average-pools each layer's patch vector to a
    fixed length (``adaptive_avg_pool1d``), stacks the layers and pools the stacked vector again to the
    target length. Here each layer is pooled to ``target_dim`` and the ``L * target_dim`` stacked vector
    back to ``target_dim``. anomalib does not do this (it concatenates).

    Args:
        features: list of ``Tensor[B, C_l, h, w]`` already on one grid.

    Returns:
        ``Tensor[B, target_dim, h, w]``.
    """
    B, _, h, w = features[0].shape
    pooled = []
    for f in features:
        rows = f.permute(0, 2, 3, 1).reshape(B * h * w, 1, f.shape[1])
        pooled.append(F.adaptive_avg_pool1d(rows, target_dim))  # [P, 1, target]
    stacked = torch.cat(pooled, dim=2)  # [P, 1, L * target]
    out = F.adaptive_avg_pool1d(stacked, target_dim)[:, 0]  # [P, target]
    return out.reshape(B, h, w, target_dim).permute(0, 3, 1, 2)
