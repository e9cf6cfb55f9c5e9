"""Exact k nearest neighbours."""
from __future__ import annotations

from typing import Optional

import torch

from ._args import check_args

METRICS = ("l2", "sqeuclidean", "cosine", "ip")
_MAX_PADDED_SLOTS = 1 << 27  # k > N pads the output; refuse padding beyond ~1.5 GiB instead of failing to allocate


def check_finite(
    name: str, op: str, a: Optional[torch.Tensor], b: Optional[torch.Tensor] = None, c: Optional[torch.Tensor] = None
) -> None:
    """Raise a ValueError naming ``op`` and ``name`` if ``a``, ``b`` or ``c`` holds NaN or Inf (one pass and
    one sync per tensor; ``None`` and meta tensors are skipped). Scriptable (``torch.jit.script``); under
    ``torch.compile`` / ``torch.export`` the check is an in-graph assertion (a RuntimeError at run time)."""
    compiling = False
    if not torch.jit.is_scripting():
        compiling = torch.compiler.is_compiling()
    for t in [a, b, c]:
        if t is not None and t.device.type != "meta" and t.numel() > 0:
            msg = f"{op}: {name} must hold finite values, got NaN or Inf"
            if compiling:
                torch._assert_async(torch.isfinite(t).all(), msg)
            elif not bool(torch.isfinite(t).all()):
                raise ValueError(msg)


def knn(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    metric: str = "l2",
    bank_norms: torch.Tensor | None = None,
    exclude_self: bool = False,
    screen: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of every query row among the bank rows.

    Args:
        query: ``Tensor[Q, D]``, float32 / float16 / bfloat16, CPU or CUDA.
        bank: ``Tensor[N, D]``, same dtype and device as ``query``.
        k: neighbours per query (>= 1). When ``k > N`` the extra slots hold ``inf`` (``-inf`` for
            ``"ip"``) and index ``-1`` (a ``ValueError`` when that padding alone would exceed 2^27 slots).
        metric: ``"l2"`` (Euclidean), ``"sqeuclidean"``, ``"cosine"`` (``1 - cos``; a zero row has
            cosine 0 with everything) or ``"ip"`` (inner product, largest first).
        bank_norms: optional ``Tensor[N]`` float32 of squared L2 norms of the bank rows (cache them
            when the bank is reused; ignored by ``"ip"``). The AVX2 CPU kernel does not need them: it
            computes centred norms while packing the bank (at no extra pass) and ignores this argument.
        exclude_self: query ``i`` is bank row ``i`` (needs ``Q <= N``); row ``i`` is skipped for it
            (leave-one-out scoring).
        screen: ``"none"`` (default), ``"bf16"`` or ``"auto"``: float32 ``"l2"`` / ``"sqeuclidean"``
            on CPU through a bf16 screen: a bf16 GEMM (AVX512-BF16) with a proven per-pair error bound
            keeps every bank row that can be among the k nearest, and those survivors are re-scored
            with the float32 path's own arithmetic, so indices AND distances are identical to
            ``screen="none"`` (see ``csrc/cpu/dist_bf16_screen_avx2.cpp`` for the derivation). ``"auto"``
            screens only where it measured faster (CPU with AVX512-BF16, ``D >= 96``, ``k * 64 <= N``);
            ``"bf16"`` whenever the bf16 GEMM can run. Elsewhere (other metrics or dtypes, CUDA,
            inputs that need gradients) the float32 path runs. Survivor counts:
            ``fastad.knn_screen_stats()``.

    Returns:
        ``(distances Tensor[Q, k] float32, indices Tensor[Q, k] int64)``, best first; ties in distance
        are ordered by the smaller bank index.

    Scriptable (``torch.jit.script``), traceable by ``torch.compile`` / ``torch.export``, and meta
    tensors give the output shapes (the op's fake kernel).

    NaN or Inf in ``query`` or ``bank`` raise an error (a ``ValueError`` here; the bare CPU op raises a
    ``RuntimeError``). Computation is blocked: no ``[Q, N]`` matrix is ever held in memory.

    Autograd: the distances are differentiable w.r.t. ``query`` and ``bank`` (at the returned
    neighbours; see :mod:`fastad.ops._autograd`); ``bank_norms`` is not.

    float16 inputs on AVX2 CPUs run the float32 GEMM with each packed panel converted from float16
    (F16C; exact), never a float32 copy of the bank: results identical to float32 on the upcast inputs.

    bfloat16 inputs on a CPU with AVX512-BF16 run a bf16 GEMM (``vdpbf16ps``, float32 accumulation)
    on the values as given (no upcast, no centring); ``"l2"`` / ``"sqeuclidean"`` winners are
    re-ranked with exact float32 distances of the bf16 values.

    CPU: on AVX2/FMA machines a packed GEMM with the top-k selection fused into its epilogue; the
    expansion ``|q|^2 + |b|^2 - 2 q.b`` is evaluated on data centred by an estimate of the bank mean,
    and ``"l2"`` / ``"sqeuclidean"`` winners are re-ranked with exact distances, so distances stay
    within ~1e-6 relative of float64 even on non-centred features. Results do not depend on the
    thread count. ``FASTAD_FORCE_GENERIC=1`` selects the portable kernel.

    Example:
        >>> import torch, fastad
        >>> bank = torch.tensor([[0., 0.], [3., 4.]])
        >>> d, i = fastad.ops.knn(torch.tensor([[3., 3.]]), bank, k=2)
        >>> i.tolist(), [round(x, 3) for x in d[0].tolist()]
        ([[1, 0]], [1.0, 4.243])
    """
    if not torch.jit.is_scripting():
        check_args("knn", {"query": query, "bank": bank, "bank_norms": bank_norms}, {"k": k})
    if metric not in ["l2", "sqeuclidean", "cosine", "ip"]:  # METRICS (a literal: scriptable)
        raise ValueError(f"knn: metric must be one of ('l2', 'sqeuclidean', 'cosine', 'ip'), got '{metric}'")
    k = int(k)
    # 134217728 = _MAX_PADDED_SLOTS, written as a literal (TorchScript cannot read a global)
    if query.dim() == 2 and bank.dim() == 2 and k > bank.shape[0] and query.shape[0] * k > 134217728:
        Q, N = query.shape[0], bank.shape[0]
        raise ValueError(
            f"knn: k={k} is larger than the bank (N={N} rows): the [Q={Q}, k] output would be "
            f"{Q * k * 12 / 1073741824.0} GiB of which all but N columns are padding (inf, index -1); use k <= {max(N, 1)}"
        )
    if query.device.type != "cpu":  # the CPU kernel checks finiteness itself, for free
        check_finite("query and bank", "knn", query, bank)
    if screen != "none":
        if screen not in ["bf16", "auto"]:
            raise ValueError(f"knn: screen must be one of ('none', 'bf16', 'auto'), got '{screen}'")
        needs_grad = torch.is_grad_enabled() and (query.requires_grad or bank.requires_grad)
        if query.device.type == "cpu" and not needs_grad:
            return torch.ops.fastad.knn_screen(query, bank, int(k), metric, bank_norms, bool(exclude_self), screen)
    return torch.ops.fastad.knn(query, bank, int(k), metric, bank_norms, bool(exclude_self))
