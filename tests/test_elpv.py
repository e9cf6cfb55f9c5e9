"""fastad.datasets.elpv: the item format on synthetic cells, and the real split when the
`elpv-dataset` wheel is installed (`make demo` installs it)."""
import importlib.util

import numpy as np
import pytest
import torch

from fastad.data import batches
from fastad.datasets.elpv import ELPVDataset, load_elpv


def test_items_match_the_mvtec_format():
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 255, (3, 30, 30), dtype=np.uint8)
    ds = ELPVDataset(["a.png", "b.png", "c.png"], [0.0, 1.0, 1 / 3], images=cells, image_size=16, mean=None, std=None)
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 1]
    assert ds.defect_types == ["good", "defective", "defective_p0.33"]
    assert ds.has_masks.tolist() == [True, False, False]
    it = ds[1]
    assert it["image"].shape == (3, 16, 16) and it["image"].dtype == torch.float32
    assert torch.equal(it["image"][0], it["image"][1]) and torch.equal(it["image"][0], it["image"][2])  # grey -> 3 channels
    assert 0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0
    assert it["mask"].shape == (16, 16) and not it["mask"].any() and it["has_mask"] is False
    assert it["label"] == 1 and it["path"] == "b.png"
    b = next(iter(batches(ds, 3)))
    assert b["image"].shape == (3, 3, 16, 16) and b["label"].tolist() == [0, 1, 1]
    # default normalisation: ImageNet mean/std
    n = ELPVDataset(["a", "b", "c"], [0, 0, 0], images=cells, image_size=16)[0]["image"]
    torch.testing.assert_close(n[0] * 0.229 + 0.485, ds[0]["image"][0])
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="3 paths, 2 probabilities"):
        ELPVDataset(["a", "b", "c"], [0, 1], images=cells)


def test_unreadable_cell_file(tmp_path):
    from fastad.data import UnreadableImageError

    (tmp_path / "bad.png").write_bytes(b"not a png")
    ds = ELPVDataset([str(tmp_path / "bad.png")], [1.0])
    with pytest.raises(UnreadableImageError, match="bad.png"):
        ds[0]


@pytest.mark.skipif(importlib.util.find_spec("elpv_dataset") is None, reason="elpv-dataset not installed (make demo installs it)")
def test_load_elpv_split():
    train, test = load_elpv("mono", n_train=20, n_test_good=10, n_test_defect=7, image_size=32, seed=3)
    assert len(train) == 20 and len(test) == 17 and int(test.labels.sum()) == 7
    assert int(train.labels.sum()) == 0
    assert not set(train.paths) & set(test.paths), "held-out cells must not be trained on"
    assert train[0]["image"].shape == (3, 32, 32)
    # paths point at the wheel's 300x300 grey cells
    from PIL import Image

    raw = np.asarray(Image.open(test.paths[-1]))
    assert raw.shape == (300, 300) and test[-1]["label"] == 1
    again, _ = load_elpv("mono", n_train=20, n_test_good=10, n_test_defect=7, image_size=32, seed=3)
    assert again.paths == train.paths  # seeded
    with pytest.raises(ValueError, match="cell_type"):
        load_elpv("amorphous")
