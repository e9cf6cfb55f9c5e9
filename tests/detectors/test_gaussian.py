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


# ---- PCA / NPCA reductions and the chi-square threshold (Rippel et al. sections 3 and 4.3)
PCA = pytest.importorskip("sklearn.decomposition").PCA
stats = pytest.importorskip("scipy.stats")


def _pooled(f):
    return {k: v.double().mean(dim=(2, 3)).numpy() for k, v in f.items()}


@pytest.mark.parametrize("reduction", ["pca", "npca"])
@pytest.mark.parametrize("vt", [0.5, 0.99])
def test_reduction_matches_sklearn_pca_then_ledoit_wolf(gen, reduction, vt):
    # N > C: sklearn's PCA keeps all C components; the reference cut: i = first cumulative ratio > vt
    train, test = _features(gen, 60), _features(gen, 9)
    train["a"] = train["a"] * torch.linspace(0.2, 3.0, 6)[None, :, None, None]  # distinct variances
    det = GaussianAD(backbone=None, layers=["a", "b"], reduction=reduction, variance_threshold=vt,
                     progress=False).fit_features(train)
    got, _ = det.score_features(test)
    ptr, pte = _pooled(train), _pooled(test)
    want, dims = 0, {}
    for k in ("a", "b"):
        pca = PCA(n_components=None).fit(ptr[k])
        i = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) > vt))
        comps = pca.components_[: i + 1] if reduction == "pca" else pca.components_[max(i - 1, 0):]
        lw = LedoitWolf().fit((ptr[k] - pca.mean_) @ comps.T)
        want = want + np.sqrt(lw.mahalanobis((pte[k] - pca.mean_) @ comps.T))
        dims[k] = comps.shape[0]
    assert det.level_dims_ == dims
    np.testing.assert_allclose(got.double().numpy(), want / 2, rtol=2e-5)
    levels = det.level_scores(test)
    assert levels.shape == (9, 2) and torch.allclose(levels.mean(1), got, rtol=1e-6)


def test_reduction_with_fewer_images_than_channels(gen):
    from fastad.detectors.gaussian import pca_components

    X = torch.randn(8, 20, generator=gen, dtype=torch.float64)
    mean, V = pca_components(X, "npca", 0.5)
    assert V.shape[0] <= 7  # the zero-variance null-space direction sklearn would keep is dropped
    assert torch.allclose(V @ V.T, torch.eye(V.shape[0], dtype=torch.float64), atol=1e-10)
    ev = ((X - mean) @ V.T).var(0)
    assert float(ev.min()) > 1e-6
    det = GaussianAD(backbone=None, layers=["b"], reduction="npca", progress=False).fit_features(_features(gen, 6))
    assert det.level_dims_["b"] <= 5 and torch.isfinite(det.score_features(_features(gen, 3))[0]).all()


def test_npca_keeps_least_variance_components(gen):
    from fastad.detectors.gaussian import pca_components

    X = torch.randn(200, 5, generator=gen, dtype=torch.float64) * torch.tensor([10.0, 5.0, 2.0, 1.0, 0.1])
    _, V = pca_components(X, "pca", 0.7)   # ratios ~ .77, .19, .03, ...: i = 0 -> keeps 1 component
    assert V.shape == (1, 5) and abs(float(V[0, 0])) > 0.99
    _, V = pca_components(X, "npca", 0.7)  # i = 0 -> max(i - 1, 0) = 0: all 5 (the reference: only the last)
    assert V.shape == (5, 5)
    _, V = pca_components(X, "npca", 0.97)  # i = 2 -> components 1..4
    assert V.shape == (4, 5) and abs(float(V[-1, 4])) > 0.99


@pytest.mark.parametrize("sigma,want", [(1, 21.49), (2, 22.36), (3, 23.15), (4, 23.92)])
def test_chi2_threshold_check_values(sigma, want):
    # SPEC-gaussian.md (a): Rippel's compute_mahalanobis_threshold, k = 448, p = erf(sigma / sqrt 2)
    from math import erf, sqrt

    from fastad.detectors.gaussian import chi2_threshold

    p = erf(sigma / sqrt(2))
    exact = float(np.sqrt(stats.chi2.ppf(p, 448)))
    assert abs(exact - want) <= 0.005  # the spec's values are rounded to 2 decimals
    for rule in ("bonferroni", "comonotone"):  # one level: the rules agree
        assert chi2_threshold([448], 1 - p, rule) == pytest.approx(exact, rel=1e-12)
    assert abs(chi2_threshold([448], 1 - p, "independent") - exact) < 1e-3  # the convolution grid


def test_chi2_rules_on_several_levels():
    from fastad.detectors.gaussian import chi2_threshold

    dims, fpr = [3, 20, 100], 0.01
    como = np.mean([np.sqrt(stats.chi2.ppf(1 - fpr, d)) for d in dims])
    bonf = np.mean([np.sqrt(stats.chi2.ppf(1 - fpr / 3, d)) for d in dims])
    assert chi2_threshold(dims, fpr, "comonotone") == pytest.approx(como, rel=1e-12)
    assert chi2_threshold(dims, fpr, "bonferroni") == pytest.approx(bonf, rel=1e-12)
    # independent levels: the mean of independent chi variables, against a seeded Monte Carlo
    rng = np.random.default_rng(0)
    m = np.mean([np.sqrt(rng.chisquare(d, 2_000_000)) for d in dims], axis=0)
    ind = chi2_threshold(dims, fpr, "independent")
    assert abs(ind - np.quantile(m, 1 - fpr)) < 5e-3
    assert ind < como < bonf  # independence concentrates the mean; Bonferroni is the dependence-free bound


def test_chi2_threshold_controls_fpr_on_gaussian_data(gen):
    # two independent Gaussian levels, N >> d and no shrinkage: the chi-square law holds
    def feats(n):
        return {"a": torch.randn(n, 4, 1, 1, generator=gen) * 3 + 1, "b": torch.randn(n, 6, 1, 1, generator=gen)}

    det = GaussianAD(backbone=None, layers=["a", "b"], shrinkage="none", threshold="chi2", fpr=0.05,
                     chi2_rule="independent", progress=False).fit_features(feats(20000))
    s, _ = det.score_features(feats(20000))
    assert det.threshold_ == det.chi2_threshold()
    assert abs(float((s > det.threshold_).double().mean()) - 0.05) < 0.006
    for rule in ("bonferroni", "comonotone"):  # conservative when the levels are independent
        assert float((s > det.chi2_threshold(rule=rule)).double().mean()) < 0.05
    lv = det.level_scores(feats(20000))  # per level: chi(d_l) quantiles
    for j, k in enumerate(det.layers_):
        assert abs(float((lv[:, j] > det.level_thresholds_[k]).double().mean()) - 0.05) < 0.006


def test_quantile_threshold_is_the_training_quantile(gen):
    train = _features(gen, 50)
    det = GaussianAD(backbone=None, layers=["a", "b"], threshold="quantile", fpr=0.1, progress=False).fit_features(train)
    s, _ = det.score_features(train)
    assert det.threshold_ == pytest.approx(float(torch.quantile(s.double(), 0.9)), rel=1e-6)
    assert GaussianAD(backbone=None, layers=["a", "b"], progress=False).fit_features(train).threshold_ is None


def test_reduction_roundtrip(gen, tmp_path):
    train, test = _features(gen, 40), _features(gen, 5)
    det = GaussianAD(backbone=None, layers=["a", "b"], reduction="npca", variance_threshold=0.9, threshold="chi2",
                     progress=False).fit_features(train)
    back = load(det.save(tmp_path / "g.safetensors"))
    assert back.reduction == "npca" and back.threshold_ == det.threshold_ and back.level_dims_ == det.level_dims_
    assert torch.allclose(back.score_features(test)[0], det.score_features(test)[0], rtol=1e-6)


@pytest.mark.parametrize("kw,match", [
    ({"reduction": "ica"}, "reduction must be one of"),
    ({"reduction": "pca", "variance_threshold": 1.5}, "variance_threshold must be in"),
    ({"threshold": "max"}, "threshold must be one of"),
    ({"fpr": 0.0}, "fpr must be in"),
    ({"chi2_rule": "sum"}, "chi2_rule must be one of"),
])
def test_bad_parameters_named(gen, kw, match):
    with pytest.raises(ValueError, match=match):
        GaussianAD(backbone=None, layers=["a", "b"], progress=False, **kw).fit_features(_features(gen, 10))


def test_nan_at_scoring_named(gen):
    det = GaussianAD(backbone=None, layers=["a", "b"], progress=False).fit_features(_features(gen, 20))
    bad = _features(gen, 3)
    bad["a"][1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="level 'a' hold NaN"):
        det.score_features(bad)
