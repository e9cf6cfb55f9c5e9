"""Sliding windows, window -> point scores, gap handling: values against direct loops, bad input."""
import numpy as np
import pytest
import torch

from fastad.timeseries import interpolate_gaps, window_starts, window_to_point, windows


def _loop_windows(x, length, starts, znorm):
    out = []
    for s in starts:
        w = x[s : s + length].double()  # [length, C]
        if znorm:
            sd = w.std(0, unbiased=False)
            w = torch.where(sd > 1e-8, (w - w.mean(0)) / sd, torch.zeros_like(w))
        out.append(w.reshape(-1))
    return torch.stack(out)


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("stride", [1, 3, 7])
@pytest.mark.parametrize("znorm", [True, False])
def test_windows_match_loop(C, stride, znorm):
    g = torch.Generator().manual_seed(C * 10 + stride)
    x = torch.randn(53, C, generator=g).double()
    x[10:30, 0] = 2.5  # a flat stretch: flat windows z-normalise to zeros
    series = x[:, 0] if C == 1 else x
    st = window_starts(53, 12, stride)
    assert int(st[0]) == 0 and int(st[-1]) == 53 - 12 and bool((st.diff() > 0).all())
    w = windows(series, 12, stride, znorm=znorm)
    assert w.shape == (len(st), 12 * C) and w.dtype == torch.float64
    torch.testing.assert_close(w, _loop_windows(x, 12, st.tolist(), znorm), rtol=1e-12, atol=1e-12)
    if znorm and C == 1:
        flat = [i for i, s in enumerate(st.tolist()) if s >= 10 and s + 12 <= 30]
        assert flat and bool((w[flat] == 0).all())


@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("stride", [1, 4, 5])
def test_window_to_point_matches_loop(reduce, stride):
    T, L = 41, 9
    st = window_starts(T, L, stride).tolist()
    s = torch.randn(len(st), generator=torch.Generator().manual_seed(stride), dtype=torch.float64)
    got = window_to_point(s, T, L, stride, reduce)
    want = []
    for t in range(T):
        cover = [s[i] for i, a in enumerate(st) if a <= t < a + L]
        assert cover, "every point is covered"
        want.append(max(cover) if reduce == "max" else sum(cover) / len(cover))
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-12, atol=1e-12)


def test_bad_input_errors():
    x = torch.randn(20)
    with pytest.raises(ValueError, match="longer than the series"):
        windows(x, 21)
    with pytest.raises(ValueError, match="length must be an int >= 2"):
        windows(x, 1)
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        windows(x, 5, 0)
    with pytest.raises(ValueError, match=r"1-D \[T\] or 2-D \[T, C\]"):
        windows(torch.randn(2, 3, 4), 2)
    with pytest.raises(ValueError, match="empty"):
        windows(torch.zeros(0), 2)
    y = x.clone()
    y[7] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf \(1 values, first at t=7\).*interpolate_gaps"):
        windows(y, 5)
    with pytest.raises(ValueError, match="scores must be"):
        window_to_point(torch.zeros(3), 20, 5, 1)
    with pytest.raises(ValueError, match="reduce must be"):
        window_to_point(torch.zeros(16), 20, 5, 1, reduce="median")
    with pytest.raises(TypeError, match="series must be a tensor"):
        windows(["a", "b", "c"], 2)


def test_interpolate_gaps():
    x = torch.tensor([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [4.0, 7.0], [np.nan, 8.0]], dtype=torch.float64)
    got = interpolate_gaps(x)
    want = torch.tensor([[2.0, 1.0], [2.0, 3.0], [3.0, 5.0], [4.0, 7.0], [4.0, 8.0]], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    assert interpolate_gaps(torch.tensor([1.0, float("nan"), 3.0])).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="channel 0 holds no finite value"):
        interpolate_gaps(torch.full((4,), float("nan")))
