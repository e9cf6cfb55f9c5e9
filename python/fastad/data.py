"""Image datasets for anomaly detection: the MVTec AD folder layout and plain folders of images.

No torchvision: images are decoded and resized with Pillow, converted with numpy and returned as
torch tensors.

MVTec AD layout (``root`` is one category)::

    root/train/good/*.png                       normal training images
    root/test/good/*.png                        normal test images
    root/test/<defect_type>/*.png               defective test images (any number of types)
    root/ground_truth/<defect_type>/<stem>_mask.png   one binary mask per defective test image

Any common image extension is accepted for images and masks (MTD ships ``.jpg`` images and
``.png`` masks). Images below a type folder may sit in sub-folders; the mask is then looked up under
the same relative sub-folder of ``ground_truth/<defect_type>/``.

Policies (decided here, relied on by the detectors and the CLI):

- **Unreadable image files** are skipped with a ``warnings.warn`` that names the file, never a
  crash: files whose header Pillow cannot identify are dropped when the dataset is built (cheap,
  ``validate="header"``); a file that only fails later while decoding (a truncated JPEG) is dropped
  from its batch by :func:`batches`, again with a warning. ``validate="full"`` decodes every file up
  front instead.
- EXIF orientation tags are ignored (as torchvision/anomalib and MuSc do): pixels are used as stored.
- **A missing or empty folder** raises ``FileNotFoundError`` / ``ValueError`` naming the folder.
- **A defective image without a mask** gets an all-zero mask, a warning naming the image and the
  paths that were tried, and ``has_mask = False`` in its item (``missing_masks="warn"``, default),
  so that pixel metrics can leave it out; ``missing_masks="error"`` raises instead. When the
  dataset has no ``ground_truth`` folder at all (image-level labels only), one warning is given and
  every item has ``has_mask = False`` except the good ones (whose all-zero mask is known).
- **A type folder without images** (``test/<type>/`` empty) is left out with a warning naming it.
- **A mask of another size than its image** is scaled onto the image first when its aspect ratio is
  the same (a mask stored at half resolution works with every ``resize``, ``"none"`` included); a
  mask of another aspect ratio cannot be aligned and is refused (``ValueError`` naming the mask and
  its image) when the dataset is built, before any work.
- **Masks** are resized with nearest-neighbour and binarised with ``> 0`` by default. MVTec masks
  are 8-bit single-channel PNGs holding 0 or 255; other datasets store 0/1, RGB or even JPEG masks
  (whose compression noise ``> 0`` would turn into defect pixels: raise ``mask_threshold`` for
  those). MuSc's MVTec loader resizes masks bilinearly and keeps only pixels that stay exactly 255
  (masks shrink at the edges); use ``mask_interpolation="bilinear", mask_threshold=254`` to
  reproduce it. Its VisA loader does ``> 0`` on the original mask (masks grow), which the default
  reproduces.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .batching import UnreadableImageError, batches, collate, unpad, unpad_batch  # noqa: F401  (public here too)
from .geometry import RESIZE_MODES, check_resize, plan  # noqa: F401  (RESIZE_MODES: public here too)
from .geometry import size_hw as parse_size

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "load_image",
    "load_mask",
    "mask_size_problem",
    "MVTecDataset",
    "ImageFolder",
    "batches",
    "collate",
    "unpad",
    "unpad_batch",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _size_hw(size) -> tuple[int, int] | None:
    return parse_size(size)


def _check_resize(resize: str) -> None:
    check_resize(resize)


def _open(path) -> Image.Image:
    """Open and fully decode an image, turning every decoder failure into UnreadableImageError."""
    try:
        im = Image.open(path)
        try:
            im.load()
            if getattr(im, "fp", None) is not None:  # multi-frame files keep their file open
                out = im.copy()
                im.close()
                im = out
        except BaseException:
            im.close()
            raise
        return im
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(f"cannot read image {os.fspath(path)!r}: {e}") from e


def _apply_geometry(im: Image.Image, size_hw, resize: str, resample) -> Image.Image:
    """Resize / crop ``im`` by :func:`fastad.geometry.plan` (padding is added later, on the array)."""
    p = plan(im.size, size_hw, resize)
    if p.resize_wh is not None and p.resize_wh != im.size:
        im = im.resize(p.resize_wh, resample=resample)
    if p.crop is not None:
        im = im.crop(p.crop)
    return im


def _pad_array(a: np.ndarray, src_wh, size_hw, resize: str, value) -> np.ndarray:
    """Letterbox ``a`` (``[h, w]`` or ``[h, w, C]``) onto the target canvas of ``resize="pad"``."""
    if resize != "pad":
        return a
    p = plan(src_wh, size_hw, resize)
    if p.pad is None:
        return a
    left, top, right, bottom = p.pad
    out = np.empty((p.out_hw[0], p.out_hw[1]) + a.shape[2:], dtype=a.dtype)
    out[...] = value
    out[top : top + a.shape[0], left : left + a.shape[1]] = a
    return out


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """HxWx3 float32 array in [0, 1] for any Pillow mode (8/16-bit grey, palette, RGBA, CMYK)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / scale, 0.0, 1.0)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


def load_image(
    path,
    size=224,
    resize: str = "squash",
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    *,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Load one image as a normalised float tensor.

    Args:
        path: image file (any format Pillow reads; grey, palette, 16-bit and RGBA become RGB).
        size: int or (H, W) target size; ignored when ``resize="none"``.
        resize: ``"squash"`` resizes to (H, W) without keeping the aspect ratio (anomalib's and
            MuSc's default); ``"keep-aspect"`` scales to fit inside (H, W) keeping the aspect ratio
            (output smaller than (H, W) along one side); ``"pad"`` does that and letterboxes onto
            (H, W) with the mean colour (0 after normalisation; ImageNet's mean when ``mean`` is None);
            ``"shorter_crop"`` scales so the image covers (H, W) keeping its aspect ratio, then
            centre-crops; ``"none"`` keeps the original size. See :mod:`fastad.geometry`.
        mean, std: per-channel normalisation ``(x - mean) / std`` of values in [0, 1]; None skips it.
        interpolation: Pillow resampling, ``"bilinear"`` (default), ``"bicubic"``, ``"nearest"``,
            ``"lanczos"``. Pillow antialiases when downscaling (like torchvision's default).

    Returns:
        Tensor[3, H, W] float32.

    Raises:
        FileNotFoundError if the file does not exist; UnreadableImageError if it cannot be decoded.

    Example:
        >>> x = load_image("img.png", 224)            # doctest: +SKIP
        >>> x.shape
        torch.Size([3, 224, 224])
    """
    _check_resize(resize)
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation must be one of {tuple(_RESAMPLE)}, got {interpolation!r}")
    size_hw = _size_hw(size) if resize != "none" else None
    im = _open(path)
    src_wh = im.size
    if im.mode not in ("RGB", "L") and not im.mode.startswith("I") and im.mode != "F":
        im = im.convert("RGB")
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        # Pillow cannot resize 16-bit modes with every filter: go through float32 ("F") first.
        a = _to_rgb_array(im)[:, :, 0]
        im = Image.fromarray(a, mode="F")
        im = _apply_geometry(im, size_hw, resize, _RESAMPLE[interpolation])
        a = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        arr = np.repeat(a[:, :, None], 3, axis=2)
    else:
        im = _apply_geometry(im, size_hw, resize, _RESAMPLE[interpolation])
        arr = _to_rgb_array(im)
    if mean is not None or std is not None:
        # in numpy: per-image work stays single-threaded (torch's intra-op threads only add
        # synchronisation on arrays this small, badly so on a busy machine)
        m = np.asarray(mean if mean is not None else (0.0, 0.0, 0.0), dtype=np.float32)
        s = np.asarray(std if std is not None else (1.0, 1.0, 1.0), dtype=np.float32)
        arr = (arr - m) / s
        arr = _pad_array(arr, src_wh, size_hw, resize, 0.0)  # the mean colour
    else:
        arr = _pad_array(arr, src_wh, size_hw, resize, np.asarray(IMAGENET_MEAN, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def load_mask(
    path,
    size=224,
    resize: str = "squash",
    *,
    interpolation: str = "nearest",
    threshold: float = 0.0,
    image_wh: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Load a ground-truth mask as a boolean tensor, with the same geometry as :func:`load_image`.

    The mask is reduced to one channel (max over RGB(A) channels, so a coloured mask counts),
    resized like the image (same ``size``/``resize``) with ``interpolation``, then binarised with
    ``value > threshold`` on the 0-255 scale (0-1 masks work with the default threshold 0).
    See the module docstring for MVTec/MuSc/VisA conventions.

    ``image_wh``: the ``(width, height)`` of the mask's image file. A mask of another size but the
    same aspect ratio (e.g. stored at half resolution) is first scaled to it, so that it follows the
    image exactly under every ``resize`` (``"none"`` included); a mask of another aspect ratio cannot
    be aligned with its image and raises ValueError naming the file.

    Returns:
        Tensor[H, W] bool.
    """
    _check_resize(resize)
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation must be one of {tuple(_RESAMPLE)}, got {interpolation!r}")
    size_hw = _size_hw(size) if resize != "none" else None
    im = _open(path)
    a = np.asarray(im)
    if a.ndim == 3:
        a = a[:, :, :3].max(axis=2) if a.shape[2] >= 3 else a[:, :, 0]
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float32)
        top = a.max(initial=0.0)
        a = np.clip(a * (255.0 / (65535.0 if top > 255 else 255.0 if top > 1 else 1.0)), 0, 255)
        a = a.astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(a), mode="L")
    if image_wh is not None and tuple(im.size) != tuple(image_wh):
        problem = mask_size_problem(im.size, image_wh)
        if problem:
            raise ValueError(f"mask {os.fspath(path)!r}: {problem}")
        im = im.resize((int(image_wh[0]), int(image_wh[1])), resample=_RESAMPLE[interpolation])
    src_wh = im.size
    im = _apply_geometry(im, size_hw, resize, _RESAMPLE[interpolation])
    return torch.from_numpy(_pad_array(np.asarray(im) > threshold, src_wh, size_hw, resize, False))


def mask_size_problem(mask_wh, image_wh) -> str | None:
    """None when a mask of ``mask_wh`` can be scaled onto its image of ``image_wh`` (same size, or the
    same aspect ratio up to the rounding of either side), else why not (one line)."""
    mw, mh = (int(v) for v in mask_wh)
    iw, ih = (int(v) for v in image_wh)
    if (mw, mh) == (iw, ih):
        return None
    if min(mw, mh, iw, ih) <= 0:
        return f"empty mask or image ({mw}x{mh} vs {iw}x{ih} px)"
    ratio = (iw * mh) / (mw * ih)  # 1 when the aspect ratios agree
    tol = 0.5 / mw + 0.5 / mh + 0.5 / iw + 0.5 / ih + 1e-9  # one side rounded by half a pixel
    if abs(ratio - 1.0) <= tol:
        return None
    return (f"its size {mw}x{mh} px (width x height) has another aspect ratio than its image's {iw}x{ih} px, "
            "so it cannot be aligned with the image (is it the mask of another image, or rotated?)")


def _list_images(folder: Path, extensions: tuple[str, ...], recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    out = [p for p in it if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _normalise_exts(extensions) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not out:
        raise ValueError("extensions must not be empty")
    return out


def _header_ok(path: Path) -> str | None:
    """None if Pillow identifies the file (reads the header only), else the error text."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return str(e) or type(e).__name__


def _mask_header_problem(mask_path: Path, image_path: Path) -> str | None:
    """Why the mask cannot be aligned with its image (from both headers), or None; unreadable masks
    are left to loading (the image is then skipped with a warning naming the mask)."""
    try:
        with Image.open(mask_path) as m, Image.open(image_path) as im:
            return mask_size_problem(m.size, im.size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def _full_ok(path: Path) -> str | None:
    try:
        _open(path)
        return None
    except UnreadableImageError as e:
        return str(e.__cause__ or e)


@dataclass(frozen=True)
class _Sample:
    path: Path
    label: int
    defect_type: str
    mask_path: Path | None
    has_mask: bool


class _ImageDatasetBase:
    """Shared pieces: the transform settings, validation of files, item loading."""

    def __init__(self, image_size, resize, mean, std, interpolation, extensions, validate):
        _check_resize(resize)
        if interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {tuple(_RESAMPLE)}, got {interpolation!r}")
        if validate not in ("header", "full", "none"):
            raise ValueError(f"validate must be 'header', 'full' or 'none', got {validate!r}")
        self.image_size = _size_hw(image_size) if resize != "none" else None
        self.resize = resize
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.interpolation = interpolation
        self.extensions = _normalise_exts(extensions)
        self.validate = validate
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of files left out

    def _filter_readable(self, paths: list[Path]) -> list[Path]:
        if self.validate == "none":
            return paths
        check = _header_ok if self.validate == "header" else _full_ok
        keep = []
        for p in paths:
            err = check(p)
            if err is None:
                keep.append(p)
            else:
                self.skipped.append((str(p), err))
                warnings.warn(f"fastad.data: skipping unreadable image {str(p)!r}: {err}", stacklevel=3)
        return keep

    def _load_image(self, path: Path) -> torch.Tensor:
        return load_image(path, self.image_size, self.resize, self.mean, self.std, interpolation=self.interpolation)

    def _with_valid(self, item: dict, path: Path) -> dict:
        """``resize="pad"``: add ``valid`` (``Tensor[H, W]`` bool, True on the image, False on the
        letterbox), from the file's header size."""
        if self.resize != "pad":
            return item
        with Image.open(path) as im:
            wh = im.size
        p = plan(wh, self.image_size, self.resize)
        v = np.zeros(p.out_hw, dtype=np.bool_)
        t, left, b, r = p.valid
        v[t:b, left:r] = True
        item["valid"] = torch.from_numpy(v)
        return item


class MVTecDataset(_ImageDatasetBase):
    """One category in the MVTec AD folder layout (see the module docstring).

    Args:
        root: the category folder (holding ``train/``, ``test/``, ``ground_truth/``).
        split: ``"train"`` or ``"test"``. Every sub-folder of ``root/<split>`` is a type; ``good``
            is normal (label 0), any other name is defective (label 1).
        image_size: int or (H, W); resize: ``"squash"`` | ``"shorter_crop"`` | ``"none"``
            (see :func:`load_image`); mean, std: normalisation (None skips it);
            interpolation: image resampling.
        extensions: accepted image suffixes (case-insensitive).
        missing_masks: ``"warn"`` (zero mask, ``has_mask=False``, warning) or ``"error"``.
        mask_interpolation, mask_threshold: see :func:`load_mask`.
        validate: ``"header"`` (default, cheap), ``"full"`` (decode every file now) or ``"none"``.

    Items are dicts: ``image`` Tensor[3, H, W] float32, ``mask`` Tensor[H, W] bool (all False for
    good images), ``label`` int (0 good, 1 defect), ``defect_type`` str, ``path`` str,
    ``has_mask`` bool. Order: sorted type folders, then sorted relative paths (MuSc's order).
    ``paths``, ``labels``, ``defect_types`` give the metadata without decoding any image.

    Example:
        >>> ds = MVTecDataset("mtd", "test", image_size=224)       # doctest: +SKIP
        >>> for b in batches(ds, 32): b["image"].shape            # doctest: +SKIP
        torch.Size([32, 3, 224, 224])
    """

    def __init__(
        self,
        root,
        split: str = "train",
        *,
        image_size=224,
        resize: str = "squash",
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        interpolation: str = "bilinear",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        missing_masks: str = "warn",
        mask_interpolation: str = "nearest",
        mask_threshold: float = 0.0,
        validate: str = "header",
    ):
        super().__init__(image_size, resize, mean, std, interpolation, extensions, validate)
        if split not in ("train", "test"):
            raise ValueError(f"MVTecDataset: split must be 'train' or 'test', got {split!r}")
        if missing_masks not in ("warn", "error"):
            raise ValueError(f"MVTecDataset: missing_masks must be 'warn' or 'error', got {missing_masks!r}")
        if mask_interpolation not in _RESAMPLE:
            raise ValueError(f"mask_interpolation must be one of {tuple(_RESAMPLE)}, got {mask_interpolation!r}")
        self.root = Path(root)
        self.split = split
        self.missing_masks = missing_masks
        self.mask_interpolation = mask_interpolation
        self.mask_threshold = float(mask_threshold)
        if not self.root.is_dir():
            raise FileNotFoundError(f"MVTecDataset: dataset folder {str(self.root)!r} does not exist")
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"MVTecDataset: {str(split_dir)!r} does not exist (expected the MVTec AD layout: "
                f"{split}/good/, test/<defect_type>/, ground_truth/<defect_type>/<name>_mask.png)"
            )
        types = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        gt_dir = self.root / "ground_truth"
        self.has_ground_truth = gt_dir.is_dir()
        samples: list[_Sample] = []
        missing: list[str] = []
        for t in types:
            folder = split_dir / t
            listed = _list_images(folder, self.extensions)
            if not listed:
                warnings.warn(
                    f"fastad.data: {str(folder)!r} holds no image with extensions {self.extensions}; "
                    f"the type {t!r} is left out", stacklevel=2,
                )
            paths = self._filter_readable(listed)
            for p in paths:
                label = 0 if t == "good" else 1
                mask_path, has_mask = None, label == 0
                if label == 1 and self.has_ground_truth:
                    mask_path = self._find_mask(gt_dir / t, p.relative_to(folder))
                    if mask_path is None:
                        missing.append(str(p))
                    has_mask = mask_path is not None
                samples.append(_Sample(p, label, t, mask_path, has_mask))
        if not samples:
            raise ValueError(
                f"MVTecDataset: no readable images with extensions {self.extensions} under {str(split_dir)!r}"
            )
        if missing:
            tried = f"ground_truth/<type>/<stem>_mask<ext> or <stem><ext> under {str(gt_dir)!r}"
            if self.missing_masks == "error":
                raise FileNotFoundError(
                    f"MVTecDataset: no mask for {len(missing)} defective image(s), e.g. {missing[0]!r} (looked for {tried})"
                )
            for m in missing:
                warnings.warn(f"fastad.data: no mask for defective image {m!r} (looked for {tried}); using an all-zero mask", stacklevel=2)
        if self.validate != "none":  # masks that cannot be aligned with their image: refused before any work
            bad = []
            for sm in samples:
                if sm.mask_path is not None:
                    problem = _mask_header_problem(sm.mask_path, sm.path)
                    if problem:
                        bad.append(f"mask {str(sm.mask_path)!r} of {str(sm.path)!r}: {problem}")
            if bad:
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                raise ValueError(f"MVTecDataset: {bad[0]}{more}")
        if split == "test" and not self.has_ground_truth and any(s.label for s in samples):
            warnings.warn(
                f"fastad.data: {str(gt_dir)!r} does not exist: defective images get all-zero masks with has_mask=False",
                stacklevel=2,
            )
        self._samples = samples

    def _find_mask(self, gt_type_dir: Path, rel: Path) -> Path | None:
        base = gt_type_dir / rel.parent
        for stem in (rel.stem + "_mask", rel.stem):
            for ext in self.extensions:
                for e in (ext, ext.upper()):
                    c = base / (stem + e)
                    if c.is_file():
                        return c
        return None

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def paths(self) -> list[str]:
        return [str(s.path) for s in self._samples]

    @property
    def labels(self) -> torch.Tensor:
        """Tensor[N] int64: 0 good, 1 defect."""
        return torch.tensor([s.label for s in self._samples], dtype=torch.int64)

    @property
    def defect_types(self) -> list[str]:
        return [s.defect_type for s in self._samples]

    @property
    def mask_paths(self) -> list[str | None]:
        return [str(s.mask_path) if s.mask_path is not None else None for s in self._samples]

    @property
    def has_masks(self) -> torch.Tensor:
        """Tensor[N] bool: whether each item's mask is known (True for good images)."""
        return torch.tensor([s.has_mask for s in self._samples], dtype=torch.bool)

    def _mask_hw(self, image: torch.Tensor) -> tuple[int, int]:
        return int(image.shape[-2]), int(image.shape[-1])

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"MVTecDataset: index {i} out of range for {len(self)} items")
        s = self._samples[i]
        image = self._load_image(s.path)
        if s.mask_path is not None:
            with Image.open(s.path) as im:  # the header only: a mask of another size is scaled to it
                image_wh = im.size
            try:
                mask = load_mask(
                    s.mask_path, self.image_size, self.resize,
                    interpolation=self.mask_interpolation, threshold=self.mask_threshold, image_wh=image_wh,
                )
            except ValueError as e:
                raise ValueError(f"MVTecDataset: {e} (image {str(s.path)!r})") from None
            if tuple(mask.shape) != self._mask_hw(image):
                raise ValueError(
                    f"MVTecDataset: mask {str(s.mask_path)!r} has size {tuple(mask.shape)} but its image "
                    f"{str(s.path)!r} has {self._mask_hw(image)}"
                )
        else:
            mask = torch.from_numpy(np.zeros(self._mask_hw(image), dtype=np.bool_))  # no intra-op threads
        return self._with_valid({
            "image": image,
            "mask": mask,
            "label": s.label,
            "defect_type": s.defect_type,
            "path": str(s.path),
            "has_mask": s.has_mask,
        }, s.path)

    def __repr__(self) -> str:
        n_def = sum(s.label for s in self._samples)
        return (
            f"MVTecDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, defective={n_def}, "
            f"image_size={self.image_size}, resize={self.resize!r})"
        )


class ImageFolder(_ImageDatasetBase):
    """A plain folder of images (searched recursively unless ``recursive=False``), no labels.

    Items are dicts ``{"image": Tensor[3, H, W], "path": str}``. Same arguments and unreadable-file
    policy as :class:`MVTecDataset`; a missing folder raises FileNotFoundError, a folder without
    readable images raises ValueError, both naming the folder.
    """

    def __init__(
        self,
        root,
        *,
        image_size=224,
        resize: str = "squash",
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        interpolation: str = "bilinear",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        recursive: bool = True,
        validate: str = "header",
    ):
        super().__init__(image_size, resize, mean, std, interpolation, extensions, validate)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: folder {str(self.root)!r} does not exist")
        self._paths = self._filter_readable(_list_images(self.root, self.extensions, recursive))
        if not self._paths:
            raise ValueError(f"ImageFolder: no readable images with extensions {self.extensions} in {str(self.root)!r}")

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in self._paths]

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"ImageFolder: index {i} out of range for {len(self)} items")
        p = self._paths[i]
        return self._with_valid({"image": self._load_image(p), "path": str(p)}, p)

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, n={len(self)}, image_size={self.image_size}, resize={self.resize!r})"
