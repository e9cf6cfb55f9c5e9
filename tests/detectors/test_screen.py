"""Detectors on the bf16 screen (FASTAD_DETECTOR_SCREEN, fastad.detectors._screen): PatchCore, SPADE,
KNN and LOF give identical scores (torch.equal) with the screen on and off. On a CPU without
AVX512-BF16 the screen runs through its bit-exact scalar emulation (FASTAD_BF16_EMULATE=1)."""
import pytest
import torch

import fastad
from fastad.detectors import KNN, LOF, SPADE, PatchCore
from fastad.detectors._screen import detector_screen

AVX2 = fastad.build_info()["simd"] == "avx2"
needs_avx2 = pytest.mark.skipif(not AVX2, reason="the bf16 screen runs on the AVX2 path only")


def _both(monkeypatch, run):
    """run() with FASTAD_DETECTOR_SCREEN=none and =bf16 (emulated here if need be); the screen must run."""
    monkeypatch.setenv("FASTAD_DETECTOR_SCREEN", "none")
    fastad.knn_screen_stats(reset=True)
    off = run()
    assert fastad.knn_screen_stats()["calls"] == 0
    if fastad.build_info()["bf16_micro_kernel"] != "avx512bf16":
        monkeypatch.setenv("FASTAD_BF16_EMULATE", "1")
    monkeypatch.setenv("FASTAD_DETECTOR_SCREEN", "bf16")
    on = run()
    st = fastad.knn_screen_stats(reset=True)
    assert st["calls"] > st["fallbacks"] >= 0 and st["pairs"] > 0, st
    return off, on


def test_detector_screen_env(monkeypatch):
    monkeypatch.delenv("FASTAD_DETECTOR_SCREEN", raising=False)
    assert detector_screen() == "auto"
    monkeypatch.setenv("FASTAD_DETECTOR_SCREEN", "BF16")
    assert detector_screen() == "bf16"
    monkeypatch.setenv("FASTAD_DETECTOR_SCREEN", "fast")
    with pytest.raises(ValueError, match="FASTAD_DETECTOR_SCREEN must be one of"):
        detector_screen()


@needs_avx2
@pytest.mark.parametrize("cls", [KNN, LOF])
def test_embedding_detectors_identical_with_screen(monkeypatch, cls):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(300, 40, generator=g) + 5.0  # uncentred
    X[200:230] = X[:30]  # duplicated rows: exact ties
    T = torch.cat([torch.randn(60, 40, generator=g) + 5.0, X[:10]])

    def run():
        det = cls(n_neighbors=5).fit(X)
        return det.decision_scores_, det.decision_function(T)

    (a0, b0), (a1, b1) = _both(monkeypatch, run)
    assert torch.equal(a0, a1) and torch.equal(b0, b1)


@needs_avx2
@pytest.mark.parametrize("which", ["patchcore", "spade"])
def test_image_detectors_identical_with_screen(monkeypatch, tiny_backbone, images, which):
    train, test = images
    if which == "patchcore":
        det = PatchCore(backbone=tiny_backbone, coreset_ratio=0.1, projection_dim=None, num_neighbors=3,
                        batch_size=6, progress=False, random_state=0)
    else:
        det = SPADE(backbone=tiny_backbone, k_images=3, batch_size=6, progress=False)
    monkeypatch.setenv("FASTAD_DETECTOR_SCREEN", "none")
    det.fit(train)
    (s0, m0), (s1, m1) = _both(monkeypatch, lambda: det.score(test))
    assert torch.equal(s0, s1) and torch.equal(m0, m1)
