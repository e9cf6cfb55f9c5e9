"""Tiler / Stitcher against a naive loop reference; tiled fit and scoring of the detectors."""
import pytest
import torch

from fastad.features.tiling import Stitcher, Tiler


def _naive_stitch(tile_maps, boxes, B, H, W, th, tw):
    """Reference: loop over every tile and pixel of the padded canvas, average, crop."""
    Hp, Wp = max(H, th), max(W, tw)
    s = torch.zeros(B, Hp, Wp, dtype=torch.float64)
    c = torch.zeros(Hp, Wp, dtype=torch.float64)
    n = len(boxes)
    for j in range(B * n):
        t, l = boxes[j % n]
        for y in range(th):
            for x in range(tw):
                s[j // n, t + y, l + x] += float(tile_maps[j, y, x])
                if j < n:
                    c[t + y, l + x] += 1
    return (s / c)[:, :H, :W]


@pytest.mark.parametrize("H,W,S,ov", [(20, 33, 8, 0.25), (16, 16, 8, 0.0), (17, 9, 8, 0.5), (5, 12, 8, 0.25), (8, 8, 8, 0.9)])
def test_boxes_cover_every_pixel_and_stay_inside(H, W, S, ov):
    t = Tiler(S, ov)
    boxes = t.boxes(H, W)
    cover = torch.zeros(max(H, S), max(W, S), dtype=torch.int32)
    for top, left in boxes:
        assert 0 <= top and 0 <= left
        assert top + S <= max(H, S) and left + S <= max(W, S)
        cover[top : top + S, left : left + S] += 1
    assert bool((cover[:H, :W] >= 1).all())
    assert len(set(boxes)) == len(boxes)


def test_stride_from_overlap():
    assert Tiler(224, 0.25).stride == (168, 168)
    assert Tiler(224, 0.0).stride == (224, 224)
    assert Tiler((10, 20), 0.5).stride == (5, 10)
    assert Tiler(4, 0.99).stride == (1, 1)
    assert Tiler(224, 0.25).boxes(400, 600)[:3] == [(0, 0), (0, 168), (0, 336)]
    # the last tile is flush with the border
    assert Tiler(224, 0.25).boxes(400, 600)[-1] == (176, 376)


@pytest.mark.parametrize("H,W,S,ov", [(20, 33, 8, 0.25), (17, 9, 8, 0.5), (5, 12, 8, 0.25), (16, 16, 8, 0.0)])
def test_cut_then_stitch_matches_reference(H, W, S, ov):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, H, W, generator=g)
    t = Tiler(S, ov)
    tiles = t.cut(x)
    n = t.n_tiles(H, W)
    assert tiles.shape == (2 * n, 3, S, S)
    # each tile is the image's crop (zero padded where the image is smaller than a tile)
    xp = torch.nn.functional.pad(x, (0, max(0, S - W), 0, max(0, S - H)))
    for j, (top, left) in enumerate(t.boxes(H, W) * 2):
        assert torch.equal(tiles[j], xp[j // n, :, top : top + S, left : left + S])
    # stitching tiles of the image itself gives the image back (every covering tile agrees)
    back = t.stitch(tiles[:, 0], (H, W))
    assert torch.allclose(back, x[:, 0], atol=1e-6)
    # random tile maps (tiles disagree): the mean over covering tiles, as the naive loop
    maps = torch.randn(2 * n, S, S, generator=g)
    ref = _naive_stitch(maps, t.boxes(H, W), 2, H, W, S, S)
    assert torch.allclose(t.stitch(maps, (H, W)).double(), ref, atol=1e-6)
    # chunked (bounded memory) gives the same as all at once
    st = Stitcher(t, 2, (H, W))
    for start, chunk in t.iter_cut(x, 3):
        assert chunk.shape[0] <= 3
        st.add(start, maps[start : start + chunk.shape[0]])
    assert torch.allclose(st.result().double(), ref, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tile_size"):
        Tiler(0)
    with pytest.raises(ValueError, match="overlap"):
        Tiler(8, 1.0)
    with pytest.raises(ValueError, match="overlap"):
        Tiler(8, -0.1)
    t = Tiler(8)
    with pytest.raises(ValueError, match="Tensor\\[B, C, H, W\\]"):
        next(t.iter_cut(torch.zeros(3, 8, 8), 4))
    with pytest.raises(ValueError, match="tile_maps"):
        t.stitch(torch.zeros(3, 8, 8), (20, 20))  # 9 tiles per image expected
    st = Stitcher(t, 1, (8, 8))
    with pytest.raises(ValueError, match="1 tiles were added|0 of 1"):
        st.result()


# ---------------------------------------------------------------------------------- detectors
@pytest.fixture
def tiny_backbone():
    from fastad.features import get_backbone

    return get_backbone("random_cnn")


def _images(n, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, 32, 32, generator=g) * 0.5
    x = base.repeat(1, 1, (H + 31) // 32, (W + 31) // 32)[:, :, :H, :W]  # a periodic texture
    return x + 0.1 * torch.randn(n, 3, H, W, generator=g)


@pytest.mark.parametrize("name", ["PatchCore", "PaDiM"])
def test_tiled_fit_and_score(name, tiny_backbone, tmp_path):
    import fastad.detectors as D

    cls = getattr(D, name)
    kw = dict(coreset_ratio=1.0) if name == "PatchCore" else {}
    det = cls(backbone=tiny_backbone, progress=False, batch_size=4, **kw).set_tiling(32, overlap=0.5)
    train = _images(6, 48, 80, 0)
    det.fit(train)
    assert det.image_size_ == (32, 32) and det.n_fit_images_ == 6
    n = Tiler(32, 0.5).n_tiles(48, 80)
    assert det.n_fit_tiles_ == 6 * n
    if name == "PatchCore":
        assert det.memory_bank_.shape[0] == 6 * n * 8 * 8  # layer1 grid of a 32 px tile: 8x8
    test = _images(3, 48, 80, 1)
    test[2, :, 10:20, 50:60] += 4.0  # a defect near the right end
    s, m = det.score(test)
    assert s.shape == (3,) and m.shape == (3, 48, 80)
    assert int(s.argmax()) == 2
    peak = torch.nonzero(m[2] == m[2].max())[0]
    assert 5 <= int(peak[0]) <= 25 and 45 <= int(peak[1]) <= 65
    # scores = max over tiles of the untiled detector's tile scores; maps = the stitched tile maps
    tiles = Tiler(32, 0.5).cut(test)
    det2 = cls.__new__(cls)
    det2.__dict__.update(det.__dict__)
    det2.tiling_ = det2._tiling_cfg = None
    ts, tm = det2.score(tiles)
    assert torch.allclose(s, ts.view(3, n).amax(1), atol=1e-5)
    assert torch.allclose(m, Tiler(32, 0.5).stitch(tm, (48, 80)), atol=1e-5)
    # other image sizes (native resolution varies) in later batches; one batch one size
    s2, m2 = det.score(_images(2, 40, 40, 3))
    assert m2.shape == (2, 40, 40)
    # the tiling is saved with the model and used when scoring the loaded model
    det.save(tmp_path / "m.safetensors")
    back = D.load(tmp_path / "m.safetensors", backbone=tiny_backbone)
    assert back.tiling_["tile_size"] == [32, 32] and back.tiling_["overlap"] == 0.5
    s3, m3 = back.score(test)
    assert torch.allclose(s3, s, atol=1e-5) and torch.allclose(m3, m, atol=1e-5)


def test_tiled_dataset_with_mixed_sizes(tiny_backbone, tmp_path):
    """A folder of images of different sizes at native resolution: ragged batches, tiled."""
    import numpy as np
    from PIL import Image

    from fastad.data import ImageFolder
    from fastad.detectors import PatchCore

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 72), (40, 72), (56, 36), (30, 30)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ds = ImageFolder(tmp_path, resize="none")
    det = PatchCore(backbone=tiny_backbone, coreset_ratio=1.0, progress=False, batch_size=8).set_tiling(32, 0.25)
    det.fit(ds)
    assert det.n_fit_images_ == 4
    s = det.decision_function(ds)
    assert s.shape == (4,)
    with pytest.raises(ValueError, match="tile_batch_size"):
        det.set_tiling(32, 0.25, tile_batch_size=0)
    # without tiling, mixed sizes are refused clearly
    det.set_tiling(None)
    with pytest.raises(ValueError, match="different shapes|one size|grids differ"):
        PatchCore(backbone=tiny_backbone, coreset_ratio=1.0, progress=False).fit(ds)


def _assert_equals_plain_on_resized_tiles(det, x, s, m, t, seen):
    """The tiled detector's scores s and maps m of images x equal the untiled detector run on x's tiles
    (cut by Tiler t) resized to seen x seen, its maps resized back to the tile size and stitched."""
    import torch.nn.functional as F

    from fastad.detectors import PatchCore

    tiles = F.interpolate(t.cut(x), size=(seen, seen), mode="bilinear", align_corners=False)
    plain = PatchCore.__new__(PatchCore)
    plain.__dict__.update(det.__dict__)
    plain.tiling_ = plain._tiling_cfg = None
    ts, tm = plain.score(tiles)
    back = F.interpolate(tm[:, None], size=t.tile_size, mode="bilinear", align_corners=False, antialias=True)[:, 0]
    assert torch.allclose(m, t.stitch(back, tuple(x.shape[-2:])), atol=1e-5)
    assert torch.allclose(s, ts.view(x.shape[0], -1).amax(1), atol=1e-5)


def test_tile_scale(tiny_backbone):
    """scale=2: each 16 px tile is seen at 32 px; maps come back at the image's size, and equal the
    untiled detector on the 2x-resized tiles, resized back and stitched."""

    from fastad.detectors import PatchCore

    det = PatchCore(backbone=tiny_backbone, coreset_ratio=1.0, progress=False, blur_sigma=0).set_tiling(16, 0.5, scale=2)
    det.fit(_images(4, 24, 40, 0))
    assert det.image_size_ == (32, 32) and det.tiling_["scale"] == 2.0
    x = _images(2, 24, 40, 5)
    s, m = det.score(x)
    assert m.shape == (2, 24, 40)
    _assert_equals_plain_on_resized_tiles(det, x, s, m, Tiler(16, 0.5), 32)
    with pytest.raises(ValueError, match="scale"):
        det.set_tiling(16, 0.5, scale=0)


def test_small_fit_never_pads(tiny_backbone):
    """small="fit": an image narrower than a tile is cut into tiles of its own shorter side (aspect of
    the tile kept), each seen at the backbone's tile size; equals the plain detector on those tiles
    resized up, resized back and stitched. Images at least a tile large are tiled as with "pad"."""

    from fastad.detectors import PatchCore

    det = PatchCore(backbone=tiny_backbone, coreset_ratio=1.0, progress=False, blur_sigma=0)
    det.set_tiling(32, 0.25, small="fit").fit(_images(3, 40, 48, 0))
    assert det.tiling_["small"] == "fit"
    x = _images(2, 20, 56, 4)  # 20 < 32: tiles of 20 x 20
    s, m = det.score(x)
    assert m.shape == (2, 20, 56)
    _assert_equals_plain_on_resized_tiles(det, x, s, m, Tiler(20, 0.25), 32)
    # large enough images: the same as small="pad"
    big = _images(1, 40, 48, 6)
    pad = PatchCore.__new__(PatchCore)
    pad.__dict__.update(det.__dict__)
    pad.tiling_ = dict(det.tiling_, small="pad")
    sb, mb = det.score(big)
    sp, mp = pad.score(big)
    assert torch.equal(sb, sp) and torch.equal(mb, mp)
    # and "pad" differs on the narrow image (padded tiles)
    assert not torch.allclose(pad.score(x)[1], m)
    with pytest.raises(ValueError, match="small must be 'pad' or 'fit', got 'crop'"):
        det.set_tiling(32, small="crop")


@pytest.mark.parametrize("name", ["PatchCore", "PaDiM"])
def test_blur_on_the_stitched_image(name, tiny_backbone):
    """blur="image": the stitched unblurred map blurred once, sigma scaled from backbone-tile pixels
    to image pixels (tile 16 seen at 32: sigma 3 -> 1.5); tiles are blurred neither way twice."""
    import fastad.detectors as D
    from fastad.detectors import gaussian_blur

    cls = getattr(D, name)
    kw = dict(coreset_ratio=1.0) if name == "PatchCore" else {}
    det = cls(backbone=tiny_backbone, progress=False, blur_sigma=3.0, **kw).set_tiling(16, 0.5, scale=2, blur="image")
    det.fit(_images(4, 24, 40, 0))
    x = _images(2, 24, 40, 5)
    s, m = det.score(x)
    assert det.blur_sigma == 3.0  # restored after scoring
    raw = cls.__new__(cls)
    raw.__dict__.update(det.__dict__)
    raw.blur_sigma = None
    raw.tiling_ = dict(det.tiling_, blur="tile")
    rs, rm = raw.score(x)
    assert torch.allclose(m, gaussian_blur(rm, 1.5, "reflect"), atol=1e-5)
    assert torch.allclose(s, rs, atol=1e-5)  # image score: max of the unblurred tiles' scores
    per_tile = cls.__new__(cls)
    per_tile.__dict__.update(det.__dict__)
    per_tile.tiling_ = dict(det.tiling_, blur="tile")
    assert not torch.allclose(per_tile.score(x)[1], m, atol=1e-4)
    with pytest.raises(ValueError, match="blur must be 'tile' or 'image'"):
        det.set_tiling(16, blur="seam")


@pytest.mark.parametrize("name", ["PatchCore", "PaDiM"])
def test_fuse_global(name, tiny_backbone, tmp_path):
    """fuse="global": a second, untiled model fitted on the images squashed to fuse_size; maps and
    scores are w * global (map resized to the image) + (1 - w) * tiled; one-shot iterables fit; the
    global model is saved and loaded with the tiled one."""
    import torch.nn.functional as F

    import fastad.detectors as D

    cls = getattr(D, name)
    kw = dict(coreset_ratio=1.0) if name == "PatchCore" else {}
    train, x = _images(6, 48, 80, 0), _images(3, 48, 80, 1)
    x[2, :, 10:20, 50:60] += 4.0
    det = cls(backbone=tiny_backbone, progress=False, batch_size=4, **kw).set_tiling(32, 0.5, fuse="global", fuse_weight=0.25,
                                                                                     fuse_size=(24, 40))
    det.fit(b for b in train.split(4))  # a one-shot generator of batches
    assert det.n_fit_images_ == 6 and det.global_.image_size_ == (24, 40) and det.global_.tiling_ is None
    tiled = cls(backbone=tiny_backbone, progress=False, batch_size=4, **kw).set_tiling(32, 0.5).fit(train)
    small = F.interpolate(train, size=(24, 40), mode="bilinear", align_corners=False, antialias=True)
    glob = cls(backbone=tiny_backbone, progress=False, batch_size=4, **kw).fit(small.half().float())
    s, m = det.score(x)
    ts, tm = tiled.score(x)
    gs, gm = glob.score(F.interpolate(x, size=(24, 40), mode="bilinear", align_corners=False, antialias=True))
    gm = F.interpolate(gm[:, None], size=(48, 80), mode="bilinear", align_corners=False)[:, 0]
    assert m.shape == (3, 48, 80) and int(s.argmax()) == 2
    assert torch.allclose(s, 0.25 * gs + 0.75 * ts, rtol=1e-4, atol=1e-4)
    assert torch.allclose(m, 0.25 * gm + 0.75 * tm, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(m, tm, atol=1e-3)
    det.save(tmp_path / "f.safetensors")
    back = D.load(tmp_path / "f.safetensors", backbone=tiny_backbone)
    assert back.tiling_["fuse"] == {"mode": "global", "weight": 0.25, "size": [24, 40], "norm": "none"}
    s2, m2 = back.score(x)
    assert torch.allclose(s2, s, atol=1e-5) and torch.allclose(m2, m, atol=1e-5)
    for bad, match in ((dict(fuse="local"), "fuse must be None or 'global'"), (dict(fuse="global", fuse_weight=1.5), "fuse_weight must be"),
                       (dict(fuse="global", fuse_size=(0, 4)), "fuse_size must be"),
                       (dict(fuse="global", fuse_norm="minmax"), "fuse_norm must be one of")):
        with pytest.raises(ValueError, match=match):
            det.set_tiling(32, **bad)


@pytest.mark.parametrize("name", ["PatchCore", "PaDiM"])
def test_fuse_zscore(name, tiny_backbone, tmp_path):
    """fuse_norm="zscore": each branch standardised by its pixel / image-score mean and std on held-out
    normal images (calibrate_fusion) before w * global + (1 - w) * tiled; refused before calibration,
    saved and loaded with the model, dropped by a new fit."""
    from fastad.detectors._util import NotFittedError

    import fastad.detectors as D

    cls = getattr(D, name)
    kw = dict(coreset_ratio=1.0) if name == "PatchCore" else {}
    train, normal, x = _images(6, 48, 80, 0), _images(3, 48, 80, 2), _images(3, 48, 80, 1)
    x[2, :, 10:20, 50:60] += 4.0
    det = cls(backbone=tiny_backbone, progress=False, batch_size=4, **kw).set_tiling(32, 0.5, fuse="global", fuse_weight=0.25,
                                                                                     fuse_size=(24, 40), fuse_norm="zscore")
    det.fit(train)
    assert det.needs_fusion_calibration()
    with pytest.raises(NotFittedError, match="calibrate_fusion"):
        det.score(x)
    with pytest.raises(ValueError, match="at least 2 normal images"):
        det.calibrate_fusion(normal[:1])
    # the raw branches through the same model: weight 1 = global, 0 = tiled, no normalisation
    raw = {}
    for b, w in (("global", 1.0), ("tiled", 0.0)):
        det.tiling_ = dict(det.tiling_, fuse=dict(det.tiling_["fuse"], weight=w, norm="none"))
        raw[b] = (det.score(normal), det.score(x))
    det.tiling_ = dict(det.tiling_, fuse=dict(det.tiling_["fuse"], weight=0.25, norm="zscore"))
    with pytest.warns(UserWarning, match="rest on 3 held-out normal images .* at least 10"):
        cal = det.calibrate_fusion(b for b in normal.split(2))  # a one-shot iterable of batches
    st = det.tiling_["fuse"]["stats"]
    assert st["n_images"] == 3 and "stats" not in det._tiling_cfg["fuse"]
    z = {}
    for b in ("global", "tiled"):
        (ns, nm), (xs, xm) = raw[b]
        nm64, ns64 = nm.double(), ns.double()
        assert st[b]["map_mean"] == pytest.approx(float(nm64.mean()), rel=1e-5)
        assert st[b]["map_std"] == pytest.approx(float(nm64.std(unbiased=False)), rel=1e-4)
        assert st[b]["score_mean"] == pytest.approx(float(ns64.mean()), rel=1e-5)
        assert st[b]["score_std"] == pytest.approx(float(ns64.std()), rel=1e-5)
        z[b] = ((ns - ns64.mean()) / ns64.std(), (xs - ns64.mean()) / ns64.std(), (xm - nm64.mean()) / nm64.std(unbiased=False))
    assert torch.allclose(cal, (0.25 * z["global"][0] + 0.75 * z["tiled"][0]).float(), atol=1e-4)
    s, m = det.score(x)
    assert torch.allclose(s, (0.25 * z["global"][1] + 0.75 * z["tiled"][1]).float(), atol=1e-4)
    assert torch.allclose(m, (0.25 * z["global"][2] + 0.75 * z["tiled"][2]).float(), atol=1e-4)
    assert int(s.argmax()) == 2
    det.save(tmp_path / "z.safetensors")
    back = D.load(tmp_path / "z.safetensors", backbone=tiny_backbone)
    assert back.tiling_["fuse"]["stats"] == st
    s2, m2 = back.score(x)
    assert torch.allclose(s2, s, atol=1e-5) and torch.allclose(m2, m, atol=1e-5)
    back.fit(train)  # a new fit: the loaded calibration is not its own
    with pytest.raises(NotFittedError, match="calibrate_fusion"):
        back.score(x)
    assert not det.supports_threshold("chi2")  # a fused score is no Mahalanobis distance
    if name == "PaDiM":
        with pytest.raises(ValueError, match="'chi2' does not apply to a model fused"):
            det.set_threshold(method="chi2")
    plain = cls(backbone=tiny_backbone, progress=False, batch_size=4, **kw).set_tiling(32, 0.5).fit(train)
    assert not plain.needs_fusion_calibration() and plain.supports_threshold("chi2") == (name == "PaDiM")
    with pytest.raises(ValueError, match="not tiled with fuse='global'"):
        plain.calibrate_fusion(normal)
