"""Input geometry: how an image of any size becomes the model's input (no torch, no Pillow needed).

Resize modes (``resize=`` of :func:`fastad.data.load_image`, the datasets and the CLI's ``--resize``),
for a target size ``(H, W)`` (an int ``S`` means ``(S, S)``):

- ``"squash"``: resize to exactly ``(H, W)``, ignoring the aspect ratio (anomalib's and MuSc's
  default). A 1:2.5 part squashed to a square loses 2.5x of its resolution along its long side.
- ``"keep-aspect"``: scale by one factor so that the image fits inside ``(H, W)`` (``s = min(H/h,
  W/w)``); the output is ``(round(h s), round(w s))``, no padding, no crop. With ``S`` the longer side
  becomes ``S``. Images of different aspect ratios get different sizes: batch them with
  ``fastad.data.batches(..., ragged=True)`` and score them with tiling, or one at a time.
- ``"pad"`` (letterbox): the ``keep-aspect`` resize, then centred on an ``(H, W)`` canvas. The
  padding holds the normalisation mean (0 after normalising); masks are padded with "no defect";
  dataset items carry ``valid`` (``Tensor[H, W]`` bool, True on the image) so that metrics and reports
  leave the padding out (:func:`fastad.data.unpad`).
- ``"shorter_crop"``: scale so that the image covers ``(H, W)``, then centre-crop.
- ``"none"``: the original size.
"""
from __future__ import annotations

__all__ = ["RESIZE_MODES", "size_hw", "check_resize", "plan", "Plan"]

RESIZE_MODES = ("squash", "keep-aspect", "pad", "shorter_crop", "none")


def size_hw(size, what: str = "image size") -> tuple[int, int] | None:
    """``(H, W)`` from an int ``S`` (square) or a pair ``(H, W)``; None stays None.

    Raises ValueError (naming ``what``) for non-positive values or anything else."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(f"{what} must be an int or (H, W), got {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"{what} must be positive, got {size}")
        return (size, size)
    try:
        vals = [int(s) for s in size]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or (H, W), got {size!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise ValueError(f"{what} must be an int or (H, W), got {len(vals)} values {tuple(size)}")
    h, w = vals
    if h <= 0 or w <= 0:
        raise ValueError(f"{what} must be positive, got {tuple(size)}")
    return (h, w)


def check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")


class Plan:
    """What to do with one image: ``resize_wh`` (None: keep), then ``crop`` box ``(left, top, right,
    bottom)`` (None: none), then ``pad`` ``(left, top, right, bottom)`` pixels (None: none).
    ``out_hw`` is the output size, ``valid`` the box ``(top, left, bottom, right)`` of image pixels in it."""

    __slots__ = ("resize_wh", "crop", "pad", "out_hw", "valid")

    def __init__(self, resize_wh, crop, pad, out_hw, valid):
        self.resize_wh, self.crop, self.pad, self.out_hw, self.valid = resize_wh, crop, pad, out_hw, valid

    def __repr__(self) -> str:
        return f"Plan(resize_wh={self.resize_wh}, crop={self.crop}, pad={self.pad}, out_hw={self.out_hw})"


def plan(src_wh: tuple[int, int], size, resize: str) -> Plan:
    """The :class:`Plan` for a source image of ``src_wh = (width, height)`` (Pillow's order)."""
    check_resize(resize)
    sw, sh = int(src_wh[0]), int(src_wh[1])
    target = size_hw(size)
    if resize == "none" or target is None:
        return Plan(None, None, None, (sh, sw), (0, 0, sh, sw))
    th, tw = target
    if resize == "squash":
        return Plan((tw, th), None, None, (th, tw), (0, 0, th, tw))
    if resize == "shorter_crop":
        s = max(th / sh, tw / sw)
        rw, rh = max(tw, round(sw * s)), max(th, round(sh * s))
        left, top = (rw - tw) // 2, (rh - th) // 2
        return Plan((rw, rh), (left, top, left + tw, top + th), None, (th, tw), (0, 0, th, tw))
    # keep-aspect / pad: fit inside the target with one scale factor
    s = min(th / sh, tw / sw)
    rw, rh = min(tw, max(1, round(sw * s))), min(th, max(1, round(sh * s)))
    if resize == "keep-aspect":
        return Plan((rw, rh), None, None, (rh, rw), (0, 0, rh, rw))
    left, top = (tw - rw) // 2, (th - rh) // 2
    pad = (left, top, tw - rw - left, th - rh - top)
    return Plan((rw, rh), None, pad if any(pad) else None, (th, tw), (top, left, top + rh, left + rw))
