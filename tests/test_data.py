"""fastad.data: loaders, the MVTec layout, unreadable files, batching (synthetic trees + MTD smoke)."""
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastad.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolder,
    MVTecDataset,
    UnreadableImageError,
    batches,
    load_image,
    load_mask,
)

REPO = Path(__file__).resolve().parents[1]


def mtd_root() -> Path | None:
    p = Path(os.environ.get("FASTAD_MTD", REPO.parent / "shared" / "data" / "mtd"))
    return p if (p / "train" / "good").is_dir() else None


def _img(path: Path, w=40, h=30, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(path)


def _mask(path: Path, w=40, h=30, box=(5, 5, 15, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    Image.fromarray(a, "L").save(path)


@pytest.fixture
def mvtec(tmp_path):
    root = tmp_path / "cat"
    for i in range(3):
        _img(root / "train" / "good" / f"{i:03d}.png", seed=i)
    _img(root / "train" / "good" / "004.JPG", seed=9)  # upper-case extension
    (root / "train" / "good" / "broken.png").write_bytes(b"not an image at all")  # corrupt
    (root / "train" / "good" / "notes.txt").write_text("ignored")
    _img(root / "test" / "good" / "000.png", seed=10, mode="L")  # greyscale
    _img(root / "test" / "crack" / "000.png", seed=11)
    _mask(root / "ground_truth" / "crack" / "000_mask.png")
    _img(root / "test" / "crack" / "sub" / "001.jpg", seed=12)  # nested, jpg
    _mask(root / "ground_truth" / "crack" / "sub" / "001_mask.png", box=(0, 0, 40, 30))
    _img(root / "test" / "scratch" / "000.bmp", seed=13)
    _mask(root / "ground_truth" / "scratch" / "000.png", box=(30, 20, 40, 30))  # VisA-style name
    return root


def test_load_image_squash_normalise(tmp_path):
    p = tmp_path / "a.png"
    a = np.zeros((10, 20, 3), np.uint8)
    a[..., 0] = 255
    Image.fromarray(a).save(p)
    x = load_image(p, 8, "squash")
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    exp = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 4, 4], exp)
    raw = load_image(p, (6, 12), mean=None, std=None)
    assert raw.shape == (3, 6, 12) and float(raw.max()) == 1.0 and float(raw.min()) == 0.0
    assert load_image(p, 5, "none", None, None).shape == (3, 10, 20)


def test_load_image_shorter_crop_keeps_centre(tmp_path):
    p = tmp_path / "wide.png"
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, 20:40] = 255  # white centre third
    Image.fromarray(a).save(p)
    x = load_image(p, 10, "shorter_crop", None, None, interpolation="nearest")
    assert x.shape == (3, 10, 10)
    assert torch.all(x == 1.0), "the centre crop of a 60x20 image is its white middle"
    y = load_image(p, 10, "squash", None, None, interpolation="nearest")
    assert 0.0 < float(y.mean()) < 1.0


def test_image_and_mask_share_geometry(tmp_path):
    """shorter_crop / squash crop and resize the mask exactly like the image."""
    a = np.zeros((30, 90, 3), np.uint8)
    m = np.zeros((30, 90), np.uint8)
    a[10:20, 50:65] = 255
    m[10:20, 50:65] = 255
    Image.fromarray(a).save(tmp_path / "i.png")
    Image.fromarray(m).save(tmp_path / "m.png")
    for resize, size in (("shorter_crop", 15), ("squash", (12, 36)), ("shorter_crop", (10, 20)), ("none", None)):
        img = load_image(tmp_path / "i.png", size, resize, None, None, interpolation="nearest")
        msk = load_mask(tmp_path / "m.png", size, resize)
        assert torch.equal(img[0] > 0.5, msk), resize


def test_load_image_modes(tmp_path):
    g16 = tmp_path / "g16.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(g16)
    x = load_image(g16, 4, mean=None, std=None)
    assert x.shape == (3, 4, 4) and torch.allclose(x, torch.ones_like(x))
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((8, 8, 4), 128, np.uint8), "RGBA").save(rgba)
    assert load_image(rgba, 4).shape == (3, 4, 4)
    pal = tmp_path / "p.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).convert("P").save(pal)
    assert load_image(pal, 4).shape == (3, 4, 4)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(UnreadableImageError, match="bad.png"):
        load_image(bad)
    with pytest.raises(ValueError, match="resize"):
        load_image(bad, resize="stretch")
    with pytest.raises(ValueError, match="positive"):
        load_image(bad, 0)


def test_load_mask_binarise(tmp_path):
    p = tmp_path / "m.png"
    _mask(p, 40, 30, (10, 10, 20, 20))
    m = load_mask(p, (15, 20))
    assert m.dtype == torch.bool and m.shape == (15, 20)
    assert m.sum() == 25 and m[5:10, 5:10].all()
    # 0/1 masks and RGB masks count too
    p01 = tmp_path / "m01.png"
    Image.fromarray((np.arange(16).reshape(4, 4) % 2).astype(np.uint8)).save(p01)
    assert load_mask(p01, 4).sum() == 8
    prgb = tmp_path / "mrgb.png"
    a = np.zeros((4, 4, 3), np.uint8)
    a[0, 0, 2] = 255
    Image.fromarray(a).save(prgb)
    assert load_mask(prgb, 4).sum() == 1
    # MuSc's MVTec convention: bilinear, keep only pixels that stay 255 (masks shrink)
    strict = load_mask(p, (15, 20), interpolation="bilinear", threshold=254)
    loose = load_mask(p, (15, 20), interpolation="bilinear")
    assert strict.sum() <= m.sum() <= loose.sum() and strict.sum() < loose.sum()


def test_mvtec_layout(mvtec):
    with pytest.warns(UserWarning, match="broken.png"):
        train = MVTecDataset(mvtec, "train", image_size=32)
    assert len(train) == 4 and train.skipped and "broken.png" in train.skipped[0][0]
    assert train.labels.tolist() == [0, 0, 0, 0]
    it = train[0]
    assert it["image"].shape == (3, 32, 32) and it["mask"].shape == (32, 32) and not it["mask"].any()
    assert it["label"] == 0 and it["defect_type"] == "good" and it["has_mask"]

    test = MVTecDataset(mvtec, "test", image_size=(24, 32))
    assert [Path(p).name for p in test.paths] == ["000.png", "001.jpg", "000.png", "000.bmp"]
    assert test.defect_types == ["crack", "crack", "good", "scratch"]
    assert test.labels.tolist() == [1, 1, 0, 1]
    assert test.has_masks.all()
    m0, m1, mg, ms = (test[i]["mask"] for i in range(4))
    assert m0.shape == (24, 32) and 0 < m0.sum() < m0.numel()
    assert m1.all(), "nested mask ground_truth/crack/sub/001_mask.png covers the whole image"
    assert not mg.any()
    assert ms[-1, -1] and not ms[0, 0], "VisA-style <stem>.png mask is found"
    assert test[2]["image"].shape == (3, 24, 32)  # greyscale -> 3 channels


def test_mvtec_missing_mask(mvtec):
    (mvtec / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.warns(UserWarning, match="no mask for defective image"):
        ds = MVTecDataset(mvtec, "test", image_size=16)
    assert ds.has_masks.tolist() == [False, True, True, True]
    assert not ds[0]["mask"].any() and ds[0]["has_mask"] is False
    with pytest.raises(FileNotFoundError, match="no mask"):
        MVTecDataset(mvtec, "test", missing_masks="error")


def test_mvtec_no_ground_truth_folder(mvtec):
    import shutil

    shutil.rmtree(mvtec / "ground_truth")
    with pytest.warns(UserWarning, match="does not exist"):
        ds = MVTecDataset(mvtec, "test", image_size=16)
    assert ds.has_masks.tolist() == [False, False, True, False]


def test_mvtec_errors(tmp_path, mvtec):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MVTecDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="no readable images.*empty"):
        MVTecDataset(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="train"):
        MVTecDataset(tmp_path / "flat")
    with pytest.raises(ValueError, match="split"):
        MVTecDataset(mvtec, "val")


def test_truncated_image_skipped_by_batches(tmp_path):
    root = tmp_path / "imgs"
    for i in range(5):
        _img(root / f"{i}.jpg", seed=i)
    data = (root / "2.jpg").read_bytes()
    (root / "2.jpg").write_bytes(data[: len(data) // 2])  # header fine, data truncated
    ds = ImageFolder(root, image_size=16)
    assert len(ds) == 5  # the header check passes
    with pytest.raises(UnreadableImageError, match="2.jpg"):
        ds[2]
    with pytest.warns(UserWarning, match="2.jpg"):
        bs = list(batches(ds, 2))
    assert [len(b["path"]) for b in bs] == [2, 1, 1]
    (root / "4.jpg").unlink()  # removed after the listing: skipped too, never a crash
    with pytest.warns(UserWarning) as rec:
        assert sum(len(b["path"]) for b in batches(ds, 2)) == 3
    assert sorted(Path(str(w.message).split("'")[1]).name for w in rec) == ["2.jpg", "4.jpg"]
    assert sum(b["image"].shape[0] for b in bs) == 4
    with pytest.warns(UserWarning, match="2.jpg"):
        full = ImageFolder(root, image_size=16, validate="full")
    assert len(full) == 3  # 0, 1, 3 (2 truncated, 4 removed)


def test_batches_collate(mvtec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = MVTecDataset(mvtec, "test", image_size=16)
    b = batches(ds, 3)
    assert len(b) == 2
    out = list(b)
    assert out[0]["image"].shape == (3, 3, 16, 16) and out[1]["image"].shape == (1, 3, 16, 16)
    assert out[0]["mask"].dtype == torch.bool and out[0]["mask"].shape == (3, 16, 16)
    assert out[0]["label"].tolist() == [1, 1, 0] and out[0]["label"].dtype == torch.int64
    assert out[0]["defect_type"] == ["crack", "crack", "good"] and isinstance(out[0]["path"], list)
    threaded = list(batches(ds, 3, num_workers=2))
    for a, c in zip(out, threaded):
        torch.testing.assert_close(a["image"], c["image"])
        assert a["path"] == c["path"]
    with pytest.raises(ValueError, match="batch_size"):
        batches(ds, 0)


def test_image_folder(tmp_path):
    _img(tmp_path / "a" / "x.png")
    _img(tmp_path / "a" / "deep" / "y.tif", seed=3)
    ds = ImageFolder(tmp_path / "a", image_size=8)
    assert len(ds) == 2 and ds[1]["image"].shape == (3, 8, 8)
    assert len(ImageFolder(tmp_path / "a", recursive=False)) == 1
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolder(tmp_path / "e")


@pytest.mark.skipif(mtd_root() is None, reason="MTD dataset not found (set FASTAD_MTD or place it at ../shared/data/mtd)")
def test_mtd_smoke():
    root = mtd_root()
    train = MVTecDataset(root, "train", image_size=224)
    test = MVTecDataset(root, "test", image_size=224)
    assert len(train) == 700 and len(test) == 644
    assert int(test.labels.sum()) == 392 and set(test.defect_types) == {"good", "blowhole", "break", "crack", "fray", "uneven"}
    assert bool(test.has_masks.all())
    labels = test.labels.tolist()
    b = next(iter(batches(_Pick(test, [labels.index(0), labels.index(1)]), 2)))
    assert b["image"].shape == (2, 3, 224, 224) and b["mask"].shape == (2, 224, 224)
    assert b["label"].tolist() == [0, 1] and b["mask"][1].any() and not b["mask"][0].any()


class _Pick:
    def __init__(self, ds, idx):
        self.ds, self.idx = ds, idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.ds[self.idx[i]]
