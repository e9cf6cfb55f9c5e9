"""Pure-torch references of every fastad op: the test oracle and a readable specification.

They favour clarity over speed and compute in float64 unless told otherwise; they do materialise
the full distance matrix, so use them on small inputs only.
"""
from __future__ import annotations

import torch


def pairwise_scores(query: torch.Tensor, bank: torch.Tensor, metric: str) -> torch.Tensor:
    """``Tensor[Q, N]`` of distances (``"ip"``: inner products), computed directly in float64."""
    q, b = query.double(), bank.double()
    if metric in ("l2", "sqeuclidean"):
        d2 = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return d2.sqrt() if metric == "l2" else d2
    if metric == "cosine":
        qn, bn = q.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
        qh = torch.where(qn > 0, q / qn.clamp_min(1e-300), torch.zeros_like(q))
        bh = torch.where(bn > 0, b / bn.clamp_min(1e-300), torch.zeros_like(b))
        return 1.0 - qh @ bh.T
    if metric == "ip":
        return q @ b.T
    raise ValueError(f"unknown metric {metric!r}")


def knn(query, bank, k, metric="l2", bank_norms=None, exclude_self=False):
    """Reference of :func:`fastad.ops.knn` (float64 distances; ties broken by the smaller index)."""
    Q, N = query.shape[0], bank.shape[0]
    s = pairwise_scores(query, bank, metric)
    largest = metric == "ip"
    if exclude_self:
        s[torch.arange(Q), torch.arange(Q)] = float("-inf") if largest else float("inf")
        avail = N - 1
    else:
        avail = N
    # stable sort on the score = ties keep increasing index order
    order = torch.sort(-s if largest else s, dim=1, stable=True).indices[:, : min(k, avail)]
    d = torch.gather(s, 1, order)
    pad = float("-inf") if largest else float("inf")
    out_d = torch.full((Q, k), pad, dtype=torch.float64)
    out_i = torch.full((Q, k), -1, dtype=torch.int64)
    out_d[:, : order.shape[1]] = d
    out_i[:, : order.shape[1]] = order
    return out_d, out_i


def group_min(query, bank, group_size, metric="l2", exclude_group=None):
    """Reference of :func:`fastad.ops.group_min` (float64): ``Tensor[Q, G]`` of per-group minima
    (``"ip"``: maxima); a query's excluded group holds ``inf`` (``"ip"``: ``-inf``)."""
    Q, N = query.shape[0], bank.shape[0]
    G = N // group_size
    s = pairwise_scores(query, bank, metric).view(Q, G, group_size)
    largest = metric == "ip"
    out = s.amax(-1) if largest else s.amin(-1)
    if exclude_group is not None:
        e = exclude_group.cpu()
        rows = torch.nonzero(e >= 0).flatten()
        out[rows, e[rows]] = float("-inf") if largest else float("inf")
    return out


def coreset(bank, n, start=0):
    """Reference of ``torch.ops.fastad.coreset`` (greedy k-center, float64).

    Returns ``(indices Tensor[n] int64, min_distances Tensor[n] float64)``: ``indices[0] = start``,
    ``min_distances[0] = inf``; each next index maximises the distance to the chosen set among the rows
    not chosen yet (ties: smaller index).
    """
    x = bank.double()
    N = x.shape[0]
    mind = torch.full((N,), float("inf"), dtype=torch.float64)
    chosen = torch.zeros(N, dtype=torch.bool)
    idx = [int(start)]
    dist = [float("inf")]
    for _ in range(1, n):
        c = idx[-1]
        chosen[c] = True
        mind = torch.minimum(mind, ((x - x[c]) ** 2).sum(1).sqrt())
        cand = torch.where(chosen, torch.full_like(mind, -1.0), mind)
        nxt = int(torch.argmax(cand))  # first maximum = smallest index
        idx.append(nxt)
        dist.append(float(mind[nxt]))
    return torch.tensor(idx, dtype=torch.int64), torch.tensor(dist, dtype=torch.float64)
