"""Streaming Gaussian statistics (the fit side of PaDiM / Gaussian AD / Lee / M-SVDD)."""
from __future__ import annotations

from typing import List, Optional

import torch


def gaussian_accumulate(x: torch.Tensor, shift: torch.Tensor, sum: torch.Tensor, sumsq: torch.Tensor,
                        row_start: Optional[torch.Tensor] = None) -> None:
    """Folds a batch into per-position shifted sums, in place: ``y = x - shift``;
    ``sum += y.sum(0)``; ``tril(sumsq) += tril(sum_n y_n y_n^T)`` (the strict upper triangle of
    ``sumsq`` is left untouched).

    Args:
        x: ``Tensor[N, d]`` or ``Tensor[N, P, d]``, float32 / float16 / bfloat16 / float64.
        shift: ``Tensor[d]`` / ``Tensor[P, d]`` float32 or float64 (pass the first batch's mean, the same
            for every batch: it keeps the products free of a large common offset).
        sum: ``Tensor[d]`` / ``Tensor[P, d]`` float64, contiguous (updated in place).
        sumsq: ``Tensor[d, d]`` / ``Tensor[P, d, d]`` float64, contiguous (lower triangle updated in place),
            or the lower triangles packed row by row, ``Tensor[d (d + 1) / 2]`` / ``Tensor[P, d (d + 1) / 2]``
            (entry ``(i, j)``, ``j <= i``, at ``i (i + 1) / 2 + j``: half the memory and traffic).
        row_start: optional ``Tensor[P]`` int64 (``Tensor[1]`` for ``[N, d]`` x), values in ``[0, d]``, on
            ``x``'s device: rows ``i < row_start[p]`` of position ``p``'s ``sumsq`` are not touched (their
            products are not formed). For positions whose leading features repeat another position's (a
            nearest-upsampled coarse layer, listed first): those rows are that position's, and the caller
            copies them once (:class:`fastad.gaussian.GaussianAccumulator`'s ``shared_rows``).

    Low-precision ``x``: products are formed in float32 over chunks of at most 256 rows (a lower-SYRK
    micro-kernel, half the FLOPs of a GEMM) and summed in float64; float64 ``x``: float64 throughout.
    No ``[N, P, d, d]`` temporary: per thread one 256-row chunk, one ``d x d`` float32 tile and, when a
    position has more than one chunk, one ``d x d`` float64 tile (its chunks are summed there, so ``sumsq``
    is read and written once per call).
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
    torch.ops.fastad.gaussian_accumulate(x, shift, sum, sumsq, row_start)


def gaussian_covariance(sumsq: torch.Tensor, m: torch.Tensor, n: float, scale: float, reg: float,
                        out: torch.Tensor, row_start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The covariances from :func:`gaussian_accumulate`'s sums, lower triangles only, in one pass (CPU or CUDA,
    the same roundings):
    for ``j <= i``, ``out[p, i, j] = (sumsq[p, i, j] - n * m[p, i] * m[p, j]) * scale``, plus ``reg`` on
    the diagonal, evaluated in float64 in that order and rounded once to ``out``'s dtype. The strict
    upper triangle of ``out`` is not written. With ``m = sum / n`` (the shifted means) and
    ``scale = 1 / (n - ddof)`` this is the covariance of the accumulated rows.

    Args:
        sumsq: ``Tensor[P, d, d]`` float64 (lower triangle read) or the packed lower triangles
            ``Tensor[P, d (d + 1) / 2]``; unbatched ``[d, d]`` / ``[d (d + 1) / 2]``.
        m: ``Tensor[P, d]`` / ``Tensor[d]`` float64.
        n, scale, reg: finite numbers.
        out: ``Tensor[P, d, d]`` / ``Tensor[d, d]`` float32 or float64, contiguous, written in place; all
            three tensors on one device.
        row_start: optional ``Tensor[P]`` int64 (``[1]`` unbatched) in ``[0, d]``: rows ``i < row_start[p]``
            of ``out[p]`` are not written (rows whose factor :func:`cholesky_lower` copies from another
            matrix).

    Returns:
        ``out``.

    Example:
        >>> import torch, fastad
        >>> s2 = torch.tensor([[10.0, 0.0], [20.0, 40.0]], dtype=torch.float64)
        >>> out = torch.zeros(2, 2)
        >>> fastad.ops.gaussian_covariance(s2, torch.tensor([2.0, 4.0], dtype=torch.float64), 2, 1.0, 0.0, out).tolist()
        [[2.0, 0.0], [4.0, 8.0]]
    """
    torch.ops.fastad.gaussian_covariance(sumsq, m, float(n), float(scale), float(reg), out, row_start)
    return out


def cholesky_lower(a: torch.Tensor, row_start: Optional[torch.Tensor] = None,
                   row_src: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Lower Cholesky factors in place (float32): ``a`` (lower triangle read) is overwritten by ``C``
    with ``C C^T = a`` in its lower triangle and zeros above; the float32 factorisation of the PaDiM fit.

    CPU: a left-looking blocked kernel (panels of 32 columns on AVX-512, 16 on AVX2, or the portable
    row-oriented algorithm with float64 dot products), parallel over the matrices: ~2x LAPACK's ``spotrf`` at d = 152 and ~1.6x at
    d = 550, 1 thread, with the same backward error (``max|C C^T - a| / max|a|`` ~2-3e-7 at d = 152 / 550;
    tests/ops/test_cholesky_lower.py).

    Args:
        a: ``Tensor[P, d, d]`` or ``Tensor[d, d]``, float32, contiguous; symmetric positive definite
            matrices of which only the lower triangle is read. Overwritten. On CUDA the op runs ATen's
            batched ``linalg_cholesky_ex`` (cuSOLVER) on the symmetrised matrices and writes the result back.
        row_start, row_src: optional ``Tensor[P]`` int64 each (``[1]`` unbatched), given together: matrices
            whose leading block of order ``row_start[p]`` is that of matrix ``row_src[p]`` (which has a
            smaller ``row_start``): the factor's rows ``i < row_start[p]`` are copied from that matrix once
            it is factorised, and only the rows below are factorised (``a[p]``'s rows above ``row_start[p]``
            are not read: PaDiM's positions that share the channels of a coarse layer). Matrices are
            factorised in order of increasing ``row_start``; one copying from a failed matrix gets its
            ``info`` (and is left as it was). With ``row_start`` a multiple of the kernel's panel (16 / 32)
            the factor is bit for bit that of the whole matrix (CPU); else the rows below a split panel
            differ by rounding.

    Returns:
        ``info``: ``Tensor[P]`` (``[]`` for ``[d, d]``) int64: 0 where the factorisation succeeded, else
        ``k >= 1``, the order of the first leading minor that is not positive definite (or holds NaN /
        Inf); such a matrix is left partially overwritten (LAPACK's ``info`` convention).

    Example:
        >>> import torch, fastad
        >>> a = torch.tensor([[4.0, 0.0], [2.0, 10.0]])
        >>> info = fastad.ops.cholesky_lower(a)
        >>> a.tolist(), int(info)
        ([[2.0, 0.0], [1.0, 3.0]], 0)
    """
    return torch.ops.fastad.cholesky_lower(a, row_start, row_src)


def gather_maps(maps: List[torch.Tensor], channels: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The rows of a multi-layer embedding (PaDiM's), position-major, in one pass: the concatenation of
    the layer maps, each resized to the first map's grid with ``F.interpolate(mode="nearest")``, its
    channels ``channels``, as ``[N, h * w, C]`` (``out[n, i * w + j, k]`` = channel ``channels[k]`` of the
    concatenation at ``(i, j)``); no resized or concatenated tensor is formed.

    Args:
        maps: a sequence of ``L >= 1`` maps ``Tensor[N, C_l, h_l, w_l]`` (float32; other float dtypes are
            cast), sharing ``N``; the first one's ``h x w`` grid is the output grid.
        channels: ``Tensor[C]`` int64, indices into the ``sum_l C_l`` concatenated channels.
        out: optional ``Tensor[N, h * w, C]`` float32, contiguous, written in place.

    Returns:
        ``out`` (a new ``Tensor[N, h * w, C]`` float32 when not given).

    Example:
        >>> import torch, fastad
        >>> a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1)
        >>> fastad.ops.gather_maps([a, b], torch.tensor([1, 0]))[0].tolist()
        [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    """
    if len(maps) == 0:
        raise ValueError("gather_maps: maps must hold at least one layer map")
    flat: List[torch.Tensor] = []
    for m in maps:
        flat.append(m.float() if m.is_floating_point() and m.dtype != torch.float32 else m)
    if out is None:
        f = flat[0]
        if f.dim() == 4 and channels.dim() == 1:
            res = torch.empty([f.shape[0], f.shape[2] * f.shape[3], channels.shape[0]], dtype=torch.float32, device=f.device)
        else:  # (the op names the argument)
            res = torch.empty([0], dtype=torch.float32, device=f.device)
    else:
        res = out
    torch.ops.fastad.gather_maps(flat, channels, res)
    return res
