"""Gaussian models on features: fit (streaming, per position or single), shrinkage, precision factor,
Mahalanobis scoring, save/load. The shared core of PaDiM, Gaussian AD (Rippel), Lee et al., M-SVDD and
the embedding ``Mahalanobis`` detector.

>>> import torch
>>> from fastad.gaussian import gaussian_fit
>>> x = torch.randn(500, 8, dtype=torch.float64)
>>> g = gaussian_fit(x, shrinkage="ledoit_wolf")        # == sklearn.covariance.LedoitWolf().fit(x)
>>> d2 = g.mahalanobis(x[:3])                           # squared distances, as sklearn's mahalanobis()
>>> tuple(d2.shape), g.factor.shape
((3,), torch.Size([8, 8]))

Pieces:

- :class:`GaussianAccumulator`: ``update(batch)`` with ``[B, d]`` (one Gaussian) or ``[B, P, d]`` (one
  per position, PaDiM) batches, ``finalize(...)`` -> :class:`GaussianModel`. Sums are shifted by the
  first batch's mean and accumulated in float64 by :func:`fastad.ops.gaussian_accumulate` (a lower
  SYRK per position; no ``[N, P, d, d]`` tensor) into the lower triangles packed row by row (float64
  ``[P, d (d + 1) / 2]``: half the memory and traffic of ``[P, d, d]``). While the buffered batches take
  less memory than those sums would (at most ``d + 1`` float32 rows), they are kept as they are and
  folded position block by position block at ``finalize``: peak memory is then the data, the model
  and one block (PaDiM at d = 550: the model plus ~0.1 GB, instead of 2 GB of float64 sums).
  ``shared_rows`` (PaDiM's nearest-upsampled coarse layers, their channels first): positions whose leading
  features repeat another position's form those covariance rows once; the float32 Cholesky route copies
  the factor's leading rows too (``ops.cholesky_lower``'s ``row_start`` / ``row_src``). MTD (28 x 28 and a
  14 x 14 layer of 112 of 152 channels): 59% of the SYRK FLOPs, ~70% of the factorisation's.
- :func:`gaussian_fit`: the same on a tensor or an iterable of batches.
- Shrinkage (of the maximum-likelihood covariance ``S``, divided by ``N`` as scikit-learn):
  ``"ledoit_wolf"`` (== ``sklearn.covariance.LedoitWolf``), ``"oas"`` (== ``OAS``, scikit-learn 1.9
  formula), a float ``a`` in [0, 1] (== ``ShrunkCovariance(shrinkage=a)``) or ``None``; both
  estimators in closed form from the streamed sums (Ledoit-Wolf also needs ``sum_i |x_i - mu|^4``,
  streamed as shifted third/fourth moments). ``reg`` then adds ``reg * I`` (PaDiM: 0.01).
- :func:`precision_factor`: float64 Cholesky of the covariance -> the lower-triangular ``L`` with
  ``precision = L L^T``, the factor :func:`fastad.ops.mahalanobis` takes, cast to float32 / float16 /
  bfloat16 / float64.
- :class:`GaussianModel`: ``mean``, ``factor``, ``logdet`` (of the covariance), ``covariance`` (optional),
  ``shrinkage_``, ``n_samples_``; ``mahalanobis(X)`` (squared; float64 models score in float64 torch,
  the others through the op), ``precision()``, ``save(path)`` / ``GaussianModel.load(path)`` in the
  detectors' model-file format (``fastad.detectors.load`` reads it too).
"""
from __future__ import annotations

import math
import mmap
import sys
import time
from collections.abc import Iterable

import torch

from . import ops

SHRINKAGE_METHODS = ("ledoit_wolf", "oas")
_FACTOR_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: ``factor``: the precision's lower factor ``L`` (``precision = L L^T``) or the covariance's lower
#: Cholesky factor ``C`` (``covariance = C C^T``; fit skips the triangular inverse, scoring solves).
FACTOR_KINDS = ("precision", "cholesky")
#: float64 bytes of the per-block temporaries at finalize (covariance, Cholesky factor, inverse).
_BLOCK_BYTES = 96 * 2**20
#: Raw rows kept (unfolded) while ``rows x element bytes <= BUFFER_BYTES_PER_FEATURE x (d + 1) / 2``: 8 =
#: the float64 bytes per feature of the packed ``[P, d (d + 1) / 2]`` sums (beyond that the sums are smaller;
#: float32 rows: up to d + 1 of them).
BUFFER_BYTES_PER_FEATURE = 8
#: Once the sums exist, batches are buffered until this many rows and folded in one op call: one pass
#: over the float64 packed ``[P, d (d + 1) / 2]`` sums per FOLD_ROWS rows instead of one per batch (PaDiM
#: streams batches of ~32 images; at 784 x 152 the sums are 73 MB).
FOLD_ROWS = 256


#: CPU buffers of at least this many bytes come from :func:`empty_large` (huge pages).
_LARGE_BYTES = 4 << 20


def empty_large(shape, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``, but a CPU float32 / float64 buffer of at least
    4 MiB is allocated by numpy, which marks large allocations for transparent huge pages
    (``madvise(MADV_HUGEPAGE)`` on Linux; torch's allocator does not): its first touch then faults in
    2 MiB pages instead of 4 KiB ones. Measured on PaDiM's MTD fit buffers (160 MB rows, 72 MB factor):
    allocate + first write 0.057 -> 0.018 s and 0.027 -> 0.008 s, 1 thread."""
    import numpy as np

    dev = torch.device(device) if device is not None else torch.device("cpu")
    ndt = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
    numel = math.prod(int(s) for s in shape)
    if dev.type != "cpu" or ndt is None or numel * np.dtype(ndt).itemsize < _LARGE_BYTES:
        return torch.empty(tuple(shape), dtype=dtype, device=dev)
    return torch.from_numpy(np.empty(tuple(int(s) for s in shape), dtype=ndt))


def _release_range(lo: int, hi: int) -> None:
    """Returns the whole pages inside the address range [lo, hi) to the OS (Linux ``madvise(MADV_DONTNEED)``:
    private anonymous pages read back as zeros afterwards): for values no longer read."""
    global _LIBC
    page = mmap.PAGESIZE
    a, b = -(-lo // page) * page, hi // page * page
    if b <= a:
        return
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _LIBC.madvise(a, b - a, 4)  # MADV_DONTNEED; a failure only keeps the pages


_LIBC = None


#: finalize(consume=True): a given batch's rows go back once each image holds at least this many bytes of
#: finished positions not yet returned (one madvise per image and release; blocks of 13 positions at d = 550
#: would otherwise cost ~50 ms of calls per 200-image fit)
RELEASE_ROW_BYTES = 256 * 1024


def _release_block(s2, rows, r0: int, p0: int, p1: int, P: int, release: bool) -> int:
    """finalize(consume=True): positions [p0, p1) are done (and every position before them): the pages of
    their folded sums ``s2[p0:p1]`` go back to the OS, and of each given buffered batch ``b`` ([B, P, d],
    contiguous) the pages holding only done positions [r0, p1) of one image, once they span
    RELEASE_ROW_BYTES (the whole batch after the last block). Returns the first position not yet returned."""
    if not release:
        return r0
    if s2 is not None:
        t = s2[p0:p1]
        _release_range(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
    if not rows:
        return p1
    page = mmap.PAGESIZE
    if p1 < P and (p1 - r0) * rows[0].stride(1) * rows[0].element_size() < RELEASE_ROW_BYTES:
        return r0
    for b in rows:
        base, es = b.data_ptr(), b.element_size()
        if p1 == P:
            _release_range(base, base + b.numel() * es)
            continue
        img, pos = b.stride(0) * es, b.stride(1) * es
        for i in range(b.shape[0]):
            start = base + i * img
            lo = (start + r0 * pos) // page * page  # the page of position r0 ...
            _release_range(max(lo, start), start + p1 * pos)  # ... from its start if it is this image's
    return p1


def _check_shrinkage(shrinkage, where: str):
    if shrinkage is None or shrinkage in SHRINKAGE_METHODS:
        return
    if isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and 0.0 <= float(shrinkage) <= 1.0:
        return
    raise ValueError(f"{where}: shrinkage must be None, 'ledoit_wolf', 'oas' or a float in [0, 1], got {shrinkage!r}")


def _tri_inv_lower(C: torch.Tensor) -> torch.Tensor:
    """Inverse of lower-triangular ``C: Tensor[..., n, n]`` by recursive 2 x 2 blocking (batched GEMMs
    on the off-diagonal block; ``solve_triangular`` against the identity below 128 rows)."""
    n = C.shape[-1]
    if n <= 128:
        eye = torch.eye(n, dtype=C.dtype, device=C.device).expand(C.shape)
        return torch.linalg.solve_triangular(C, eye, upper=False)
    h = n // 2
    out = torch.zeros_like(C)
    Ai = _tri_inv_lower(C[..., :h, :h])
    Di = _tri_inv_lower(C[..., h:, h:])
    out[..., :h, :h] = Ai
    out[..., h:, h:] = Di
    out[..., h:, :h] = -(Di @ (C[..., h:, :h] @ Ai))
    return out


#: Diagonal blocks up to this size are inverted by LAPACK ``trtri``; larger ones recursively (below).
_TRTRI_BASE = 64


def _tri_inv_f(a, trtri, trmm) -> int:
    """In-place inverse of the lower triangle of the Fortran-ordered square array ``a`` (its strict
    upper triangle is left as it is); returns LAPACK's ``info`` (0: success).

    ``[[A, 0], [B, D]]^{-1} = [[A^{-1}, 0], [-D^{-1} B A^{-1}, D^{-1}]]``: the two halves recursively,
    then two BLAS-3 ``trmm`` products (the same d^3 / 3 flops as ``trtri``); measured 2.1x faster than
    OpenBLAS's own ``strtri`` at d = 550 (1.16 vs 2.45 ms, 1 thread)."""
    m = a.shape[0]
    if m <= _TRTRI_BASE:
        r, info = trtri(a, lower=1, overwrite_c=1)
        if info == 0 and r is not a:
            a[...] = r
        return info
    h = m // 2
    info = _tri_inv_f(a[:h, :h], trtri, trmm) or _tri_inv_f(a[h:, h:], trtri, trmm)
    if info:
        return info
    b = trmm(1.0, a[:h, :h], a[h:, :h], side=1, lower=1)  # B A^{-1}
    a[h:, :h] = trmm(-1.0, a[h:, h:], b, side=0, lower=1)  # -D^{-1} (B A^{-1})
    return 0


def _not_pd(what, first, total, pos, is_batch):
    where = f" of position {first + pos} (of {total})" if is_batch and total else ""
    return ValueError(
        f"{what}: the covariance{where} is not positive definite (singular: e.g. fewer samples than "
        f"features, or constant features); use shrinkage ('ledoit_wolf', 'oas') or reg > 0"
    )


def _lapack():
    try:
        from scipy.linalg import lapack
    except ImportError:  # pragma: no cover - scipy is a runtime dependency
        return None
    return lapack


_BLAS_CONTROLLER = []  # a threadpoolctl.ThreadpoolController, made once (it lists the loaded libraries)


def _blas_threads():
    """A context limiting scipy's BLAS threads to torch's thread count (threadpoolctl, when installed).
    The controller is built once: listing the process's libraries costs ~10 ms per call."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    if not _BLAS_CONTROLLER:
        _BLAS_CONTROLLER.append(ThreadpoolController())
    return _BLAS_CONTROLLER[0].limit(limits=torch.get_num_threads(), user_api="blas")


def _factor_logdet(cov: torch.Tensor, what: str = "cov", first: int = 0, total: int = 0, out=None,
                   compute_dtype: torch.dtype = torch.float64, work=None):
    """``(L, logdet)`` of a float64 covariance block ``[..., d, d]`` whose lower triangle is read (the
    strict upper one may hold anything): L lower with ``L L^T = cov^{-1}``, written to ``out`` when given.
    ``compute_dtype=torch.float32`` factorises in float32 (``spotrf`` + ``strtri``, ~3x faster on this
    CPU; relative error of the distances ~0.1 cond(cov) 6e-8, see :func:`GaussianAccumulator.finalize`).

    With ``F = J cov J`` (``J`` reverses the order) and ``F = U^T U`` (U upper),
    ``cov^{-1} = (J U^{-1} J)(J U^{-1} J)^T`` and ``J U^{-1} J`` is lower triangular: one Cholesky and
    one triangular inverse (2/3 d^3 flops). On the CPU both run per matrix as LAPACK ``potrf`` + the
    recursive ``trmm`` inverse of :func:`_tri_inv_f` (scipy; measured ~2x faster than
    ``torch.linalg.cholesky`` + ``solve_triangular(C, I)`` at d = 550, and a triangular inverse does half
    the flops of a solve against the identity); elsewhere batched torch."""
    lapack = _lapack() if cov.device.type == "cpu" else None
    single = compute_dtype == torch.float32
    batch = cov.dim() == 3
    c3 = cov if batch else cov[None]
    n, d = c3.shape[0], c3.shape[-1]
    if out is None:
        out = torch.empty(cov.shape, dtype=torch.float64, device=cov.device)
    o3 = out if batch else out[None]
    if lapack is not None:
        import numpy as np

        # F = J cov J in C order holds cov's lower triangle in its upper one; viewed in Fortran order
        # (F^T, no copy) that is a lower triangle: factorised and inverted in place, lower = 1.
        # (J M J is the flat reversal of M's C-order buffer: numpy's reversed copy is ~6x torch.flip's)
        src = c3.contiguous().numpy().reshape(n, d * d)
        ndt = np.float32 if single else np.float64
        # (work: a reused buffer of at least n d^2 elements; a fresh one is page-faulted in every call)
        arr = np.empty((n, d, d), dtype=ndt) if work is None else work[: n * d * d].view(ndt).reshape(n, d, d)
        np.copyto(arr.reshape(n, d * d), src[:, ::-1], casting="unsafe")
        logdet = torch.empty(n, dtype=torch.float64)
        from scipy.linalg import blas

        potrf, trtri = (lapack.spotrf, lapack.strtri) if single else (lapack.dpotrf, lapack.dtrtri)
        trmm = blas.strmm if single else blas.dtrmm
        with _blas_threads():
            for p in range(n):
                a = arr[p].T  # F-contiguous view
                C, info = potrf(a, lower=1, clean=1, overwrite_a=1)
                if info != 0:
                    raise _not_pd(what, first, total, p, batch)
                if not np.shares_memory(C, a):
                    a[...] = C
                logdet[p] = 2.0 * float(np.log(np.diagonal(a).astype(np.float64)).sum())
                if _tri_inv_f(a, trtri, trmm) != 0:
                    raise _not_pd(what, first, total, p, batch)
        # L = J C^{-T} J: in C order exactly the reversed Fortran-order buffer of C^{-1}
        rev = arr.reshape(n, d * d)[:, ::-1]
        if o3.dtype in (torch.float32, torch.float64) and o3.is_contiguous():
            np.copyto(o3.numpy().reshape(n, d * d), rev)
        else:
            o3.copy_(torch.from_numpy(np.ascontiguousarray(rev)).reshape(n, d, d))
        return out, (logdet if batch else logdet[0])
    full = cov.tril() + cov.tril(-1).transpose(-1, -2)
    C, info = torch.linalg.cholesky_ex(full.flip(-1, -2).to(torch.float32 if single else torch.float64))
    if bool((info != 0).any()):
        bad = torch.nonzero(info.reshape(-1)).flatten()
        raise _not_pd(what, first, total, int(bad[0]), batch)
    logdet = 2.0 * torch.log(torch.diagonal(C, dim1=-2, dim2=-1).double()).sum(-1)
    out.copy_(_tri_inv_lower(C).transpose(-1, -2).flip(-1, -2))
    return out, logdet


#: float32 Cholesky factors whose squared diagonal ratio ``(max C_ii / min C_ii)^2`` (a lower bound of
#: cond(cov)) exceeds this are recomputed in float64 (then rounded to float32): float32's rounding moves
#: the distances by up to ~cond(cov) 6e-8 relative, so this keeps that bound near 1e-4 or below.
F32_CHOL_MAX_DIAG_RATIO_SQ = 2000.0


def _simd_cholesky() -> bool:
    """Whether :func:`fastad.ops.cholesky_lower` runs a SIMD kernel on this CPU now (AVX2 / AVX-512; the
    environment overrides of the ops apply): only then is it faster than LAPACK ``spotrf``."""
    from ._library import op_kernels

    return not op_kernels().get("cholesky_lower", "portable").startswith("portable")


def _cholesky_logdet(cov, out: torch.Tensor, what: str = "cov", first: int = 0, total: int = 0,
                     compute_dtype: torch.dtype = torch.float32, work=None, rows=None):
    """Lower Cholesky factors ``C`` (``C C^T = cov``) of a float64 block ``cov: [n, d, d]`` (lower triangle
    read) written to ``out: [n, d, d]`` (strict upper triangle zero) and the float64 log-determinants.

    ``cov`` may also be a function ``p -> Tensor[d, d]`` float64 when ``out`` (float32) already holds the
    float32 covariances (the float64 ones are then formed only for the matrices redone in float64).

    ``compute_dtype=torch.float32``: :func:`fastad.ops.cholesky_lower` in place in ``out`` (float32, no copy
    besides the cast; ~2x LAPACK ``spotrf`` at d = 152), with a float64 ``dpotrf`` redo for the
    matrices that fail in float32 or whose squared diagonal ratio exceeds
    :data:`F32_CHOL_MAX_DIAG_RATIO_SQ` (ill-conditioned); ``torch.float64``: ``dpotrf`` for all. Returns
    ``(logdet, n_refactored)``. ``rows``: ``(row_start, row_src)`` of ``ops.cholesky_lower`` (shared leading
    rows; the op's route only, with a prepared ``cov`` that gives whole matrices for the float64 redo)."""
    prepared = callable(cov)
    n, d = out.shape[0], out.shape[-1]
    lapack = _lapack() if out.device.type == "cpu" else None
    single = compute_dtype == torch.float32
    logdet = torch.empty(n, dtype=torch.float64)
    redo = 0
    if prepared and not (lapack is not None and single and out.dtype == torch.float32 and out.is_contiguous()):
        raise ValueError("_cholesky_logdet: a prepared float32 covariance needs the CPU float32 LAPACK route")
    if lapack is not None and out.dtype in (torch.float32, torch.float64) and out.is_contiguous():
        import numpy as np

        src = None if prepared else cov.contiguous().numpy()
        dst = out.numpy()
        f64 = (work[: d * d].view(np.float64).reshape(d, d) if work is not None and work.dtype == np.float64
               else np.empty((d, d), dtype=np.float64))
        fast = single or out.dtype == torch.float64
        if fast and not prepared:
            out.copy_(cov)  # one vectorised cast of the block (the factorisation zeroes the strict upper triangle)
        with _blas_threads():
            # the fast pass: in place per matrix (info != 0 marks a failure): float32 by ops.cholesky_lower
            # (~2x spotrf at d = 152, ~1.6x at d = 550, the same backward error), float64 by LAPACK dpotrf
            infos = np.zeros(n, dtype=np.int64)
            if fast:
                if dst.dtype == np.float32 and _simd_cholesky():
                    infos = (ops.cholesky_lower(out) if rows is None else ops.cholesky_lower(out, *rows)).numpy()
                else:  # float64, or a CPU without AVX2 (the op's portable loop is ~4x slower than spotrf)
                    if rows is not None:
                        raise ValueError("_cholesky_logdet: shared rows need ops.cholesky_lower's SIMD route")
                    potrf = lapack.spotrf if dst.dtype == np.float32 else lapack.dpotrf
                    for p in range(n):
                        a = dst[p].T  # F-contiguous view: upper triangle = C-order lower
                        C, info = potrf(a, lower=0, clean=1, overwrite_a=1)
                        if info == 0 and not np.shares_memory(C, a):
                            a[...] = C
                        infos[p] = info
                diag_all = torch.diagonal(out, dim1=-2, dim2=-1).double()
                ratio = (diag_all.amax(-1) / diag_all.amin(-1)).square()
                okv = (torch.from_numpy(infos) == 0) & ((ratio <= F32_CHOL_MAX_DIAG_RATIO_SQ) | (out.dtype == torch.float64))
                logdet.copy_(2.0 * torch.log(diag_all.clamp_min(1e-300)).sum(-1))
                todo = torch.nonzero(~okv).flatten().tolist()
            else:
                todo = list(range(n))
            for p in todo:  # float64 (compute_dtype float64, a float32 failure or an ill-conditioned matrix)
                a = f64.T
                np.copyto(f64, cov(p).numpy() if prepared else src[p])
                C, info = lapack.dpotrf(a, lower=0, clean=1, overwrite_a=1)
                if info != 0:
                    raise _not_pd(what, first, total, p, True)
                if not np.shares_memory(C, a):
                    a[...] = C
                np.copyto(dst[p], f64, casting="unsafe")
                redo += fast
                logdet[p] = 2.0 * float(np.log(np.diagonal(f64)).sum())
        return logdet, redo
    full = cov.tril() + cov.tril(-1).transpose(-1, -2)
    C, info = torch.linalg.cholesky_ex(full.to(torch.float32 if single else torch.float64))
    if single:
        dg = torch.diagonal(C, dim1=-2, dim2=-1)
        bad = (info != 0) | ((dg.amax(-1) / dg.amin(-1)) ** 2 > F32_CHOL_MAX_DIAG_RATIO_SQ)
        if bool(bad.any()):
            C64, info64 = torch.linalg.cholesky_ex(full[bad])
            C = C.clone()
            C[bad] = C64.to(C.dtype)
            info = info.clone()
            info[bad] = info64
            redo = int(bad.sum())
    if bool((info != 0).any()):
        raise _not_pd(what, first, total, int(torch.nonzero(info.reshape(-1)).flatten()[0]), True)
    logdet.copy_(2.0 * torch.log(torch.diagonal(C, dim1=-2, dim2=-1).double()).sum(-1))
    out.copy_(C)
    return logdet, redo


def precision_factor(cov: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The lower-triangular factor ``L`` of the precision (``L L^T = cov^{-1}``), the ``factor`` of
    :func:`fastad.ops.mahalanobis`.

    Args:
        cov: ``Tensor[d, d]`` or ``Tensor[P, d, d]`` symmetric positive definite covariance(s).
        dtype: float32 (default), float16, bfloat16 or float64.

    The Cholesky factorisation and the triangular inverse run in float64 whatever ``cov``'s dtype;
    ``L`` is cast to ``dtype`` at the end. A covariance that is not positive definite raises a
    ``ValueError`` naming ``cov`` (and the position).
    """
    if not isinstance(cov, torch.Tensor) or cov.dim() not in (2, 3) or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"precision_factor: cov must be a [d, d] or [P, d, d] tensor, got "
                         f"{tuple(cov.shape) if isinstance(cov, torch.Tensor) else type(cov).__name__}")
    if dtype not in _FACTOR_DTYPES:
        raise ValueError(f"precision_factor: dtype must be one of {_FACTOR_DTYPES}, got {dtype}")
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("precision_factor: cov holds NaN or Inf")
    L, _ = _factor_logdet(cov.double().contiguous(), "precision_factor: cov", total=cov.shape[0] if cov.dim() == 3 else 0)
    return L.to(dtype)


class GaussianModel:
    """A fitted Gaussian (``P`` = 1) or a family of per-position Gaussians.

    Attributes: ``mean`` (``Tensor[d]`` / ``[P, d]``), ``factor`` (lower ``L``, ``precision = L L^T``,
    ``[d, d]`` / ``[P, d, d]``; with ``factor_kind == "cholesky"`` the covariance's lower Cholesky factor
    ``C``, ``covariance = C C^T``, scored by a triangular solve), ``logdet`` (log-determinant of each covariance, float64), ``covariance``
    (float64, or ``None`` when not kept), ``shrinkage_`` (the coefficient(s) used: float or
    ``Tensor[P]``), ``n_samples_``.
    """

    def __init__(self, mean, factor, *, logdet=None, covariance=None, shrinkage_=0.0, n_samples_=None,
                 factor_kind: str = "precision"):
        if factor_kind not in FACTOR_KINDS:
            raise ValueError(f"GaussianModel: factor_kind must be one of {FACTOR_KINDS}, got {factor_kind!r}")
        self.factor_kind = factor_kind
        if mean.dim() not in (1, 2) or factor.dim() != mean.dim() + 1 or factor.shape[:-1] != mean.shape or factor.shape[-1] != mean.shape[-1]:
            raise ValueError(f"GaussianModel: mean [d] / [P, d] and factor [d, d] / [P, d, d] do not match: "
                             f"mean {tuple(mean.shape)}, factor {tuple(factor.shape)}")
        self.mean, self.factor, self.logdet, self.covariance = mean, factor, logdet, covariance
        self.shrinkage_, self.n_samples_ = shrinkage_, n_samples_

    @property
    def per_position(self) -> bool:
        return self.mean.dim() == 2

    def mahalanobis(self, X: torch.Tensor, squared: bool = True) -> torch.Tensor:
        """Squared Mahalanobis distances of ``X: Tensor[N, d]`` (``[N, P, d]`` for a per-position model)
        -> ``Tensor[N]`` / ``[N, P]`` (scikit-learn's ``mahalanobis()`` is squared too; ``squared=False``
        takes the square root). A float64 factor scores in float64 (plain torch), the others through
        :func:`fastad.ops.mahalanobis` in float32."""
        if not isinstance(X, torch.Tensor):
            X = torch.as_tensor(X)
        want = self.mean.dim() + 1
        if X.dim() != want or X.shape[1:] != self.mean.shape:
            raise ValueError(f"GaussianModel.mahalanobis: X must be [N, {', '.join(map(str, self.mean.shape))}], got {tuple(X.shape)}")
        chol = self.factor_kind == "cholesky"
        if self.factor.dtype == torch.float64:
            if not bool(torch.isfinite(X).all()):
                raise ValueError("GaussianModel.mahalanobis: X holds NaN or Inf")
            delta = X.double() - self.mean.double().to(X.device)
            L = self.factor.tril().to(X.device)
            if chol:
                z = torch.linalg.solve_triangular(L, delta.T if X.dim() == 2 else delta.permute(1, 2, 0), upper=False)
                d2 = z.square().sum(0) if X.dim() == 2 else z.square().sum(1).T
            else:
                z = delta @ L if X.dim() == 2 else torch.einsum("npk,pkj->npj", delta, L)
                d2 = z.square().sum(-1)
        else:
            Xf = X if X.dtype in (torch.float32, torch.float16, torch.bfloat16) else X.float()
            d2 = ops.mahalanobis(Xf, self.mean.float().to(X.device), self.factor.to(X.device), cholesky=chol)
        return d2 if squared else d2.clamp_min(0).sqrt()

    def precision(self) -> torch.Tensor:
        """``L L^T`` in float64 (scikit-learn's ``precision_``; ``C^{-T} C^{-1}`` for a Cholesky factor)."""
        L = self.factor.double().tril()
        if self.factor_kind == "cholesky":
            return torch.cholesky_inverse(L)
        return L @ L.transpose(-1, -2)

    def to(self, device=None, factor_dtype=None) -> "GaussianModel":
        f = self.factor if factor_dtype is None else self.factor.to(factor_dtype)
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return GaussianModel(mv(self.mean), mv(f), logdet=mv(self.logdet), covariance=mv(self.covariance),
                             shrinkage_=self.shrinkage_, n_samples_=self.n_samples_, factor_kind=self.factor_kind)

    # ---- persistence: the detectors' model-file format (safetensors + JSON, digests) ----
    def save(self, path):
        from .detectors._io import write_model_file  # detectors' format; imported lazily (higher layer)

        t = {"mean": self.mean, "factor": self.factor}
        if self.logdet is not None:
            t["logdet"] = torch.as_tensor(self.logdet)
        if self.covariance is not None:
            t["covariance"] = self.covariance
        sh = self.shrinkage_
        if isinstance(sh, torch.Tensor):
            t["shrinkage"] = sh
            sh = None
        return write_model_file(path, type(self).__name__, t, {"shrinkage": sh, "n_samples": self.n_samples_,
                                                               "factor_kind": self.factor_kind})

    @classmethod
    def load(cls, path, device=None) -> "GaussianModel":
        from .detectors import load

        g = load(path, device=device)
        if not isinstance(g, cls):
            raise ValueError(f"GaussianModel.load: {str(path)!r} holds a {type(g).__name__}, not a GaussianModel")
        return g

    @classmethod
    def _from_file(cls, path, meta, tensors, device=None, backbone=None):
        from .detectors import ModelFileError

        if not {"mean", "factor"} <= set(tensors):
            raise ModelFileError(path, f"a GaussianModel file holds 'mean' and 'factor', found {sorted(tensors)}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        get = lambda k: tensors[k].to(dev) if k in tensors else None  # noqa: E731
        sh = tensors["shrinkage"] if "shrinkage" in tensors else meta.get("shrinkage", 0.0)
        try:
            return cls(get("mean"), get("factor"), logdet=get("logdet"), covariance=get("covariance"),
                       shrinkage_=sh, n_samples_=meta.get("n_samples"), factor_kind=meta.get("factor_kind", "precision"))
        except ValueError as e:
            raise ModelFileError(path, str(e)) from None


def _packed_rows(e: int) -> int:
    """The rows ``r`` whose packed lower triangle has ``e = r (r + 1) / 2`` entries."""
    return int(round(((8 * e + 1) ** 0.5 - 1) / 2))


def _shared_row_plan(shared_rows, P: int, d: int, what: str = "GaussianAccumulator"):
    """Checks ``shared_rows`` (see :class:`GaussianAccumulator`) for ``P`` positions of ``d`` features.
    Returns ``(row_start, copies, row_src, cuts)``: ``row_start`` ``Tensor[P]`` int64 (the first row each
    position forms itself), ``copies``, per pair, ``(a, e, dst, src)``: the packed entries ``[a, e)`` (the
    pair's rows) of positions ``dst`` are those of ``src``, ``row_src`` ``Tensor[P]``: a position holding all
    of rows ``[0, row_start[p])`` of position ``p`` (the owner of the last pair ``p`` does not own), and
    ``cuts``: the positions ``b`` at which a block of positions may start (every owner of a position
    ``>= b`` is ``>= b``)."""
    ends, owners, prev = [], [], 0
    pos = torch.arange(P)
    for k, pair in enumerate(shared_rows):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"{what}: shared_rows[{k}] must be an (end, owner) pair, got {pair!r}")
        end, owner = pair
        if not (isinstance(end, int) and prev < end <= d):
            raise ValueError(f"{what}: shared_rows[{k}]'s end must be an int in ({prev}, d = {d}] (ends increase), "
                             f"got {end!r}")
        if not (isinstance(owner, torch.Tensor) and owner.dtype == torch.int64 and tuple(owner.shape) == (P,)):
            raise ValueError(f"{what}: shared_rows[{k}]'s owner must be an int64 Tensor[{P}] (one per position), got "
                             f"{tuple(owner.shape) if isinstance(owner, torch.Tensor) else type(owner).__name__}"
                             f"{' ' + str(owner.dtype) if isinstance(owner, torch.Tensor) else ''}")
        owner = owner.cpu()
        if bool(((owner < 0) | (owner > pos)).any()) or not torch.equal(owner[owner], owner):
            raise ValueError(f"{what}: shared_rows[{k}]'s owner must map each position p to a position <= p that owns "
                             "itself (owner[p] <= p, owner[owner[p]] == owner[p])")
        if owners and bool(((owners[-1] == pos) & (owner != pos)).any()):
            raise ValueError(f"{what}: shared_rows[{k}]: a position owning rows [0, {ends[-1]}) must own the rows up to "
                             f"{end} too (pairs listed coarse to fine)")
        ends.append(end)
        owners.append(owner)
        prev = end
    row_start = torch.zeros(P, dtype=torch.int64)
    row_src = pos.clone()  # the owner of the last pair a position does not own: rows [0, row_start) are its
    first = pos.clone()  # the smallest owner of each position (blocks of positions must hold it)
    copies, a = [], 0
    for end, owner in zip(ends, owners):
        mine = owner == pos
        row_start[~mine] = end
        row_src[~mine] = owner[~mine]
        first = torch.minimum(first, owner)
        dst = torch.nonzero(~mine).flatten()
        if dst.numel():
            copies.append((a * (a + 1) // 2, end * (end + 1) // 2, dst, owner[dst]))
        a = end
    # block boundaries b that no position at or after b reaches before b through its owners
    tail_min = first.flip(0).cummin(0).values.flip(0)
    cuts = torch.nonzero(tail_min == pos).flatten()
    return row_start, copies, row_src, cuts


class GaussianAccumulator:
    """Streaming mean and covariance of batches ``[B, d]`` or ``[B, P, d]`` (see the module docstring).

    Args:
        fourth_moments: also stream the moments Ledoit-Wolf shrinkage needs (set by :func:`gaussian_fit`
            when ``shrinkage="ledoit_wolf"``; costs one float64 pass over each batch).
        shared_rows: ``[B, P, d]`` batches whose leading features repeat across positions (PaDiM: the
            channels of nearest-upsampled coarse layers, placed first): ``[(end, owner), ...]``, ``end``
            increasing in ``[1, d]``, ``owner`` an int64 ``Tensor[P]`` such that the features ``[0, end)`` of
            position ``p`` equal those of ``owner[p]`` in every batch row (``owner[p] <= p``, owners own
            themselves, and a position owning one pair's rows owns the later pairs' rows). The products of
            those covariance rows are then formed once, at the owner, and copied at ``finalize``: the same
            sums (the same products in the same order), with fewer FLOPs (PaDiM on a 28 x 28 grid with a
            14 x 14 layer: 41% fewer). Checked on the first two rows (ValueError when a position's features
            differ from its owner's there). Used once the sums are folded (more than ``d + 1`` rows).
    """

    def __init__(self, *, fourth_moments: bool = False, shared_rows=None):
        self.fourth_moments = fourth_moments
        self.shared_rows = shared_rows
        self._row_plan = None  # (row_start, copies) once the shape is known
        self.n = 0
        self.shape = None  # (P or None, d)
        self.shift = self.s1 = self.s2 = self.q3 = self.q4 = None
        self._buf: list[torch.Tensor] = []
        self._given: list[bool] = []  # per buffered batch: the accumulator's to discard (copies, give=True)
        self._nbuf = 0
        self._t_syrk = 0.0  # process CPU seconds in gaussian_accumulate (fit_timings_)
        self._syrk_flops = 0  # multiply-adds x 2 of the products formed (benchmarks)
        self._consumed = False  # finalize(consume=True) released the sums

    def update(self, batch: torch.Tensor, copy: bool = True, give: bool = False) -> "GaussianAccumulator":
        """Adds a batch (float32 / float16 / bfloat16 / float64). ``copy=False`` keeps a reference to
        ``batch`` until it is folded: the caller must not modify it in place meanwhile. ``give=True`` (with
        ``copy=False``) hands ``batch`` over: ``finalize(consume=True)`` may discard its memory (its values
        are then lost) as soon as its rows are no longer needed."""
        if self._consumed:
            raise ValueError("GaussianAccumulator.update: this accumulator was finalised with consume=True; start a new one")
        if not isinstance(batch, torch.Tensor) or batch.dim() not in (2, 3):
            raise ValueError(f"GaussianAccumulator.update: batch must be a [B, d] or [B, P, d] tensor, got "
                             f"{tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__}")
        if batch.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise ValueError(f"GaussianAccumulator.update: batch must be floating point, got {batch.dtype}")
        shape = tuple(batch.shape[1:])
        if self.shape is None:
            if batch.shape[0] == 0:
                return self
            # (NaN / Inf: gaussian_accumulate raises when the batch is folded)
            self.shape, self.dtype, self.device = shape, batch.dtype, batch.device
            if self.shared_rows:
                self._plan_shared_rows(batch)
            sdt = torch.float64 if batch.dtype == torch.float64 else torch.float32
            # any shift near the mean keeps the shifted products small; the mean of the first <= 64 rows
            # (a float64 mean of the whole first batch cost ~8% of PaDiM's d = 550 fit)
            head = batch[:64]
            self.shift = (head.mean(0) if head.dtype in (torch.float32, torch.float64) else head.float().mean(0)).to(sdt)
            if self._row_plan is not None:
                # shared rows: a position's shared features take its owner's shift, bit for bit (torch's
                # mean may round equal columns differently), so the owner's products are the position's own
                for _a, e, dst, src in self._row_plan[1]:
                    end = _packed_rows(e)
                    self.shift[dst.to(self.shift.device), :end] = self.shift[src.to(self.shift.device), :end]
            self.s1 = torch.zeros(shape, dtype=torch.float64, device=batch.device)
            if self.fourth_moments:
                self.q3 = torch.zeros(shape, dtype=torch.float64, device=batch.device)
                self.q4 = torch.zeros(shape[:-1], dtype=torch.float64, device=batch.device)
        elif shape != self.shape:
            raise ValueError(f"GaussianAccumulator.update: batch is {tuple(batch.shape)} but earlier batches were [B, {', '.join(map(str, self.shape))}]")
        elif batch.device != self.device:
            raise ValueError(f"GaussianAccumulator.update: batch is on {batch.device} but earlier batches were on {self.device}")
        if batch.shape[0] == 0:
            return self
        if self.fourth_moments:
            y = batch.double() - self.shift.double()
            a = y.square().sum(-1)
            self.q4 += a.square().sum(0)
            self.q3 += (a.unsqueeze(-1) * y).sum(0)
            del y
        b = batch.detach()
        self._buf.append(b.clone() if copy else b)
        self._given.append(bool(copy or give))
        self._nbuf += b.shape[0]
        self.n += b.shape[0]
        d = self.shape[-1]
        # keep raw rows while they are smaller than the float64 packed sums would be; afterwards
        # fold every FOLD_ROWS rows
        if (self._nbuf >= FOLD_ROWS) if self.s2 is not None else (self._nbuf * b.element_size() > BUFFER_BYTES_PER_FEATURE * (d + 1) / 2):
            self._fold()
        return self

    def _plan_shared_rows(self, batch: torch.Tensor) -> None:
        if batch.dim() != 3:
            self.shape = None
            raise ValueError(f"GaussianAccumulator: shared_rows needs [B, P, d] batches, got {tuple(batch.shape)}")
        P, d = self.shape
        try:
            row_start, copies, row_src, cuts = _shared_row_plan(self.shared_rows, P, d)
        except ValueError:
            self.shape = None
            raise
        head = batch[:2]
        for a, e, dst, src in copies:  # the promise, on the first rows: features [0, end) equal the owner's
            end = _packed_rows(e)
            ok = (head[:, dst.to(batch.device), :end] == head[:, src.to(batch.device), :end]).all(-1).all(0).cpu()
            if not bool(ok.all()):
                k = int((~ok).nonzero()[0, 0])
                self.shape = None
                raise ValueError(f"GaussianAccumulator: shared_rows: position {int(dst[k])}'s features [0, {end}) differ "
                                 f"from its owner's (position {int(src[k])}) in the first rows")
        self._row_plan = (row_start.to(batch.device), copies, row_src.to(batch.device), cuts)

    def _copy_shared_rows(self) -> None:
        """shared_rows: the sums' rows each position left to its owners, copied from them (again at every
        finalize: the op never touches them, and the owners' rows hold every batch so far)."""
        t = time.process_time()
        for a, e, dst, src in self._row_plan[1]:
            self.s2[dst.to(self.s2.device), a:e] = self.s2[src.to(self.s2.device), a:e]
        self._t_syrk += time.process_time() - t

    @property
    def holds_rows(self) -> bool:
        """Whether batches given with ``copy=False`` are still referenced (not yet folded into the sums)."""
        return bool(self._buf)

    def _fold(self):
        if self.s2 is None:
            # the lower triangles packed row by row (gaussian_accumulate's packed layout): half the bytes
            # and the traffic of [P, d, d]; read at finalize by ops.gaussian_covariance
            d = self.shape[-1]
            shape = self.shape[:-1] + (d * (d + 1) // 2,)
            if self.device.type == "cpu":  # calloc'd: zero pages from the kernel, no separate zero-fill pass
                import numpy as np

                self.s2 = torch.from_numpy(np.zeros(shape, dtype=np.float64))
            else:
                self.s2 = torch.zeros(shape, dtype=torch.float64, device=self.device)
        if self._buf:
            x = self._buf[0] if len(self._buf) == 1 else torch.cat(self._buf)
            self._buf, self._given, self._nbuf = [], [], 0
            t = time.process_time()
            ops.gaussian_accumulate(x, self.shift, self.s1, self.s2, None if self._row_plan is None else self._row_plan[0])
            self._t_syrk += time.process_time() - t
            self._syrk_flops += 2 * x.shape[0] * self._tri_entries()

    def _tri_entries(self) -> int:
        """Lower-triangle entries the op forms per row of a batch (all positions; fewer with shared rows)."""
        d = self.shape[-1]
        P = self.shape[0] if len(self.shape) == 2 else 1
        full = P * d * (d + 1) // 2
        if self._row_plan is None:
            return full
        r = self._row_plan[0].cpu()
        return full - int((r * (r + 1) // 2).sum())

    def finalize(self, *, shrinkage=None, reg: float = 0.0, ddof: int = 0, factor_dtype=None,
                 keep_covariance: bool = True, compute_dtype=torch.float64, what: str = "gaussian_fit",
                 factor_kind: str = "precision", consume: bool = False) -> GaussianModel:
        """The fitted :class:`GaussianModel`.

        Args:
            shrinkage: None, "ledoit_wolf", "oas" or a float in [0, 1] (of the maximum-likelihood
                covariance; see the module docstring). reg: added to the diagonal afterwards.
            ddof: 0 (maximum likelihood, scikit-learn) or 1 (``np.cov``, PaDiM); Ledoit-Wolf / OAS
                coefficients are always computed on the maximum-likelihood covariance, as scikit-learn.
            factor_dtype: dtype of the precision factor (default: float64 for float64 data, else float32).
            keep_covariance: keep the float64 covariance in the model (``False`` saves ``8 P d^2`` bytes).
            compute_dtype: dtype of the Cholesky factorisation and triangular inverse (the sums and the
                covariance are float64 either way): ``torch.float64`` (default) or ``torch.float32``
                (anomalib inverts in float32 too; ~3x faster at d = 550; the distances' relative error
                grows like ~0.1 cond(cov) 6e-8: 4e-6 at PaDiM's d = 550, cond ~700; use float64 for
                ill-conditioned covariances). With ``factor_kind="cholesky"`` float32 is the fit's
                default route: matrices that fail in float32 or look ill-conditioned (squared diagonal
                ratio above :data:`F32_CHOL_MAX_DIAG_RATIO_SQ`) are refactorised in float64.
            factor_kind: ``"precision"`` (default: ``L`` with ``precision = L L^T``, one Cholesky and one
                triangular inverse per Gaussian) or ``"cholesky"`` (the covariance's Cholesky factor
                ``C``: one Cholesky only, about half the factorisation flops; scored by
                ``ops.mahalanobis(..., cholesky=True)``).
            consume: the last call: the sums' memory goes back to the operating system block by block, as
                each block of positions is factorised, so the sums and the whole factor are never held
                together (PaDiM at d = 550, 28 x 28: peak 1.5x -> ~1.1x the model); the accumulator cannot
                be updated or finalised afterwards.
        """
        if self._consumed:
            raise ValueError(f"{what}: this GaussianAccumulator was finalised with consume=True; its sums are gone")
        if factor_kind not in FACTOR_KINDS:
            raise ValueError(f"{what}: factor_kind must be one of {FACTOR_KINDS}, got {factor_kind!r}")
        _check_shrinkage(shrinkage, what)
        if shrinkage == "ledoit_wolf" and not self.fourth_moments:
            raise ValueError(f"{what}: Ledoit-Wolf shrinkage needs GaussianAccumulator(fourth_moments=True)")
        if not (isinstance(reg, (int, float)) and reg >= 0 and math.isfinite(reg)):
            raise ValueError(f"{what}: reg must be a finite number >= 0, got {reg!r}")
        if ddof not in (0, 1):
            raise ValueError(f"{what}: ddof must be 0 or 1, got {ddof!r}")
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{what}: compute_dtype must be torch.float32 or torch.float64, got {compute_dtype!r}")
        if self.n == 0:
            raise ValueError(f"{what}: no samples given")
        if self.s2 is not None and self._buf:
            self._fold()
        n, d = self.n, self.shape[-1]
        if n - ddof < 1:
            raise ValueError(f"{what}: x must have at least {ddof + 1} samples (ddof={ddof}), got {n}")
        if shrinkage is None and reg == 0 and d > n - ddof:
            raise ValueError(
                f"{what}: x has {n} samples of d={d} features: the covariance is singular (d > N - ddof = "
                f"{n - ddof}); pass shrinkage='ledoit_wolf' / 'oas' or reg > 0"
            )
        if factor_dtype is None:
            factor_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        if factor_dtype not in _FACTOR_DTYPES:
            raise ValueError(f"{what}: factor_dtype must be one of {_FACTOR_DTYPES}, got {factor_dtype}")
        per_pos = len(self.shape) == 2
        P = self.shape[0] if per_pos else 1
        dev = self.device
        mean_dt = torch.float64 if factor_dtype == torch.float64 else torch.float32
        self.n_refactored_ = 0  # cholesky: float32 factorisations redone in float64
        mean = torch.empty(P, d, dtype=mean_dt, device=dev)
        factor = empty_large((P, d, d), factor_dtype, dev)
        logdet = torch.empty(P, dtype=torch.float64, device=dev)
        cov_out = torch.empty(P, d, d, dtype=torch.float64, device=dev) if keep_covariance else None
        alphas = torch.zeros(P, dtype=torch.float64)
        pb = max(1, min(P, _BLOCK_BYTES // (3 * 8 * d * d)))
        shift = self.shift if per_pos else self.shift[None]
        s1 = self.s1 if per_pos else self.s1[None]
        s2 = None if self.s2 is None else (self.s2 if per_pos else self.s2[None])
        q3 = None if self.q3 is None else (self.q3 if per_pos else self.q3[None])
        q4 = None if self.q4 is None else (self.q4 if per_pos else self.q4[None])
        # buffers reused across position blocks (a fresh tensor per block would be page-faulted in again)
        import numpy as np

        work = np.empty(pb * d * d, dtype=np.float32 if compute_dtype == torch.float32 else np.float64) \
            if dev.type == "cpu" else None
        # float32 Cholesky factors of unshrunk covariances (PaDiM's default): the covariance is formed in
        # float32 in the factor itself (no float64 covariance block)
        direct32 = (factor_kind == "cholesky" and compute_dtype == torch.float32 and factor_dtype == torch.float32
                    and shrinkage is None and cov_out is None and dev.type == "cpu" and _lapack() is not None)
        # shared rows: on the direct route with the op's factorisation, a position's shared rows are neither
        # formed nor copied in the sums: its factor's rows come from the source position's factor
        # (ops.cholesky_lower row_start / row_src). Blocks of positions then start only at cuts (a block holds
        # its positions' owners): one block for folded sums kept for later calls; otherwise blocks of >= pb
        # positions (buffered rows: their sums packed; PaDiM at 28 x 28 with a 7 x 7 layer: 4 grid rows, 112
        # positions). Otherwise the sums' rows are copied from the owners first (folded) or every row is
        # formed (buffered).
        share_factor = self._row_plan is not None and direct32 and per_pos and _simd_cholesky()
        if self._row_plan is not None and s2 is not None and not share_factor:
            self._copy_shared_rows()
        # consume (CPU, Linux): the folded sums' pages go back block by block; of buffered rows (the
        # accumulator's own copies or given batches), each block's positions' pages once the block is done
        release = consume and dev.type == "cpu" and sys.platform.startswith("linux")
        self._consumed = release  # (from the first page released on, an error leaves no usable sums)
        own_rows = [b for b, g in zip(self._buf, self._given) if g and b.is_contiguous()] \
            if release and s2 is None and per_pos else []
        if not share_factor:
            bounds = list(range(0, P, pb)) + [P]
        elif s2 is not None and not release:
            bounds = [0, P]
        else:
            cuts, bounds = self._row_plan[3].tolist() + [P], [0]
            for c in cuts:
                if c >= bounds[-1] + pb or c == P:
                    bounds.append(c)
        nb_max = max(q1 - q0 for q0, q1 in zip(bounds[:-1], bounds[1:]))
        packed_b2 = share_factor and s2 is None
        tri = d * (d + 1) // 2
        if s2 is None:
            b1_all = torch.empty(nb_max, d, dtype=torch.float64, device=dev)
        # the block's sums (everything buffered) and the block's covariances (lower triangles written by
        # ops.gaussian_covariance; the strict upper triangles stay zero, so every entry is finite)
        b2_all = None if s2 is not None else (torch.empty(nb_max, tri, dtype=torch.float64, device=dev) if packed_b2
                                              else torch.empty(nb_max, d, d, dtype=torch.float64, device=dev))
        c_all = None if direct32 else torch.zeros(pb, d, d, dtype=torch.float64, device=dev)
        t_syrk, t_cov, t_fac = self._t_syrk, 0.0, 0.0
        r0 = 0  # consume: the first position whose given rows are not yet returned
        for p0, p1 in zip(bounds[:-1], bounds[1:]):
            t0 = time.process_time()
            rs_blk = self._row_plan[0][p0:p1] if share_factor else None
            if s2 is None:  # everything still buffered: fold this block of positions only
                b1, b2 = b1_all[: p1 - p0].zero_(), b2_all[: p1 - p0].zero_()
                formed = (p1 - p0) * tri - (0 if rs_blk is None else int((rs_blk * (rs_blk + 1) // 2).sum()))
                for b in self._buf:
                    xb = b[:, p0:p1] if per_pos else b[:, None]
                    ops.gaussian_accumulate(xb, shift[p0:p1], b1, b2, rs_blk)
                    self._syrk_flops += 2 * b.shape[0] * formed
                t_syrk += time.process_time() - t0
                t0 = time.process_time()
            else:
                b1, b2 = s1[p0:p1], s2[p0:p1]  # b2 packed [q, d (d + 1) / 2]
            ms = b1 / n  # mean of the shifted data
            # lower triangles only (the op fills those): scatter = S2 - n ms ms^T, one pass, no transposes
            # cov = (S2 - n ms ms^T) / (n - ddof) in one pass (in place when b2 is this block's own buffer)
            f = 1.0 / (n - ddof)
            if direct32:
                # the covariance's lower triangles formed in float64 and rounded once into the factor block
                # (ops.gaussian_covariance: one pass, lower triangles only), where they are factorised in
                # place; a position whose float32 factorisation is redone gets the same op's float64 values
                fb = factor[p0:p1]

                def cov64(q0, q1, b2=b2, ms=ms, f=f, p0=p0):
                    if share_factor:  # a redo needs the position's whole sums (otherwise copied or formed)
                        # this block's position q0: its shared rows from its owners (in the block; in the
                        # folded sums too, these are the rows _copy_shared_rows would copy)
                        for a, e, dst, src in self._row_plan[1]:
                            hit = torch.nonzero(dst == p0 + q0).flatten()
                            if hit.numel():
                                b2[q0, a:e] = b2[int(src[hit[0]]) - p0, a:e]
                    out = torch.zeros(q1 - q0, d, d, dtype=torch.float64)
                    return ops.gaussian_covariance(b2[q0:q1], ms[q0:q1], n, f, float(reg), out)

                rows = (rs_blk, self._row_plan[2][p0:p1] - p0) if share_factor else None
                ops.gaussian_covariance(b2, ms, n, f, float(reg), fb, rs_blk)
                t1 = time.process_time()
                t_cov += t1 - t0
                ld, redo = _cholesky_logdet(lambda p: cov64(p, p + 1)[0], fb, what, first=p0,
                                            total=P if per_pos else 0, compute_dtype=compute_dtype, work=work,
                                            rows=rows)
                self.n_refactored_ += redo
                t_fac += time.process_time() - t1
                mean[p0:p1] = (shift[p0:p1].double() + ms).to(mean_dt)
                logdet[p0:p1] = ld
                r0 = _release_block(s2, own_rows, r0, p0, p1, P, release)
                continue
            # the covariance from the sums: the op of the float32 route above, in float64 (one formula)
            cov = ops.gaussian_covariance(b2, ms, n, f, 0.0, c_all[: p1 - p0])
            del b2
            scatter_scale = float(n - ddof)  # scatter = cov * (n - ddof)
            trS = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) * (scatter_scale / n)  # trace of the ML covariance
            mu = trS / d
            a = None
            if shrinkage in SHRINKAGE_METHODS:
                S = cov.tril() * (scatter_scale / n)
                S = S + S.tril(-1).transpose(-1, -2)  # full symmetric ML covariance
                if shrinkage == "ledoit_wolf":
                    a = self._ledoit_wolf(S, trS, mu, ms, None, q3[p0:p1], q4[p0:p1], n, d)
                else:
                    a = self._oas(S, mu, n, d)
                del S
            elif shrinkage is not None:
                a = torch.full_like(mu, float(shrinkage))
            if a is not None:
                cov.mul_((1.0 - a)[:, None, None])
                cov.diagonal(dim1=-2, dim2=-1).add_((a * (trS * n / (n - ddof)) / d)[:, None])
                alphas[p0:p1] = a.cpu()
            if reg:
                cov.diagonal(dim1=-2, dim2=-1).add_(float(reg))
            t1 = time.process_time()
            t_cov += t1 - t0
            if factor_kind == "cholesky":
                ld, redo = _cholesky_logdet(cov, factor[p0:p1], what, first=p0, total=P if per_pos else 0,
                                            compute_dtype=compute_dtype, work=work)
                self.n_refactored_ += redo
            else:
                _, ld = _factor_logdet(cov, what, first=p0, total=P if per_pos else 0, out=factor[p0:p1], work=work,
                                       compute_dtype=compute_dtype)
            t_fac += time.process_time() - t1
            mean[p0:p1] = (shift[p0:p1].double() + ms).to(mean_dt)
            logdet[p0:p1] = ld
            if cov_out is not None:
                cov_out[p0:p1] = cov.tril() + cov.tril(-1).transpose(-1, -2)
            del cov
            r0 = _release_block(s2, own_rows, r0, p0, p1, P, release)
        if consume:
            self._consumed = True
            self.s1 = self.s2 = self.q3 = self.q4 = self.shift = None
            self._buf, self._given, self._nbuf = [], [], 0
        if not per_pos:
            mean, factor, logdet = mean[0], factor[0], logdet[0]
            cov_out = None if cov_out is None else cov_out[0]
        sh = 0.0 if shrinkage is None else (float(alphas[0]) if not per_pos else alphas)
        model = GaussianModel(mean, factor, logdet=logdet, covariance=cov_out, shrinkage_=sh, n_samples_=n,
                              factor_kind=factor_kind)
        # process CPU seconds per stage (benchmarks): SYRK sums, covariance (+ shrinkage), factorisation
        model.fit_timings_ = {"accumulate": t_syrk, "covariance": t_cov, "factorise": t_fac}
        model.n_refactored_ = self.n_refactored_
        model.fit_flops_ = self._syrk_flops
        return model

    @staticmethod
    def _oas(S, mu, n, d):
        """scikit-learn 1.9 ``OAS`` shrinkage per block row ([Pb])."""
        if d == 1:
            return torch.zeros_like(mu)
        alpha = S.square().mean(dim=(-2, -1))
        num = alpha + mu * mu
        den = (n + 1) * (alpha - mu * mu / d)
        return torch.where(den == 0, torch.ones_like(mu), torch.clamp(num / torch.where(den == 0, torch.ones_like(den), den), max=1.0))

    @staticmethod
    def _ledoit_wolf(S, trS, mu, ms, scatter, q3, q4, n, d):
        """scikit-learn ``ledoit_wolf_shrinkage`` from the shifted sums: ``beta_ = sum_i |x_i - mean|^4``
        expanded in the shifted data ``y`` and its mean ``m``: with ``a_i = |y_i|^2``, ``b_i = y_i . m``,
        ``c = |m|^2``: ``sum (a - 2b + c)^2 = q4 + 4 m^T S2 m - 4 m . q3 + 2 c tr(S2) - 3 n c^2``."""
        if d == 1:
            return torch.zeros_like(mu)
        c = ms.square().sum(-1)
        # S2 = n S + n m m^T (the shifted second moment): m^T S2 m = n m^T S m + n c^2, tr S2 = n tr S + n c
        mS2m = n * torch.einsum("pi,pij,pj->p", ms, S, ms) + n * c * c
        trS2 = n * trS + n * c
        beta_ = q4 + 4 * mS2m - 4 * (ms * q3).sum(-1) + 2 * c * trS2 - 3 * n * c * c
        delta_ = S.square().sum(dim=(-2, -1))
        beta = (beta_ / n - delta_) / (d * n)
        delta = (delta_ - 2.0 * mu * trS + d * mu * mu) / d
        beta = torch.minimum(beta, delta)
        return torch.where(beta == 0, torch.zeros_like(beta), beta / torch.where(delta == 0, torch.ones_like(delta), delta))


def gaussian_fit(x, *, shrinkage=None, reg: float = 0.0, ddof: int = 0, factor_dtype=None,
                 keep_covariance: bool = True, compute_dtype=torch.float64, factor_kind: str = "precision") -> GaussianModel:
    """Fits a Gaussian (``x: Tensor[N, d]``) or one per position (``x: Tensor[N, P, d]``); ``x`` may also
    be an iterable of such batches (streamed through :class:`GaussianAccumulator`).

    Args: as :meth:`GaussianAccumulator.finalize`. Raises ``ValueError`` for NaN/Inf in ``x``, too few
    samples, a singular covariance without shrinkage / reg (``d > N - ddof``), or a covariance that is
    not positive definite (the message names the position).

    Example:
        >>> import torch
        >>> g = gaussian_fit(torch.randn(200, 4, 3), ddof=1, reg=0.01)   # 4 positions of 3 features
        >>> g.mean.shape, g.factor.shape, g.logdet.shape
        (torch.Size([4, 3]), torch.Size([4, 3, 3]), torch.Size([4]))
    """
    _check_shrinkage(shrinkage, "gaussian_fit")
    acc = GaussianAccumulator(fourth_moments=shrinkage == "ledoit_wolf")
    if isinstance(x, torch.Tensor):
        if x.dim() not in (2, 3):
            raise ValueError(f"gaussian_fit: x must be [N, d] or [N, P, d], got shape {tuple(x.shape)}")
        acc.update(x, copy=False)
    elif isinstance(x, Iterable):
        for b in x:
            acc.update(b)
    else:
        raise ValueError(f"gaussian_fit: x must be a tensor or an iterable of tensors, got {type(x).__name__}")
    return acc.finalize(shrinkage=shrinkage, reg=reg, ddof=ddof, factor_dtype=factor_dtype,
                        keep_covariance=keep_covariance, compute_dtype=compute_dtype, factor_kind=factor_kind, consume=True)


__all__ = ["FACTOR_KINDS", "GaussianAccumulator", "GaussianModel", "SHRINKAGE_METHODS", "gaussian_fit", "precision_factor"]
