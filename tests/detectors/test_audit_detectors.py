"""Audit of the detectors' input handling and semantics: bad inputs give a clear ValueError / TypeError
naming what was expected and given (never a deep torch / kernel error, a misleading message or a
silently wrong answer), references where the docs claim them, and fit / refit consistency.

Small tensors only (precomputed features or embeddings; the seeded ``random_cnn`` backbone where images
are needed): the file runs in a few seconds on 2 cores.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fastad.detectors import (
    SPADE,
    ClassConditionalMahalanobis,
    GaussianAD,
    LeeMahalanobis,
    MSVDD,
    MuSc,
    PaDiM,
    PatchCore,
)


def _feats(n: int, c: int = 8, h: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(n, c, h, h, generator=g), "b": torch.randn(n, 2 * c, h // 2, h // 2, generator=g)}


_FEATURE_DETECTORS = {
    "PatchCore": lambda: PatchCore(backbone=None, coreset_ratio=1.0, num_neighbors=3, progress=False),
    "PaDiM": lambda: PaDiM(backbone=None, progress=False),
    "SPADE": lambda: SPADE(backbone=None, k_images=3, progress=False),
    "GaussianAD": lambda: GaussianAD(backbone=None, progress=False),
}


@pytest.fixture(scope="module")
def tiny_cnn():
    from fastad.features import get_backbone

    return get_backbone("random_cnn")


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


# ---------------------------------------------------------------------------------------------- images
def test_integer_images_are_refused_not_silently_scored(tiny_cnn):
    """uint8 pixels (0..255) used to be fed to the backbone as they were: a model of unnormalised images."""
    x = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"PatchCore: X must be a floating-point image Tensor .* got torch\.uint8"):
        PatchCore(backbone=tiny_cnn, coreset_ratio=1.0, num_neighbors=1, progress=False).fit(x)
    det = _quiet(PatchCore(backbone=tiny_cnn, coreset_ratio=1.0, num_neighbors=1, progress=False).fit, x.float() / 255)
    with pytest.raises(TypeError, match=r"got torch\.int64"):
        det.decision_function(x.long())


def test_numpy_images_are_taken_as_tensors(tiny_cnn):
    """A numpy batch used to be walked as a dataset: 'item 0 of the dataset must be an image Tensor, got ndarray'."""
    x = torch.rand(4, 3, 32, 32)
    mk = lambda: PatchCore(backbone=tiny_cnn, coreset_ratio=1.0, num_neighbors=1, progress=False)  # noqa: E731
    want = _quiet(mk().fit, x).decision_function(x[:2])
    got = _quiet(mk().fit, x.numpy()).decision_function(x[:2].numpy())
    assert isinstance(got, torch.Tensor) and torch.allclose(got, want)


def test_wrong_channel_count_names_the_expectation(tiny_cnn):
    """1-channel images used to fail inside conv2d ('weight of size [8, 3, 3, 3], expected input ...')."""
    det = PaDiM(backbone=tiny_cnn, progress=False)
    with pytest.raises(ValueError, match=r"PaDiM: X must have 3 channels .* got 1 \(shape \(4, 1, 32, 32\)\)"):
        det.fit(torch.rand(4, 1, 32, 32))


# ---------------------------------------------------------------------------------------------- features
@pytest.mark.parametrize("name", sorted(_FEATURE_DETECTORS))
def test_empty_feature_dicts_and_zero_sizes(name):
    """{} used to raise IndexError; C = 0 or an empty grid failed deep in torch / the kernels (or claimed NaN)."""
    mk = _FEATURE_DETECTORS[name]
    with pytest.raises(ValueError, match="empty dict"):
        mk().fit_features({}, image_size=(16, 16))
    tr = _feats(6)
    with pytest.raises(ValueError, match=rf"{name}\.fit: features\['a'\] must have C, h, w >= 1, got \(6, 0, 4, 4\)"):
        mk().fit_features({k: v[:, :0] for k, v in tr.items()}, image_size=(16, 16))
    with pytest.raises(ValueError, match=r"must have C, h, w >= 1, got \(6, 8, 0, 0\)"):
        mk().fit_features({k: v[..., :0, :0] for k, v in tr.items()}, image_size=(16, 16))


@pytest.mark.parametrize("name", sorted(_FEATURE_DETECTORS))
def test_score_features_of_an_empty_batch_is_empty(name):
    """PatchCore raised 'cannot reshape tensor of 0 elements' where the other detectors return empty scores."""
    det = _quiet(_FEATURE_DETECTORS[name]().fit_features, _feats(6), image_size=(16, 16))
    scores, maps = _quiet(det.score_features, {k: v[:0] for k, v in _feats(2, seed=1).items()})
    assert scores.shape == (0,)
    assert maps is None or maps.shape[0] == 0


@pytest.mark.parametrize("name", ["PatchCore", "PaDiM", "SPADE"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_nonfinite_or_huge_scoring_features_are_value_errors(name, bad):
    """The kernels' RuntimeError ('knn: query must hold finite values ...') now surfaces as the detector's ValueError."""
    det = _quiet(_FEATURE_DETECTORS[name]().fit_features, _feats(6), image_size=(16, 16))
    te = _feats(2, seed=1)
    te["a"][0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=rf"{name}\.score_features: the input's features hold NaN or Inf, or values too large"):
        _quiet(det.score_features, te)


@pytest.mark.parametrize("name", ["PatchCore", "PaDiM", "SPADE"])
def test_features_too_large_for_float32_are_refused_at_fit(name):
    """1e30 features used to fit a model that failed (PaDiM: inf factors; SPADE / PatchCore: overflowing norms)
    only at scoring, or with the coreset kernel's RuntimeError."""
    tr = {k: v * 1e30 for k, v in _feats(6).items()}
    with pytest.raises(ValueError, match=rf"{name}\.fit: .*(too large|overflow)"):
        _quiet(_FEATURE_DETECTORS[name]().fit_features, tr, image_size=(16, 16))
    with pytest.raises(ValueError, match=r"PatchCore\.fit: .*too large"):
        _quiet(PatchCore(backbone=None, coreset_ratio=0.5, num_neighbors=1, progress=False).fit_features, tr,
               image_size=(16, 16))


def test_padim_nan_training_features_are_named():
    """NaN training features used to raise 'GaussianAccumulator: shared_rows: position 1's features ... differ'."""
    tr = _feats(6)
    tr["a"][0] = float("nan")
    with pytest.raises(ValueError, match=r"^PaDiM\.fit: the training features hold NaN or Inf"):
        PaDiM(backbone=None, progress=False).fit_features(tr, image_size=(16, 16))


# ---------------------------------------------------------------------------------------------- zero variance
def test_identical_training_images_name_the_zero_variance():
    """All-identical training features used to suggest 'use ledoit_wolf' while using ledoit_wolf."""
    tr = {k: v[:1].expand(6, -1, -1, -1).contiguous() for k, v in _feats(6).items()}
    with pytest.raises(ValueError, match=r"GaussianAD\.fit, level 'a': .*identical \(zero variance\)"):
        GaussianAD(backbone=None, progress=False).fit_features(tr)
    with pytest.raises(ValueError, match=r"LeeMahalanobis\.fit, layer 'a': .*zero variance"):
        LeeMahalanobis(backbone=None, shrinkage="ledoit_wolf", progress=False).fit_features(tr)
    # a float eps still fits (S + eps I), as documented
    det = GaussianAD(backbone=None, shrinkage=0.1, progress=False).fit_features(tr)
    assert torch.isfinite(det.score_features(_feats(2, seed=1))[0]).all()


def test_ccm_one_sample_per_class_and_no_features():
    X = torch.randn(30, 4)
    with pytest.raises(ValueError, match=r"zero variance .* one sample per class: 5 classes"):
        ClassConditionalMahalanobis().fit(X[:5], torch.arange(5))
    with pytest.raises(ValueError, match=r"ClassConditionalMahalanobis\.fit: X must have D >= 1 features, got shape \[30, 0\]"):
        ClassConditionalMahalanobis().fit(X[:, :0], torch.arange(30) % 2)


def test_ccm_far_query_is_a_value_error():
    """A query at 1e30 used to raise the k-NN kernel's RuntimeError."""
    det = ClassConditionalMahalanobis().fit(torch.randn(40, 3), torch.arange(40) % 2)
    with pytest.raises(ValueError, match=r"ClassConditionalMahalanobis\.decision_function: X is too far"):
        det.decision_function(torch.full((2, 3), 1e30))


def test_ccm_matches_scikit_learn_and_pyod_thresholds():
    """Lee et al.: min over classes of the Mahalanobis distance with scikit-learn's EmpiricalCovariance
    of the class-centred features; threshold_ = PyOD's percentile of the training scores."""
    from sklearn.covariance import EmpiricalCovariance

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    X[30:] = X[:30]  # duplicated rows
    y = np.arange(60) % 3
    Q = rng.normal(size=(7, 4))
    means = np.stack([X[y == c].mean(0) for c in range(3)])
    P = EmpiricalCovariance().fit(X - means[y]).precision_
    ref = np.sqrt(np.min(np.stack([np.einsum("ij,jk,ik->i", Q - m, P, Q - m) for m in means]), 0))
    det = ClassConditionalMahalanobis(contamination=0.1).fit(torch.from_numpy(X), torch.from_numpy(y))
    np.testing.assert_allclose(det.decision_function(torch.from_numpy(Q)).numpy(), ref, rtol=1e-5)
    s = det.decision_scores_.numpy()
    assert det.threshold_ == pytest.approx(np.percentile(s, 90), rel=1e-6)
    assert np.array_equal(det.labels_.numpy(), (s > det.threshold_).astype(np.int64))
    assert det.predict(torch.from_numpy(Q)).dtype == torch.int64


# ---------------------------------------------------------------------------------------------- PatchCore bank
def test_patchcore_from_bank_of_one_row_is_refused():
    """A one-row bank with num_neighbors > 1 used to give image scores of exactly 0 for every image."""
    with pytest.raises(ValueError, match=r"fewer than num_neighbors=9.* num_neighbors=1"):
        PatchCore.from_bank(torch.randn(1, 4), num_neighbors=9)
    det = PatchCore.from_bank(torch.randn(1, 4), num_neighbors=1)
    assert (det.score_embeddings(torch.randn(2, 3, 3, 4), image_size=(6, 6))[0] > 0).all()


def test_patchcore_score_embeddings_bad_inputs():
    det = PatchCore.from_bank(torch.randn(20, 4), num_neighbors=3)
    with pytest.raises(ValueError, match=r"patch_embeddings must have h, w >= 1, got \(2, 0, 3, 4\)"):
        det.score_embeddings(torch.randn(2, 0, 3, 4), image_size=(6, 6))
    with pytest.raises(ValueError, match=r"image_size must be \(H, W\) with H, W >= 1, got \(0, 0\)"):
        det.score_embeddings(torch.randn(2, 3, 3, 4), image_size=(0, 0))
    with pytest.raises(TypeError, match=r"patch_embeddings must be floating point, got torch\.int64"):
        det.score_embeddings(torch.zeros(2, 3, 3, 4, dtype=torch.int64), image_size=(6, 6))
    with pytest.raises(ValueError, match=r"PatchCore\.score_embeddings: the input's features hold NaN or Inf"):
        det.score_embeddings(torch.full((2, 3, 3, 4), float("nan")), image_size=(6, 6))


def test_refit_replaces_state_and_fit_returns_self():
    a, b = _feats(6, seed=2), _feats(6, c=6, seed=3)
    te = _feats(2, c=6, seed=4)
    for name, mk in _FEATURE_DETECTORS.items():
        det = mk()
        assert _quiet(det.fit_features, a, image_size=(16, 16)) is det, name
        _quiet(det.fit_features, b, image_size=(16, 16))
        fresh = _quiet(mk().fit_features, b, image_size=(16, 16))
        torch.testing.assert_close(_quiet(det.score_features, te)[0], _quiet(fresh.score_features, te)[0], msg=name)


# ---------------------------------------------------------------------------------------------- MSVDD
def _msvdd():
    return MSVDD(latent_dim=2, hidden_dim=8, epochs=2, batch_size=16)


def test_msvdd_zero_features_and_identical_rows():
    """D = 0 used to 'diverge' ('lower lr'); identical rows trained a model scoring everything ~1e11."""
    X = torch.randn(40, 5)
    with pytest.raises(ValueError, match=r"MSVDD\.fit: X must have D >= 1 features, got shape \[40, 0\]"):
        _msvdd().fit(X[:, :0])
    with pytest.raises(ValueError, match=r"MSVDD\.fit: all 40 training embeddings are identical"):
        _msvdd().fit(X[:1].expand(40, 5))


def test_msvdd_scores_empty_and_far_inputs():
    """0 rows raised 'torch.cat(): expected a non-empty list'; 1e30 rows scored inf (float32 squares)."""
    det = _msvdd().fit(torch.randn(40, 5))
    out = det.decision_function(torch.randn(0, 5))
    assert out.shape == (0,) and out.dtype == torch.float32
    far = det.decision_function(torch.full((2, 5), 1e30))
    assert torch.isfinite(far).all() and (far > 1e20).all()
    assert det.predict(torch.randn(3, 5)).dtype == torch.int64


# ---------------------------------------------------------------------------------------------- MuSc
def _tokens(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1 + 16, 8, generator=g) for _ in range(2)], torch.randn(n, 5, generator=g)


def _musc(**kw):
    return MuSc(backbone=None, image_size=16, progress=False, **kw)


def test_musc_token_containers_and_shapes():
    toks, cls = _tokens()
    with pytest.raises(TypeError, match=r"layer_tokens must be a list over layers .* got Tensor"):
        _musc().score_tokens(toks[0], cls)  # was: 'Boolean value of Tensor ... is ambiguous'
    with pytest.raises(ValueError, match=r"layer_tokens\[0\] must be 3-D \[N, 1 \+ L, C\], got shape \[17, 8\]"):
        _musc().score_tokens([t[0] for t in toks], cls)  # was: 'not enough values to unpack'
    with pytest.raises(ValueError, match=r"layer_tokens hold no images \(N = 0\)"):
        _musc().score_tokens([t[:0] for t in toks], cls[:0])  # was: rscin's k_list error
    with pytest.raises(ValueError, match=r"layer_tokens\[0\] must have C >= 1 channels"):
        _musc().score_tokens([t[..., :0] for t in toks], cls)
    with pytest.raises(TypeError, match=r"layer_tokens\[0\] must be floating point, got torch\.int64"):
        _musc().score_tokens([t.long() for t in toks], cls)
    want = _musc().score_tokens(toks, cls)[0]
    torch.testing.assert_close(_musc().score_tokens([t.numpy() for t in toks], cls)[0], want)
    # float64 tokens (the kernels take float32) used to fail without a pool and work with one
    torch.testing.assert_close(_musc().score_tokens([t.double() for t in toks], cls)[0], want)


def test_musc_nonfinite_and_huge_inputs():
    toks, cls = _tokens()
    bad = [t.clone() for t in toks]
    bad[0][0, 3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"MuSc\.score_tokens: layer_tokens hold NaN or Inf"):
        _musc().score_tokens(bad, cls)
    with pytest.raises(ValueError, match=r"RsCIN re-scoring gave NaN / Inf: image_features hold values too large"):
        _musc().score_tokens(toks, cls * 1e30)  # was: NaN scores, silently
    assert torch.isfinite(_musc().score_tokens([t * 1e30 for t in toks], cls)[0]).all()


@pytest.mark.parametrize("kw, match", [
    (dict(fraction=1.5), r"fraction must be a float in \(0, 1\]"),
    (dict(fraction=0), r"fraction must be a float in \(0, 1\]"),
    (dict(divide_num=0), r"divide_num must be an int >= 1, got 0"),
    (dict(contamination=2), r"contamination must be in \(0, 0\.5\], got 2"),
    (dict(r_list=(2,)), r"r_list must be a non-empty sequence of odd ints >= 1"),
    (dict(r_list=()), r"r_list must be a non-empty sequence"),
    (dict(same_position=2), r"same_position must be None, 0 \(off\) or an odd int >= 1, got 2"),
])
def test_musc_bad_parameters_are_value_errors(kw, match):
    toks, cls = _tokens()
    with pytest.raises(ValueError, match=match):
        _musc(**kw).fit(tokens=toks)


def test_musc_bad_image_size_and_integer_images():
    toks, cls = _tokens()
    with pytest.raises(ValueError, match=r"image_size must be an int >= 1, got 0"):
        _musc().score_tokens(toks, cls, image_size=0)  # was: rscin's NaN error
    with pytest.raises(TypeError, match=r"MuSc: X must be floating-point images in \[0, 1\], got torch\.uint8"):
        _musc().extract(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def test_musc_pool_threshold_is_pyods_percentile():
    toks, _ = _tokens(8)
    det = _musc(contamination=0.25).fit(tokens=toks)
    s = det.pool_scores_.numpy()
    assert det.threshold_ == pytest.approx(np.percentile(s, 75))
    pred = det.score_tokens([t[:3] for t in _tokens(3, seed=5)[0]])[0]
    assert pred.shape == (3,)
