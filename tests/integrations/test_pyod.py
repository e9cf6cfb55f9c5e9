"""fastad.integrations.pyod against the real PyOD: PyOD's own test_knn.py-style checks on every
wrapper, score equality with PyOD's KNN / LOF (and scikit-learn's covariance estimators for
Mahalanobis), and PyOD's combination tools."""
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("pyod", reason="PyOD is not installed (pip install 'fastad[pyod]')")

from numpy.testing import assert_allclose, assert_array_less, assert_equal  # noqa: E402
from pyod.utils.data import generate_data  # noqa: E402
from scipy.stats import rankdata  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from fastad.integrations import pyod as fpyod  # noqa: E402

CONTAMINATION = 0.1


@pytest.fixture(scope="module")
def data():
    return generate_data(n_train=200, n_test=100, contamination=CONTAMINATION, random_state=42)


def _make(name, **kw):
    return {
        "knn": lambda: fpyod.KNN(contamination=CONTAMINATION, **kw),
        "knn_mean": lambda: fpyod.KNN(contamination=CONTAMINATION, method="mean", **kw),
        "knn_median": lambda: fpyod.KNN(contamination=CONTAMINATION, method="median", **kw),
        "lof": lambda: fpyod.LOF(contamination=CONTAMINATION, **kw),
        "mahalanobis": lambda: fpyod.Mahalanobis(contamination=CONTAMINATION, **kw),
    }[name]()


NAMES = ["knn", "knn_mean", "knn_median", "lof", "mahalanobis"]


@pytest.fixture(scope="module", params=NAMES)
def fitted(request, data):
    X_train = data[0]
    return request.param, _make(request.param).fit(X_train)


# ---- PyOD's test_knn.py checks, on every wrapper ----------------------------------------------------
def test_is_a_pyod_detector(fitted):
    from pyod.models.base import BaseDetector

    assert isinstance(fitted[1], BaseDetector)


def test_parameters(fitted):
    clf = fitted[1]
    for attr in ("decision_scores_", "labels_", "threshold_", "_mu", "_sigma"):
        assert getattr(clf, attr, None) is not None, attr


def test_train_scores_and_threshold(fitted, data):
    clf = fitted[1]
    X_train = data[0]
    assert clf.decision_scores_.shape == (X_train.shape[0],)
    assert clf.decision_scores_.dtype == np.float64
    # PyOD's rule: threshold_ is the (1 - contamination) percentile, labels_ = scores > threshold_
    assert clf.threshold_ == pytest.approx(np.percentile(clf.decision_scores_, 100 * (1 - CONTAMINATION)))
    assert_equal(clf.labels_, (clf.decision_scores_ > clf.threshold_).astype(int))
    assert clf.labels_.sum() == pytest.approx(CONTAMINATION * X_train.shape[0], abs=2)


def test_prediction_scores(fitted, data):
    clf = fitted[1]
    X_test, y_test = data[1], data[3]
    s = clf.decision_function(X_test)
    assert s.shape == (X_test.shape[0],)
    assert roc_auc_score(y_test, s) >= 0.8


def test_prediction_labels(fitted, data):
    clf = fitted[1]
    X_test, y_test = data[1], data[3]
    labels = clf.predict(X_test)
    assert labels.shape == y_test.shape
    assert_equal(labels, (clf.decision_function(X_test) > clf.threshold_).astype(int))


@pytest.mark.parametrize("method", ["linear", "unify"])
def test_prediction_proba(fitted, data, method):
    p = fitted[1].predict_proba(data[1], method=method)
    assert p.shape == (data[1].shape[0], 2)
    assert p.min() >= 0 and p.max() <= 1
    assert_allclose(p.sum(1), 1.0)


def test_prediction_proba_parameter(fitted, data):
    with pytest.raises(ValueError):
        fitted[1].predict_proba(data[1], method="something")


def test_prediction_labels_confidence(fitted, data):
    labels, conf = fitted[1].predict(data[1], return_confidence=True)
    assert labels.shape == data[3].shape and conf.shape == data[3].shape
    assert conf.min() >= 0 and conf.max() <= 1
    assert_allclose(conf, fitted[1].predict_confidence(data[1]))


def test_prediction_proba_linear_confidence(fitted, data):
    p, conf = fitted[1].predict_proba(data[1], method="linear", return_confidence=True)
    assert p.min() >= 0 and p.max() <= 1
    assert conf.shape == data[3].shape and conf.min() >= 0 and conf.max() <= 1


def test_fit_predict(data):
    for name in NAMES:
        clf = _make(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # PyOD marks fit_predict deprecated
            labels = clf.fit_predict(data[0])
        assert labels.shape == data[2].shape
        assert_equal(labels, clf.labels_)


def test_fit_predict_score(data):
    clf = _make("knn")
    clf.fit_predict_score(data[1], data[3])
    clf.fit_predict_score(data[1], data[3], scoring="prc_n_score")
    with pytest.raises(NotImplementedError):
        clf.fit_predict_score(data[1], data[3], scoring="something")


@pytest.mark.parametrize("normalized", [False, True])
def test_predict_rank(fitted, data, normalized):
    clf = fitted[1]
    s = clf.decision_function(data[1])
    ranks = clf._predict_rank(data[1], normalized=normalized)
    assert_allclose(rankdata(ranks), rankdata(s), atol=3)
    assert_array_less(ranks, 1.01 if normalized else data[0].shape[0] + 1)
    assert_array_less(-0.1, ranks)


def test_model_clone(fitted):
    c = clone(fitted[1])
    assert c.get_params() == fitted[1].get_params()
    assert not hasattr(c, "decision_scores_")


def test_get_set_params_and_repr():
    clf = fpyod.KNN(n_neighbors=3)
    assert clf.get_params()["n_neighbors"] == 3
    assert clf.set_params(n_neighbors=7, method="mean") is clf and clf.n_neighbors == 7
    assert "n_neighbors=7" in repr(clf)
    with pytest.raises(ValueError, match="Invalid parameter"):
        clf.set_params(k=1)


# ---- the same numbers as PyOD ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["largest", "mean", "median"])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_knn_equals_pyod(data, method, k):
    from pyod.models.knn import KNN as PyODKNN

    X_train, X_test = data[0], data[1]
    ref = PyODKNN(n_neighbors=k, method=method, contamination=CONTAMINATION).fit(X_train)
    ours = fpyod.KNN(n_neighbors=k, method=method, contamination=CONTAMINATION).fit(X_train)
    assert_allclose(ours.decision_scores_, ref.decision_scores_, rtol=1e-5, atol=1e-6)  # leave-one-out
    assert_allclose(ours.decision_function(X_test), ref.decision_function(X_test), rtol=1e-5, atol=1e-6)
    assert ours.threshold_ == pytest.approx(ref.threshold_, rel=1e-5)
    assert_equal(ours.labels_, ref.labels_)
    assert_equal(ours.predict(X_test), ref.predict(X_test))


@pytest.mark.parametrize("k", [2, 10, 20])
def test_lof_equals_pyod(data, k):
    from pyod.models.lof import LOF as PyODLOF

    X_train, X_test = data[0], data[1]
    ref = PyODLOF(n_neighbors=k, contamination=CONTAMINATION).fit(X_train)
    ours = fpyod.LOF(n_neighbors=k, contamination=CONTAMINATION).fit(X_train)
    assert_allclose(ours.decision_scores_, ref.decision_scores_, rtol=1e-5)
    assert_allclose(ours.decision_function(X_test), ref.decision_function(X_test), rtol=1e-5)
    assert_equal(ours.labels_, ref.labels_)


def test_knn_cosine_equals_pyod(data):
    from pyod.models.knn import KNN as PyODKNN

    X_train, X_test = data[0], data[1]
    ref = PyODKNN(n_neighbors=5, metric="cosine", algorithm="brute").fit(X_train)
    ours = fpyod.KNN(n_neighbors=5, metric="cosine").fit(X_train)
    assert_allclose(ours.decision_scores_, ref.decision_scores_, rtol=1e-4, atol=1e-6)
    assert_allclose(ours.decision_function(X_test), ref.decision_function(X_test), rtol=1e-4, atol=1e-6)


def test_knn_ties_equal_pyod():
    """Duplicated points and a lattice (many equal distances): the k-th distance is unambiguous
    even when the neighbour order is not."""
    from pyod.models.knn import KNN as PyODKNN

    g = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0)), -1).reshape(-1, 2)
    X = np.concatenate([g, g[:10], [[40.0, 40.0]]])
    for k in (1, 4, 8):
        ref = PyODKNN(n_neighbors=k).fit(X)
        ours = fpyod.KNN(n_neighbors=k).fit(X)
        assert_allclose(ours.decision_scores_, ref.decision_scores_, rtol=1e-6, atol=1e-6)
        assert_allclose(ours.decision_function(g + 0.5), ref.decision_function(g + 0.5), rtol=1e-6)


@pytest.mark.parametrize("shrinkage", ["ledoit_wolf", "oas", "none"])
def test_mahalanobis_equals_sklearn(data, shrinkage):
    from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf

    X_train, X_test = data[0].astype(np.float32).astype(np.float64), data[1]
    est = {"ledoit_wolf": LedoitWolf, "oas": OAS, "none": EmpiricalCovariance}[shrinkage]().fit(X_train)
    ours = fpyod.Mahalanobis(shrinkage=shrinkage).fit(X_train)
    assert_allclose(ours.decision_scores_, np.sqrt(est.mahalanobis(X_train)), rtol=1e-5)
    X_test32 = X_test.astype(np.float32).astype(np.float64)
    assert_allclose(ours.decision_function(X_test), np.sqrt(est.mahalanobis(X_test32)), rtol=1e-5)


# ---- PyOD's combination tools ------------------------------------------------------------------------
def test_score_combination(data):
    from pyod.models.combination import aom, average, maximization, median, moa
    from pyod.utils.utility import standardizer

    X_train, X_test, y_test = data[0], data[1], data[3]
    dets = [fpyod.KNN(n_neighbors=k) for k in (5, 10, 20)] + [fpyod.LOF(n_neighbors=20), fpyod.Mahalanobis()]
    train = np.stack([d.fit(X_train).decision_scores_ for d in dets], 1)
    test = np.stack([d.decision_function(X_test) for d in dets], 1)
    train_n, test_n = standardizer(train, test)
    for combine in (average, maximization, median):
        assert roc_auc_score(y_test, combine(test_n)) >= 0.8
    for combine in (aom, moa):
        assert roc_auc_score(y_test, combine(test_n, n_buckets=5)) >= 0.8


def test_lscp_and_feature_bagging(data):
    from pyod.models.feature_bagging import FeatureBagging
    from pyod.models.lscp import LSCP

    X_train, X_test, y_test = data[0], data[1], data[3]
    lscp = LSCP([fpyod.KNN(n_neighbors=5), fpyod.LOF(n_neighbors=15), fpyod.Mahalanobis()], random_state=0)
    lscp.fit(X_train)
    assert lscp.decision_scores_.shape == (X_train.shape[0],)
    assert roc_auc_score(y_test, lscp.decision_function(X_test)) >= 0.8
    fb = FeatureBagging(base_estimator=fpyod.KNN(n_neighbors=5), n_estimators=4, random_state=0).fit(X_train)
    assert roc_auc_score(y_test, fb.decision_function(X_test)) >= 0.8


# ---- errors ------------------------------------------------------------------------------------------
def test_errors(data):
    X = data[0]
    with pytest.raises(ValueError, match="contamination"):
        fpyod.KNN(contamination=0.7)
    with pytest.raises(ValueError, match="metric"):
        fpyod.KNN(metric="manhattan").fit(X)
    with pytest.raises(ValueError, match="n_neighbors"):
        fpyod.KNN(n_neighbors=X.shape[0]).fit(X)
    with pytest.raises(ValueError, match="shrinkage"):
        fpyod.Mahalanobis(shrinkage="bogus").fit(X)
    with pytest.raises(ValueError, match="device"):
        fpyod.KNN(device="nowhere").fit(X)
    with pytest.raises(ValueError):
        fpyod.KNN().fit(np.array([[1.0, np.nan], [0.0, 0.0], [1.0, 1.0]]))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        fpyod.KNN().decision_function(X)
    clf = fpyod.KNN().fit(X)
    with pytest.raises(ValueError, match="features"):
        clf.decision_function(X[:, :1])


def test_numpy_integer_params(data):
    clf = fpyod.KNN(n_neighbors=np.int64(4)).fit(data[0])
    ref = fpyod.KNN(n_neighbors=4).fit(data[0])
    assert_equal(clf.decision_scores_, ref.decision_scores_)


def test_import_without_pyod_says_how_to_install():
    code = (
        "import sys; sys.modules['pyod'] = None\n"
        "try:\n    import fastad.integrations.pyod\nexcept ImportError as e:\n    print('MSG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MSG" in out and "pip install" in out and "pyod" in out
