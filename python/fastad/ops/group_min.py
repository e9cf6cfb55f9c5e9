"""Minimum distance from each query to each group of bank rows (per-image nearest patch)."""
from __future__ import annotations

import torch

from ._args import check_args
from .knn import check_finite


def group_min(
    query: torch.Tensor,
    bank: torch.Tensor,
    group_size: int,
    metric: str = "l2",
    exclude_group: torch.Tensor | None = None,
    screen: str = "none",
) -> torch.Tensor:
    """For every query row, the minimum distance to each group of ``group_size`` consecutive bank rows.

    This is MuSc's mutual scoring core and SPADE's per-image search: with the patches of ``G`` images
    stacked as the bank, ``out[i, g]`` is the distance from patch ``i`` to its nearest patch of image ``g``.

    Args:
        query: ``Tensor[Q, D]``, float32 / float16 / bfloat16, CPU or CUDA.
        bank: ``Tensor[N, D]``, same dtype and device; ``N = G * group_size`` (G consecutive groups).
        group_size: rows per group (>= 1, must divide ``N``).
        metric: ``"l2"``, ``"sqeuclidean"``, ``"cosine"`` (``1 - cos``) or ``"ip"`` (then the
            *maximum* inner product per group).
        exclude_group: optional ``Tensor[Q]`` int64: for query ``i`` the group ``exclude_group[i]`` is
            skipped (``-1``: none), e.g. the query's own image. A skipped group holds ``inf``
            (``-inf`` for ``"ip"``). The CPU kernel rejects ids outside ``[-1, G)``; the CUDA kernel
            does not check the values (that would need a device sync) and skips nothing for them.
        screen: ``"none"`` (default), ``"bf16"`` or ``"auto"``: float32 ``"l2"`` / ``"sqeuclidean"`` on
            CPU through the bf16 screen of :func:`fastad.ops.knn` (a bf16 GEMM with a proven per-pair
            bound; each group's survivors re-scored with the float32 path's arithmetic): output
            identical to ``"none"``. ``"auto"``: only with AVX512-BF16, ``D >= 96`` and
            ``group_size >= 64``. Elsewhere the float32 path runs.

    Returns:
        ``Tensor[Q, G]`` float32.

    Scriptable (``torch.jit.script``), traceable by ``torch.compile`` / ``torch.export``; meta tensors
    give the output shape. NaN or Inf in ``query`` or ``bank`` raise an error. No ``[Q, N]`` matrix is ever held in memory.
    float16 inputs on AVX2 CPUs are converted per packed panel (no float32 copy of the bank), with the
    results of float32 on the upcast inputs.
    Not differentiable: a backward through it raises ``RuntimeError`` naming the argument
    (:mod:`fastad.ops._autograd`).

    Example:
        >>> import torch, fastad
        >>> bank = torch.tensor([[0., 0.], [3., 4.], [1., 0.], [6., 8.]])  # 2 groups of 2 rows
        >>> fastad.ops.group_min(torch.tensor([[0., 0.]]), bank, 2).tolist()
        [[0.0, 1.0]]
    """
    if not torch.jit.is_scripting():
        check_args("group_min", {"query": query, "bank": bank, "exclude_group": exclude_group}, {"group_size": group_size})
    if metric not in ["l2", "sqeuclidean", "cosine", "ip"]:  # METRICS (a literal: scriptable)
        raise ValueError(f"group_min: metric must be one of ('l2', 'sqeuclidean', 'cosine', 'ip'), got '{metric}'")
    if query.device.type != "cpu":  # the CPU kernel checks finiteness itself
        check_finite("query and bank", "group_min", query, bank)
    if screen != "none":
        if screen not in ["bf16", "auto"]:
            raise ValueError(f"group_min: screen must be one of ('none', 'bf16', 'auto'), got '{screen}'")
        if query.device.type == "cpu":
            return torch.ops.fastad.group_min_screen(query, bank, int(group_size), metric, exclude_group, screen)
    return torch.ops.fastad.group_min(query, bank, int(group_size), metric, exclude_group)
