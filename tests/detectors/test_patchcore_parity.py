"""fastad's PatchCore against a pure-torch port of anomalib 2.7.0's PatchCore computation.

The port below was written for this test from reading anomalib 2.7.0 (PyPI wheel ``anomalib==2.7.0``):
``anomalib/models/image/patchcore/torch_model.py`` (``PatchcoreModel.forward``, ``generate_embedding``,
``reshape_embedding``, ``euclidean_dist``, ``nearest_neighbors`` with ``DEFAULT_CHUNK_SIZE = 1024``,
``compute_anomaly_score``), ``anomalib/models/image/patchcore/anomaly_map.py`` (``AnomalyMapGenerator``:
default-mode ``F.interpolate`` then ``GaussianBlur2d`` with ``kernel_size = 2 * int(4.0 * sigma + 0.5) + 1``)
and ``anomalib/models/components/filters/blur.py`` (kornia Gaussian kernel, normalised, ``F.pad`` with
``mode="reflect"`` by ``kernel // 2``, ``conv2d``). It runs on the SAME features and the SAME memory bank
as fastad (coreset bypassed with ``coreset_ratio=1.0``, or fastad's selected bank injected).
"""
import contextlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastad.detectors import PatchCore

# ----------------------------------------------------------------------------- the port


def _port_embedding(features, layers):
    pooler = torch.nn.AvgPool2d(3, 1, 1)
    pooled = {k: pooler(v) for k, v in features.items()}
    emb = pooled[layers[0]]
    for layer in layers[1:]:
        e = F.interpolate(pooled[layer], size=emb.shape[-2:], mode="bilinear")
        emb = torch.cat((emb, e), 1)
    return emb


def _port_reshape(emb):
    return emb.permute(0, 2, 3, 1).reshape(-1, emb.size(1))


def _port_euclidean_dist(x, y):
    x_norm = x.pow(2).sum(dim=-1, keepdim=True)
    y_norm = y.pow(2).sum(dim=-1, keepdim=True)
    res = torch.matmul(x, y.transpose(-2, -1))
    res.mul_(-2)
    res.add_(x_norm)
    res.add_(y_norm.transpose(-2, -1))
    return res.clamp_min_(0).sqrt_()


def _port_nearest_neighbors(embedding, bank, n_neighbors, chunk=1024):
    scores, locs = [], []
    for s in range(0, embedding.shape[0], chunk):
        d = _port_euclidean_dist(embedding[s : s + chunk], bank)
        if n_neighbors == 1:
            a, b = d.min(1)
        else:
            a, b = d.topk(k=n_neighbors, largest=False, dim=1)
        scores.append(a)
        locs.append(b)
    return torch.cat(scores), torch.cat(locs)


def _port_anomaly_score(patch_scores, locations, embedding, bank, num_neighbors, max_patches=None):
    if num_neighbors == 1:
        return patch_scores.amax(1)
    batch_size, num_patches = patch_scores.shape
    if max_patches is None:
        max_patches = torch.argmax(patch_scores, dim=1)
    ar = torch.arange(batch_size)
    max_feats = embedding.reshape(batch_size, num_patches, -1)[ar, max_patches]
    score = patch_scores[ar, max_patches]
    nn_index = locations[ar, max_patches]
    nn_sample = bank[nn_index, :]
    _, support = _port_nearest_neighbors(nn_sample, bank, min(num_neighbors, bank.shape[0]))
    if support.dim() == 1:
        # a one-row bank: anomalib's min() branch returns [B] and its broadcast then mixes the batch;
        # fastad (and this port) keep one support row per image instead (see PatchCore._image_scores)
        support = support[:, None]
    distances = _port_euclidean_dist(max_feats.unsqueeze(1), bank[support])
    weights = (1 - F.softmax(distances.squeeze(1), 1))[..., 0]
    return weights * score


def _port_blur(x, sigma=4.0):
    ks = 2 * int(4.0 * sigma + 0.5) + 1
    # kornia get_gaussian_kernel1d: x = arange(ks) - ks // 2, exp(-x^2 / (2 sigma^2)), / sum
    t = (torch.arange(ks) - ks // 2).float()
    g = torch.exp(-t.pow(2.0) / (2 * sigma**2))
    g = g / g.sum()
    k2 = torch.outer(g, g)
    k2 = k2 / k2.abs().sum()  # normalize_kernel2d
    pad = ks // 2  # kornia _compute_padding for an odd kernel
    x = F.pad(x, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(x, k2.view(1, 1, ks, ks), groups=1, padding=0, stride=1)


def port_patchcore(features, layers, bank, num_neighbors, image_size):
    """anomalib 2.7 PatchcoreModel.forward in eval mode from the feature dict on."""
    emb = _port_embedding(features, layers)
    batch_size, _, width, height = emb.shape  # (sic: anomalib's names; the values are (H, W))
    emb = _port_reshape(emb)
    patch_scores, locations = _port_nearest_neighbors(emb, bank, 1)
    patch_scores = patch_scores.reshape((batch_size, -1))
    locations = locations.reshape((batch_size, -1))
    pred = _port_anomaly_score(patch_scores, locations, emb, bank, num_neighbors)
    grid = patch_scores.reshape((batch_size, 1, width, height))
    amap = _port_blur(F.interpolate(grid, size=(image_size[0], image_size[1])))
    return pred, amap[:, 0], patch_scores, locations, emb


# ----------------------------------------------------------------------------- helpers


def _features(gen, B, grid=(12, 16), dims=(16, 24)):
    h, w = grid
    return {
        "a": torch.randn(B, dims[0], h, w, generator=gen),
        "b": torch.randn(B, dims[1], (h + 1) // 2, (w + 1) // 2, generator=gen) * 2 + 0.5,
    }


def _assert_scores_tie_aware(ours, port_pred, patch_scores, locations, emb, bank, k, tol=1e-4):
    """Image scores equal; where they differ, the port's argmax patch must tie (within fp32 rounding)
    with another patch whose re-weighted score equals ours."""
    close = torch.isclose(ours, port_pred, rtol=tol, atol=tol)
    for b in torch.nonzero(~close).flatten().tolist():
        ps = patch_scores[b]
        tied = torch.nonzero(ps >= ps.max() - 1e-5).flatten()
        alts = [
            _port_anomaly_score(patch_scores[b : b + 1], locations[b : b + 1], emb.view(len(ours), ps.numel(), -1)[b], bank, k,
                                max_patches=torch.tensor([int(p)]))[0]
            for p in tied
        ]
        assert any(abs(float(a) - float(ours[b])) <= tol * (1 + abs(float(a))) for a in alts), (
            f"image {b}: fastad {float(ours[b])} vs anomalib port {float(port_pred[b])}, no tie explains it"
        )
    assert int((~close).sum()) <= max(1, len(ours) // 10), "too many tie-explained differences"


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("num_neighbors", [1, 3, 9])
def test_parity_full_bank(num_neighbors):
    gen = torch.Generator().manual_seed(num_neighbors)
    train, test = _features(gen, 6), _features(gen, 5)
    image_size = (48, 64)  # non-square: catches any H/W swap
    det = PatchCore(backbone=None, layers=["a", "b"], coreset_ratio=1.0, num_neighbors=num_neighbors, progress=False)
    det.fit_features(train, image_size=image_size)
    bank = _port_reshape(_port_embedding(train, ["a", "b"]))
    assert torch.allclose(det.memory_bank_, bank, atol=1e-6), "bank = every training row in anomalib's order"
    scores, maps = det.score_features(test)
    pred, amap, ps, locs, emb = port_patchcore(test, ["a", "b"], bank, num_neighbors, image_size)
    assert maps.shape == amap.shape == (5, 48, 64)
    torch.testing.assert_close(maps, amap, rtol=1e-4, atol=1e-4)
    _assert_scores_tie_aware(scores, pred, ps, locs, emb, bank, num_neighbors)


def test_parity_injected_coreset_bank():
    """fastad selects a coreset; the port scores with that very bank."""
    gen = torch.Generator().manual_seed(7)
    train, test = _features(gen, 8), _features(gen, 4)
    det = PatchCore(backbone=None, layers=["a", "b"], coreset_ratio=0.2, num_neighbors=9, projection_dim=None, progress=False)
    det.fit_features(train, image_size=(40, 52))
    bank = det.memory_bank_.clone()
    assert bank.shape[0] == int(8 * 12 * 16 * 0.2)
    scores, maps = det.score_features(test)
    pred, amap, ps, locs, emb = port_patchcore(test, ["a", "b"], bank, 9, (40, 52))
    torch.testing.assert_close(maps, amap, rtol=1e-4, atol=1e-4)
    _assert_scores_tie_aware(scores, pred, ps, locs, emb, bank, 9)


def test_parity_duplicate_bank_rows_and_tiny_bank():
    """Tied bank rows (exact duplicates) and a bank smaller than num_neighbors (k is clamped)."""
    gen = torch.Generator().manual_seed(3)
    train = _features(gen, 1, grid=(2, 2), dims=(4, 6))  # 4 patches: bank of 4 rows < 9 neighbours
    train = {k: torch.cat([v, v]) for k, v in train.items()}  # every row duplicated
    test = _features(gen, 3, grid=(2, 2), dims=(4, 6))
    det = PatchCore(backbone=None, layers=["a", "b"], coreset_ratio=1.0, num_neighbors=9, progress=False)
    det.fit_features(train, image_size=(20, 20))
    bank = det.memory_bank_.clone()
    assert bank.shape[0] == 8
    scores, maps = det.score_features(test)
    pred, amap, ps, locs, emb = port_patchcore(test, ["a", "b"], bank, 9, (20, 20))
    torch.testing.assert_close(maps, amap, rtol=1e-4, atol=1e-4)
    _assert_scores_tie_aware(scores, pred, ps, locs, emb, bank, 9)


def test_port_blur_matches_fastad_separable_blur():
    from fastad.detectors import gaussian_blur

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 37, 50, generator=gen)
    torch.testing.assert_close(gaussian_blur(x, 4.0, "reflect"), _port_blur(x), rtol=1e-5, atol=1e-6)


@contextlib.contextmanager
def installed_anomalib():
    """benchmarks/_anomalib_patchcore.py (the loader of anomalib's source files without torchvision),
    with ``sys.path`` and the ``anomalib`` modules restored afterwards."""
    root = Path(__file__).resolve().parents[2]
    saved = {k: v for k, v in sys.modules.items() if k == "anomalib" or k.startswith("anomalib.")}
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import _anomalib_patchcore

        yield _anomalib_patchcore
    finally:
        sys.path.remove(str(root / "benchmarks"))
        for k in [k for k in sys.modules if k == "anomalib" or k.startswith("anomalib.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_parity_with_installed_anomalib_code():
    """Where anomalib 2.7.0 (+ kornia, scikit-learn) is installed (the `bench` extra), run anomalib's
    own PatchcoreModel.forward (loaded without torchvision by benchmarks/_anomalib_patchcore.py) on the
    same features with fastad's memory bank injected."""
    pytest.importorskip("anomalib")
    pytest.importorskip("kornia")
    pytest.importorskip("sklearn")
    with installed_anomalib() as A:
        PatchcoreModel, *_, version = A.load()
        assert version == "2.7.0", version
        gen = torch.Generator().manual_seed(11)
        train, test = _features(gen, 6), _features(gen, 5)
        det = PatchCore(backbone=None, layers=["a", "b"], coreset_ratio=0.3, num_neighbors=9, progress=False)
        det.fit_features(train, image_size=(48, 64))
        scores, maps = det.score_features(test)
        A.FeatureSource.extract = lambda x: test  # anomalib's extractor returns these very features
        model = PatchcoreModel(layers=["a", "b"], backbone="features", num_neighbors=9)
        model.memory_bank = det.memory_bank_.clone()
        model.eval()
        out = model(torch.zeros(5, 3, 48, 64))
        torch.testing.assert_close(maps, out.anomaly_map[:, 0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(scores, out.pred_score, rtol=1e-4, atol=1e-4)
