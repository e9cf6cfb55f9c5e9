"""ELPV solar cells as an image-level anomaly-detection task.

The ELPV dataset (Buerhop-Lutz et al. 2018; Deitsch et al. 2019; CC BY-NC-SA 4.0) holds 2,624
electroluminescence images (300x300, 8-bit grey) of mono- and polycrystalline solar cells, each with
a defect probability (0, 1/3, 2/3 or 1) given by experts. It installs offline from PyPI::

    pip install --no-deps elpv-dataset==1.0.0.post1      # needs only numpy and pillow

The task (:func:`load_elpv`): train on functional cells (p = 0) of one type, test held-out functional cells against
defective ones (p = 1 by default). There are no pixel masks: items carry ``has_mask = False`` for
defective cells, so pixel metrics are left out.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["ELPVDataset", "load_elpv", "CELL_TYPES"]

CELL_TYPES = ("mono", "poly")
_INSTALL = "pip install --no-deps elpv-dataset==1.0.0.post1 (it needs only numpy and pillow)"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _type_name(p: float) -> str:
    if p == 0:
        return "good"
    if p == 1:
        return "defective"
    return f"defective_p{p:.2f}"


def _read_labels():
    """(probabilities [N], types [N], paths [N]) of the installed wheel, from its ``data/labels.csv``.

    The wheel's own ``elpv_dataset.utils.load_dataset()`` parses this file the same way but also
    decodes all 2,624 cells (236 MB, seconds); the adapter decodes only the cells it uses, lazily.
    """
    try:
        import elpv_dataset
    except ImportError as e:
        raise ImportError(f"the ELPV dataset is not installed ({e}); install it with: {_INSTALL}") from None
    data_dir = Path(elpv_dataset.__file__).resolve().parent / "data"
    labels_csv = data_dir / "labels.csv"
    if not labels_csv.is_file():
        raise FileNotFoundError(f"ELPV: {str(labels_csv)!r} is missing (a broken elpv-dataset install?)")
    # the format load_dataset() uses: "<path> <probability> <type>" per line
    labels = np.genfromtxt(labels_csv, dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    paths = [str(data_dir / p) for p in np.char.decode(labels["path"])]
    return np.asarray(labels["probability"], dtype=np.float64), np.char.decode(labels["type"]).astype(str), paths


class ELPVDataset:
    """A selection of ELPV cells with the item format of :class:`fastad.data.MVTecDataset`.

    Cells are decoded from ``paths`` when an item is read (or taken from ``images`` when given).

    Items are dicts: ``image`` Tensor[3, H, W] float32 (the grey cell repeated on 3 channels,
    resized, normalised with ``mean``/``std``), ``mask`` Tensor[H, W] bool (all False: ELPV has no
    masks), ``label`` int (0 functional, 1 defective), ``defect_type`` str (``good``, ``defective``,
    ``defective_p0.33`` ...), ``path`` str (the PNG inside the installed wheel), ``has_mask`` bool
    (True only for functional cells, whose all-zero mask is known), plus ``probability`` float.

    Args:
        paths: N cell image files; probabilities: ``[N]`` defect probabilities.
        images: optional uint8 ``[N, h, w]`` grey cells already in memory (then ``paths`` only names them).
        image_size: int or (H, W); resize: ``"squash"`` (the cells are square, so squash and crop agree).
        mean, std: normalisation of values in [0, 1].
    """

    has_ground_truth = False

    def __init__(
        self,
        paths: Sequence[str],
        probabilities: Sequence[float],
        *,
        images: np.ndarray | None = None,
        image_size=224,
        resize: str = "squash",
        mean: Sequence[float] | None = _IMAGENET_MEAN,
        std: Sequence[float] | None = _IMAGENET_STD,
    ):
        if resize not in ("squash", "shorter_crop", "none"):
            raise ValueError(f"ELPVDataset: resize must be 'squash', 'shorter_crop' or 'none', got {resize!r}")
        if len(probabilities) != len(paths) or (images is not None and len(images) != len(paths)):
            raise ValueError(
                f"ELPVDataset: {len(paths)} paths, {len(probabilities)} probabilities"
                + ("" if images is None else f" and {len(images)} images")
            )
        self._images = images
        self._probs = np.asarray(probabilities, dtype=np.float64)
        self._paths = [str(p) for p in paths]
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = None if resize == "none" else tuple(int(s) for s in image_size)
        self.resize = resize
        self.mean, self.std = mean, std
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def paths(self) -> list[str]:
        return list(self._paths)

    @property
    def labels(self) -> torch.Tensor:
        """Tensor[N] int64: 0 functional (p = 0), 1 defective (p > 0)."""
        return torch.from_numpy((self._probs > 0).astype(np.int64))

    @property
    def defect_types(self) -> list[str]:
        return [_type_name(p) for p in self._probs]

    @property
    def has_masks(self) -> torch.Tensor:
        return torch.from_numpy(self._probs == 0)

    def _image(self, i: int) -> torch.Tensor:
        if self._images is not None:
            im = Image.fromarray(np.ascontiguousarray(self._images[i]))
        else:
            from fastad.data import UnreadableImageError

            try:
                with Image.open(self._paths[i]) as f:
                    f.load()
                    im = f.copy()
            except FileNotFoundError:
                raise
            except (OSError, ValueError, SyntaxError) as e:
                raise UnreadableImageError(f"cannot read image {self._paths[i]!r}: {e}") from e
        if im.mode != "L":
            im = im.convert("L")
        if self.image_size is not None:
            h, w = self.image_size
            if self.resize == "shorter_crop":
                W, H = im.size
                s = max(h / H, w / W)
                rw, rh = max(w, round(W * s)), max(h, round(H * s))
                im = im.resize((rw, rh), Image.Resampling.BILINEAR)
                left, top = (rw - w) // 2, (rh - h) // 2
                im = im.crop((left, top, left + w, top + h))
            elif im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
        g = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        x = g.unsqueeze(0).repeat(3, 1, 1)
        if self.mean is not None:
            x = x - torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return x

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"ELPVDataset: index {i} out of range for {len(self)} items")
        image = self._image(i)
        p = float(self._probs[i])
        return {
            "image": image,
            "mask": torch.zeros(image.shape[-2:], dtype=torch.bool),
            "label": int(p > 0),
            "defect_type": _type_name(p),
            "path": self._paths[i],
            "has_mask": p == 0,
            "probability": p,
        }

    def __repr__(self) -> str:
        return f"ELPVDataset(n={len(self)}, defective={int((self._probs > 0).sum())}, image_size={self.image_size})"


def load_elpv(
    cell_type: str = "mono",
    *,
    n_train: int | None = None,
    n_test_good: int | None = None,
    n_test_defect: int | None = None,
    test_good_fraction: float = 0.25,
    defect_probabilities: Sequence[float] = (1.0,),
    image_size=224,
    resize: str = "squash",
    seed: int = 0,
) -> tuple[ELPVDataset, ELPVDataset]:
    """The ELPV anomaly-detection split of one cell type: (train, test).

    Functional cells (p = 0) of ``cell_type`` are shuffled with ``seed``; the first
    ``n_test_good`` (default: ``test_good_fraction`` of them) are held out for the test set, the rest
    (or ``n_train`` of them) train. Cells with a probability in ``defect_probabilities`` (default: the
    certain defects, p = 1) of the same type make the defective part of the test set (``n_test_defect``
    of them, drawn with the same seed; default all).

    Requires the ``elpv-dataset`` wheel (see the module docstring). Reads its ``labels.csv`` as
    ``elpv_dataset.utils.load_dataset()`` does; only the selected cells are decoded, when used.

    Example:
        >>> train, test = load_elpv("mono", n_train=100, n_test_good=50, n_test_defect=50)  # doctest: +SKIP
        >>> len(train), len(test), int(test.labels.sum())                                    # doctest: +SKIP
        (100, 100, 50)
    """
    if cell_type not in CELL_TYPES:
        raise ValueError(f"load_elpv: cell_type must be one of {CELL_TYPES}, got {cell_type!r}")
    if not 0 < test_good_fraction < 1:
        raise ValueError(f"load_elpv: test_good_fraction must be in (0, 1), got {test_good_fraction}")
    bad = [p for p in defect_probabilities if not 0 < p <= 1]
    if bad or not defect_probabilities:
        raise ValueError(f"load_elpv: defect_probabilities must be in (0, 1], got {list(defect_probabilities)}")
    probs, types, paths = _read_labels()
    rng = np.random.default_rng(seed)
    of_type = types == cell_type
    good = np.flatnonzero(of_type & (probs == 0))
    defect = np.flatnonzero(of_type & np.isin(np.round(probs, 6), np.round(np.asarray(defect_probabilities, float), 6)))
    good = good[rng.permutation(good.size)]
    defect = defect[rng.permutation(defect.size)]
    n_tg = int(round(good.size * test_good_fraction)) if n_test_good is None else int(n_test_good)
    if not 0 < n_tg < good.size:
        raise ValueError(f"load_elpv: n_test_good must be in [1, {good.size - 1}] for {cell_type} cells, got {n_tg}")
    test_good, train = good[:n_tg], good[n_tg:]
    if n_train is not None:
        if not 0 < n_train <= train.size:
            raise ValueError(f"load_elpv: n_train must be in [1, {train.size}] for {cell_type} cells, got {n_train}")
        train = train[:n_train]
    if n_test_defect is not None:
        if not 0 < n_test_defect <= defect.size:
            raise ValueError(f"load_elpv: n_test_defect must be in [1, {defect.size}], got {n_test_defect}")
        defect = defect[:n_test_defect]
    train = np.sort(train)
    test = np.concatenate([np.sort(test_good), np.sort(defect)])

    def make(idx):
        return ELPVDataset([paths[i] for i in idx], probs[idx], image_size=image_size, resize=resize)

    return make(train), make(test)
