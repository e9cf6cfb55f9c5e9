"""Autograd of the fastad operators: a tested backward, or a clear error, never a silent ``None``.

* ``knn``: the distances are differentiable w.r.t. ``query`` and ``bank`` (at the returned
  neighbours; the indices are piecewise constant). Per returned pair ``(q, b)``:
  ``"sqeuclidean"`` d = |q - b|^2, dd/dq = 2 (q - b); ``"l2"`` d = |q - b|, dd/dq = (q - b) / d
  (0 where d = 0, the subgradient); ``"ip"`` d = q.b, dd/dq = b; ``"cosine"`` d = 1 - cos(q, b),
  dd/dq = -(b / (|q| |b|) - cos q / |q|^2) (0 for a zero row, whose distance is the constant 1).
  The bank gradient is the mirror image, summed over the queries that picked each row. Padded slots
  (``k > N``: index -1) get no gradient. ``bank_norms`` is not differentiable (it is a cache).
* Every other compiled op (``group_min``, ``coreset``, ``lnamd``, ``snamd``, ``mutual_scores``,
  ``lnamd_mutual_scores``) is not differentiable: asking for a gradient raises
  ``RuntimeError("fastad.ops.<op> is not differentiable w.r.t. <arg> ...")`` at backward
  (``coreset``, whose schema mutates ``progress``, raises when called on an input that requires
  grad). ``rscin`` and ``bilinear_max`` are plain torch and differentiate as such.

Imported by :mod:`fastad.ops`; registers nothing else.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["NOT_DIFFERENTIABLE"]

# op -> the names of its tensor arguments (in schema order)
NOT_DIFFERENTIABLE = {
    "group_min": ("query", "bank", None, None, "exclude_group"),
    "lnamd": ("tokens", None),
    "snamd": ("tokens", None),
    "mutual_scores": ("z", None, "pool", None),
    "mutual_scores_screen": ("z", None, "pool", None, None),
    "lnamd_mutual_scores": ("tokens", None, None, "pool", None),
}

_CHUNK_ELEMS = 1 << 24  # bound on the [rows, k, D] temporaries of the knn backward


def _not_differentiable(op: str, arg_names: tuple[str | None, ...]) -> None:
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    def backward(ctx: Any, *grads: Any) -> Any:
        names = [n for n, need in zip(arg_names, tuple(ctx.needs_input_grad)) if n and need] or ["its inputs"]
        raise RuntimeError(
            f"fastad.ops.{op} is not differentiable w.r.t. {', '.join(names)}: it has no backward. Detach the "
            f"inputs (or run it under torch.no_grad()); for gradients use a differentiable torch formulation "
            f"(e.g. fastad.ops._reference)"
        )

    torch.library.register_autograd(f"fastad::{op}", backward, setup_context=setup_context)


def _knn_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    query, bank, k, metric, bank_norms, exclude_self = inputs
    dist, idx = output
    ctx.metric = metric
    ctx.save_for_backward(query, bank, idx, dist)
    ctx.mark_non_differentiable(idx)


def _knn_pair_grads(
    metric: str, q: torch.Tensor, b: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """d(dist)/dq and d(dist)/db for rows ``q [R, 1, D]`` and their neighbours ``b [R, k, D]`` (float32)."""
    if metric == "sqeuclidean":
        gq = 2.0 * (q - b)
        return gq, -gq
    if metric == "l2":
        diff = q - b
        nrm = diff.square().sum(-1, keepdim=True).sqrt()
        gq = torch.where(nrm > 0, diff / nrm.clamp_min(1e-30), torch.zeros_like(diff))
        return gq, -gq
    if metric == "ip":
        return b.expand_as(b).clone(), q.expand_as(b).clone()
    # cosine: d = 1 - q.b / (|q| |b|)
    qn = q.square().sum(-1, keepdim=True).sqrt()
    bn = b.square().sum(-1, keepdim=True).sqrt()
    ok = (qn > 0) & (bn > 0)
    qn_, bn_ = qn.clamp_min(1e-30), bn.clamp_min(1e-30)
    cos = (q * b).sum(-1, keepdim=True) / (qn_ * bn_)
    gq = -(b / (qn_ * bn_) - cos * q / qn_.square())
    gb = -(q / (qn_ * bn_) - cos * b / bn_.square())
    zero = torch.zeros_like(gq)
    return torch.where(ok, gq, zero), torch.where(ok, gb, zero)


def _knn_backward(ctx: Any, grad_dist: torch.Tensor | None, grad_idx: Any) -> tuple[Any, ...]:
    query, bank, idx, dist = ctx.saved_tensors
    # needs_input_grad follows the schema's arguments but may stop after the last tensor argument given
    need_q, need_b, _, _, need_norms, _ = (tuple(ctx.needs_input_grad) + (False,) * 6)[:6]
    if need_norms:
        raise RuntimeError(
            "fastad.ops.knn is not differentiable w.r.t. bank_norms (a cache of the bank's squared norms); "
            "pass bank_norms.detach() or leave it None"
        )
    gq_out = torch.zeros(query.shape, dtype=torch.float32, device=query.device) if need_q else None
    gb_out = torch.zeros(bank.shape, dtype=torch.float32, device=bank.device) if need_b else None
    if grad_dist is None or (gq_out is None and gb_out is None):
        return None, None, None, None, None, None
    Q, k = idx.shape
    D = query.shape[1] if query.dim() == 2 else 1
    if Q and k and bank.shape[0]:
        valid = (idx >= 0) & torch.isfinite(dist)
        g = torch.where(valid, grad_dist.float(), torch.zeros_like(grad_dist, dtype=torch.float32))
        safe = idx.clamp_min(0)
        rows = max(1, _CHUNK_ELEMS // max(1, k * D))
        bank32 = bank.float()
        for r0 in range(0, Q, rows):
            r1 = min(Q, r0 + rows)
            q = query[r0:r1].float().unsqueeze(1)  # [R, 1, D]
            ii = safe[r0:r1]
            b = bank32.index_select(0, ii.reshape(-1)).view(r1 - r0, k, D)  # [R, k, D]
            dq, db = _knn_pair_grads(ctx.metric, q, b, dist[r0:r1])
            w = g[r0:r1].unsqueeze(-1)  # [R, k, 1]
            if gq_out is not None:
                gq_out[r0:r1] = (w * dq).sum(1)
            if gb_out is not None:
                gb_out.index_add_(0, ii.reshape(-1), (w * db).reshape(-1, D))
    return (
        None if gq_out is None else gq_out.to(query.dtype),
        None if gb_out is None else gb_out.to(bank.dtype),
        None, None, None, None,
    )


def _coreset_autograd(
    bank: torch.Tensor, n: int, start: int = 0, progress: torch.Tensor | None = None, method: str = "exhaustive"
) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.is_grad_enabled() and bank.requires_grad:
        raise RuntimeError(
            "fastad.ops.coreset is not differentiable w.r.t. bank (it selects rows): pass bank.detach() or "
            "call it under torch.no_grad()"
        )
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.fastad.coreset.default(bank, n, start, progress, method)


def _register() -> None:
    torch.library.register_autograd("fastad::knn", _knn_backward, setup_context=_knn_setup)
    for op, names in NOT_DIFFERENTIABLE.items():
        _not_differentiable(op, names)
    _lib.impl("coreset", _coreset_autograd, "Autograd")


_lib = torch.library.Library("fastad", "IMPL")  # kept alive: the registrations live as long as it does
_register()
