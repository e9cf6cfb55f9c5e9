"""GaussianAD (Rippel et al.): per-level Ledoit-Wolf Gaussians on globally pooled features, against
scikit-learn's LedoitWolf (the reference code's estimator) on the same pooled features."""
import numpy as np
import pytest
import torch

from fastad.detectors import GaussianAD, load

LedoitWolf = pytest.importorskip("sklearn.covariance").LedoitWolf


def _features(gen, B):
    return {"a": torch.randn(B, 6, 8, 8, generator=gen) + 1.0, "b": torch.randn(B, 10, 4, 4, generator=gen) * 2}


def test_matches_reference_recipe(gen):
    train, test = _features(gen, 40), _features(gen, 7)
    det = GaussianAD(backbone=None, layers=["a", "b"], progress=False).fit_features(train)
    got, maps = det.score_features(test)
    assert maps is None and got.shape == (7,)
    # the reference: per level GAP, sklearn LedoitWolf on float, sqrt of its squared Mahalanobis, mean
    want = 0
    for k in ("a", "b"):
        lw = LedoitWolf().fit(train[k].double().mean(dim=(2, 3)).numpy())
        want = want + np.sqrt(lw.mahalanobis(test[k].double().mean(dim=(2, 3)).numpy()))
    np.testing.assert_allclose(got.double().numpy(), want / 2, rtol=1e-5)


def test_images_api_and_roundtrip(tiny_backbone, images, tmp_path):
    train, test = images
    det = GaussianAD(backbone=tiny_backbone, progress=False).fit(train)
    assert det.layers_ == ["layer1", "layer2"]  # the backbone's default layers (no stage table for it)
    s = det.decision_function(test)
    assert s.shape == (8,) and s[6:].min() > s[:6].max()  # the blob images
    scores, maps = det.score(test)
    assert maps is None and torch.equal(scores, s)
    with pytest.raises(NotImplementedError, match="image-level"):
        det.score_map(test)
    det.set_threshold(normal=train)
    assert det.predict(test)[6:].all()
    back = load(det.save(tmp_path / "g.safetensors"), backbone=tiny_backbone)
    assert isinstance(back, GaussianAD) and torch.equal(back.decision_function(test), s)
    assert back.threshold_ == det.threshold_


def test_default_levels_of_efficientnet_lite0():
    from fastad.detectors.gaussian import EFFICIENTNET_LITE0_LEVELS

    assert GaussianAD()._default_layers() == EFFICIENTNET_LITE0_LEVELS


def test_errors(gen):
    train = _features(gen, 5)
    with pytest.raises(ValueError, match="level '[ab]'.*not positive definite with shrinkage='none'"):
        GaussianAD(backbone=None, layers=["a", "b"], shrinkage="none", progress=False).fit_features(train)
    bad = {k: v.clone() for k, v in train.items()}
    bad["b"][0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        GaussianAD(backbone=None, layers=["a", "b"], progress=False).fit_features(bad)
