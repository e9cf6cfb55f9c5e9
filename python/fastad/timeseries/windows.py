"""Sliding windows of a series and the map from window scores back to per-point scores.

A series is ``Tensor[T]`` (univariate) or ``Tensor[T, C]`` (C channels), any real dtype (computed in
float32, or float64 when given float64). NaN / Inf are refused: fill gaps first, e.g. with
:func:`interpolate_gaps` (linear), so that no silent choice is made for the user.
"""
from __future__ import annotations

import torch

__all__ = ["as_series", "window_starts", "windows", "window_to_point", "interpolate_gaps"]


def as_series(series, fn: str = "windows", allow_nan: bool = False) -> torch.Tensor:
    """``series`` as a float ``Tensor[T, C]`` (a 1-D input gets C = 1), or a clear error."""
    if not isinstance(series, torch.Tensor):
        try:
            series = torch.as_tensor(series)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{fn}: series must be a tensor or array [T] or [T, C] of numbers, got {type(series).__name__} ({e})") from None
    if series.dim() not in (1, 2):
        raise ValueError(f"{fn}: series must be 1-D [T] or 2-D [T, C], got shape {list(series.shape)}")
    if series.is_complex() or series.dtype == torch.bool:
        raise ValueError(f"{fn}: series must be real numbers, got {series.dtype}")
    if series.dtype != torch.float64:
        series = series.float()
    if series.dim() == 1:
        series = series[:, None]
    if series.shape[0] == 0 or series.shape[1] == 0:
        raise ValueError(f"{fn}: series is empty (shape {list(series.shape)})")
    if not allow_nan:
        bad = ~torch.isfinite(series)
        if bool(bad.any()):
            t = int(bad.any(1).nonzero()[0, 0])
            raise ValueError(
                f"{fn}: series holds NaN or Inf ({int(bad.sum())} values, first at t={t}); gaps are refused, not "
                "guessed: fill them first (fastad.timeseries.interpolate_gaps does linear interpolation)"
            )
    return series.contiguous()


def _check_len_stride(T: int, length, stride, fn: str) -> tuple[int, int]:
    if not (isinstance(length, int) and not isinstance(length, bool) and length >= 2):
        raise ValueError(f"{fn}: length must be an int >= 2, got {length!r}")
    if not (isinstance(stride, int) and not isinstance(stride, bool) and stride >= 1):
        raise ValueError(f"{fn}: stride must be an int >= 1, got {stride!r}")
    if length > T:
        raise ValueError(f"{fn}: window length={length} is longer than the series (T={T}); use length <= {T}")
    return length, stride


def window_starts(T: int, length: int, stride: int = 1) -> torch.Tensor:
    """``Tensor[W]`` int64 start indices ``0, stride, 2*stride, ...``, plus ``T - length`` when the
    stride does not land on it, so that every point is covered by at least one window."""
    length, stride = _check_len_stride(int(T), length, stride, "window_starts")
    s = torch.arange(0, T - length + 1, stride, dtype=torch.long)
    if int(s[-1]) != T - length:
        s = torch.cat([s, torch.tensor([T - length])])
    return s


def windows(series, length: int, stride: int = 1, znorm: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Sliding windows of ``series`` (``Tensor[T]`` or ``Tensor[T, C]``) as ``Tensor[W, length * C]``
    (time-major: the C channels of step 0, then of step 1, ...), starts from :func:`window_starts`.

    ``znorm=True`` (THEMIS' setting) z-normalises each window per channel; a window whose channel
    has standard deviation <= ``eps`` (flat) gets zeros for that channel, not a division by ~0.
    Raises ``ValueError`` for NaN/Inf, a window longer than the series, bad length/stride.
    """
    x = as_series(series, "windows")
    T, C = x.shape
    length, stride = _check_len_stride(T, length, stride, "windows")
    st = window_starts(T, length, stride)
    w = x.unfold(0, length, 1)[st]  # [W, C, length] (a view, then gathered)
    if znorm:
        mu = w.mean(2, keepdim=True)
        sd = w.std(2, unbiased=False, keepdim=True)
        w = torch.where(sd > eps, (w - mu) / sd.clamp_min(eps), torch.zeros_like(w))
    return w.transpose(1, 2).reshape(len(st), length * C).contiguous()


def window_to_point(scores, T: int, length: int, stride: int = 1, reduce: str = "max") -> torch.Tensor:
    """Per-point scores ``Tensor[T]`` from window scores ``Tensor[W]`` (windows of
    :func:`window_starts`): the ``"max"`` or ``"mean"`` over the windows that cover each point.
    Memory is O(T + W) (no ``[W, length]`` index is built)."""
    s = torch.as_tensor(scores)
    st = window_starts(int(T), length, stride)
    if s.dim() != 1 or s.shape[0] != st.shape[0]:
        raise ValueError(f"window_to_point: scores must be [W={st.shape[0]}] (one per window of T={T}, length={length}, "
                         f"stride={stride}), got shape {list(s.shape)}")
    if reduce not in ("max", "mean"):
        raise ValueError(f"window_to_point: reduce must be 'max' or 'mean', got {reduce!r}")
    s = s.double() if s.dtype == torch.float64 else s.float()
    st = st.to(s.device)
    if reduce == "mean":
        acc = torch.zeros(T + 1, dtype=torch.float64, device=s.device)
        cnt = torch.zeros(T + 1, dtype=torch.float64, device=s.device)
        acc.index_add_(0, st, s.double())
        acc.index_add_(0, st + length, -s.double())
        cnt.index_add_(0, st, torch.ones_like(s, dtype=torch.float64))
        cnt.index_add_(0, st + length, -torch.ones_like(s, dtype=torch.float64))
        return (acc.cumsum(0)[:T] / cnt.cumsum(0)[:T].round()).to(s.dtype)
    out = torch.full((T,), float("-inf"), dtype=s.dtype, device=s.device)
    for j in range(length):
        out.scatter_reduce_(0, st + j, s, reduce="amax")
    return out


def interpolate_gaps(series) -> torch.Tensor:
    """Linear interpolation over NaN gaps, per channel (a gap at either end takes the nearest value).
    Returns ``Tensor[T]`` or ``Tensor[T, C]`` like the input; a channel with no finite value raises."""
    x0 = torch.as_tensor(series)
    x = as_series(x0, "interpolate_gaps", allow_nan=True).clone()
    if bool(torch.isinf(x).any()):
        raise ValueError("interpolate_gaps: series holds Inf; only NaN gaps are interpolated")
    t = torch.arange(x.shape[0], dtype=torch.float64)
    for c in range(x.shape[1]):
        ok = ~torch.isnan(x[:, c])
        if not bool(ok.any()):
            raise ValueError(f"interpolate_gaps: channel {c} holds no finite value")
        if bool(ok.all()):
            continue
        xp, fp = t[ok], x[ok, c].double()
        idx = torch.searchsorted(xp, t).clamp(1, len(xp) - 1) if len(xp) > 1 else torch.zeros_like(t, dtype=torch.long)
        if len(xp) == 1:
            vals = fp[0].expand_as(t)
        else:
            x0_, x1_ = xp[idx - 1], xp[idx]
            w = ((t - x0_) / (x1_ - x0_)).clamp(0, 1)
            vals = fp[idx - 1] + w * (fp[idx] - fp[idx - 1])
        x[~ok, c] = vals[~ok].to(x.dtype)
    return x[:, 0] if x0.dim() == 1 else x
