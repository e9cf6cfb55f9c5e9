"""Separable Gaussian blur and feature aggregation against independent references."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastad.detectors._maps import (
    adaptive_patch_pool,
    concat_layers,
    gaussian_blur,
    gaussian_kernel1d,
    local_average,
)


def test_kernel_size_and_normalisation():
    for sigma, size in [(4.0, 33), (1.0, 9), (0.5, 5), (2.6, 21)]:
        k = gaussian_kernel1d(sigma)
        assert k.numel() == size == 2 * int(4 * sigma + 0.5) + 1
        assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
        assert torch.equal(k, k.flip(0))


@pytest.mark.parametrize("scipy_mode,ours", [("reflect", "symmetric"), ("mirror", "reflect"), ("nearest", "replicate"), ("constant", "constant")])
def test_blur_equals_scipy(scipy_mode, ours):
    ndimage = pytest.importorskip("scipy.ndimage")
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 40, 29, generator=gen, dtype=torch.float64)
    ref = np.stack([ndimage.gaussian_filter(a, sigma=4.0, mode=scipy_mode, truncate=4.0) for a in x.numpy()])
    got = gaussian_blur(x, 4.0, ours)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_blur_small_maps_and_shapes():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 1, 7, 5, dtype=torch.float64)  # radius 16 > size: the padding folds repeatedly
    for scipy_mode, ours in [("reflect", "symmetric"), ("mirror", "reflect")]:
        ref = ndimage.gaussian_filter(x[0, 0].numpy(), sigma=4.0, mode=scipy_mode)
        np.testing.assert_allclose(gaussian_blur(x, 4.0, ours)[0, 0].numpy(), ref, rtol=1e-10, atol=1e-12)
    assert gaussian_blur(x, 0) is x and gaussian_blur(x, None) is x
    assert gaussian_blur(torch.zeros(0, 8, 8), 4.0).shape == (0, 8, 8)
    with pytest.raises(ValueError, match="border"):
        gaussian_blur(x, 4.0, "wrap")
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        gaussian_blur(torch.zeros(2, 3, 8, 8), 4.0)


def test_local_average_is_count_include_pad():
    x = torch.ones(1, 1, 4, 4)
    y = local_average(x)
    assert float(y[0, 0, 0, 0]) == pytest.approx(4 / 9)  # corner: 4 real cells / 9
    assert float(y[0, 0, 0, 1]) == pytest.approx(6 / 9)
    assert float(y[0, 0, 1, 1]) == pytest.approx(1.0)


def test_concat_layers_bilinear_to_finest():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 8, 10, generator=gen), torch.randn(2, 5, 4, 5, generator=gen)
    out = concat_layers([a, b])
    assert out.shape == (2, 8, 8, 10)
    assert torch.equal(out[:, :3], a)
    assert torch.equal(out[:, 3:], F.interpolate(b, size=(8, 10), mode="bilinear", align_corners=False))
    # order of the list is the channel order, whatever the grid sizes
    assert torch.equal(concat_layers([b, a])[:, 5:], a)


def test_adaptive_patch_pool():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 6, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    out = adaptive_patch_pool([a, b], 2)
    assert out.shape == (2, 2, 3, 3)
    # by hand for one patch: pool each layer's vector to 2, stack (4 values), pool to 2
    va = a[1, :, 2, 0].view(2, 3).mean(1)
    vb = b[1, :, 2, 0].view(2, 2).mean(1)
    st = torch.cat([va, vb])
    torch.testing.assert_close(out[1, :, 2, 0], st.view(2, 2).mean(1))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("border", ["reflect", "symmetric", "replicate", "constant"])
@pytest.mark.parametrize("hw,size,sigma", [((28, 28), (224, 224), 4.0), ((7, 5), (40, 29), 4.0),
                                          ((14, 9), (56, 33), 1.5), ((3, 4), (3, 4), 2.0), ((28, 20), (224, 160), 0)])
def test_resize_blur_equals_interpolate_then_blur(mode, border, hw, size, sigma):
    from fastad.detectors._maps import resize_blur

    gen = torch.Generator().manual_seed(3)
    g = torch.rand(3, 1, *hw, generator=gen, dtype=torch.float64) * 5
    kw = {"align_corners": False} if mode == "bilinear" else {}
    ref = gaussian_blur(F.interpolate(g, size=size, mode=mode, **kw), sigma, border)
    got = resize_blur(g, size, sigma, border, mode)
    assert got.shape == ref.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # float32 (PaDiM's maps): within 1e-5 relative of the two-step float32 path
    ref32 = gaussian_blur(F.interpolate(g.float(), size=size, mode=mode, **kw), sigma, border)
    got32 = resize_blur(g.float()[:, 0], size, sigma, border, mode)
    assert got32.shape == ref32.shape[:1] + ref32.shape[2:]
    assert float(((got32 - ref32[:, 0]).abs() / ref32[:, 0].abs().clamp_min(1e-6)).max()) < 1e-5


def test_resize_blur_errors_and_cache():
    from fastad.detectors._maps import resize_blur, resize_blur_operator

    with pytest.raises(ValueError, match="mode"):
        resize_blur(torch.zeros(1, 4, 4), (8, 8), 1.0, mode="bicubic")
    with pytest.raises(ValueError, match="border"):
        resize_blur(torch.zeros(1, 4, 4), (8, 8), 1.0, border="wrap")
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        resize_blur(torch.zeros(1, 2, 4, 4), (8, 8), 1.0)
    with pytest.raises(ValueError, match="floating"):
        resize_blur(torch.zeros(1, 4, 4, dtype=torch.int64), (8, 8), 1.0)
    with pytest.raises(ValueError, match="size"):
        resize_blur(torch.zeros(1, 4, 4), (0, 8), 1.0)
    a = resize_blur_operator(28, 224, 4.0)
    assert resize_blur_operator(28, 224, 4.0) is a and a.shape == (224, 28)
    # every output pixel is a convex combination of the grid's cells (rows of A sum to 1)
    torch.testing.assert_close(a.double().sum(1), torch.ones(224, dtype=torch.float64), rtol=0, atol=1e-6)
