"""MuSc (zero-shot mutual scoring) kernels: LNAMD / SNAMD aggregation, mutual scoring, RsCIN.

Shapes: ``N`` images, ``L = H * H`` patch tokens per image (CLS removed), ``C`` channels,
``R = len(r_list)``. The compiled ops (``lnamd``, ``snamd``, ``mutual_scores``,
``lnamd_mutual_scores``) are not differentiable: a backward through them raises ``RuntimeError``
naming the argument (:mod:`fastad.ops._autograd`); ``rscin`` and ``bilinear_max`` are plain torch. Parity targets are the official code, xrli-U/MuSc @ b76b93d (see
``tests/helpers/musc_oracle.py``).
"""
from __future__ import annotations

import math
from typing import List, Optional, Union

import torch

from ._args import check_args
from .knn import check_finite


def interval_k(n_ref: int, fraction: float = 0.3, ceil_small: bool = False) -> int:
    """The official ``k = int(fraction * n_ref)`` (``n_ref`` = number of reference images, ``N - 1``
    when a batch scores itself).

    The official code returns NaN when this is 0 (``N <= 4`` at 0.3). Here that raises a
    ``ValueError``, unless ``ceil_small=True``: then ``k = max(1, int(fraction * n_ref))`` (the
    documented ceiling rule; with ``n_ref >= 1`` it scores by the nearest image).
    """
    if n_ref < 1:
        raise ValueError(f"mutual_scores: need at least 1 reference image per query, got {n_ref}")
    k = int(n_ref * fraction)
    if k < 1:
        if not ceil_small:
            at_least = str(math.ceil(1 / fraction) + 1) if fraction > 0 else "more"
            raise ValueError(
                f"mutual_scores: k = int({fraction} * {n_ref}) = 0 reference images to average (the official "
                f"code returns NaN here); score at least {at_least} "
                "images together, add a reference pool, or pass ceil_small=True for k = max(1, k)"
            )
        k = 1
    return min(k, n_ref)


def lnamd(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """MuSc's LNAMD aggregation of one layer.

    Per image: LayerNorm over all (C, H, W) values jointly (no affine, eps 1e-5, biased variance),
    r x r mean over the patch grid with zero padding counted (``count_include_pad=True``), then
    per-token L2 normalisation. Fused and channels-last (no r^2 unfold copy).

    Args:
        tokens: ``Tensor[B, L, C]`` patch tokens, CLS removed, ``L = H * H``; float32/16/bf16.
        r: odd window size (1 = LayerNorm + normalisation only).

    Returns:
        ``Tensor[B, L, C]`` float32, unit-norm rows.

    Example:
        >>> import torch, fastad
        >>> z = fastad.ops.lnamd(torch.randn(2, 16, 8), 3)
        >>> z.shape, bool(torch.allclose(z.norm(dim=-1), torch.ones(2, 16)))
        (torch.Size([2, 16, 8]), True)
    """
    if not torch.jit.is_scripting():
        check_args("lnamd", {"tokens": tokens}, {"r": r})
    if tokens.device.type != "cpu":
        check_finite("tokens", "lnamd", tokens)
    return torch.ops.fastad.lnamd(tokens, int(r))


def snamd(tokens: torch.Tensor, r_list: Optional[List[int]] = None) -> torch.Tensor:
    """MuSc-V2's SNAMD aggregation of one layer (2-D path), in float32.

    For each patch c and each r: ``f_r = sum_n w_n x_n / sum_n w_n`` over the r x r window, with
    ``w_n = exp(-||x_n - x_c||)`` on the raw tokens (no LayerNorm); zero-padded positions add weight
    ``exp(-||x_c||)`` but no feature. ``f = mean_r f_r``, then L2-normalised. (The official code
    rounds to fp16 after each step; this op stays in float32.)

    Args:
        tokens: ``Tensor[B, L, C]`` (CLS removed, ``L = H * H``).
        r_list: odd window sizes (``None``: ``[1, 3, 5]``).

    Returns:
        ``Tensor[B, L, C]`` float32.
    """
    if not torch.jit.is_scripting():
        check_args("snamd", {"tokens": tokens})
    if tokens.device.type != "cpu":
        check_finite("tokens", "snamd", tokens)
    rl = [1, 3, 5] if r_list is None else r_list
    return torch.ops.fastad.snamd(tokens, [int(r) for r in rl])


def mutual_scores(
    z: torch.Tensor,
    fraction: float = 0.3,
    k: Optional[int] = None,
    pool: Optional[torch.Tensor] = None,
    same_position: Optional[int] = None,
    ceil_small: bool = False,
    screen: str = "none",
) -> torch.Tensor:
    """MuSc's mutual scoring (MSM) of one feature set.

    For every patch p of image i: ``m_j = min_q ||z[i, p] - z[j, q]||`` for every other image j
    (or every pool image), then the mean of the ``k`` smallest ``m_j`` with
    ``k = int(fraction * n_ref)`` (see :func:`interval_k`). Each image pair is one GEMM tile whose
    row and column minima serve both directions; memory is ``O(N^2 L)`` for the minima.

    Distances use ``||x||^2 + ||y||^2 - 2 x.y`` with the real norms, clamped at 0 (like
    ``torch.cdist``'s mm path, which the official code uses): near-duplicate patches carry ~1e-4
    cancellation noise, exactly as in the official scores.

    Args:
        z: ``Tensor[N, L, C]`` features (usually the unit-norm output of :func:`lnamd`).
        fraction: share of reference images averaged (0.3 in MuSc).
        k: explicit k (overrides ``fraction``).
        pool: optional ``Tensor[Np, L, C]`` reference images: queries are scored against the pool
            only (not against each other), ``n_ref = Np``.
        same_position: odd window ``w``: patch p is only compared with the ``w x w`` patches around
            p in other images (aligned parts); needs ``L = H * H``.
        ceil_small: use ``k = max(1, ...)`` instead of raising when the rule gives 0.
        screen: ``"none"`` (default), ``"bf16"`` or ``"auto"``: on CPU the pair minima go through the bf16
            screen of :func:`fastad.ops.knn` (a bf16 Gram tile per image pair with a proven per-pair bound;
            every patch pair that can be a row or column minimum re-scored with the float32 path's own
            arithmetic), so the output is identical (bit for bit) to ``"none"``; see
            ``csrc/cpu/musc_screen_avx2.cpp`` for the derivation. ``"auto"`` screens only with AVX512-BF16,
            ``C >= 128`` and ``L * C >= 32768`` (measured: smaller tiles run slower screened); ``"bf16"``
            whenever the bf16 GEMM can run. With ``same_position``,
            on CUDA or where the bf16 GEMM cannot run, the float32 path runs. Survivor counts:
            ``fastad.knn_screen_stats()`` (shared with knn and group_min).

    Returns:
        ``Tensor[N, L]`` float32.

    Example:
        >>> import torch, fastad
        >>> z = torch.nn.functional.normalize(torch.randn(6, 9, 4), dim=-1)
        >>> fastad.ops.mutual_scores(z).shape
        torch.Size([6, 9])
    """
    if not torch.jit.is_scripting():
        check_args("mutual_scores", {"z": z, "pool": pool}, {"k": k, "same_position": same_position})
    n_ref = pool.shape[0] if pool is not None else z.shape[0] - 1
    kk = interval_k(n_ref, fraction, ceil_small) if k is None else int(k)
    if z.device.type != "cpu":
        check_finite("z and pool", "mutual_scores", z, pool)
    window = 0 if same_position is None else int(same_position)
    if screen != "none":
        if screen not in ["bf16", "auto"]:
            raise ValueError(f"mutual_scores: screen must be one of ('none', 'bf16', 'auto'), got '{screen}'")
        if z.device.type == "cpu":
            return torch.ops.fastad.mutual_scores_screen(z, kk, pool, window, screen)
    return torch.ops.fastad.mutual_scores(z, kk, pool, window)


def lnamd_mutual_scores(
    tokens: torch.Tensor,
    r_list: Optional[List[int]] = None,
    fraction: float = 0.3,
    k: Optional[int] = None,
    pool: Optional[torch.Tensor] = None,
    same_position: Optional[int] = None,
    ceil_small: bool = False,
) -> torch.Tensor:
    """``mutual_scores(lnamd(tokens, r))`` for every r in ``r_list``, fused.

    LNAMD's r x r mean is linear, so the inner products of pooled features are a box filter of the
    Gram tile of the LayerNorm-ed tokens: one GEMM per image pair serves every r (a 3x cut of the GEMM
    work at ``r_list=[1, 3, 5]``), and the pair is computed once for both directions. CPU: always;
    CUDA: when ``r_list`` has two or more sizes (a single r runs :func:`lnamd` then
    :func:`mutual_scores`, which measured faster there) and ``L <= 6144``.

    Args:
        tokens: ``Tensor[N, L, C]`` raw patch tokens of one layer (CLS removed, ``L = H * H``).
        r_list, fraction, k, pool, same_position, ceil_small: as in :func:`lnamd` / :func:`mutual_scores`
            (``pool``: raw tokens of the reference images).

    Returns:
        ``Tensor[R, N, L]`` float32.
    """
    if not torch.jit.is_scripting():
        check_args("lnamd_mutual_scores", {"tokens": tokens, "pool": pool}, {"k": k, "same_position": same_position})
    n_ref = pool.shape[0] if pool is not None else tokens.shape[0] - 1
    kk = interval_k(n_ref, fraction, ceil_small) if k is None else int(k)
    if tokens.device.type != "cpu":
        check_finite("tokens and pool", "lnamd_mutual_scores", tokens, pool)
    window = 0 if same_position is None else int(same_position)
    rl = [1, 3, 5] if r_list is None else r_list
    return torch.ops.fastad.lnamd_mutual_scores(tokens, [int(r) for r in rl], kk, pool, window)


def rscin(
    scores: torch.Tensor, image_features: torch.Tensor, k_list: Optional[List[int]] = None
) -> torch.Tensor:
    """MuSc's RsCIN image-score re-scoring (the official ``MMO``).

    ``s = (scores - min) / (max - min)`` (over all given images); ``W = F F^T`` (diagonal kept); for
    each k, every row of W keeps its k largest entries (the others, picked by ``topk`` of the N-k
    smallest like the official code, are set to 0) and is normalised to sum 1; the result is the mean
    over ``k_list`` (``None``: ``[1, 2, 3]``) of ``P_k s``. A 0 in ``k_list`` returns ``scores`` unchanged.
    Official k lists: [1, 2, 3] (MVTec AD, BTAD), [1, 8, 9] (VisA). Equal scores normalise to 0 (the official code
    returns NaN); similarities summing to 0 over a row's k kept entries raise a ``ValueError``.

    Pure torch (float32 like the official code): it is an N x N problem over images (N ~ 100s), a
    few milliseconds, not a hot path, so it is not a compiled op.

    Args:
        scores: ``Tensor[N]`` image scores. image_features: ``Tensor[N, D]`` (e.g. CLS tokens).

    Returns:
        ``Tensor[N]`` float32 on the input's device.
    """
    if not torch.jit.is_scripting():
        check_args("rscin", {"scores": scores, "image_features": image_features})
    kl = [1, 2, 3] if k_list is None else [int(k) for k in k_list]
    if 0 in kl:
        return scores
    if scores.dim() != 1 or image_features.dim() != 2 or image_features.shape[0] != scores.shape[0]:
        raise ValueError(
            f"rscin: expected scores [N] and image_features [N, D], got {list(scores.shape)} and "
            f"{list(image_features.shape)}"
        )
    N = scores.shape[0]
    for k in kl:
        if k < 1 or k > N:
            raise ValueError(f"rscin: every k in k_list must be in [1, N={N}], got {kl}")
    check_finite("scores and image_features", "rscin", scores, image_features)
    s64 = scores.double()
    span = s64.max() - s64.min()
    # equal scores: min-max normalisation gives 0 everywhere (the official code divides by 0: NaN)
    s = ((s64 - s64.min()) / torch.where(span > 0, span, torch.ones_like(span))).float()
    F_ = image_features.float()
    W = F_ @ F_.T
    compiling = False
    if not torch.jit.is_scripting():
        compiling = torch.compiler.is_compiling()
    outs: List[torch.Tensor] = []
    for k in kl:
        small = torch.topk(W, N - k, dim=1, largest=False, sorted=True).indices
        Wm = W.scatter(1, small, 0.0)
        rs = Wm.sum(1, keepdim=True)
        if compiling:  # torch.compile / export: an in-graph assertion instead of a data-dependent branch
            torch._assert_async((rs != 0).all(), "rscin: the k most similar images of an image have similarities summing to 0")
        elif rs.device.type != "meta" and not bool((rs != 0).all()):
            bad = int((rs == 0).flatten().nonzero()[0])
            raise ValueError(
                f"rscin: the {k} most similar images of image {bad} have similarities summing to 0 (an all-zero "
                "row of image_features?); give image features with non-zero similarities, or k_list=(0,) to skip RsCIN"
            )
        P = Wm * (1.0 / rs)
        outs.append(P @ s.unsqueeze(-1))
    return torch.cat(outs, -1).mean(-1)


def _align_corners_taps(
    n_in: int, n_out: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # torch's upsample_bilinear2d with align_corners=True: src = i * (in - 1) / (out - 1).
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = torch.arange(n_out, dtype=dtype, device=device) * scale
    i0 = src.to(torch.int64).clamp_max(n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = src - i0.to(dtype)
    return i0, i1, 1.0 - l1, l1


def bilinear_max(grid: torch.Tensor, size: Union[int, List[int]], rows_per_chunk: int = 64) -> torch.Tensor:
    """Max of ``F.interpolate(grid[:, None], size, mode="bilinear", align_corners=True)`` per image,
    without materialising the upsampled maps (separable: columns first into ``[N, h, W]``, then rows
    in chunks of ``rows_per_chunk``). ``grid``: ``Tensor[N, h, w]`` -> ``Tensor[N]`` (same dtype)."""
    if isinstance(size, int):
        Ho, Wo = size, size
    else:
        Ho, Wo = size[0], size[1]
    N, h, w = grid.shape
    dt, dev = grid.dtype, grid.device
    x0, x1, wx0, wx1 = _align_corners_taps(w, Wo, dt, dev)
    y0, y1, wy0, wy1 = _align_corners_taps(h, Ho, dt, dev)
    a0 = grid[:, :, x0] * wx0  # [N, h, Wo]
    a1 = grid[:, :, x1] * wx1
    out = torch.full((N,), -math.inf, dtype=dt, device=dev)
    for r0 in range(0, Ho, rows_per_chunk):
        r1 = min(Ho, r0 + rows_per_chunk)
        top = a0[:, y0[r0:r1]] + a1[:, y0[r0:r1]]  # [N, rows, Wo]
        bot = a0[:, y1[r0:r1]] + a1[:, y1[r0:r1]]
        v = wy0[r0:r1].unsqueeze(1) * top + wy1[r0:r1].unsqueeze(1) * bot
        out = torch.maximum(out, v.amax(dim=(1, 2)))
    return out
