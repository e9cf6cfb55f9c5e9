"""Squared Mahalanobis distances through a triangular factor: the precision's ``L`` (a triangular product) or the
covariance's Cholesky factor ``C`` (a triangular solve) (PaDiM, Gaussian AD, Lee, M-SVDD)."""
from __future__ import annotations

from typing import Any

import torch


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor, cholesky: bool = False) -> torch.Tensor:
    """Squared Mahalanobis distances ``d2 = || (x - mean) @ tril(factor) ||^2`` in float32 (``cholesky=False``),
    or ``d2 = || tril(factor)^{-1} (x - mean) ||^2`` (``cholesky=True``).

    The Gaussian's precision matrix is ``L L^T`` with ``L = tril(factor)`` lower triangular
    (:func:`fastad.gaussian.precision_factor` computes it from a covariance); only the lower triangle of
    ``factor`` is read.

    Args:
        x: ``Tensor[N, d]`` (one Gaussian) or ``Tensor[N, P, d]`` (one Gaussian per position, PaDiM),
            float32 / float16 / bfloat16, CPU or CUDA.
        mean: ``Tensor[d]`` / ``Tensor[P, d]``, float32 / float16 / bfloat16, on ``x``'s device.
        factor: ``Tensor[d, d]`` / ``Tensor[P, d, d]``, float32 / float16 / bfloat16 (accumulation is
            always float32), on ``x``'s device.

        cholesky: ``False`` (default): ``factor`` is the precision factor ``L`` (``precision = L L^T``).
            ``True``: ``factor`` is the covariance's lower Cholesky factor ``C`` (``covariance = C C^T``,
            ``torch.linalg.cholesky``) and the distances come from a forward substitution ``C z = x - mean``:
            the same d^2 / 2 multiply-adds per row as the product, and the fit needs no triangular inverse
            (PaDiM's default; CPU: 16 rows per SIMD group, the dependent diagonal blocks in registers).

    Returns:
        ``Tensor[N]`` / ``Tensor[N, P]`` float32 squared distances (take ``sqrt`` for the distance).

    Accuracy (tests/ops/test_mahalanobis.py, against the float64 reference on the same factor):
    float32 factor ~1e-5 relative; float16 factor: the factor is widened to float32 exactly, so also
    ~1e-5 relative to the float16-rounded model. bfloat16 factor on CPUs with AVX-512 BF16 (``vdpbf16ps``):
    ``x - mean`` is rounded to bfloat16 too, so ~1e-2 relative (bf16 keeps 8 bits); set
    ``FASTAD_FORCE_NO_BF16=1`` to widen the bf16 factor to float32 instead (~1e-5 relative, half the speed).

    CPU: the lower triangle is packed once per Gaussian (half the bytes and FLOPs of a dense product),
    blocks of rows are centred into a small float32 buffer and multiplied in a register-blocked 6 x 32
    AVX-512 micro-kernel whose epilogue squares and sums the whitened tile (it never leaves the
    registers); portable C++ without AVX-512. Parallel over positions (``P > 1``) or row blocks.
    NaN or Inf anywhere in ``x``, ``mean`` or the lower ``factor`` raises an error.

    Autograd: differentiable with respect to ``x``, ``mean`` and ``factor``
    (``d d2 / dx = 2 (x - mean) L L^T``, or ``2 C^{-T} C^{-1} (x - mean)``; plain torch in the backward).

    Example:
        >>> import torch, fastad
        >>> x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
        >>> L = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # precision diag(4, 1)
        >>> fastad.ops.mahalanobis(x, torch.zeros(2), L).tolist()
        [8.0, 0.0]
    """
    if not isinstance(x, torch.Tensor) or not isinstance(mean, torch.Tensor) or not isinstance(factor, torch.Tensor):
        raise TypeError("mahalanobis: x, mean and factor must be torch.Tensors")
    out = torch.ops.fastad.mahalanobis(x, mean, factor, cholesky)
    if out.device.type not in ("cpu", "meta") and out.numel() and not bool(torch.isfinite(out).all()):
        raise ValueError("mahalanobis: x, mean or factor hold NaN or Inf (non-finite distance)")
    return out


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, mean, factor = inputs[:3]
    ctx.cholesky = bool(inputs[3]) if len(inputs) > 3 else False
    ctx.save_for_backward(x, mean, factor)


def _backward_cholesky(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    """d2 = |z|^2 with C z = delta: d d2 = 2 w^T d delta - 2 w^T dC z with w = C^{-T} z."""
    x, mean, factor = ctx.saved_tensors
    C = factor.float().tril()
    delta = x.float() - mean.float()
    if x.dim() == 2:
        z = torch.linalg.solve_triangular(C, delta.T, upper=False)  # [d, N]
        w = torch.linalg.solve_triangular(C.T, z, upper=True) * (2.0 * grad[None, :])  # [d, N]
        gx = w.T
        gC = -(w @ z.T).tril()
    else:
        dp = delta.permute(1, 2, 0)  # [P, d, N]
        z = torch.linalg.solve_triangular(C, dp, upper=False)
        w = torch.linalg.solve_triangular(C.transpose(1, 2), z, upper=True) * (2.0 * grad.T[:, None, :])
        gx = w.permute(2, 0, 1)
        gC = -(w @ z.transpose(1, 2)).tril()
    gm = -gx.sum(0) if ctx.needs_input_grad[1] else None
    cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
    return (cast(gx, x) if ctx.needs_input_grad[0] else None, cast(gm, mean),
            cast(gC, factor) if ctx.needs_input_grad[2] else None, None)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    if ctx.cholesky:
        return _backward_cholesky(ctx, grad)
    x, mean, factor = ctx.saved_tensors
    L = factor.float().tril()
    delta = x.float() - mean.float()
    if x.dim() == 2:
        z = delta @ L  # [N, d]
        gz = 2.0 * grad[:, None] * z
        gx = gz @ L.T if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        gL = (delta.T @ gz).tril() if ctx.needs_input_grad[2] else None
        gm = -gx.sum(0) if gx is not None and ctx.needs_input_grad[1] else None
    else:
        z = torch.einsum("npk,pkj->npj", delta, L)
        gz = 2.0 * grad[:, :, None] * z
        gx = torch.einsum("npj,pkj->npk", gz, L) if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        gL = torch.einsum("npk,npj->pkj", delta, gz).tril() if ctx.needs_input_grad[2] else None
        gm = -gx.sum(0) if gx is not None and ctx.needs_input_grad[1] else None
    cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
    return (cast(gx, x) if ctx.needs_input_grad[0] else None, cast(gm, mean), cast(gL, factor), None)


torch.library.register_autograd("fastad::mahalanobis", _backward, setup_context=_setup_context)
