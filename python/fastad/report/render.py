"""Pixels of a report: colour maps (256-entry lookup tables built with numpy, no matplotlib), heatmap
overlays, mask outlines, displayable images."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["COLORMAPS", "colormap", "overlay", "to_uint8_image", "mask_outline", "resize_map", "resize_mask", "colorbar",
           "ground_truth_image"]

# --------------------------------------------------------------------------------------- colour maps


def _jet_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return np.round(np.stack([r, g, b], axis=1) * 255).astype(np.uint8)


def _anchors_lut(anchors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    a = np.asarray(anchors, dtype=np.float64)
    xp = np.linspace(0.0, 1.0, len(a))
    x = np.linspace(0.0, 1.0, 256)
    return np.round(np.stack([np.interp(x, xp, a[:, c]) for c in range(3)], axis=1)).astype(np.uint8)


# A perceptually ordered black -> purple -> red -> orange -> pale yellow ramp (inferno-like).
_INFERNO_ANCHORS = [
    (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
    (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164),
]

#: Available colour maps: name -> ``uint8 [256, 3]`` lookup table (index 0 = lowest score).
COLORMAPS: dict[str, np.ndarray] = {"jet": _jet_lut(), "inferno": _anchors_lut(_INFERNO_ANCHORS)}


def colormap(values: np.ndarray, name: str = "jet", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map scores to colours.

    Args:
        values: float array of any shape ``[...]``; NaN is drawn as the lowest colour.
        name: a key of :data:`COLORMAPS`.
        vmin, vmax: score range mapped to the ends of the colour map (default: min and max of ``values``).

    Returns:
        ``uint8 [..., 3]`` RGB.

    Example:
        >>> colormap(np.array([0.0, 1.0]), "jet").tolist()
        [[0, 0, 128], [128, 0, 0]]
    """
    if name not in COLORMAPS:
        raise ValueError(f"colormap: unknown colour map {name!r}; available: {sorted(COLORMAPS)}")
    v = np.asarray(values, dtype=np.float64)
    return COLORMAPS[name][_to_index(v, vmin, vmax)]


def _to_index(v: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    finite = v[np.isfinite(v)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else float(vmin))
    hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else float(vmax))
    span = hi - lo if hi > lo else 1.0
    t = np.nan_to_num((v - lo) / span, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.round(t * 255.0), 0, 255).astype(np.intp)


def to_uint8_image(image, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """A displayable ``uint8 [H, W, 3]`` array from a ``Tensor/ndarray [3, H, W]`` normalised image
    (``x * std + mean``, values in [0, 1] after that), an ``[H, W]`` grey or an ``[H, W, 3]`` array."""
    a = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    a = a.astype(np.float32)
    if std is not None:
        a = a * np.asarray(std, dtype=np.float32)
    if mean is not None:
        a = a + np.asarray(mean, dtype=np.float32)
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """``bool [H, W]``: pixels of ``mask`` that touch a pixel outside it (4-neighbourhood), grown to
    ``width`` pixels."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros_like(m)
    p = np.pad(m, 1, mode="edge")
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    edge = m & ~interior
    for _ in range(max(0, width - 1)):
        q = np.pad(edge, 1)
        edge = edge | q[:-2, 1:-1] | q[2:, 1:-1] | q[1:-1, :-2] | q[1:-1, 2:]
    return edge


def resize_map(m: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    if (m.shape[1], m.shape[0]) == tuple(size_wh):
        return m.astype(np.float32, copy=False)
    im = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32), mode="F")
    return np.asarray(im.resize(size_wh, Image.Resampling.BILINEAR), dtype=np.float32)


def resize_mask(m: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    if (m.shape[1], m.shape[0]) == tuple(size_wh):
        return m.astype(bool, copy=False)
    im = Image.fromarray(np.asarray(m, dtype=np.uint8) * 255, mode="L")
    return np.asarray(im.resize(size_wh, Image.Resampling.NEAREST)) > 127


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    cmap: str = "jet",
    alpha: tuple[float, float] = (0.15, 0.7),
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a heatmap over an image.

    Args:
        image: ``uint8 [H, W, 3]``.
        heat: float ``[h, w]`` scores; resized (bilinear) to ``[H, W]`` when the sizes differ.
        vmin, vmax: score range of the colour map (scores outside are clipped).
        cmap: colour map name.
        alpha: opacity of the colour at the lowest and the highest score (linear in between), so
            that normal regions keep the image visible and anomalous ones are clearly coloured.
        mask: optional ``bool [h', w']`` ground truth; its outline is drawn in white.

    Returns:
        ``uint8 [H, W, 3]``.
    """
    img = np.asarray(image, dtype=np.uint8)
    H, W = img.shape[:2]
    h = resize_map(np.asarray(heat, dtype=np.float32), (W, H))
    idx = _to_index(h, vmin, vmax)
    col = COLORMAPS[cmap][idx].astype(np.float32)
    a = (alpha[0] + (alpha[1] - alpha[0]) * (idx.astype(np.float32) / 255.0))[:, :, None]
    out = img.astype(np.float32) * (1.0 - a) + col * a
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if mask is not None:
        edge = mask_outline(resize_mask(np.asarray(mask), (W, H)), width=max(1, round(max(H, W) / 200)))
        out[edge] = 255
    return out


def ground_truth_image(image: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.45) -> np.ndarray:
    """The ground truth shown over its image: ``image`` (``uint8 [H, W, 3]``) in grey, the defect
    (``bool [h, w]``, resized nearest to ``[H, W]``) filled with ``color`` and outlined in white.

    Returns ``uint8 [H, W, 3]``."""
    img = np.asarray(image, dtype=np.uint8)
    H, W = img.shape[:2]
    m = resize_mask(np.asarray(mask), (W, H))
    grey = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.repeat((grey * 0.8)[:, :, None], 3, axis=2)
    out[m] = out[m] * (1.0 - alpha) + np.asarray(color, np.float32) * alpha
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    out[mask_outline(m, width=max(1, round(max(H, W) / 300)))] = 255
    return out


def colorbar(cmap: str, width: int = 256, height: int = 14) -> np.ndarray:
    row = COLORMAPS[cmap][np.linspace(0, 255, width).round().astype(np.intp)]
    return np.repeat(row[None], height, axis=0)
