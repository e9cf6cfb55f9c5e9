"""fastad's PaDiM against a pure-torch port of anomalib 2.7.0's PaDiM computation (and anomalib's own
``MultiVariateGaussian`` + ``AnomalyMapGenerator`` where anomalib is installed), plus the detector API.

The port was written for this test from reading anomalib 2.7.0 (PyPI wheel ``anomalib==2.7.0``):
``anomalib/models/image/padim/torch_model.py`` (``generate_embedding``: nearest resize to the first
layer's grid, concatenation, ``index_select`` of the channel subset), ``anomalib/models/components/
stats/multi_variate_gaussian.py`` (``forward``: per-position ``_cov`` with ddof = 1 + 0.01 I, then
+ 1e-5 I, ``torch.linalg.inv``) and ``anomalib/models/image/padim/anomaly_map.py``
(``compute_distance``: ``(delta @ inv * delta).sum``, clamp, sqrt; bilinear ``align_corners=False``
upsampling; ``GaussianBlur2d`` sigma 4).
"""
import pytest
import torch
import torch.nn.functional as F

from fastad.detectors import PaDiM, load

from .test_patchcore_parity import _port_blur, installed_anomalib


def _port_embedding(features, layers, idx):
    emb = features[layers[0]]
    for layer in layers[1:]:
        emb = torch.cat((emb, F.interpolate(features[layer], size=emb.shape[-2:], mode="nearest")), 1)
    return torch.index_select(emb, 1, idx)


def _port_fit(emb, dtype):
    B, C, H, W = emb.shape
    v = emb.to(dtype).view(B, C, H * W)
    mean = v.mean(0)
    cov = torch.zeros(C, C, H * W, dtype=dtype)
    eye = torch.eye(C, dtype=dtype)
    for i in range(H * W):
        x = v[:, :, i]
        xm = x - x.mean(0)
        cov[:, :, i] = xm.t() @ xm / (B - 1) + 0.01 * eye
    inv = torch.linalg.inv(cov.permute(2, 0, 1) + 1e-5 * eye)
    return mean, inv


def _port_score(emb, mean, inv, image_size):
    B, C, H, W = emb.shape
    e = emb.to(mean.dtype).reshape(B, C, H * W)
    delta = (e - mean).permute(2, 0, 1)
    d = (torch.matmul(delta, inv) * delta).sum(2).permute(1, 0).reshape(B, 1, H, W).clamp(0).sqrt()
    up = F.interpolate(d.float(), size=image_size, mode="bilinear", align_corners=False)
    m = _port_blur(up)
    return m.amax(dim=(-2, -1))[:, 0], m[:, 0]


def _features(gen, B, grid=(10, 12), dims=(6, 10)):
    h, w = grid
    return {
        "a": torch.randn(B, dims[0], h, w, generator=gen) + 1.0,
        "b": torch.randn(B, dims[1], (h + 1) // 2, (w + 1) // 2, generator=gen) * 2 + 0.5,
    }


@pytest.mark.parametrize("n_features", [None, 9])
def test_parity_with_anomalib_port(n_features):
    gen = torch.Generator().manual_seed(3)
    train, test = _features(gen, 30), _features(gen, 5)
    det = PaDiM(backbone=None, layers=["a", "b"], n_features=n_features, random_state=5, progress=False)
    det.fit_features(train, image_size=(40, 48))
    idx = det.channel_idx_
    assert idx.numel() == (16 if n_features is None else 9)
    scores, maps = det.score_features(test)
    e_train, e_test = _port_embedding(train, ["a", "b"], idx), _port_embedding(test, ["a", "b"], idx)
    # float64 port: fastad's float64 fit is this accurate
    mean, inv = _port_fit(e_train, torch.float64)
    torch.testing.assert_close(det.mean_, mean.t().float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(det.precision_.double(), inv, rtol=1e-5, atol=1e-6)
    ps, pm = _port_score(e_test, mean, inv, (40, 48))
    torch.testing.assert_close(maps, pm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, ps, rtol=1e-5, atol=1e-5)
    # anomalib's own float32 numerics: within float32 rounding of the inverse
    mean32, inv32 = _port_fit(e_train, torch.float32)
    ps32, pm32 = _port_score(e_test, mean32, inv32, (40, 48))
    torch.testing.assert_close(maps, pm32, rtol=1e-3, atol=1e-3)


def test_parity_with_installed_anomalib_code():
    """anomalib's own MultiVariateGaussian and AnomalyMapGenerator (loaded without torchvision) on the
    embedding of fastad's channel subset."""
    pytest.importorskip("anomalib")
    pytest.importorskip("kornia")
    with installed_anomalib() as A:
        mvg, amg, version = A.load_padim()
        assert version == "2.7.0", version
        gen = torch.Generator().manual_seed(4)
        train, test = _features(gen, 25), _features(gen, 4)
        det = PaDiM(backbone=None, layers=["a", "b"], n_features=12, progress=False).fit_features(train, image_size=(40, 48))
        scores, maps = det.score_features(test)
        g = mvg()
        g.fit(_port_embedding(train, ["a", "b"], det.channel_idx_))
        out = amg()(embedding=_port_embedding(test, ["a", "b"], det.channel_idx_), mean=g.mean,
                    inv_covariance=g.inv_covariance, image_size=(40, 48))
        torch.testing.assert_close(maps, out[:, 0], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(scores, out.amax(dim=(-2, -1))[:, 0], rtol=1e-3, atol=1e-3)


def test_streaming_fit_equals_one_batch(monkeypatch):
    import fastad.gaussian as gaussian_mod

    gen = torch.Generator().manual_seed(5)
    train = _features(gen, 24)
    one = PaDiM(backbone=None, layers=["a", "b"], progress=False).fit_features(train, image_size=(20, 24))
    parts = [{k: v[i : i + 5] for k, v in train.items()} for i in range(0, 24, 5)]
    # batches of 5 folded into the float64 sums one by one (no raw rows kept), 3 positions per block
    monkeypatch.setattr(gaussian_mod, "BUFFER_BYTES_PER_FEATURE", 0)
    monkeypatch.setattr(gaussian_mod, "_BLOCK_BYTES", 3 * 3 * 8 * 16 * 16)
    many = PaDiM(backbone=None, layers=["a", "b"], progress=False).fit_features(parts, image_size=(20, 24))
    # float32 products of differently shifted chunks: rounding-level changes, amplified by the inverse
    torch.testing.assert_close(one.precision_, many.precision_, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(one.mean_, many.mean_)
    test = _features(gen, 3)
    torch.testing.assert_close(one.score_features(test)[1], many.score_features(test)[1], rtol=1e-4, atol=1e-4)


def test_images_api_localises_and_roundtrips(tiny_backbone, images, tmp_path):
    train, test = images
    det = PaDiM(backbone=tiny_backbone, n_features=20, batch_size=5, progress=False).fit(train)
    assert det.mean_.shape == (16 * 16, 20) and det.precision_.shape == (256, 20, 20)
    scores, maps = det.score(test)
    assert scores.shape == (8,) and maps.shape == (8, 64, 64)
    assert scores[6:].min() > scores[:6].max()  # the blob images
    assert maps[6, 20:36, 24:40].mean() > maps[6, :8, :8].mean()
    torch.testing.assert_close(scores, maps.amax(dim=(1, 2)))
    e = load(det.save(tmp_path / "padim.safetensors"), backbone=tiny_backbone)
    s2, m2 = e.score(test)
    assert torch.equal(scores, s2) and torch.equal(maps, m2)
    assert torch.equal(e.channel_idx_, det.channel_idx_)


def test_seeded_channel_subset():
    gen = torch.Generator().manual_seed(6)
    train = _features(gen, 12)
    a = PaDiM(backbone=None, layers=["a", "b"], n_features=7, random_state=1, progress=False).fit_features(train)
    b = PaDiM(backbone=None, layers=["a", "b"], n_features=7, random_state=1, progress=False).fit_features(train)
    c = PaDiM(backbone=None, layers=["a", "b"], n_features=7, random_state=2, progress=False).fit_features(train)
    assert torch.equal(a.channel_idx_, b.channel_idx_) and not torch.equal(a.channel_idx_, c.channel_idx_)


def test_errors(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    train = _features(gen, 4)
    with pytest.raises(ValueError, match="n_features=99 but the layers"):
        PaDiM(backbone=None, layers=["a", "b"], n_features=99, progress=False).fit_features(train)
    with pytest.raises(ValueError, match="n_features must be None or an int >= 1"):
        PaDiM(backbone=None, layers=["a", "b"], n_features=0, progress=False).fit_features(train)
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        PaDiM(backbone=None, layers=["a", "b"], eps=-1, progress=False).fit_features(train)
    with pytest.raises(ValueError, match="at least 2 training images"):
        PaDiM(backbone=None, layers=["a", "b"], progress=False).fit_features({k: v[:1] for k, v in train.items()})
    # without any regularisation (eps = 0 and anomalib's 1e-5 stabiliser patched out) a constant
    # channel makes every covariance singular: a clear error naming the first position
    import fastad.detectors.padim as padim_mod

    monkeypatch.setattr(padim_mod, "PADIM_STABILISER", 0.0)
    with pytest.raises(ValueError, match=r"x has 4 samples of d=16 features: the covariance is singular"):
        PaDiM(backbone=None, layers=["a", "b"], eps=0.0, progress=False).fit_features(train)
    more = _features(gen, 30)
    with pytest.raises(ValueError, match=r"covariance of position 0 \(of 120\) is not positive definite"):
        PaDiM(backbone=None, layers=["a", "b"], eps=0.0, progress=False).fit_features(
            dict(more, a=torch.zeros(30, 6, 10, 12)))
    monkeypatch.undo()
    bad = {k: v.clone() for k, v in train.items()}
    bad["a"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        PaDiM(backbone=None, layers=["a", "b"], progress=False).fit_features(bad)
    det = PaDiM(backbone=None, layers=["a", "b"], progress=False).fit_features(train, image_size=(20, 24))
    with pytest.raises(ValueError, match="8x8 grid but the model was fitted on"):
        det.score_features(_features(gen, 2, grid=(8, 8)))


def test_fit_dtype_float32():
    # float32 factorisation (anomalib's precision): maps within 1e-4 relative of the float64 one here
    gen = torch.Generator().manual_seed(11)
    train, test = _features(gen, 40), _features(gen, 3)
    d64 = PaDiM(backbone=None, layers=["a", "b"], progress=False).fit_features(train, image_size=(20, 24))
    d32 = PaDiM(backbone=None, layers=["a", "b"], progress=False, fit_dtype="float32").fit_features(
        train, image_size=(20, 24))
    m64, m32 = d64.score_features(test)[1], d32.score_features(test)[1]
    assert float(((m32 - m64).abs() / m64.abs()).max()) <= 1e-4
    assert d32.get_params()["fit_dtype"] == "float32"
    with pytest.raises(ValueError, match="fit_dtype must be 'float32' or 'float64'"):
        PaDiM(backbone=None, layers=["a", "b"], fit_dtype="float16", progress=False).fit_features(train)


@pytest.mark.parametrize("grids", [((10, 12), (5, 6)), ((10, 12), (4, 5)), ((9, 9), (9, 9)), ((8, 8), (3, 8))])
@pytest.mark.parametrize("n_features", [None, 16, 5, 11])
def test_positions_equal_embedding(grids, n_features):
    # the one-pass layout is bit-identical to anomalib's order: embed (nearest resize + concatenation),
    # channel subset, transpose; every channel kept or a seeded subset (5: possibly none of one layer)
    gen = torch.Generator().manual_seed(2)
    feats = {"a": torch.randn(3, 6, *grids[0], generator=gen), "b": torch.randn(3, 10, *grids[1], generator=gen).half()}
    det = PaDiM(backbone=None, layers=["a", "b"], progress=False, n_features=n_features).fit_features(
        {k: torch.cat([v, v + 1, v * 2]) for k, v in feats.items()})
    # kept channels: the coarsest layer's first (fewer cells; equal grids keep the layer order)
    coarse_first = grids[1][0] * grids[1][1] < grids[0][0] * grids[0][1]
    layer = (det.channel_idx_ >= 6).long()
    assert torch.equal(layer, layer.sort(descending=coarse_first).values)
    assert det._all_channels == (n_features in (None, 16) and not coarse_first)
    got = det._positions(feats, torch.device("cpu"))
    want = det.embed(feats).index_select(1, det.channel_idx_).flatten(2).transpose(1, 2)
    assert got.is_contiguous() and torch.equal(got, want)


@pytest.mark.parametrize("grids", [((8, 10), (4, 5), (2, 5)), ((9, 9), (4, 5), (9, 9)), ((6, 6), (6, 6))])
def test_shared_rows_of_coarse_layers(grids, monkeypatch):
    """Coarse layers first: positions with the same nearest source cells on those layers have the same
    leading features (checked on every image), and a fit long enough to fold its sums (> C + 1 images)
    forms those covariance rows once: the maps equal a fit that forms every row (up to the shift's rounding)."""
    from fastad.detectors import padim as padim_mod

    gen = torch.Generator().manual_seed(5)
    dims = (5, 7, 6)[: len(grids)]
    layers = [chr(97 + i) for i in range(len(grids))]
    train = [{l: torch.randn(8, c, *g, generator=gen) for l, c, g in zip(layers, dims, grids)} for _ in range(5)]
    test = [{l: torch.randn(3, c, *g, generator=gen) for l, c, g in zip(layers, dims, grids)}]
    det = PaDiM(backbone=None, layers=layers, progress=False, n_features=12).fit_features(train, image_size=(16, 20))
    idx, shared = padim_mod._coarse_first(torch.arange(sum(dims)), list(dims), list(grids), grids[0])
    x = torch.cat([det._positions(f, torch.device("cpu")) for f in train])  # [40, P, 12]
    if grids[1] == grids[0] and len(grids) == 2:
        assert shared is None  # one grid: nothing shared
    else:
        _, sh = padim_mod._coarse_first(det.channel_idx_.sort().values, list(dims), list(grids), grids[0])
        assert sh  # (the subset's own plan: what the fit used)
        for end, owner in sh:
            assert torch.equal(x[:, :, :end], x[:, owner, :end])
            assert not torch.equal(owner, torch.arange(owner.numel()))
    assert det.n_train_images_ == 40 > 12 + 1
    orig = padim_mod._coarse_first
    monkeypatch.setattr(padim_mod, "_coarse_first", lambda *a: (orig(*a)[0], None))  # every row formed
    full = PaDiM(backbone=None, layers=layers, progress=False, n_features=12).fit_features(train, image_size=(16, 20))
    assert torch.equal(full.channel_idx_, det.channel_idx_)
    assert (det.fit_syrk_flops_ < full.fit_syrk_flops_) == (shared is not None)
    m1, m2 = det.score_features(test)[1], full.score_features(test)[1]
    assert float(((m1 - m2).abs() / m2.abs()).max()) <= 1e-5
