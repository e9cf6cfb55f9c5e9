"""Lee et al. (NeurIPS 2018): tied-covariance class-conditional Gaussians per layer, against the
reference recipe (scikit-learn's EmpiricalCovariance on class-centred pooled features), with the
input pre-processing (against a plain autograd re-implementation) and the logistic-regression
feature ensemble (against scikit-learn's LogisticRegression on the same per-layer scores)."""
import numpy as np
import pytest
import torch

from fastad.detectors import ClassConditionalMahalanobis, LeeMahalanobis, load

EmpiricalCovariance = pytest.importorskip("sklearn.covariance").EmpiricalCovariance
LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression


def _lee_reference(train: np.ndarray, y: np.ndarray, test: np.ndarray) -> np.ndarray:
    """sample_estimator + get_Mahalanobis_score: max_c -1/2 d_c^2 (returned as min_c d_c)."""
    classes = np.unique(y)
    means = np.stack([train[y == c].mean(0) for c in classes])
    inv = np.searchsorted(classes, y)
    prec = EmpiricalCovariance(assume_centered=False).fit(train - means[inv]).precision_
    d2 = np.stack([np.einsum("ij,jk,ik->i", test - m, prec, test - m) for m in means], 1)
    return np.sqrt(-2 * (-0.5 * d2).max(1))


def _features(gen, B, shift=0.0):
    return {"a": torch.randn(B, 5, 4, 4, generator=gen) + shift, "b": torch.randn(B, 7, 2, 2, generator=gen) * 2 + shift}


def test_embedding_class_lives_in_lee_and_matches_reference(gen):
    from fastad.detectors import lee

    assert ClassConditionalMahalanobis is lee.ClassConditionalMahalanobis
    K, d = 3, 6
    y = torch.randint(0, K, (200,), generator=gen)
    X = torch.randn(K, d, generator=gen)[y] * 3 + torch.randn(200, d, generator=gen)
    Y = torch.randn(30, d, generator=gen) * 3
    got = ClassConditionalMahalanobis().fit(X, y).decision_function(Y)
    want = _lee_reference(X.double().numpy(), y.numpy(), Y.double().numpy())
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4)


def test_layers_match_reference_recipe(gen):
    train, test = _features(gen, 120), _features(gen, 10, shift=0.5)
    y = torch.randint(0, 3, (120,), generator=gen) * 7  # arbitrary label values
    # class structure in the pooled features
    for k in train:
        train[k] = train[k] + y[:, None, None, None].float() / 7
    det = LeeMahalanobis(backbone=None, layers=["a", "b"], progress=False).fit_features(train, y)
    assert det.classes_.tolist() == [0, 7, 14]
    want = np.stack([_lee_reference(train[k].double().mean((2, 3)).numpy(), y.numpy(),
                                    test[k].double().mean((2, 3)).numpy()) for k in ("a", "b")], 1)
    got, maps = det.score_features(test)
    assert maps is None
    np.testing.assert_allclose(got.double().numpy(), want.mean(1), rtol=1e-5)
    # without labels: one class (a single Gaussian with Lee's unshrunk covariance)
    one = LeeMahalanobis(backbone=None, layers=["a", "b"], progress=False).fit_features(train)
    want1 = np.mean([_lee_reference(train[k].double().mean((2, 3)).numpy(), np.zeros(120, int),
                                    test[k].double().mean((2, 3)).numpy()) for k in ("a", "b")], 0)
    np.testing.assert_allclose(one.score_features(test)[0].double().numpy(), want1, rtol=1e-5)


def _manual_preprocessed(det, bb, x, eps):
    """Lee's pre-processing, re-implemented with a plain forward-hook extractor and numpy Gaussians."""
    cols = []
    for k in det.layers_:
        store = {}
        h = bb.model.get_submodule(k).register_forward_hook(lambda m, i, o: store.__setitem__("f", o.clone()))
        xr = x.clone().requires_grad_(True)
        bb.model(xr)
        f = store["f"].mean((2, 3)).double()
        mean, L = det._means[k], det._factors[k]
        d2 = torch.stack([((f - m) @ L).square().sum(1) for m in mean], 1).min(1).values
        g, = torch.autograd.grad(d2.sum(), xr)
        with torch.no_grad():
            bb.model(x - eps * g.sign())
            f = store["f"].mean((2, 3)).double()
            d2 = torch.stack([((f - m) @ L).square().sum(1) for m in mean], 1).min(1).values
        h.remove()
        cols.append(d2.sqrt())
    return torch.stack(cols, 1)


def test_input_preprocessing_and_calibration(tiny_backbone, images):
    train, test = images
    labels = torch.tensor([0, 1] * 6)
    det = LeeMahalanobis(backbone=tiny_backbone, shrinkage="ledoit_wolf", noise_magnitudes=(0.0, 0.001, 0.01),
                         progress=False).fit(train, labels)
    assert det.eps_ == 0.0
    plain = det.decision_function(test)
    for eps in (0.001,):
        got = det.layer_scores(test, eps)
        want = _manual_preprocessed(det, tiny_backbone, test, eps)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got.mean(1), plain)  # the perturbation changes the scores
    # a small step against the gradient lowers each training image's distance (0.01 overshoots here)
    assert bool((det.layer_scores(train, 0.001) < det.layer_scores(train, 0.0)).all())
    y_val = torch.tensor([0] * 6 + [1] * 2)
    det.calibrate(test, y_val)
    aucs = {e: _auc(det.layer_scores(test, e).mean(1), y_val) for e in (0.0, 0.001, 0.01)}
    assert det.calibration_auroc_ == pytest.approx(aucs)
    assert det.eps_ == min(e for e in aucs if aucs[e] == max(aucs.values()))
    with pytest.raises(ValueError, match="needs the images"):
        if det.eps_ == 0:
            det.eps_ = 0.01
        det.score_features({k: torch.zeros(2, c, 4, 4) for k, c in det.layer_dims_.items()})


def _auc(s, y):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y.numpy(), s.double().numpy()))


def test_feature_ensemble_equals_sklearn_logistic_regression(tiny_backbone, images, tmp_path):
    train, test = images
    det = LeeMahalanobis(backbone=tiny_backbone, shrinkage="oas", ensemble=True, progress=False).fit(train)
    assert det.ensemble_coef_ is None  # plain mean until calibrated
    torch.testing.assert_close(det.decision_function(test), det.layer_scores(test).mean(1))
    y_val = torch.tensor([0] * 6 + [1] * 2)
    det.calibrate(test, y_val)
    D = det.layer_scores(test).double().numpy()
    lr = LogisticRegression(max_iter=1000).fit(D, y_val.numpy())
    np.testing.assert_allclose(det.ensemble_coef_.numpy(), lr.coef_[0], rtol=1e-6)
    np.testing.assert_allclose(det.decision_function(test).double().numpy(), lr.decision_function(D), rtol=1e-5, atol=1e-5)
    back = load(det.save(tmp_path / "lee.safetensors"), backbone=tiny_backbone)
    assert isinstance(back, LeeMahalanobis) and back.eps_ == det.eps_
    torch.testing.assert_close(back.decision_function(test), det.decision_function(test))


def test_errors_named(gen, tiny_backbone, images):
    train = _features(gen, 20)
    with pytest.raises(ValueError, match=r"y must be Tensor\[N=20\] of integer labels"):
        LeeMahalanobis(backbone=None, layers=["a", "b"], progress=False).fit_features(train, torch.zeros(19, dtype=torch.long))
    with pytest.raises(ValueError, match="not positive definite with shrinkage='none'"):
        LeeMahalanobis(backbone=None, layers=["a", "b"], progress=False).fit_features(_features(gen, 4))
    with pytest.raises(ValueError, match="noise_magnitudes must be"):
        LeeMahalanobis(backbone=None, layers=["a", "b"], noise_magnitudes=(-0.1,), progress=False).fit_features(train)
    with pytest.raises(ValueError, match="shrinkage must be"):
        LeeMahalanobis(backbone=None, layers=["a", "b"], shrinkage="lw", progress=False).fit_features(train)
    bad = _features(gen, 20)
    bad["a"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        LeeMahalanobis(backbone=None, layers=["a", "b"], progress=False).fit_features(bad)
    det = LeeMahalanobis(backbone=tiny_backbone, shrinkage="ledoit_wolf", progress=False).fit(images[0])
    with pytest.raises(ValueError, match="both 0 .normal. and 1"):
        det.calibrate(images[1], torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="y_val must be Tensor"):
        det.calibrate(images[1], torch.full((8,), 2))
