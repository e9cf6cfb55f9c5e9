"""Our vectorised range PR AUC / VUS-PR against aeon 1.6.0's (the reference implementation)."""
import numpy as np
import pytest

from fastad.timeseries import range_pr_auc, vus_pr


def _aeon():
    pytest.importorskip("sklearn")
    try:
        from aeon.benchmarking.metrics.anomaly_detection import range_pr_auc_score, range_pr_vus_score
    except ImportError:
        pytest.skip("aeon not installed (make build installs aeon==1.6.0 with --no-deps)")
    return range_pr_auc_score, range_pr_vus_score


def _case(seed, T=700, ties=False):
    rng = np.random.default_rng(seed)
    y = np.zeros(T, dtype=int)
    y[100:130] = 1
    y[400:403] = 1
    y[690:700] = 1  # an anomaly at the end
    s = rng.random(T) + 0.8 * y
    if ties:
        s = np.round(s * 5) / 5  # heavy ties
    return y, s


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_range_pr_auc_and_vus_equal_aeon(seed, ties):
    pr_auc, pr_vus = _aeon()
    y, s = _case(seed, ties=ties)
    for b in (0, 1, 2, 7, 40, None):
        assert range_pr_auc(y, s, b) == pytest.approx(pr_auc(y, s, b), rel=1e-10, abs=1e-12)
    assert vus_pr(y, s, 60) == pytest.approx(pr_vus(y, s, 60), rel=1e-10, abs=1e-12)


def test_metric_bad_input():
    with pytest.raises(ValueError, match="no anomaly"):
        vus_pr(np.zeros(10), np.arange(10.0))
    with pytest.raises(ValueError, match="same length"):
        vus_pr(np.ones(10), np.arange(9.0))
    with pytest.raises(ValueError, match="NaN"):
        vus_pr(np.r_[0, 1], np.r_[0.0, np.nan])
    assert vus_pr(np.r_[0, 1, 0], np.ones(3)) == 0.0  # constant score, as aeon
