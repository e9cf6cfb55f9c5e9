"""Tiling: cut images into overlapping tiles, stitch per-tile maps back (overlaps averaged).

Large images (a part photographed at its native resolution) are scored tile by tile, so that a
small defect keeps its pixels instead of being squashed away, and so that memory is bounded by one
batch of tiles. Like anomalib's ``Tiler`` (``anomalib/data/utils/tiler.py``): tiles of ``tile_size``
at a stride of ``tile_size * (1 - overlap)``, per-tile outputs put back in place and averaged where
tiles overlap. Differences, chosen so that no pixel is invented: the last tile of a row / column is
moved flush with the image's border (anomalib pads the image to a whole number of strides instead),
and only an image smaller than one tile is padded (bottom / right, with 0 = the mean colour of a
normalised image); the padding is cropped off the stitched map.

Example:
    >>> t = Tiler(224, overlap=0.25)
    >>> t.boxes(400, 600)[:3]            # (top, left) of each tile, row-major
    [(0, 0), (0, 168), (0, 336)]
    >>> tiles = t.cut(images)                                 # doctest: +SKIP
    >>> maps = t.stitch(tile_maps, images.shape[-2:])         # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["Tiler", "Stitcher"]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    s = list(range(0, length - tile + 1, stride))
    if s[-1] + tile < length:
        s.append(length - tile)
    return s


class Tiler:
    """Overlapping tiles of ``tile_size`` (int ``S`` or ``(h, w)``) with ``overlap`` in ``[0, 1)``
    (the share of a tile shared with its neighbour; stride ``max(1, round(S * (1 - overlap)))``)."""

    def __init__(self, tile_size, overlap: float = 0.25):
        if isinstance(tile_size, bool):
            raise ValueError(f"Tiler: tile_size must be an int or (h, w) >= 1, got {tile_size!r}")
        if isinstance(tile_size, int):
            tile_size = (tile_size, tile_size)
        try:
            th, tw = (int(v) for v in tile_size)
        except (TypeError, ValueError):
            raise ValueError(f"Tiler: tile_size must be an int or (h, w) >= 1, got {tile_size!r}") from None
        if th < 1 or tw < 1:
            raise ValueError(f"Tiler: tile_size must be >= 1, got {(th, tw)}")
        overlap = float(overlap)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"Tiler: overlap must be in [0, 1), got {overlap}")
        self.tile_size = (th, tw)
        self.overlap = overlap
        self.stride = (max(1, round(th * (1 - overlap))), max(1, round(tw * (1 - overlap))))

    def __repr__(self) -> str:
        return f"Tiler(tile_size={self.tile_size}, overlap={self.overlap}, stride={self.stride})"

    def boxes(self, H: int, W: int) -> list[tuple[int, int]]:
        """``(top, left)`` of every tile of an ``H x W`` image, row-major."""
        (th, tw), (sh, sw) = self.tile_size, self.stride
        return [(t, left) for t in _starts(int(H), th, sh) for left in _starts(int(W), tw, sw)]

    def n_tiles(self, H: int, W: int) -> int:
        return len(self.boxes(H, W))

    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        th, tw = self.tile_size
        H, W = images.shape[-2:]
        if H >= th and W >= tw:
            return images
        return F.pad(images, (0, max(0, tw - W), 0, max(0, th - H)))

    def iter_cut(self, images: torch.Tensor, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Tiles of ``images: Tensor[B, C, H, W]`` in chunks of at most ``batch_size``:
        ``(index of the first tile, Tensor[b, C, th, tw])``. Tile ``j`` is tile ``j % n`` of image
        ``j // n`` (``n = n_tiles(H, W)``). Only one chunk is materialised at a time."""
        if images.dim() != 4:
            raise ValueError(f"Tiler: images must be Tensor[B, C, H, W], got {tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"Tiler: batch_size must be >= 1, got {batch_size}")
        B = images.shape[0]
        x = self._padded(images)
        th, tw = self.tile_size
        boxes = self.boxes(*images.shape[-2:])
        n = len(boxes)
        for start in range(0, B * n, batch_size):
            idx = range(start, min(B * n, start + batch_size))
            chunk = [x[j // n, :, boxes[j % n][0] : boxes[j % n][0] + th, boxes[j % n][1] : boxes[j % n][1] + tw] for j in idx]
            yield start, torch.stack(chunk)

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """All tiles ``Tensor[B * n, C, th, tw]`` (image-major) of ``images: Tensor[B, C, H, W]``."""
        n = self.n_tiles(*images.shape[-2:]) * images.shape[0]
        return next(self.iter_cut(images, max(1, n)))[1]

    def stitch(self, tile_maps: torch.Tensor, image_hw) -> torch.Tensor:
        """``Tensor[B, H, W]`` from per-tile maps ``Tensor[B * n, th, tw]`` (or ``[B * n, 1, th, tw]``)
        in :meth:`cut`'s order: every pixel is the mean of the tiles that cover it."""
        H, W = (int(v) for v in image_hw)
        n = self.n_tiles(H, W)
        if tile_maps.dim() == 4 and tile_maps.shape[1] == 1:
            tile_maps = tile_maps[:, 0]
        if tile_maps.dim() != 3 or tile_maps.shape[0] % n:
            raise ValueError(f"Tiler.stitch: tile_maps must be Tensor[B * {n}, h, w] for a {H}x{W} image, got {tuple(tile_maps.shape)}")
        st = Stitcher(self, tile_maps.shape[0] // n, (H, W), dtype=tile_maps.dtype, device=tile_maps.device)
        st.add(0, tile_maps)
        return st.result()


class Stitcher:
    """Accumulates per-tile maps of ``B`` images of ``image_hw`` chunk by chunk (:meth:`add` with the
    chunk's first tile index, as :meth:`Tiler.iter_cut` gives it), then :meth:`result` averages."""

    def __init__(self, tiler: Tiler, B: int, image_hw, *, dtype=torch.float32, device=None):
        H, W = (int(v) for v in image_hw)
        self.tiler, self.B, self.hw = tiler, int(B), (H, W)
        self.boxes = tiler.boxes(H, W)
        th, tw = tiler.tile_size
        Hp, Wp = max(H, th), max(W, tw)
        self.sum = torch.zeros(self.B, Hp, Wp, dtype=dtype, device=device)
        self.count = torch.zeros(Hp, Wp, dtype=dtype, device=device)
        for t, left in self.boxes:
            self.count[t : t + th, left : left + tw] += 1
        self.seen = 0

    def add(self, start: int, tile_maps: torch.Tensor) -> None:
        th, tw = self.tiler.tile_size
        if tile_maps.dim() == 4 and tile_maps.shape[1] == 1:
            tile_maps = tile_maps[:, 0]
        if tuple(tile_maps.shape[1:]) != (th, tw):
            raise ValueError(f"Stitcher: tile maps must be [b, {th}, {tw}], got {tuple(tile_maps.shape)}")
        n = len(self.boxes)
        if start < 0 or start + tile_maps.shape[0] > self.B * n:
            raise ValueError(f"Stitcher: tiles {start}..{start + tile_maps.shape[0]} out of range for {self.B} x {n} tiles")
        tile_maps = tile_maps.to(self.sum.dtype)
        for k in range(tile_maps.shape[0]):
            j = start + k
            t, left = self.boxes[j % n]
            self.sum[j // n, t : t + th, left : left + tw] += tile_maps[k].to(self.sum.device)
        self.seen += tile_maps.shape[0]

    def result(self) -> torch.Tensor:
        """``Tensor[B, H, W]``: the mean over covering tiles (padding of small images cropped off)."""
        n = len(self.boxes)
        if self.seen != self.B * n:
            raise ValueError(f"Stitcher: {self.seen} of {self.B * n} tiles were added")
        H, W = self.hw
        return (self.sum / self.count)[:, :H, :W]
