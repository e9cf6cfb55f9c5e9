"""THEMIS scoring: LOF / KNN window scores equal PyOD's on the same windows; the pipeline end to end;
embedders; bad input."""
import numpy as np
import pytest
import torch

from fastad.timeseries import MiniRocket, RawWindows, combine, knn_window_scores, lof_window_scores, score_series, windows

from .test_spectral import _series


def _pyod():
    pytest.importorskip("numba", reason="PyOD needs numba (make build installs it)")
    return pytest.importorskip("pyod", reason="PyOD not installed (make build installs it with --no-deps)")


def _check_equal(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    from scipy.stats import spearmanr

    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert spearmanr(ours, theirs).statistic > 0.99999


@pytest.mark.parametrize("znorm", [True, False])
def test_lof_knn_equal_pyod(znorm):
    _pyod()
    from pyod.models.knn import KNN as PKNN
    from pyod.models.lof import LOF as PLOF

    w = windows(_series(600, seed=2), 32, 1, znorm=znorm).float()
    X = w.double().numpy()
    _check_equal(lof_window_scores(w, 20), PLOF(n_neighbors=20).fit(X).decision_scores_)
    _check_equal(knn_window_scores(w, 5), PKNN(n_neighbors=5, method="largest").fit(X).decision_scores_)


def test_lof_with_duplicate_windows_equals_pyod():
    """A periodic series repeats windows exactly (distance ties and zero k-distances)."""
    _pyod()
    from pyod.models.lof import LOF as PLOF

    t = torch.arange(500) % 25
    x = torch.where(t < 12, 1.0, -1.0)
    x[300:310] = 0.3
    w = windows(x, 20, 1, znorm=False).float()
    _check_equal(lof_window_scores(w, 10), PLOF(n_neighbors=10).fit(w.double().numpy()).decision_scores_)


def test_score_series_end_to_end():
    x = _series(500, seed=4)
    out = score_series(x, 40, 2, return_windows=True)
    for m in ("lof", "knn", "spectral", "themis"):
        s = out[m]
        assert s.shape == (500,) and bool(torch.isfinite(s).all())
        assert 180 <= int(s.argmax()) <= 240, m  # the injected anomaly (200..215) scores highest
    torch.testing.assert_close(out["window_scores"]["themis"],
                               combine(out["window_scores"]["lof"], out["window_scores"]["spectral"]))
    assert set(out["seconds"]) >= {"embed", "lof", "spectral"}


def test_embedders():
    x = torch.stack([_series(300, 1), _series(300, 2)], 1)
    w = windows(x, 30, 3).view(-1, 30, 2)
    assert RawWindows()(w).shape == (w.shape[0], 60)
    f1, f2 = MiniRocket(num_features=168, seed=1)(w), MiniRocket(num_features=168, seed=1)(w)
    assert f1.shape[0] == w.shape[0] and f1.shape[1] >= 84 and torch.equal(f1, f2)
    assert bool(((f1 >= 0) & (f1 <= 1)).all()) and float(f1.std()) > 0
    out = score_series(x, 30, 3, embedder="minirocket", methods=("lof",))
    assert out["lof"].shape == (300,)
    with pytest.raises(ValueError, match="embedder must be"):
        score_series(x, 30, 3, embedder="chronos")
    with pytest.raises(ValueError, match="at least 9 steps"):
        MiniRocket()(w[:, :8])


def test_chronos_needs_local_path(tmp_path):
    from fastad.timeseries import Chronos

    with pytest.raises(FileNotFoundError, match="local Chronos model folder"):
        Chronos(tmp_path / "nope")


def test_score_series_bad_input():
    with pytest.raises(ValueError, match="longer than the series"):
        score_series(torch.randn(10), 20)
    with pytest.raises(ValueError, match="NaN or Inf"):
        score_series(torch.tensor([1.0, 2.0, float("nan"), 1.0, 3.0, 2.0]), 2)
    with pytest.raises(ValueError, match="methods must be"):
        score_series(torch.randn(50), 5, methods=("iforest",))
    with pytest.raises(ValueError, match="need >= 3"):
        score_series(torch.randn(10), 9)


@pytest.mark.parametrize("k", [1, 5, 30])
def test_exact_neighbours_equal_float64_bruteforce(k):
    """Near-ties that float32 cannot order (non-centred, large-norm rows 1e-4 apart) come out in
    float64 order, as scikit-learn's brute force on float64 input."""
    from fastad.timeseries import exact_neighbours

    g = torch.Generator().manual_seed(k)
    base = torch.randn(40, 16, generator=g, dtype=torch.float64) * 0.01 + 50.0
    E = torch.cat([base + 1e-4 * torch.randn(40, 16, generator=g, dtype=torch.float64) for _ in range(5)])
    d, i = exact_neighbours(E, k)
    full = (E[:, None] - E[None]).square().sum(-1).sqrt()  # direct differences (cdist may use the expansion)
    full.fill_diagonal_(float("inf"))
    want = full.sort(dim=1, stable=True)
    torch.testing.assert_close(d, want.values[:, :k], rtol=1e-12, atol=1e-15)
    assert bool((full.gather(1, i) == d).all())
    with pytest.raises(ValueError, match=r"k must be an int in \[1, W - 1\]"):
        exact_neighbours(E, E.shape[0])


def test_chronos_local_weights():
    """Runs only with chronos-forecasting installed and FASTAD_CHRONOS_PATH naming a local model folder."""
    import os

    path = os.environ.get("FASTAD_CHRONOS_PATH")
    if not path:
        pytest.skip("FASTAD_CHRONOS_PATH not set (no Chronos weights ship offline)")
    pytest.importorskip("chronos", reason="chronos-forecasting not installed")
    from fastad.timeseries import Chronos

    x = _series(200, 7)
    out = score_series(x, 32, 8, embedder=Chronos(path), methods=("lof", "spectral"))
    assert out["lof"].shape == (200,) and bool(torch.isfinite(out["spectral"]).all())
