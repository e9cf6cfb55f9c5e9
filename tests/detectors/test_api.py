"""Detector API on a tiny random backbone: sklearn/PyOD conventions, inputs, thresholds, save/load."""
import json
import struct

import pytest
import torch

import fastad.detectors as det_mod
from fastad.detectors import SPADE, ModelFileError, NotFittedError, PaDiM, PatchCore

DETECTORS = {
    "patchcore": lambda bb, **kw: PatchCore(backbone=bb, coreset_ratio=0.1, projection_dim=None, batch_size=5, progress=False, **kw),
    "spade": lambda bb, **kw: SPADE(backbone=bb, k_images=4, batch_size=5, progress=False, **kw),
    "padim": lambda bb, **kw: PaDiM(backbone=bb, n_features=24, batch_size=5, progress=False, **kw),
}


def close(a, b):
    """Equal up to float rounding: the backbone's conv and the GEMM inside knn round differently for
    other batch sizes, and the |x|^2 + |y|^2 - 2 x.y expansion loses relative precision on the small
    distances between these near-identical test images (seen: 1.7e-4 relative on a SPADE score)."""
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.fixture(params=sorted(DETECTORS))
def make(request, tiny_backbone):
    return lambda **kw: DETECTORS[request.param](tiny_backbone, **kw)


def test_init_stores_params_only(tiny_backbone):
    d = PatchCore(backbone=tiny_backbone, coreset_ratio=0.5, num_neighbors=3)
    assert d.get_params()["coreset_ratio"] == 0.5 and d.get_params()["num_neighbors"] == 3
    assert not [k for k in vars(d) if k.endswith("_")]
    d.set_params(num_neighbors=1)
    assert d.num_neighbors == 1
    with pytest.raises(ValueError, match="unknown parameter"):
        d.set_params(nope=1)
    assert "num_neighbors=1" in repr(d)


def test_not_fitted_errors(make, images):
    d = make()
    for call in (d.decision_function, d.score_map, d.score, d.predict):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(images[1])
    with pytest.raises(NotFittedError):
        d.save("/tmp/never.safetensors")


def test_fit_score_shapes_and_localisation(make, images):
    train, test = images
    d = make()
    assert d.fit(train) is d
    assert d.layers_ == ["layer1", "layer2"] and d.image_size_ == (64, 64) and d.n_fit_images_ == 12
    assert set(d.fit_timings_) >= {"extraction", "aggregation", "total"}
    s = d.decision_function(test)
    m = d.score_map(test)
    s2, m2 = d.score(test)
    assert s.shape == (8,) and s.dtype == torch.float32
    assert m.shape == (8, 64, 64)
    torch.testing.assert_close(s, s2)
    torch.testing.assert_close(m, m2)
    # the blob images are the most anomalous, and the blob is where the map peaks
    assert s[6:].min() > s[:6].max()
    for b in (6, 7):
        y, x = divmod(int(m[b].argmax()), 64)
        assert 14 <= y <= 42 and 18 <= x <= 46, (y, x)


def test_input_kinds_agree(make, images):
    train, test = images
    d = make().fit(train)
    ref = d.decision_function(test)
    close(d.decision_function([test[:3], test[3:]]), ref)  # iterable of batches
    close(d.decision_function(iter([test[:5], test[5:]])), ref)  # iterator
    ds = [{"image": t, "label": 0} for t in test]

    class DS:  # map-style dataset of dict items, like fastad.data.MVTecDataset
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    close(d.decision_function(DS()), ref)
    close(d.decision_function(test[0]), ref[:1])  # a single [3, H, W] image
    # fitting from batches gives the same model
    d2 = make().fit([train[:7], train[7:]])
    close(d2.decision_function(test), ref)
    with pytest.raises(TypeError, match="image Tensor"):
        d.decision_function(["not an image"])
    with pytest.raises(ValueError, match="Tensor\\[B, C, H, W\\]"):
        d.decision_function(torch.zeros(2, 2, 3, 4, 5))


def test_features_path_equals_image_path(make, images, tiny_backbone):
    from fastad.features import FeatureExtractor

    train, test = images
    ext = FeatureExtractor(tiny_backbone.model, ["layer1", "layer2"])
    a = make().fit(train)
    b = make().fit_features(ext(train), image_size=(64, 64))
    sa, ma = a.score(test)
    sb, mb = b.score_features(ext(test))
    close(sa, sb)
    close(ma, mb)
    with pytest.raises(KeyError, match="lack layer"):
        b.score_features({"layer1": ext(test)["layer1"]})


def test_threshold_and_predict(make, images):
    train, test = images
    d = make().fit(train)
    with pytest.raises(NotFittedError, match="no threshold"):
        d.predict(test)
    s = d.decision_function(test)
    d.set_threshold(normal_scores=s[:6], quantile=1.0)
    assert d.threshold_ == pytest.approx(float(s[:6].max()))
    p = d.predict(test)
    assert p.dtype == torch.bool and p.tolist() == [False] * 6 + [True] * 2
    d.set_threshold(normal=test[:6], quantile=0.5)
    assert d.threshold_ == pytest.approx(float(torch.quantile(s[:6].double(), 0.5)), rel=1e-4)
    d.set_threshold(1e9)
    assert not d.predict(test).any()
    with pytest.raises(ValueError, match="exactly one"):
        d.set_threshold(1.0, normal_scores=s)
    with pytest.raises(ValueError, match="finite"):
        d.set_threshold(float("nan"))


def test_save_load_roundtrip(make, images, tmp_path, tiny_backbone):
    train, test = images
    d = make().fit(train)
    d.set_threshold(normal_scores=d.decision_function(test[:6]))
    path = d.save(tmp_path / "m.safetensors")
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["fastad"])
    assert meta["format_version"] == det_mod.FORMAT_VERSION and meta["backbone"] == "random_cnn"
    assert meta["layers"] == ["layer1", "layer2"] and meta["image_size"] == [64, 64]
    assert meta["fastad_version"]
    e = det_mod.load(path, backbone=tiny_backbone)
    assert type(e) is type(d) and e.threshold_ == d.threshold_ and e.n_fit_images_ == 12
    s1, m1 = d.score(test)
    s2, m2 = e.score(test)
    close(s1, s2)
    close(m1, m2)
    assert torch.equal(d.predict(test), e.predict(test))
    assert type(d).load(path, backbone=tiny_backbone).threshold_ == d.threshold_
    # a model fitted with a custom backbone object needs it back
    f = det_mod.load(path)
    with pytest.raises(ValueError, match="custom backbone"):
        f.decision_function(test)
    with pytest.raises(ModelFileError, match="fitted with backbone 'random_cnn'"):
        det_mod.load(path, backbone="efficientnet_lite0")


def test_save_load_by_backbone_name(images, tmp_path):
    """Fitted with a backbone *name*: load needs nothing else and scores identically."""
    train, test = images
    d = PatchCore(backbone="random_cnn", coreset_ratio=0.1, progress=False).fit(train)
    e = det_mod.load(d.save(tmp_path / "m.safetensors"))
    assert e.backbone == "random_cnn" and not e.custom_backbone_
    s1, m1 = d.score(test)
    s2, m2 = e.score(test)
    assert torch.equal(s1, s2) and torch.equal(m1, m2)


def test_load_refuses_bad_files(make, images, tmp_path):
    train, _ = images
    path = make().fit(train).save(tmp_path / "m.safetensors")
    raw = path.read_bytes()
    with pytest.raises(FileNotFoundError, match="no such file"):
        det_mod.load(tmp_path / "missing.safetensors")
    # truncated
    (tmp_path / "t.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match=r"t\.safetensors.*(corrupted|truncated)"):
        det_mod.load(tmp_path / "t.safetensors")
    # garbage
    (tmp_path / "g.safetensors").write_bytes(b"hello world, not a model")
    with pytest.raises(ModelFileError, match=r"g\.safetensors"):
        det_mod.load(tmp_path / "g.safetensors")
    # flipped bytes in the tensor payload: checksum
    bad = bytearray(raw)
    bad[-5] ^= 0xFF
    (tmp_path / "c.safetensors").write_bytes(bytes(bad))
    with pytest.raises(ModelFileError, match=r"c\.safetensors.*checksum"):
        det_mod.load(tmp_path / "c.safetensors")

    def rewrite(name, edit):
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        meta = json.loads(header["__metadata__"]["fastad"])
        edit(meta)
        header["__metadata__"]["fastad"] = json.dumps(meta)
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        p = tmp_path / name
        p.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n :])
        return p

    with pytest.raises(ModelFileError, match=r"v\.safetensors.*format version 99"):
        det_mod.load(rewrite("v.safetensors", lambda m: m.update(format_version=99)))
    with pytest.raises(ModelFileError, match=r"d\.safetensors.*unknown detector"):
        det_mod.load(rewrite("d.safetensors", lambda m: m.update(detector="Nope")))
    with pytest.raises(ModelFileError, match=r"dim\.safetensors"):
        det_mod.load(rewrite("dim.safetensors", lambda m: m["layer_dims"].update(layer1=999)))
    # a safetensors file that is not a fastad model
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "o.safetensors"))
    with pytest.raises(ModelFileError, match=r"o\.safetensors.*not a fastad model"):
        det_mod.load(tmp_path / "o.safetensors")


def test_other_backbone_features_refused(make, images):
    from fastad.features import FeatureExtractor

    from tests.helpers.standins import OtherNet

    train, test = images
    d = make().fit(train)
    feats = FeatureExtractor(OtherNet(), ["layer1", "layer2"])(test)  # 8 / 12 channels, not 16 / 32
    with pytest.raises(ValueError, match="channels but the model was fitted with 16"):
        d.score_features(feats, image_size=(64, 64))
    # the same through a backbone object swapped in at load time
    import types

    other = types.SimpleNamespace(model=OtherNet(), name="random_cnn", default_layers=["layer1", "layer2"], kind="cnn")
    d.set_params(backbone=other)
    d._backbone_obj = None
    d._extractor = None
    with pytest.raises(ValueError, match="another backbone"):
        d.decision_function(test)


def test_bad_params(tiny_backbone, images):
    train, _ = images
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(backbone=tiny_backbone, coreset_ratio=0, progress=False).fit(train)
    with pytest.raises(ValueError, match="blur_border"):
        PatchCore(backbone=tiny_backbone, blur_border="wrap", progress=False).fit(train)
    with pytest.raises(ValueError, match="coreset_storage must be None, 'float32', 'float16' or 'bfloat16', got 'int8'"):
        PatchCore(backbone=tiny_backbone, coreset_storage="int8", progress=False).fit(train)
    with pytest.raises(ValueError, match="k_images"):
        SPADE(backbone=tiny_backbone, k_images=0, progress=False).fit(train)
    with pytest.raises(ValueError, match="no training"):
        PatchCore(backbone=tiny_backbone, progress=False).fit(train[:0])
    with pytest.raises(ValueError, match="NaN"):
        PatchCore(backbone=tiny_backbone, progress=False).fit(torch.full((2, 3, 64, 64), float("nan")))


def test_fit_on_mvtec_dataset(tmp_path):
    """X = fastad.data.MVTecDataset (the layout on disk), end to end with a random backbone."""
    import numpy as np
    from PIL import Image

    from fastad.data import MVTecDataset

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (48, 48, 3))
    for split, kind, n in [("train", "good", 6), ("test", "good", 3), ("test", "dent", 2)]:
        folder = tmp_path / split / kind
        folder.mkdir(parents=True)
        for i in range(n):
            img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255)
            if kind == "dent":
                img[10:20, 10:20] = 255
                (tmp_path / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                mask = np.zeros((48, 48), np.uint8)
                mask[10:20, 10:20] = 255
                Image.fromarray(mask).save(tmp_path / "ground_truth" / kind / f"{i}_mask.png")
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    train = MVTecDataset(tmp_path, "train", image_size=64)
    test = MVTecDataset(tmp_path, "test", image_size=64)
    d = PatchCore(backbone="random_cnn", coreset_ratio=0.5, batch_size=4, progress=False).fit(train)
    s, m = d.score(test)
    assert s.shape == (5,) and m.shape == (5, 64, 64)
    assert d.image_size_ == (64, 64)
    labels = torch.as_tensor(list(test.labels))
    assert labels.tolist() == [1, 1, 0, 0, 0]  # type folders sorted: dent, good
    assert float(s[labels == 1].min()) > float(s[labels == 0].max())


def test_target_dim_option_and_roundtrip(tmp_path):
    """The paper's adaptive pooling (target_dim): bank width = target_dim, saved and reloaded."""
    gen = torch.Generator().manual_seed(0)
    feats = {"a": torch.randn(3, 6, 8, 8, generator=gen), "b": torch.randn(3, 10, 4, 4, generator=gen)}
    d = PatchCore(backbone=None, coreset_ratio=0.5, target_dim=4, projection_dim=None, progress=False)
    d.fit_features(feats, image_size=(32, 32))
    assert d.memory_bank_.shape == (96, 4)
    e = det_mod.load(d.save(tmp_path / "t.safetensors"))
    s1, m1 = d.score_features(feats)
    s2, m2 = e.score_features(feats)
    assert torch.equal(s1, s2) and torch.equal(m1, m2) and m1.shape == (3, 32, 32)


def test_vit_backbone_tokens_become_maps():
    """ViT taps [B, 1 + L, C] are turned into [B, C, H/p, W/p] patch maps (CLS dropped)."""
    from fastad.features import get_backbone

    vit = get_backbone("random_vit")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 64, 64, generator=g)
    d = PatchCore(backbone=vit, coreset_ratio=0.5, progress=False).fit(x)
    ps = vit.patch_size
    assert d.feature_grid_ == (64 // ps, 64 // ps)
    s, m = d.score(x[:2])
    assert s.shape == (2,) and m.shape == (2, 64, 64)


def test_coreset_storage_option_and_roundtrip(tmp_path):
    """coreset_storage: the selection streams a half-precision copy; the bank keeps float32 rows of the
    training features, and the option is saved with the model."""
    gen = torch.Generator().manual_seed(1)
    feats = {"a": torch.randn(4, 6, 8, 8, generator=gen), "b": torch.randn(4, 10, 4, 4, generator=gen)}
    full = PatchCore(backbone=None, coreset_ratio=1.0, projection_dim=None, progress=False).fit_features(
        feats, image_size=(32, 32))
    for storage in ("float16", "bfloat16"):
        d = PatchCore(backbone=None, coreset_ratio=0.25, projection_dim=None, coreset_storage=storage, progress=False)
        d.fit_features(feats, image_size=(32, 32))
        bank = d.memory_bank_
        assert bank.shape == (64, 16) and bank.dtype == torch.float32
        # every bank row is one of the training rows, unrounded
        assert (bank[:, None, :] == full.memory_bank_[None]).all(-1).any(1).all()
        e = det_mod.load(d.save(tmp_path / f"{storage}.safetensors"))
        assert e.coreset_storage == storage
