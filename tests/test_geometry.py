"""Input geometry: non-square sizes, keep-aspect, pad (letterbox) with masks, ragged batches, and
the embedding-level PatchCore API / PaDiM recipes; end to end through the CLI on tiny non-square images."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastad import geometry as G
from fastad.data import ImageFolder, MVTecDataset, batches, load_image, load_mask, unpad, unpad_batch


def test_plan_modes():
    # a 1:2.5 part, 500 x 1250 (w, h = 1250, 500)
    p = G.plan((1250, 500), (224, 224), "squash")
    assert p.resize_wh == (224, 224) and p.out_hw == (224, 224)
    p = G.plan((1250, 500), 224, "keep-aspect")
    assert p.out_hw == (90, 224) and p.pad is None  # longer side = 224
    p = G.plan((1250, 500), (224, 224), "pad")
    assert p.out_hw == (224, 224) and p.resize_wh == (224, 90)
    assert p.pad == (0, 67, 0, 67) and p.valid == (67, 0, 157, 224)
    p = G.plan((1250, 500), (200, 500), "squash")
    assert p.out_hw == (200, 500)
    p = G.plan((1250, 500), None, "none")
    assert p.out_hw == (500, 1250)
    assert G.size_hw(7) == (7, 7) and G.size_hw((3, 5)) == (3, 5) and G.size_hw([4]) == (4, 4)
    for bad in (0, (0, 3), (1, 2, 3), "x", True):
        with pytest.raises(ValueError, match="image size"):
            G.size_hw(bad)
    with pytest.raises(ValueError, match="resize must be one of"):
        G.plan((5, 5), 3, "stretch")


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_load_image_pad_and_keep_aspect(tmp_path):
    # 10 x 40 image (h x w), left half dark, right half bright
    a = np.zeros((10, 40, 3), np.uint8)
    a[:, 20:] = 200
    _save(tmp_path / "i.png", a)
    x = load_image(tmp_path / "i.png", (20, 20), "pad")
    assert x.shape == (3, 20, 20)
    # resized to 5 x 20, centred: rows 7..12 hold the image, the rest is 0 (the normalised mean)
    assert torch.count_nonzero(x[:, :7]) == 0 and torch.count_nonzero(x[:, 12:]) == 0
    assert bool((x[:, 7:12] != 0).any())
    raw = load_image(tmp_path / "i.png", (20, 20), "pad", mean=None, std=None)
    assert torch.allclose(raw[:, 0, 0], torch.tensor([0.485, 0.456, 0.406]))  # padding = ImageNet mean colour
    k = load_image(tmp_path / "i.png", 20, "keep-aspect")
    assert k.shape == (3, 5, 20)
    k2 = load_image(tmp_path / "i.png", (8, 40), "keep-aspect")
    assert k2.shape == (3, 8, 32)
    sq = load_image(tmp_path / "i.png", (12, 30), "squash")
    assert sq.shape == (3, 12, 30)
    m = np.zeros((10, 40), np.uint8)
    m[2:8, 30:36] = 255
    _save(tmp_path / "m.png", m)
    mk = load_mask(tmp_path / "m.png", (20, 20), "pad")
    assert mk.shape == (20, 20) and mk.dtype == torch.bool
    assert not bool(mk[:7].any()) and not bool(mk[12:].any()) and bool(mk[7:12].any())
    # the defect sits in the same place as in the image (right half, columns 15..18 of 20)
    cols = torch.nonzero(mk.any(0)).flatten()
    assert int(cols.min()) >= 14 and int(cols.max()) <= 18


def _tree(root: Path, h=24, w=64, n_train=6, n_good=2, n_bad=2, seed=0):
    rng = np.random.default_rng(seed)
    for split, kind, n in (("train", "good", n_train), ("test", "good", n_good), ("test", "crack", n_bad)):
        for i in range(n):
            img = (rng.normal(120, 8, (h, w)) + 25 * np.sin(np.arange(w) / 3.0)[None, :]).clip(0, 255)
            if kind == "crack":
                img[8:14, 40:50] = 250
                m = np.zeros((h, w), np.uint8)
                m[8:14, 40:50] = 255
                _save(root / "ground_truth" / kind / f"{i:03d}_mask.png", m)
            _save(root / split / kind / f"{i:03d}.png", np.repeat(img.astype(np.uint8)[:, :, None], 3, 2))
    return root


def test_dataset_pad_valid_and_unpad(tmp_path):
    root = _tree(tmp_path / "t")
    ds = MVTecDataset(root, "test", image_size=(64, 64), resize="pad")
    it = ds[0]  # "crack" sorts before "good"
    assert it["image"].shape == (3, 64, 64) and it["valid"].shape == (64, 64)
    rows = torch.nonzero(it["valid"].any(1)).flatten()
    assert (int(rows[0]), int(rows[-1])) == (20, 43)  # 24 rows centred in 64
    assert bool(it["mask"][~it["valid"]].any()) is False and bool(it["mask"].any())
    b = next(iter(batches(ds, 4)))
    crops = unpad(b["mask"], b["valid"])
    assert all(c.shape == (24, 64) for c in crops)
    assert torch.equal(crops[0], MVTecDataset(root, "test", image_size=(24, 64), resize="squash")[0]["mask"])
    one = list(unpad_batch(b, torch.arange(4.0), b["image"][:, 0]))
    assert len(one) == 4 and one[2][0]["image"].shape == (1, 3, 24, 64) and one[2][2].shape == (1, 24, 64)
    assert one[2][0]["path"] == [b["path"][2]] and float(one[2][1]) == 2.0
    # squash / keep-aspect items carry no "valid"
    assert "valid" not in MVTecDataset(root, "test", image_size=(24, 64))[0]


def test_ragged_batches(tmp_path):
    for i, (h, w) in enumerate([(10, 20), (10, 20), (12, 8), (10, 20)]):
        _save(tmp_path / f"{i}.png", np.full((h, w, 3), 100, np.uint8))
    ds = ImageFolder(tmp_path, resize="none")
    shapes = [tuple(b["image"].shape) for b in batches(ds, 8, ragged=True)]
    assert shapes == [(2, 3, 10, 20), (1, 3, 12, 8), (1, 3, 10, 20)]
    with pytest.raises(ValueError, match="different shapes"):
        list(batches(ds, 8))


# ---------------------------------------------------------------------------------- PatchCore / PaDiM API
def test_patchcore_from_bank_and_score_embeddings(tmp_path):
    from fastad.detectors import PatchCore, load

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 6, generator=g)
    det = PatchCore.from_bank(bank, num_neighbors=1, blur_sigma=0)
    emb = torch.randn(2, 3, 4, 6, generator=g)
    emb[1, 2, 3] = bank[7]  # an exact bank row: distance 0
    s, m = det.score_embeddings(emb)
    ref = torch.cdist(emb.reshape(-1, 6).double(), bank.double()).min(1).values.view(2, 3, 4)
    assert m.shape == (2, 3, 4)
    assert torch.allclose(m.double(), ref, atol=1e-4)  # no 3x3 averaging, no blur: the raw patch distances
    assert torch.allclose(s.double(), ref.amax((1, 2)), atol=1e-4)
    assert float(m[1, 2, 3]) == pytest.approx(0.0, abs=1e-3)
    s9, m9 = PatchCore.from_bank(bank, num_neighbors=9).score_embeddings(emb, image_size=(12, 16))
    assert m9.shape == (2, 12, 16) and bool((s9 <= s + 1e-6).all())
    det.save(tmp_path / "b.safetensors")
    back = load(tmp_path / "b.safetensors")
    assert torch.equal(back.memory_bank_, bank)
    assert torch.allclose(back.score_embeddings(emb)[0], s)
    with pytest.raises(ValueError, match="D=5"):
        det.score_embeddings(torch.randn(1, 2, 2, 5))
    with pytest.raises(ValueError, match=r"Tensor\[N, h, w, D\]"):
        det.score_embeddings(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"Tensor\[M, D\]"):
        PatchCore.from_bank(torch.randn(5))
    with pytest.raises(ValueError, match="finite"):
        PatchCore.from_bank(torch.tensor([[float("nan")]]))


def test_patchcore_score_embeddings_equals_score_features():
    """PatchCore's own embeddings through score_embeddings give score_features' result."""
    from fastad.detectors import PatchCore

    g = torch.Generator().manual_seed(1)
    feats = {"a": torch.randn(6, 4, 8, 8, generator=g), "b": torch.randn(6, 5, 4, 4, generator=g)}
    det = PatchCore(backbone=None, coreset_ratio=1.0, progress=False).fit_features(feats, image_size=(32, 32))
    test = {"a": torch.randn(2, 4, 8, 8, generator=g), "b": torch.randn(2, 5, 4, 4, generator=g)}
    s, m = det.score_features(test)
    s2, m2 = det.score_embeddings(det.embed(test).permute(0, 2, 3, 1))
    assert torch.allclose(s, s2, atol=1e-5) and torch.allclose(m, m2, atol=1e-5)


def test_padim_recipes():
    from fastad.detectors import PaDiM
    from fastad.detectors.padim import PADIM_EPS

    g = torch.Generator().manual_seed(2)
    feats = {"a": torch.randn(20, 3, 2, 2, generator=g, dtype=torch.float64).float()}
    x = feats["a"].double().permute(2, 3, 0, 1).reshape(4, 20, 3)
    for recipe, extra in (("anomalib", 1e-5), ("paper", 0.0)):
        det = PaDiM(backbone=None, recipe=recipe, blur_sigma=0, progress=False).fit_features(feats, image_size=(2, 2))
        for p in range(4):
            cov = torch.cov(x[p].T) + (PADIM_EPS + extra) * torch.eye(3, dtype=torch.float64)
            assert torch.allclose(det.precision_[p].double(), torch.linalg.inv(cov), rtol=1e-4, atol=1e-4)
    a = PaDiM(backbone=None, recipe="anomalib", blur_sigma=0, progress=False).fit_features(feats, image_size=(2, 2))
    p_ = PaDiM(backbone=None, recipe="paper", blur_sigma=0, progress=False).fit_features(feats, image_size=(2, 2))
    assert not torch.equal(a.precision_, p_.precision_)
    with pytest.raises(ValueError, match="recipe must be one of"):
        PaDiM(backbone=None, recipe="official", progress=False).fit_features(feats)


# ---------------------------------------------------------------------------------- CLI end to end
FIT = ["--backbone", "random_cnn", "--num-workers", "0", "-q", "--overwrite"]


@pytest.mark.parametrize("resize,size", [("squash", ["32", "80"]), ("keep-aspect", ["80"]), ("pad", ["64", "64"])])
def test_cli_fit_evaluate_non_square(resize, size, tmp_path):
    from fastad.cli import main

    root = _tree(tmp_path / "t")
    model = tmp_path / "m.safetensors"
    assert main(["fit", "--data", str(root), "--out", str(model), "--image-size", *size, "--resize", resize,
                 "--calibration", "0"] + FIT) == 0
    out = tmp_path / "rep"
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--out", str(out), "--num-workers", "0", "-q"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "pixel_auroc" in doc["metrics"] and "image_auroc" in doc["metrics"]
    assert doc["metrics"]["image_auroc"] >= 0.99  # a bright crack on a periodic texture


def test_cli_keep_aspect_mixed_aspect_ratios(tmp_path, capsys):
    """--resize keep-aspect on images of two aspect ratios (two sizes after resizing): PatchCore fits
    (one bank of every grid's patches) and evaluates; PaDiM (one grid) is refused with the ways out."""
    from fastad.cli import main

    root = _tree(tmp_path / "t", h=24, w=64)
    for p in _tree(tmp_path / "u", h=32, w=64, seed=1).rglob("*.png"):  # a second aspect ratio, merged in
        q = root / p.relative_to(tmp_path / "u")
        p.rename(q.with_name("b" + q.name))
    model, rep = tmp_path / "m.safetensors", tmp_path / "rep"
    geo = ["--image-size", "48", "--resize", "keep-aspect"]
    assert main(["fit", "--data", str(root), "--out", str(model), "--calibration", "0.2"] + geo + FIT) == 0
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--out", str(rep), "--num-workers", "0", "-q"]) == 0
    assert json.loads((rep / "metrics.json").read_text())["metrics"]["image_auroc"] >= 0.99
    assert main(["fit", "--detector", "padim", "--data", str(root), "--out", str(model), "--calibration", "0"] + geo + FIT) == 2
    assert "resize pad" in capsys.readouterr().err


def test_cli_tiled_native_resolution_and_thresholds(tmp_path, capsys):
    from fastad.cli import main
    root = _tree(tmp_path / "t", n_train=12)
    val = _tree(tmp_path / "v", seed=3)
    model = tmp_path / "m.safetensors"
    assert main(["fit", "--data", str(root), "--out", str(model), "--resize", "none", "--tile", "32",
                 "--tile-overlap", "0.5", "--threshold", "f1", "--val", str(val)] + FIT) == 0
    out = capsys.readouterr().out
    assert "f1:" in out and "validation images" in out
    rep = tmp_path / "rep"
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--out", str(rep), "--num-workers", "0", "-q"]) == 0
    doc = json.loads((rep / "metrics.json").read_text())
    assert doc["metrics"]["image_auroc"] >= 0.99
    html = (rep / "index.html").read_text()
    assert "tiles" in html and "f1" in html
    # quantile-corrected with few held-out images warns
    assert main(["fit", "--data", str(root), "--out", str(model), "--image-size", "24", "64", "--threshold",
                 "quantile-corrected", "--calibration", "0.3"] + FIT) == 0
    assert "too few" in capsys.readouterr().err
    # chi2 for PaDiM, refused for PatchCore with a one-line error
    assert main(["fit", "--detector", "padim", "--data", str(root), "--out", str(model), "--image-size", "24", "64",
                 "--threshold", "chi2"] + FIT) == 0
    assert "chi2" in capsys.readouterr().out
    assert main(["fit", "--data", str(root), "--out", str(model), "--threshold", "chi2"] + FIT) == 2
    assert "Gaussian detector" in capsys.readouterr().err  # refused before fitting
    assert main(["fit", "--data", str(root), "--out", str(model), "--threshold", "f1"] + FIT) == 2
    assert "--val" in capsys.readouterr().err


def test_cli_zeroshot_non_square(tmp_path):
    from fastad.cli import main

    root = _tree(tmp_path / "t", n_bad=3)
    out = tmp_path / "z"
    assert main(["zeroshot", "--data", str(root), "--out", str(out), "--backbone", "random_vit", "--image-size", "24", "64",
                 "--num-workers", "0", "-q", "--k-list", "0"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "pixel_auroc" in doc["metrics"]
    assert main(["zeroshot", "--data", str(root), "--out", str(tmp_path / "z2"), "--backbone", "random_vit",
                 "--image-size", "64", "--resize", "keep-aspect", "--num-workers", "0", "-q", "--k-list", "0"]) == 0


def test_cli_tiled_small_fit_and_image_blur(tmp_path):
    """--tile-small fit (24-px high images, 32-px tiles: tiles of 24 px, never padded) and --tile-blur
    image run through fit and evaluate; the model keeps both and the report names them."""
    from fastad.cli import main
    from fastad.detectors import load

    root = _tree(tmp_path / "t", n_train=8)
    model = tmp_path / "m.safetensors"
    assert main(["fit", "--data", str(root), "--out", str(model), "--resize", "none", "--tile", "32", "--tile-small", "fit",
                 "--tile-blur", "image", "--calibration", "0"] + FIT) == 0
    det = load(model, backbone="random_cnn")
    assert det.tiling_["small"] == "fit" and det.tiling_["blur"] == "image"
    rep = tmp_path / "rep"
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--out", str(rep), "--num-workers", "0", "-q"]) == 0
    doc = json.loads((rep / "metrics.json").read_text())
    assert doc["metrics"]["image_auroc"] >= 0.99
    assert "small images fit, blur per image" in (rep / "index.html").read_text()


def test_cli_tile_fuse_global(tmp_path):
    """--tile-fuse global (--tile-fuse-weight): the model holds the global model fitted at --image-size,
    evaluate uses both, and the report names the fusion."""
    from fastad.cli import main
    from fastad.detectors import load

    root = _tree(tmp_path / "t", n_train=8)
    model = tmp_path / "m.safetensors"
    assert main(["fit", "--data", str(root), "--out", str(model), "--resize", "none", "--tile", "32", "--image-size", "24", "40",
                 "--tile-fuse", "global", "--tile-fuse-weight", "0.25", "--calibration", "0"] + FIT) == 0
    det = load(model, backbone="random_cnn")
    assert det.tiling_["fuse"] == {"mode": "global", "weight": 0.25, "size": [24, 40], "norm": "none"} and det.global_.image_size_ == (24, 40)
    rep = tmp_path / "rep"
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--out", str(rep), "--num-workers", "0", "-q"]) == 0
    doc = json.loads((rep / "metrics.json").read_text())
    assert doc["metrics"]["image_auroc"] >= 0.99
    assert "fused with a global 24x40 model" in (rep / "index.html").read_text()


def test_cli_tile_fuse_norm_zscore(tmp_path, capsys):
    """--tile-fuse-norm zscore: the held-out (--calibration) images calibrate the branches, their fused
    scores set the threshold, the statistics are saved; without held-out images it is refused."""
    from fastad.cli import main
    from fastad.detectors import load

    root = _tree(tmp_path / "t", n_train=12)
    model = tmp_path / "m.safetensors"
    base = ["fit", "--data", str(root), "--out", str(model), "--resize", "none", "--tile", "32", "--tile-fuse", "global",
            "--tile-fuse-norm", "zscore"]
    assert main(base + ["--calibration", "0"] + FIT) == 2
    assert "held-out normal images" in capsys.readouterr().err
    assert main([a for a in base if a not in ("--tile-fuse", "global")] + FIT) == 2
    assert "needs --tile-fuse global" in capsys.readouterr().err
    assert main(["fit", "--data", str(root), "--out", str(model), "--tile-fuse", "global"] + FIT) == 2
    assert "needs --tile S" in capsys.readouterr().err
    assert main(base + ["--calibration", "0.25", "--detector", "padim"] + FIT) == 0
    det = load(model, backbone="random_cnn")
    st = det.tiling_["fuse"]["stats"]
    assert det.tiling_["fuse"]["norm"] == "zscore" and st["n_images"] == 3 and det.threshold_info_["n_images"] == 3
    assert st["global"]["map_std"] > 0 and st["tiled"]["score_std"] > 0
    rep = tmp_path / "rep"
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--out", str(rep), "--num-workers", "0", "-q"]) == 0
    assert json.loads((rep / "metrics.json").read_text())["metrics"]["image_auroc"] >= 0.99
    assert "z-normalised on 3 held-out normal images" in (rep / "index.html").read_text()
