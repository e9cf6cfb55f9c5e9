"""fastad.integrations.pyod's image detectors (PatchCore, PaDiM, SPADE on precomputed patch embeddings)
against the real PyOD: PyOD's test_knn.py-style checks, leave-one-out training scores against brute-force
float64 oracles, and PyOD's combination tools over their standardized scores."""
import numpy as np
import pytest
import torch

pytest.importorskip("pyod", reason="PyOD is not installed (pip install 'fastad[pyod]')")

from numpy.testing import assert_allclose, assert_array_less, assert_equal  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from fastad import detectors, ops  # noqa: E402
from fastad.integrations import pyod as fpyod  # noqa: E402

CONTAMINATION = 0.1
H, W, D = 4, 5, 6


def make_grids(rng, n, n_bad=0):
    """Patch embeddings ``[n, H, W, D]``: a position-dependent pattern plus noise; the last ``n_bad``
    images carry one shifted patch each (labels 1)."""
    pattern = np.random.default_rng(99).normal(size=(H, W, D))
    X = pattern + 0.3 * rng.normal(size=(n, H, W, D))
    for j in range(n - n_bad, n):
        y, x = rng.integers(0, H), rng.integers(0, W)
        X[j, y, x] += rng.choice([-1.0, 1.0], size=D) * 1.5
    return X, np.r_[np.zeros(n - n_bad, int), np.ones(n_bad, int)]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X_train, _ = make_grids(rng, 40)
    X_test, y_test = make_grids(rng, 40, n_bad=12)
    return X_train, X_test, y_test


def _make(name, **kw):
    shape = (H, W, D)
    return {
        "patchcore": lambda: fpyod.PatchCore(contamination=CONTAMINATION, feature_shape=shape, coreset_ratio=1.0, **kw),
        "patchcore_coreset": lambda: fpyod.PatchCore(contamination=CONTAMINATION, feature_shape=shape, coreset_ratio=0.25,
                                                     num_neighbors=3, **kw),
        "padim": lambda: fpyod.PaDiM(contamination=CONTAMINATION, feature_shape=shape, **kw),
        "spade": lambda: fpyod.SPADE(contamination=CONTAMINATION, feature_shape=shape, k_images=5, **kw),
    }[name]()


NAMES = ["patchcore", "patchcore_coreset", "padim", "spade"]


def flat(X):
    return X.reshape(X.shape[0], -1)


@pytest.fixture(scope="module", params=NAMES)
def fitted(request, data):
    return request.param, _make(request.param).fit(flat(data[0]))


# ---- PyOD's test_knn.py checks -----------------------------------------------------------------------
def test_is_a_pyod_detector_with_its_attributes(fitted):
    from pyod.models.base import BaseDetector

    clf = fitted[1]
    assert isinstance(clf, BaseDetector)
    for attr in ("decision_scores_", "labels_", "threshold_", "_mu", "_sigma", "detector_"):
        assert getattr(clf, attr, None) is not None, attr


def test_train_scores_and_threshold(fitted, data):
    clf = fitted[1]
    n = data[0].shape[0]
    assert clf.decision_scores_.shape == (n,) and clf.decision_scores_.dtype == np.float64
    assert clf.threshold_ == pytest.approx(np.percentile(clf.decision_scores_, 100 * (1 - CONTAMINATION)))
    assert_equal(clf.labels_, (clf.decision_scores_ > clf.threshold_).astype(int))
    assert clf.labels_.sum() == pytest.approx(CONTAMINATION * n, abs=2)


def test_prediction_scores_labels_proba_confidence(fitted, data):
    clf = fitted[1]
    X_test, y_test = flat(data[1]), data[2]
    s = clf.decision_function(X_test)
    assert s.shape == (X_test.shape[0],) and s.dtype == np.float64
    # SPADE scores the image's average-pooled embedding: one defective patch of 20 is diluted
    assert roc_auc_score(y_test, s) >= (0.75 if fitted[0] == "spade" else 0.9), fitted[0]
    assert_equal(clf.predict(X_test), (s > clf.threshold_).astype(int))
    for method in ("linear", "unify"):
        p = clf.predict_proba(X_test, method=method)
        assert p.shape == (len(y_test), 2) and p.min() >= 0 and p.max() <= 1
        assert_allclose(p.sum(1), 1.0)
    labels, conf = clf.predict(X_test, return_confidence=True)
    assert conf.shape == y_test.shape and conf.min() >= 0 and conf.max() <= 1
    assert_allclose(conf, clf.predict_confidence(X_test))
    ranks = clf._predict_rank(X_test, normalized=True)  # the test scores' rank among the training scores
    assert (np.diff(ranks[np.argsort(s, kind="stable")]) >= 0).all()
    assert_array_less(ranks, 1.01)
    assert_array_less(-0.01, ranks)


def test_clone_and_fit_predict(fitted, data):
    c = clone(fitted[1])
    assert c.get_params() == fitted[1].get_params() and not hasattr(c, "decision_scores_")
    with pytest.warns(FutureWarning):  # PyOD marks fit_predict deprecated
        labels = c.fit_predict(flat(data[0]))
    assert_equal(labels, fitted[1].labels_)
    assert_equal(c.decision_scores_, fitted[1].decision_scores_)


def test_four_d_and_tensor_inputs_give_the_same_scores(fitted, data):
    name, clf = fitted
    X_test = data[1]
    ref = clf.decision_function(flat(X_test))
    assert_equal(clf.decision_function(X_test), ref)  # [n, h, w, d]: the fitted grid
    assert_equal(clf.decision_function(torch.from_numpy(X_test.astype(np.float32))), ref)
    bf16 = torch.from_numpy(X_test).bfloat16()
    assert_equal(clf.decision_function(bf16), clf.decision_function(bf16.float().numpy()))
    other = _make(name).set_params(feature_shape=None).fit(data[0][:, :2])  # a refit may change the grid
    assert other.feature_shape_ == (2, W, D)
    other.fit(data[0])  # 4-D, no feature_shape
    assert_equal(other.decision_scores_, clf.decision_scores_)
    assert_equal(other.decision_function(flat(X_test)), ref)  # 2-D after a 4-D fit: the fitted shape


# ---- the numbers: brute-force float64 oracles --------------------------------------------------------
def _patchcore_oracle(E, bank, k):
    """anomalib's image score (float64 cdist): the max patch's nearest-row distance, re-weighted by one
    minus the softmax weight of that row among its ``k`` nearest bank rows."""
    out = []
    for e in E:
        rows = e.reshape(-1, e.shape[-1])
        d = torch.cdist(rows, bank)
        s, nn = d.min(1)
        p = int(s.argmax())
        if k == 1:
            out.append(float(s[p]))
            continue
        k_eff = min(k, bank.shape[0])
        sup = torch.cdist(bank[nn[p]][None], bank)[0].topk(k_eff, largest=False).indices
        dist = (bank[sup] - rows[p]).norm(dim=1)
        out.append(float((1 - torch.softmax(dist, 0)[0]) * s[p]))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3])
def test_patchcore_leave_one_image_out_equals_brute_force(data, k):
    X_train, X_test = data[0], data[1]
    E = torch.from_numpy(X_train).double()
    n = E.shape[0]
    clf = fpyod.PatchCore(coreset_ratio=1.0, num_neighbors=k).fit(X_train)
    rows = E.reshape(n, -1, D)
    loo = [_patchcore_oracle(E[i : i + 1], torch.cat([rows[:i], rows[i + 1 :]]).reshape(-1, D), k)[0] for i in range(n)]
    assert_allclose(clf.decision_scores_, loo, rtol=1e-4, atol=1e-5)
    want = _patchcore_oracle(torch.from_numpy(X_test).double(), rows.reshape(-1, D), k)
    assert_allclose(clf.decision_function(X_test), want, rtol=1e-4, atol=1e-5)
    # every training image scores higher left out than in the bank (where its own patches are at 0)
    assert (clf.decision_scores_ > 0).all()
    assert_allclose(clf.detector_.score_embeddings(torch.from_numpy(X_train).float())[0].numpy(), 0, atol=1e-3)


def test_patchcore_coreset_bank_and_leave_one_out(data):
    X_train = data[0]
    clf = fpyod.PatchCore(coreset_ratio=0.25, num_neighbors=3, random_state=5).fit(X_train)
    E = torch.from_numpy(X_train).float()
    rows = E.reshape(-1, D)
    N = rows.shape[0]
    start = int(torch.randint(N, (1,), generator=torch.Generator().manual_seed(5)))
    idx, _ = ops.coreset(rows, int(N * 0.25), projection_dim="auto", seed=5, start=start)
    assert torch.equal(clf.detector_.memory_bank_, rows[idx])  # PatchCore's seeded coreset
    bank, owner = rows[idx].double(), idx // (H * W)
    loo = [_patchcore_oracle(E[i : i + 1].double(), bank[owner != i], 3)[0] for i in range(len(E))]
    assert_allclose(clf.decision_scores_, loo, rtol=1e-4, atol=1e-5)
    ref = detectors.PatchCore.from_bank(rows[idx], num_neighbors=3).score_embeddings(torch.from_numpy(data[1]).float())[0]
    assert_allclose(clf.decision_function(data[1]), ref.double().numpy(), rtol=1e-6)


def test_padim_equals_per_position_gaussians(data):
    X_train, X_test = data[0], data[1]
    clf = fpyod.PaDiM(blur_sigma=None, eps=0.01).fit(X_train)
    E = torch.from_numpy(X_train).double().reshape(len(X_train), H * W, D)
    mu = E.mean(0)
    Xc = E - mu
    cov = torch.einsum("npi,npj->pij", Xc, Xc) / (len(E) - 1) + (0.01 + 1e-5) * torch.eye(D, dtype=torch.float64)
    prec = torch.linalg.inv(cov)

    def oracle(X):
        Q = torch.from_numpy(X).double().reshape(len(X), H * W, D) - mu
        return torch.einsum("npi,pij,npj->np", Q, prec, Q).clamp_min(0).sqrt().amax(1).numpy()

    assert_allclose(clf.decision_scores_, oracle(X_train), rtol=1e-4)  # in-sample
    assert_allclose(clf.decision_function(X_test), oracle(X_test), rtol=1e-4)
    # with the blur: fastad's PaDiM on the same features, image_size the grid's
    blurred = fpyod.PaDiM(image_size=(8, 10)).fit(X_train)
    det = detectors.PaDiM(backbone=None, progress=False).fit_features(
        {"e": torch.from_numpy(X_train).float().permute(0, 3, 1, 2)}, image_size=(8, 10))
    ref = det.score_features({"e": torch.from_numpy(X_test).float().permute(0, 3, 1, 2)})[0]
    assert_allclose(blurred.decision_function(X_test), ref.double().numpy(), rtol=1e-5)


def test_spade_leave_one_out_equals_brute_force_and_fastad_spade(data):
    X_train, X_test = data[0], data[1]
    clf = fpyod.SPADE(k_images=5).fit(X_train)
    g = torch.from_numpy(X_train).double().mean(dim=(1, 2))
    d = torch.cdist(g, g)
    d.fill_diagonal_(float("inf"))
    assert_allclose(clf.decision_scores_, d.topk(5, largest=False).values.mean(1).numpy(), rtol=1e-5)
    det = detectors.SPADE(backbone=None, k_images=5, progress=False).fit_features(
        {"e": torch.from_numpy(X_train).float().permute(0, 3, 1, 2)}, image_size=(H, W))
    ref = det.score_features({"e": torch.from_numpy(X_test).float().permute(0, 3, 1, 2)})[0]
    assert_allclose(clf.decision_function(X_test), ref.double().numpy(), rtol=1e-5)


# ---- PyOD's combination tools ------------------------------------------------------------------------
def test_score_combination(data):
    from pyod.models.combination import average, majority_vote, maximization
    from pyod.utils.utility import standardizer

    X_train, X_test, y_test = flat(data[0]), flat(data[1]), data[2]
    dets = [_make(name) for name in NAMES]
    train = np.stack([d.fit(X_train).decision_scores_ for d in dets], 1)
    test = np.stack([d.decision_function(X_test) for d in dets], 1)
    train_n, test_n = standardizer(train, test)
    assert_allclose(train_n.mean(0), 0, atol=1e-9)
    for combine in (average, maximization):
        assert roc_auc_score(y_test, combine(test_n)) >= 0.9
    assert_allclose(average(test_n), test_n.mean(1))
    votes = majority_vote(np.stack([d.predict(X_test) for d in dets], 1))
    assert votes.shape == y_test.shape and set(np.unique(votes)) <= {0, 1}


# ---- errors ------------------------------------------------------------------------------------------
def test_errors(data):
    X = data[0]
    with pytest.raises(ValueError, match=r"pass feature_shape=\(h, w, d\)"):
        fpyod.PatchCore().fit(flat(X))
    with pytest.raises(ValueError, match="needs h \\* w \\* d = 120"):
        fpyod.SPADE(feature_shape=(H, W, D)).fit(flat(X)[:, :-1])
    with pytest.raises(ValueError, match="feature_shape must be None or \\(h, w, d\\)"):
        fpyod.PaDiM(feature_shape=(H, W)).fit(flat(X))
    with pytest.raises(ValueError, match="but feature_shape is"):
        fpyod.PaDiM(feature_shape=(W, H, D)).fit(X)
    with pytest.raises(ValueError, match="got shape"):
        fpyod.SPADE().fit(X[:, 0])
    with pytest.raises(ValueError, match="coreset_ratio must be in"):
        fpyod.PatchCore(coreset_ratio=0).fit(X)
    with pytest.raises(ValueError, match="at least 2 training images"):
        fpyod.PatchCore().fit(X[:1])
    with pytest.raises(ValueError, match="at least 2 training images"):
        fpyod.SPADE().fit(X[:1])
    with pytest.raises(ValueError, match="k_images"):
        fpyod.SPADE(k_images=0).fit(X)
    # a one-row coreset comes from one image: that image has no bank left
    with pytest.raises(ValueError, match="raise coreset_ratio"):
        fpyod.PatchCore(coreset_ratio=1e-9, num_neighbors=1).fit(X)
    bad = X.copy()
    bad[3, 1, 1, 1] = np.nan
    with pytest.raises(ValueError):
        fpyod.PatchCore().fit(bad)
    clf = fpyod.SPADE().fit(X)
    with pytest.raises(ValueError, match="fitted on"):
        clf.decision_function(X[:, :, :-1])
    with pytest.raises(ValueError, match="needs h \\* w \\* d"):
        clf.decision_function(flat(X)[:, :-1])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        fpyod.PaDiM().decision_function(X)
