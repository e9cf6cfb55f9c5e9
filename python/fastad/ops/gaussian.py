"""Streaming Gaussian statistics (the fit side of PaDiM / Gaussian AD / Lee / M-SVDD)."""
from __future__ import annotations

import torch


def gaussian_accumulate(x: torch.Tensor, shift: torch.Tensor, sum: torch.Tensor, sumsq: torch.Tensor) -> None:
    """Folds a batch into per-position shifted sums, in place: ``y = x - shift``;
    ``sum += y.sum(0)``; ``tril(sumsq) += tril(sum_n y_n y_n^T)`` (the strict upper triangle of
    ``sumsq`` is left untouched).

    Args:
        x: ``Tensor[N, d]`` or ``Tensor[N, P, d]``, float32 / float16 / bfloat16 / float64.
        shift: ``Tensor[d]`` / ``Tensor[P, d]`` float32 or float64 (pass the first batch's mean, the same
            for every batch: it keeps the products free of a large common offset).
        sum: ``Tensor[d]`` / ``Tensor[P, d]`` float64, contiguous (updated in place).
        sumsq: ``Tensor[d, d]`` / ``Tensor[P, d, d]`` float64, contiguous (lower triangle updated in place).

    Low-precision ``x``: products are formed in float32 over chunks of at most 256 rows (a lower-SYRK
    micro-kernel, half the FLOPs of a GEMM) and summed in float64; float64 ``x``: float64 throughout.
    No ``[N, P, d, d]`` temporary: per thread one 256-row chunk and one ``d x d`` float32 tile.
    NaN or Inf in ``x`` raise an error (the sums are then partially updated: discard them).

    Example:
        >>> import torch, fastad
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        >>> s, ss = torch.zeros(2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
        >>> fastad.ops.gaussian_accumulate(x, torch.zeros(2), s, ss)
        >>> s.tolist(), ss.tril().tolist()
        ([4.0, 8.0], [[10.0, 0.0], [20.0, 40.0]])
    """
    if x.device.type not in ("cpu", "meta") and x.numel() and not bool(torch.isfinite(x).all()):  # CPU checks itself
        raise ValueError("gaussian_accumulate: x holds NaN or Inf")
    torch.ops.fastad.gaussian_accumulate(x, shift, sum, sumsq)
