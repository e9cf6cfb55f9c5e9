"""fastad.metrics against scikit-learn and against ports of anomalib 2.7 AUPRO and MuSc's PRO.

The two ports below are written from reading the reference code (not copied):
- anomalib 2.7.0 (PyPI wheel; repo open-edge-platform/anomalib) `src/anomalib/metrics/aupro.py`
  (`_AUPRO.compute_pro` and `compute`) with regions from `src/anomalib/utils/cv/connected_components.py`
  (`cv2.connectedComponents`, default connectivity 8, one labelling per image).
- MuSc (xrli-U/MuSc, commit 3d53cf8ab901d3b4ed529d04735af535c1a4a6fe) `utils/metrics.py::cal_pro_score`
  (regions from `skimage.measure.label`, whose 2-D default is 8-connectivity).
scipy.ndimage.label with a 3x3 structure gives the same 8-connected components as both.
"""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import fastad.metrics as M
import fastad.ranking

EIGHT = np.ones((3, 3), dtype=bool)


# ------------------------------------------------------------------------------------------------
# reference ports
# ------------------------------------------------------------------------------------------------
def anomalib_aupro_port(maps, masks, fpr_limit=0.3, dtype=torch.float64):
    """anomalib 2.7 AUPRO: global descending sort; FPR = cumsum(background) / #background; PRO =
    cumsum(1 / |region| over region pixels) / #regions; keep the last point of each run of equal
    scores; prepend (0, 0); cut at the last point with FPR <= limit and, if it is below the limit,
    add the linearly interpolated point at the limit; trapezoid area / last FPR."""
    maps = torch.as_tensor(np.asarray(maps)).reshape(-1, *np.asarray(maps).shape[-2:])
    masks = np.asarray(masks).reshape(maps.shape).astype(np.uint8)
    cca = np.zeros(masks.shape, dtype=np.int64)
    nxt = 1
    for i, m in enumerate(masks):  # per image, labels made unique across the batch
        lab, k = ndimage.label(m, structure=EIGHT)
        cca[i][lab > 0] = lab[lab > 0] + nxt - 1
        nxt += k
    labels = torch.from_numpy(cca.reshape(-1))
    preds = maps.reshape(-1).to(dtype)
    background = labels == 0
    num_bg = background.sum().to(dtype)
    if num_bg == 0 or int(labels.max()) == 0:
        return 0.0
    sizes = torch.bincount(labels).to(dtype)
    nreg = (sizes[1:] > 0).sum().to(dtype)
    pro_change = torch.zeros_like(preds)
    fg = labels > 0
    pro_change[fg] = 1.0 / sizes[labels[fg]]
    idx = torch.argsort(preds, descending=True)
    ps = preds[idx]
    fpr = torch.cumsum(background.to(dtype)[idx], 0) / num_bg
    pro = torch.cumsum(pro_change[idx], 0) / nreg
    keep = torch.ones_like(ps, dtype=torch.bool)
    keep[:-1] = ps[:-1] != ps[1:]
    fpr = torch.cat([torch.zeros(1, dtype=dtype), fpr[keep]])
    pro = torch.cat([torch.zeros(1, dtype=dtype), pro[keep]])
    i = int(torch.nonzero(fpr <= fpr_limit)[-1])
    if fpr[i] < fpr_limit and i + 1 < fpr.numel():
        p_lim = pro[i] + (pro[i + 1] - pro[i]) * (fpr_limit - fpr[i]) / (fpr[i + 1] - fpr[i])
        fpr = torch.cat([fpr[: i + 1], torch.tensor([fpr_limit], dtype=dtype)])
        pro = torch.cat([pro[: i + 1], p_lim.reshape(1)])
    else:
        fpr, pro = fpr[: i + 1], pro[: i + 1]
    return float(torch.trapezoid(pro, fpr) / fpr[-1])


def musc_pro_port(maps, masks, max_step=200, expect_fpr=0.3):
    """MuSc cal_pro_score: thresholds np.arange(min, max, (max - min) / max_step); per threshold the
    mean over all regions of (region pixels > th) / area and FPR = (normal pixels > th) / #normal;
    keep FPR < expect_fpr, min-max rescale the FPRs, sklearn auc."""
    amaps = np.asarray(maps)
    masks = np.asarray(masks).astype(np.int64)
    regions = []
    for m in masks:
        lab, k = ndimage.label(m, structure=EIGHT)
        regions.append([np.nonzero(lab == j) for j in range(1, k + 1)])
    lo, hi = amaps.min(), amaps.max()
    pros, fprs = [], []
    inv = 1 - masks
    for th in np.arange(lo, hi, (hi - lo) / max_step):
        binary = amaps > th
        pro = [binary[i][r].sum() / r[0].size for i, regs in enumerate(regions) for r in regs]
        fprs.append(np.logical_and(inv, binary).sum() / inv.sum())
        pros.append(np.array(pro).mean())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return sk_auc(f, pros[keep])


def musc_f1(scores, labels):
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = 2 * p * r / (p + r)
    return float(np.max(f[np.isfinite(f)]))


def random_blob_masks(rng, n, h, w, p_anom=0.6, max_blobs=4):
    """Masks with several blobs per anomalous image: rectangles and discs that may touch/overlap,
    plus corner-touching squares (one 8-connected region, two 4-connected ones)."""
    masks = np.zeros((n, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        if rng.random() > p_anom:
            continue
        for _ in range(rng.integers(1, max_blobs + 1)):
            kind = rng.integers(3)
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            if kind == 0:
                r = rng.uniform(1, max(2, h / 5))
                masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
            elif kind == 1:
                masks[i, cy: cy + rng.integers(1, h // 3 + 2), cx: cx + rng.integers(1, w // 3 + 2)] = 1
            else:  # two squares touching at a corner
                s = int(rng.integers(1, 4))
                masks[i, cy: cy + s, cx: cx + s] = 1
                masks[i, cy + s: cy + 2 * s, cx + s: cx + 2 * s] = 1
    return masks


def random_maps(rng, masks, ties=False, dtype=np.float32):
    n, h, w = masks.shape
    m = ndimage.gaussian_filter(rng.standard_normal((n, h, w)), (0, 1.5, 1.5)) + rng.uniform(0.3, 2) * masks
    if ties:
        m = np.round(m * 4) / 4  # many exact ties, also between normal and anomalous pixels
    return m.astype(dtype)


@pytest.fixture(params=[False, True], ids=["sort-path", "bucket-path"])
def path(request, monkeypatch):
    """Run each test through the plain-sort path and, forced, through the bucket-histogram path."""
    if request.param:
        monkeypatch.setattr(fastad.ranking, "SMALL_SORT_LIMIT", 0)
    return request.param


# ------------------------------------------------------------------------------------------------
# image/pixel AUROC, AP, F1-max vs scikit-learn
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_scalar_metrics_equal_sklearn(seed, path):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 3000))
    kind = seed % 4
    if kind == 0:
        s = rng.random(n).astype(np.float32)
    elif kind == 1:  # heavy ties
        s = rng.integers(0, int(rng.integers(1, 8)), n).astype(np.float64)
    elif kind == 2:  # wide range with negative values
        s = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 6)).astype(np.float32)
    else:  # ties between a few distinct values plus unique ones
        s = np.where(rng.random(n) < 0.5, rng.integers(0, 3, n), rng.random(n) * 3).astype(np.float32)
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    y[0], y[-1] = True, False
    assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert M.f1_max(s, y) == pytest.approx(musc_f1(s, y), abs=1e-6)


def test_scalar_metrics_large_and_torch(path):
    rng = np.random.default_rng(7)
    n = 200_000
    y = rng.random(n) < 0.03
    s = (rng.random(n) + 0.8 * y).astype(np.float32)
    s[:1000] = 0.5  # a tie block
    st, yt = torch.from_numpy(s), torch.from_numpy(y)
    assert M.auroc(st, yt) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert M.average_precision(st, yt.int()) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert M.f1_max(st.reshape(400, 500), yt.reshape(400, 500)) == pytest.approx(musc_f1(s, y), abs=1e-6)


@pytest.mark.parametrize("signal", [2.0, 0.0])
def test_f1_max_top_shortcut(signal, monkeypatch):
    """f1_max looks only at the thresholds with few false positives when the F1 found there bounds
    all others (strong signal), and falls back to the full curve otherwise (no signal)."""
    rng = np.random.default_rng(8)
    n = 150_000
    y = rng.random(n) < 0.02
    s = np.round(rng.standard_normal(n) + signal * y, 2).astype(np.float32)  # ties too
    calls = []
    real = M._ranked_pair
    monkeypatch.setattr(M, "_ranked_pair", lambda *a: calls.append(1) or real(*a))
    assert M.f1_max(s, y) == pytest.approx(musc_f1(s, y), abs=1e-6)
    assert bool(calls) == (signal == 0.0)  # full curve only without signal


def test_constant_scores(path):
    y = np.array([0, 1, 0, 1, 1, 0, 0])
    s = np.full(7, 3.0)
    assert M.auroc(s, y) == 0.5 == pytest.approx(roc_auc_score(y, s))
    assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s))
    assert M.f1_max(s, y) == pytest.approx(musc_f1(s, y))


def test_known_values():
    s, y = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    assert M.auroc(s, y) == 0.75
    assert M.f1_max(s, y) == pytest.approx(0.8)
    assert M.average_precision(s, y) == pytest.approx(0.8333333333)


def test_extreme_range_bucket_path(monkeypatch):
    """Values near the float32 limits: the bucket index is computed in float64 when hi - lo overflows."""
    monkeypatch.setattr(fastad.ranking, "SMALL_SORT_LIMIT", 0)
    rng = np.random.default_rng(3)
    s = rng.choice(np.array([-3e38, -1.0, 0.0, 1e-30, 2.5, 3e38], dtype=np.float32), 500)
    s[:200] = rng.standard_normal(200).astype(np.float32)
    y = rng.random(500) < 0.3
    s64 = s.astype(np.float64)  # sklearn's finiteness check sums float32 and overflows
    assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s64), abs=1e-6)
    assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s64), abs=1e-6)


# ------------------------------------------------------------------------------------------------
# AUPRO vs the anomalib 2.7 port, PRO-MuSc vs the MuSc port
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_aupro_equals_anomalib_port(seed, path):
    rng = np.random.default_rng(100 + seed)
    n, h, w = int(rng.integers(1, 7)), int(rng.integers(8, 40)), int(rng.integers(8, 40))
    masks = random_blob_masks(rng, n, h, w)
    if masks.sum() == 0:
        masks[0, 1:3, 1:3] = 1
    maps = random_maps(rng, masks, ties=seed % 2 == 1)
    for lim in (0.3, 0.05, 1.0):
        ours = M.aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit=lim)
        assert ours == pytest.approx(anomalib_aupro_port(maps, masks, lim), abs=1e-6), lim


@pytest.mark.parametrize("lim", [0.3, 0.02])
def test_aupro_fpr_cut_fast_path(lim, monkeypatch):
    """Sparse anomalies on many pixels: aupro resolves only the normal pixels above an estimated
    FPR cut. Checked against the port, and that the shortcut was really taken."""
    rng = np.random.default_rng(21)
    masks = random_blob_masks(rng, 24, 64, 64, p_anom=0.5, max_blobs=2) * (rng.random((24, 1, 1)) < 0.7)
    masks = masks.astype(np.uint8)
    masks[0, 5:9, 5:9] = 1
    assert masks.mean() < 1 / 9
    maps = random_maps(rng, masks, ties=lim < 0.1)
    seen = []
    real = M.neg_counts

    def spy(neg, q, top=None):
        seen.append(neg.size)
        return real(neg, q, top)

    monkeypatch.setattr(M, "neg_counts", spy)
    ours = M.aupro(maps, masks, fpr_limit=lim)
    n = int((masks == 0).sum())
    assert seen and seen[0] < 0.9 * n  # only the candidates above the cut were ranked
    assert ours == pytest.approx(anomalib_aupro_port(maps, masks, lim), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_pro_musc_equals_musc_port(seed, path):
    rng = np.random.default_rng(200 + seed)
    n, h, w = int(rng.integers(2, 6)), int(rng.integers(10, 40)), int(rng.integers(10, 40))
    masks = random_blob_masks(rng, n, h, w, p_anom=0.8)
    masks[0, 2:5, 2:6] = 1
    maps = random_maps(rng, masks, ties=seed % 2 == 1, dtype=np.float32 if seed < 3 else np.float64)
    assert M.pro_musc(maps, masks) == pytest.approx(musc_pro_port(maps, masks), abs=1e-6)


def test_aupro_and_pro_musc_differ():
    rng = np.random.default_rng(5)
    masks = random_blob_masks(rng, 6, 32, 32, p_anom=1.0)
    maps = random_maps(rng, masks)
    a, b = M.aupro(maps, masks), M.pro_musc(maps, masks)
    assert a == pytest.approx(anomalib_aupro_port(maps, masks), abs=1e-6)
    assert b == pytest.approx(musc_pro_port(maps, masks), abs=1e-6)
    assert abs(a - b) > 1e-4  # two different definitions


def test_aupro_eight_connectivity():
    """Two squares touching at a corner are ONE region (8-connectivity, as anomalib's cv2 and MuSc's
    skimage default). Detecting only the small square gives overlap 4/13 on one region; with
    4-connectivity it would be (1 + 0) / 2 on two regions."""
    mask = np.zeros((1, 12, 12), np.uint8)
    mask[0, 1:3, 1:3] = 1  # 4 px
    mask[0, 3:6, 3:6] = 1  # 9 px, touches the first at a corner only
    maps = np.zeros((1, 12, 12), np.float32)
    maps[0, 1:3, 1:3] = 1.0  # the small square is above every normal pixel
    maps[0, 3:6, 3:6] = -1.0  # the large one below every normal pixel
    maps[0, 8, 8] = 0.5
    assert M.aupro(maps, mask) == pytest.approx(4 / 13, abs=1e-9)
    assert M.aupro(maps, mask) == pytest.approx(anomalib_aupro_port(maps, mask), abs=1e-9)


def test_aupro_perfect_and_edge_cases(path):
    m = torch.zeros(2, 8, 8)
    m[0, 2:4, 2:4] = 1
    assert M.aupro(m * 0.5 + 0.1, m) == pytest.approx(1.0)
    # normal images (empty masks) next to anomalous ones
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[1, 3:6, 3:6] = 1
    maps = np.random.default_rng(0).random((3, 10, 10)).astype(np.float32)
    assert M.aupro(maps, masks) == pytest.approx(anomalib_aupro_port(maps, masks), abs=1e-6)
    # all normal / all anomalous: anomalib returns 0.0
    with pytest.warns(M.UndefinedMetricWarning):
        assert M.aupro(maps, np.zeros_like(masks)) == 0.0
    with pytest.warns(M.UndefinedMetricWarning):
        assert M.aupro(maps, np.ones_like(masks)) == 0.0
    assert anomalib_aupro_port(maps, np.zeros_like(masks)) == 0.0
    # constant maps: a single diagonal segment, area = 0.5 * limit... / limit = 0.5
    const = np.full((3, 10, 10), 0.7, np.float32)
    assert M.aupro(const, masks) == pytest.approx(anomalib_aupro_port(const, masks), abs=1e-9)
    with pytest.warns(M.UndefinedMetricWarning):
        assert math.isnan(M.pro_musc(const, masks))
    with pytest.warns(M.UndefinedMetricWarning):
        assert math.isnan(M.pro_musc(maps, np.zeros_like(masks)))


def test_real_anomalib_if_installed():
    """Against anomalib 2.7's own `_AUPRO` / `_AUROC` (bench extra), loaded without the package
    __init__ (which needs torchvision). Skipped when anomalib, torchmetrics, kornia or cv2 is missing."""
    loader = pytest.importorskip("benchmarks._anomalib", reason="benchmarks not importable")
    try:
        am = loader.load_anomalib_metrics()
    except ImportError as e:
        pytest.skip(f"anomalib metrics unavailable: {e}")
    rng = np.random.default_rng(11)
    masks = random_blob_masks(rng, 8, 48, 48)
    maps = random_maps(rng, masks)
    maps = (maps - maps.min()) / (maps.max() - maps.min())  # anomalib's AUROC would apply a sigmoid otherwise
    a = am.AUPRO()
    a.update(torch.from_numpy(maps), torch.from_numpy(masks))
    assert M.aupro(maps, masks) == pytest.approx(float(a.compute()), abs=2e-6)
    r = am.AUROC()
    r.update(torch.from_numpy(maps), torch.from_numpy(masks).int())
    assert M.auroc(maps, masks) == pytest.approx(float(r.compute()), abs=2e-6)


# ------------------------------------------------------------------------------------------------
# streaming
# ------------------------------------------------------------------------------------------------
def test_pixel_metrics_streaming_equals_functions(path):
    rng = np.random.default_rng(9)
    masks = random_blob_masks(rng, 9, 24, 20)
    maps = random_maps(rng, masks, ties=True)
    ref = {
        "pixel_auroc": M.auroc(maps, masks),
        "pixel_ap": M.average_precision(maps, masks),
        "pixel_f1_max": M.f1_max(maps, masks),
        "aupro": M.aupro(maps, masks),
        "pro_musc": M.pro_musc(maps, masks),
    }
    assert ref["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)
    for splits in ([9], [1] * 9, [4, 1, 4]):
        pm = M.PixelMetrics()
        start = 0
        for k in splits:
            pm.update(torch.from_numpy(maps[start: start + k]).unsqueeze(1), torch.from_numpy(masks[start: start + k]).unsqueeze(1))
            start += k
        out = pm.compute()
        assert set(out) == set(ref)
        for key in ref:
            assert out[key] == pytest.approx(ref[key], abs=1e-12), key


def test_image_metrics_streaming():
    rng = np.random.default_rng(4)
    s = rng.integers(0, 20, 300).astype(np.float32)
    y = rng.random(300) < 0.4
    im = M.ImageMetrics()
    for i in range(0, 300, 70):
        im.update(torch.from_numpy(s[i: i + 70]), torch.from_numpy(y[i: i + 70]))
    out = im.compute()
    assert out["image_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert out["image_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert out["image_f1_max"] == pytest.approx(musc_f1(s, y), abs=1e-6)
    pred = M.binarize(torch.from_numpy(s), out["f1_threshold"]).numpy()
    tp = (pred & y).sum()
    assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(out["image_f1_max"])


# ------------------------------------------------------------------------------------------------
# thresholds
# ------------------------------------------------------------------------------------------------
def test_thresholds():
    s, y = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    t = M.f1_optimal_threshold(s, y)
    assert t == pytest.approx(0.35)
    assert M.binarize(s, t).tolist() == [False, True, True, True]
    assert M.normal_quantile_threshold(torch.arange(101.0), 0.99) == pytest.approx(99.0)
    with pytest.raises(ValueError, match="no anomalous"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            M.f1_optimal_threshold(s, torch.zeros(4))
    with pytest.raises(ValueError, match="q must be"):
        M.normal_quantile_threshold(s, 1.5)


# ------------------------------------------------------------------------------------------------
# errors and undefined cases
# ------------------------------------------------------------------------------------------------
def test_errors():
    s, y = np.random.rand(10).astype(np.float32), np.arange(10) % 2
    with pytest.raises(ValueError, match="auroc: scores and labels must have the same shape"):
        M.auroc(s, y[:9])
    bad = s.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="average_precision: scores contain NaN"):
        M.average_precision(bad, y)
    bad[3] = np.inf
    with pytest.raises(ValueError, match="contain inf"):
        M.f1_max(bad, y)
    with pytest.raises(ValueError, match="must be binary.*2"):
        M.auroc(s, y * 2)
    with pytest.raises(ValueError, match="must be binary.*0.5"):
        M.aupro(s.reshape(2, 5), np.full((2, 5), 0.5))
    with pytest.raises(ValueError, match="empty input"):
        M.auroc(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="at least 2 dims"):
        M.aupro(s, y)
    with pytest.raises(ValueError, match="maps and masks must have the same shape"):
        M.pro_musc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="fpr_limit must be > 0"):
        M.aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), fpr_limit=0)
    with pytest.raises(ValueError, match="no data"):
        M.PixelMetrics().compute()
    with pytest.raises(ValueError, match="no data"):
        M.ImageMetrics().compute()
    with pytest.raises(ValueError, match="real numbers"):
        M.auroc(np.array(["a", "b"]), np.array([0, 1]))


def test_one_class_is_nan_with_warning():
    s = np.random.rand(20)
    for fn in (M.auroc, M.average_precision, M.f1_max):
        with pytest.warns(M.UndefinedMetricWarning, match="only one class"):
            assert math.isnan(fn(s, np.zeros(20)))
    with pytest.warns(M.UndefinedMetricWarning):
        assert math.isnan(M.auroc(s, np.ones(20)))
    pm = M.PixelMetrics()
    pm.update(np.random.rand(2, 5, 5), np.zeros((2, 5, 5)))
    with pytest.warns(M.UndefinedMetricWarning):
        out = pm.compute()
    assert math.isnan(out["pixel_auroc"]) and out["aupro"] == 0.0 and math.isnan(out["pro_musc"])
