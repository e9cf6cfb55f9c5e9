"""KNN and LOF on embeddings against scikit-learn (NearestNeighbors, LocalOutlierFactor(novelty=True))
and PyOD's rules (kth distance, leave-one-out training scores, percentile threshold)."""
import numpy as np
import pytest
import torch

from fastad.detectors import KNN, LOF

sk_neighbors = pytest.importorskip("sklearn.neighbors")


def _data(gen, n=300, m=60, d=16):
    X = torch.randn(n, d, generator=gen) + 2.0
    Y = torch.cat([torch.randn(m - 5, d, generator=gen) + 2.0, torch.randn(5, d, generator=gen) * 4])
    return X, Y


@pytest.mark.parametrize("method", ["largest", "mean", "median"])
@pytest.mark.parametrize("k", [3, 4])
def test_knn_matches_sklearn_and_pyod_rules(device, method, k, gen):
    X, Y = _data(gen)
    det = KNN(n_neighbors=k, method=method, contamination=0.1).fit(X.to(device))
    got = det.decision_function(Y.to(device))
    assert got.device.type == device.type and got.shape == (60,)
    nn = sk_neighbors.NearestNeighbors(n_neighbors=k).fit(X.double().numpy())
    dt, _ = nn.kneighbors()  # training points: themselves left out, as PyOD
    dq, _ = nn.kneighbors(Y.double().numpy())
    red = {"largest": lambda d: d[:, -1], "mean": lambda d: d.mean(1), "median": lambda d: np.median(d, 1)}[method]
    np.testing.assert_allclose(det.decision_scores_.cpu().numpy(), red(dt), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.cpu().numpy(), red(dq), rtol=1e-5, atol=1e-5)
    thr = np.percentile(red(dt), 90)
    assert abs(det.threshold_ - thr) <= 1e-5 * max(1.0, thr)
    assert torch.equal(det.labels_.cpu(), torch.from_numpy((red(dt) > det.threshold_).astype(np.int64)))
    assert torch.equal(det.predict(Y.to(device)).cpu(), (got > det.threshold_).long().cpu())
    assert int(det.predict(Y.to(device))[-5:].sum()) == 5  # the far points


def test_knn_cosine_matches_sklearn(device, gen):
    X, Y = _data(gen)
    det = KNN(n_neighbors=5, metric="cosine").fit(X.to(device))
    nn = sk_neighbors.NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(X.double().numpy())
    dq, _ = nn.kneighbors(Y.double().numpy())
    np.testing.assert_allclose(det.decision_function(Y.to(device)).cpu().numpy(), dq[:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [5, 20])
def test_lof_matches_sklearn_novelty(device, k, gen):
    X, Y = _data(gen)
    det = LOF(n_neighbors=k).fit(X.to(device))
    sk = sk_neighbors.LocalOutlierFactor(n_neighbors=k, novelty=True).fit(X.double().numpy())
    np.testing.assert_allclose(det.decision_scores_.cpu().numpy(), -sk.negative_outlier_factor_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(det.decision_function(Y.to(device)).cpu().numpy(), -sk.score_samples(Y.double().numpy()),
                               rtol=1e-4, atol=1e-5)
    assert int(det.predict(Y.to(device))[-5:].sum()) == 5


def test_duplicates_and_low_precision(gen):
    X, Y = _data(gen, n=100)
    Xd = torch.cat([X, X[:10]])  # exact duplicates: each one's own copy is a neighbour at distance 0
    det = LOF(n_neighbors=3).fit(Xd)
    sk = sk_neighbors.LocalOutlierFactor(n_neighbors=3, novelty=True).fit(Xd.double().numpy())
    np.testing.assert_allclose(det.decision_function(Y).numpy(), -sk.score_samples(Y.double().numpy()), rtol=1e-3, atol=1e-4)
    k16 = KNN(n_neighbors=3).fit(X.half())
    k32 = KNN(n_neighbors=3).fit(X.half().float())
    torch.testing.assert_close(k16.decision_function(Y.half()), k32.decision_function(Y.half().float()), rtol=1e-3, atol=1e-3)


def test_errors(gen):
    X, Y = _data(gen, n=10)
    with pytest.raises(ValueError, match=r"n_neighbors=10 but only 9 other training embeddings"):
        KNN(n_neighbors=10).fit(X)
    with pytest.raises(ValueError, match=r"X must be 2-D \[N, D\], got shape \[10\]"):
        KNN().fit(X[:, 0])
    bad = X.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        LOF(n_neighbors=3).fit(bad)
    with pytest.raises(ValueError, match="method must be one of"):
        KNN(method="max").fit(X)
    with pytest.raises(ValueError, match="metric must be 'l2' or 'cosine'"):
        LOF(n_neighbors=3, metric="l1").fit(X)
    with pytest.raises(ValueError, match=r"contamination must be in \(0, 0.5\]"):
        KNN(contamination=0.7).fit(X)
    with pytest.raises(ValueError, match="at least 2 training embeddings"):
        KNN(n_neighbors=1).fit(X[:1])
    with pytest.raises(RuntimeError, match="not fitted yet"):
        LOF().decision_function(Y)
    det = KNN(n_neighbors=3).fit(X)
    with pytest.raises(ValueError, match="X has 8 features, the model 16"):
        det.decision_function(Y[:, :8])
    assert det.get_params() == {"n_neighbors": 3, "method": "largest", "metric": "l2", "contamination": 0.1}
    assert repr(det.set_params(n_neighbors=4)).startswith("KNN(n_neighbors=4")
    with pytest.raises(ValueError, match="unknown parameter"):
        det.set_params(k=3)


@pytest.mark.parametrize("cls", [KNN, LOF])
def test_save_load_roundtrip_and_bad_files(cls, tmp_path, gen):
    from fastad.detectors import ModelFileError, load

    X, Y = _data(gen, n=80)
    det = cls(n_neighbors=4, metric="cosine", contamination=0.2).fit(X)
    path = det.save(tmp_path / "e.safetensors")
    back = load(path)
    assert type(back) is cls and back.get_params() == det.get_params() and back.threshold_ == det.threshold_
    assert torch.equal(back.decision_function(Y), det.decision_function(Y))
    assert torch.equal(back.labels_, det.labels_)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    (tmp_path / "c.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"c\.safetensors.*checksum"):
        load(tmp_path / "c.safetensors")
    (tmp_path / "t.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match=r"t\.safetensors"):
        load(tmp_path / "t.safetensors")
    with pytest.raises(RuntimeError, match="not fitted yet"):
        cls().save(tmp_path / "x.safetensors")


@pytest.mark.parametrize("shrinkage", ["ledoit_wolf", "oas", "none", 0.5])
def test_mahalanobis_matches_sklearn(device, shrinkage, gen):
    from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf

    from fastad.detectors import Mahalanobis

    X = torch.randn(200, 24, generator=gen) @ torch.randn(24, 24, generator=gen) + 3.0
    Y = torch.randn(30, 24, generator=gen) * 2 + 3.0
    det = Mahalanobis(shrinkage=shrinkage).fit(X.to(device))
    Xn = X.double().numpy()
    if shrinkage == 0.5:
        cov = np.cov(Xn, rowvar=False, ddof=0) + 0.5 * np.eye(24)
        mu = Xn.mean(0)
        prec = np.linalg.inv(cov)
        want = np.einsum("ij,jk,ik->i", Y.double().numpy() - mu, prec, Y.double().numpy() - mu)
        np.testing.assert_allclose(det.covariance_.cpu().numpy(), cov, rtol=1e-10, atol=1e-10)
    else:
        est = {"ledoit_wolf": LedoitWolf(), "oas": OAS(), "none": EmpiricalCovariance()}[shrinkage].fit(Xn)
        assert abs(det.shrinkage_ - getattr(est, "shrinkage_", 0.0)) <= 1e-12
        np.testing.assert_allclose(det.covariance_.cpu().numpy(), est.covariance_, rtol=1e-10, atol=1e-10)
        want = est.mahalanobis(Y.double().numpy())  # squared distances
    got = det.decision_function(Y.to(device))
    assert got.device.type == device.type
    np.testing.assert_allclose(got.cpu().double().numpy() ** 2, want, rtol=1e-5)
    thr = np.percentile(det.decision_scores_.cpu().numpy(), 90)
    assert abs(det.threshold_ - thr) <= 1e-6 * max(1.0, thr)


def test_mahalanobis_few_samples_save_load_and_errors(tmp_path, gen):
    from fastad.detectors import Mahalanobis, load

    X = torch.randn(20, 64, generator=gen)  # n < p: only a shrunk covariance is positive definite
    Y = torch.randn(5, 64, generator=gen)
    det = Mahalanobis().fit(X)
    assert 0 < det.shrinkage_ <= 1
    back = load(det.save(tmp_path / "m.safetensors"))
    assert isinstance(back, Mahalanobis) and torch.equal(back.decision_function(Y), det.decision_function(Y))
    with pytest.raises(ValueError, match=r"not positive definite with shrinkage='none'"):
        Mahalanobis(shrinkage="none").fit(X)
    with pytest.raises(ValueError, match="shrinkage must be 'ledoit_wolf', 'oas', 'none' or a float >= 0"):
        Mahalanobis(shrinkage="lw").fit(X)
    with pytest.raises(ValueError, match="at least 2 training embeddings"):
        Mahalanobis().fit(X[:1])
    with pytest.raises(ValueError, match="X has 8 features, the model 64"):
        det.decision_function(Y[:, :8])


def test_class_conditional_mahalanobis_matches_lee_reference(device, gen, tmp_path):
    from sklearn.covariance import EmpiricalCovariance

    from fastad.detectors import ClassConditionalMahalanobis, load

    K, d = 4, 12
    centres = torch.randn(K, d, generator=gen) * 4
    y = torch.randint(0, K, (300,), generator=gen)
    X = centres[y] + torch.randn(300, d, generator=gen) @ torch.randn(d, d, generator=gen) * 0.5
    Y = torch.cat([centres[torch.randint(0, K, (20,), generator=gen)] + torch.randn(20, d, generator=gen) * 0.3,
                   torch.randn(5, d, generator=gen) * 8])
    det = ClassConditionalMahalanobis().fit(X.to(device), (y * 10 + 3).to(device))  # arbitrary label values
    # Lee's sample_estimator: class means; EmpiricalCovariance on the class-centred features
    Xn, yn = X.double().numpy(), y.numpy()
    means = np.stack([Xn[yn == c].mean(0) for c in range(K)])
    prec = EmpiricalCovariance(assume_centered=False).fit(Xn - means[yn]).precision_
    Yn = Y.double().numpy()
    d2 = np.stack([np.einsum("ij,jk,ik->i", Yn - m, prec, Yn - m) for m in means], 1)  # [N, K]
    lee = (-0.5 * d2).max(1)  # Lee's score M(x)
    got = det.decision_function(Y.to(device))
    np.testing.assert_allclose(got.cpu().double().numpy(), np.sqrt(-2 * lee), rtol=1e-4, atol=1e-5)
    assert torch.equal(det.predict_class(Y.to(device)).cpu(), torch.from_numpy(d2.argmin(1) * 10 + 3))
    assert int(det.predict(Y.to(device))[-5:].sum()) == 5
    back = load(det.save(tmp_path / "ccm.safetensors"))
    assert isinstance(back, ClassConditionalMahalanobis)
    torch.testing.assert_close(back.decision_function(Y), got.cpu())
    with pytest.raises(ValueError, match="needs class labels y"):
        ClassConditionalMahalanobis().fit(X)
    with pytest.raises(ValueError, match=r"y must be Tensor\[N=300\] of integer labels"):
        ClassConditionalMahalanobis().fit(X, y.float())
