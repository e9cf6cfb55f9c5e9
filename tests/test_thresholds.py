"""fastad.thresholds: each method against a brute-force / closed-form reference, and the warnings."""
import math
import warnings

import pytest
import torch

from fastad import thresholds as T


def test_quantile_is_torch_quantile():
    s = torch.arange(10, dtype=torch.float64)
    assert T.quantile(s, 0.5) == pytest.approx(4.5)
    assert T.quantile(s, 0.99) == pytest.approx(float(torch.quantile(s, 0.99)))


@pytest.mark.parametrize("n,q", [(200, 0.99), (99, 0.99), (20, 0.95), (57, 0.9)])
def test_quantile_corrected_order_statistic(n, q):
    g = torch.Generator().manual_seed(n)
    s = torch.randn(n, generator=g, dtype=torch.float64)
    k = math.ceil((n + 1) * q)
    assert k <= n
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = T.quantile_corrected(s, q)
    assert t == float(torch.sort(s).values[k - 1])
    # the conformal guarantee, checked by simulation: new normal scores exceed t at most 1 - q of the time
    fp = []
    for rep in range(400):
        g = torch.Generator().manual_seed(10_000 + rep)
        cal = torch.randn(n, generator=g, dtype=torch.float64)
        new = torch.randn(1, generator=g, dtype=torch.float64)
        fp.append(float(new[0] > T.quantile_corrected(cal, q)))
    assert sum(fp) / len(fp) <= (1 - q) + 3 * math.sqrt(q * (1 - q) / len(fp)) + 1e-9


def test_quantile_corrected_warns_when_too_few():
    s = torch.arange(24, dtype=torch.float64)  # the case: 24 held-out images, q = 0.99
    with pytest.warns(T.ThresholdWarning, match="24 held-out normal images are too few.*at least 99"):
        t = T.quantile_corrected(s, 0.99)
    assert t == 23.0
    assert T.min_images(0.99) == 99 and T.min_images(0.95) == 19 and T.min_images(0.5) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T.quantile_corrected(torch.arange(99.0), 0.99)  # exactly enough: no warning


def test_chi2_ppf_matches_known_values():
    # scipy.stats.chi2.ppf values
    assert T.chi2_ppf(0.95, 1) == pytest.approx(3.841458820694124, rel=1e-9)
    assert T.chi2_ppf(0.99, 10) == pytest.approx(23.209251158954356, rel=1e-9)
    assert T.chi2_ppf(0.5, 100) == pytest.approx(99.33412923354, rel=1e-9)
    assert T.chi2(0.95, 1) == pytest.approx(math.sqrt(3.841458820694124), rel=1e-9)
    # max of P independent positions: level q ** (1 / P)
    assert T.chi2(0.99, 10, n_positions=4) == pytest.approx(math.sqrt(T.chi2_ppf(0.99 ** 0.25, 10)), rel=1e-12)


def test_chi2_against_simulation():
    g = torch.Generator().manual_seed(0)
    d2 = torch.randn(200_000, 7, generator=g, dtype=torch.float64).square().sum(1)
    t = T.chi2(0.9, 7, distance=False)
    assert float((d2 > t).double().mean()) == pytest.approx(0.1, abs=0.005)


def _brute_f1(s, y):
    best, best_t = -1.0, None
    cands = sorted(set(s.tolist()))
    for c in [cands[0] - 1.0] + cands:
        p = s > c
        tp, fp, fn = int((p & (y == 1)).sum()), int((p & (y == 0)).sum()), int((~p & (y == 1)).sum())
        f = 2 * tp / (2 * tp + fp + fn)
        if f > best + 1e-12 or (abs(f - best) <= 1e-12 and c > best_t):
            best, best_t = f, c
    return best


@pytest.mark.parametrize("seed", range(5))
def test_f1_is_the_best_f1(seed):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(40, generator=g) < 0.4).long()
    s = torch.randn(40, generator=g).double() + y * 1.0
    s[:5] = s[5]  # ties
    t, f = T.f1(s, y)
    assert f == pytest.approx(_brute_f1(s, y))
    assert T.recall_precision(s, y, t)["f1"] == pytest.approx(f)


def test_f1_ties_stay_together_and_errors():
    s = torch.tensor([0.1, 0.5, 0.5, 0.9])
    y = torch.tensor([0, 0, 1, 1])
    t, f = T.f1(s, y)
    assert T.recall_precision(s, y, t)["f1"] == pytest.approx(f)
    assert not (0.5 > t) or (s > t).sum() != 2  # never splits the tied 0.5s
    with pytest.raises(ValueError, match="normal and defective"):
        T.f1(s, torch.ones(4))
    with pytest.raises(ValueError, match="labels"):
        T.f1(s, torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        T.quantile(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="q must be"):
        T.quantile_corrected(torch.ones(3), 1.0)


def test_recall_precision_counts():
    r = T.recall_precision(torch.tensor([0.1, 0.6, 0.7, 0.2]), torch.tensor([0, 1, 0, 1]), 0.5)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (1, 1, 1, 1)
    assert r["recall"] == 0.5 and r["precision"] == 0.5 and r["fpr"] == 0.5


# ---------------------------------------------------------------------------------- detectors
def test_set_threshold_methods(tmp_path):
    from fastad.detectors import PaDiM, load
    from fastad.features import get_backbone

    bb = get_backbone("random_cnn")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, 32, 32, generator=g)
    train = base + 0.1 * torch.randn(40, 3, 32, 32, generator=g)
    det = PaDiM(backbone=bb, progress=False, n_features=8).fit(train[:30])
    held = train[30:]
    with pytest.warns(T.ThresholdWarning):
        det.set_threshold(normal=held, quantile=0.99, method="quantile-corrected")
    assert det.threshold_info_ == {"method": "quantile-corrected", "quantile": 0.99, "n_images": 10}
    assert det.threshold_ == pytest.approx(float(det.decision_function(held).max()))
    det.set_threshold(method="chi2", quantile=0.99)
    P, C = det.mean_.shape
    assert det.threshold_ == pytest.approx(T.chi2(0.99, C, n_positions=P))
    val = torch.cat([held, held + 2.0])
    y = torch.tensor([0] * 10 + [1] * 10)
    det.set_threshold(method="f1", validation=val, labels=y)
    assert det.threshold_info_["method"] == "f1" and det.threshold_info_["n_images"] == 20
    det.save(tmp_path / "p.safetensors")
    assert load(tmp_path / "p.safetensors", backbone=bb).threshold_info_["method"] == "f1"
    with pytest.raises(ValueError, match="method 'chi2' takes exactly one of no data"):
        det.set_threshold(method="chi2", normal=held)
    with pytest.raises(ValueError, match="needs labels"):
        det.set_threshold(method="f1", validation=val)
    with pytest.raises(ValueError, match="method must be one of"):
        det.set_threshold(method="otsu", normal=held)


def test_chi2_refused_for_patchcore():
    from fastad.detectors import PatchCore

    det = PatchCore.from_bank(torch.randn(10, 4))
    with pytest.raises(ValueError, match="Gaussian detector"):
        det.set_threshold(method="chi2")
