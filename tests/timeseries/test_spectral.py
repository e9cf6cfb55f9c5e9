"""The spectral residual score: implicit (tiled) subspace iteration == dense float64 eigh."""
import pytest
import torch

from fastad.timeseries import spectral_scores, windows
from fastad.timeseries.spectral import similarity_matmul, unit_rows


def _series(T=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64)
    x = torch.sin(2 * torch.pi * t / 37) + 0.1 * torch.randn(T, generator=g, dtype=torch.float64)
    x[200:215] += torch.linspace(0, 2, 15, dtype=torch.float64)  # an anomaly
    return x


def test_similarity_matmul_tiles():
    E = torch.randn(97, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    X = unit_rows(E)
    V = torch.randn(97, 4, dtype=torch.float64)
    dense = (X @ X.T).abs() @ V
    for tb in (8 * 97, 8 * 97 * 10, 1 << 30):  # 1-row tiles, 10-row tiles, one tile
        torch.testing.assert_close(similarity_matmul(X, V, tile_bytes=tb), dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
@pytest.mark.parametrize("method", ["implicit", "dense"])
def test_spectral_equals_dense_eigh(k, method):
    E = windows(_series(), 40, 2)
    ref = spectral_scores(E, k, method="eigh")
    got = spectral_scores(E, k, method=method, tile_bytes=8 * E.shape[0] * 16)  # 16-row tiles
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)


def test_spectral_multichannel_and_zero_rows():
    g = torch.Generator().manual_seed(5)
    E = torch.randn(60, 8, generator=g, dtype=torch.float64)
    E[[3, 17]] = 0  # flat windows: zero rows have similarity 0 with everything
    ref = spectral_scores(E, 4, method="eigh")
    torch.testing.assert_close(spectral_scores(E, 4, method="implicit", tile_bytes=8 * 60 * 7), ref, rtol=1e-6, atol=1e-9)
    assert float(ref[3]) == pytest.approx(0.0, abs=1e-9)


def test_spectral_bad_input():
    with pytest.raises(ValueError, match=r"k must be an int in \[1, W - 1\]"):
        spectral_scores(torch.randn(5, 3), 5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        spectral_scores(torch.tensor([[1.0, float("nan")], [1.0, 2.0], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="method must be"):
        spectral_scores(torch.randn(5, 3), 2, method="lanczos")
    with pytest.raises(ValueError, match=r"\[W >= 2, D\]"):
        spectral_scores(torch.randn(5), 1)
