"""Pure-torch references of every fastad op: the test oracle and a readable specification.

They favour clarity over speed and compute in float64 unless told otherwise; they do materialise
the full distance matrix, so use them on small inputs only.
"""
from __future__ import annotations

from typing import Optional, Sequence

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


def knn(
    query: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "l2", bank_norms: Optional[torch.Tensor] = None,
    exclude_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
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


def group_min(
    query: torch.Tensor, bank: torch.Tensor, group_size: int, metric: str = "l2",
    exclude_group: Optional[torch.Tensor] = None,
) -> torch.Tensor:
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


def coreset(
    bank: torch.Tensor, n: int, start: int = 0, progress: Optional[torch.Tensor] = None, method: str = "exhaustive"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``torch.ops.fastad.coreset`` (greedy k-center, float64).

    Returns ``(indices Tensor[n] int64, min_distances Tensor[n] float64)``: ``indices[0] = start``,
    ``min_distances[0] = inf``; each next index maximises the distance to the chosen set among the rows
    not chosen yet (ties: smaller index). ``progress`` (``Tensor[>= 1]`` int64), when given, holds the
    number of centres chosen so far in ``progress[0]``. ``method`` ("pruned" / "exhaustive") changes no
    result (the op's methods return identical indices), so the reference ignores it.
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
        if progress is not None:
            progress.view(-1)[0] = len(idx)
    if progress is not None:
        progress.view(-1)[0] = len(idx)
    return torch.tensor(idx, dtype=torch.int64), torch.tensor(dist, dtype=torch.float64)
# ---- MuSc (issue 5) ------------------------------------------------------------------------------
# Direct (float64) formulations; tests/helpers/musc_oracle.py holds the port of the official code.

def lnamd(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """Reference of :func:`fastad.ops.lnamd`: ``layer_norm`` over (L, C) per image + ``avg_pool2d``
    (zero padding counted) + per-token L2 normalisation, in float64. Returns float64 ``[B, L, C]``."""
    B, L, C = tokens.shape
    H = int(round(L ** 0.5))
    x = tokens.double()
    y = torch.nn.functional.layer_norm(x, (L, C), eps=1e-5)
    g = y.transpose(1, 2).reshape(B, C, H, H)
    p = torch.nn.functional.avg_pool2d(g, r, 1, (r - 1) // 2, count_include_pad=True)
    u = p.reshape(B, C, L).transpose(1, 2)
    return u / u.norm(dim=-1, keepdim=True)


def snamd(tokens: torch.Tensor, r_list: Sequence[int]) -> torch.Tensor:
    """Reference of :func:`fastad.ops.snamd` (float64; the official MuSc-V2 code rounds to fp16)."""
    B, L, C = tokens.shape
    H = int(round(L ** 0.5))
    rmax = max(r_list)
    rad = (rmax - 1) // 2
    x = tokens.double().reshape(B, H, H, C)
    xp = torch.nn.functional.pad(x, (0, 0, rad, rad, rad, rad))  # zero padding of the grid
    out = torch.zeros_like(x)
    for r in r_list:
        rr = (r - 1) // 2
        num = torch.zeros_like(x)
        den = torch.zeros(B, H, H, 1, dtype=torch.float64)
        for dh in range(-rr, rr + 1):
            for dw in range(-rr, rr + 1):
                xn = xp[:, rad + dh : rad + dh + H, rad + dw : rad + dw + H]
                wgt = torch.exp(-(xn - x).norm(dim=-1, keepdim=True))
                num += wgt * xn
                den += wgt
        out += num / den
    out /= len(r_list)
    out = out / out.norm(dim=-1, keepdim=True)
    return out.reshape(B, L, C)


def mutual_scores(z: torch.Tensor, k: int, pool: torch.Tensor | None = None, window: int = 0) -> torch.Tensor:
    """Reference of :func:`fastad.ops.mutual_scores` in float64: per image pair the full distance
    matrix, its row minima, then the mean of the k smallest over the reference images."""
    N, L, C = z.shape
    zz = z.double()
    refs = pool.double() if pool is not None else zz
    mask = None
    if window:
        H = int(round(L ** 0.5))
        hh, ww = torch.arange(L) // H, torch.arange(L) % H
        hw = (window - 1) // 2
        mask = ((hh[:, None] - hh[None, :]).abs() <= hw) & ((ww[:, None] - ww[None, :]).abs() <= hw)
    out = torch.empty(N, L, dtype=torch.float64)
    for i in range(N):
        mins = []
        for j in range(refs.shape[0]):
            if pool is None and j == i:
                continue
            d = torch.cdist(zz[i], refs[j])
            if mask is not None:
                d = d.masked_fill(~mask, float("inf"))
            mins.append(d.min(1).values)
        m = torch.stack(mins, 1)
        out[i] = m.topk(k, dim=1, largest=False).values.mean(1)
    return out


def rscin(scores: torch.Tensor, image_features: torch.Tensor, k_list: Sequence[int]) -> torch.Tensor:
    """Reference of :func:`fastad.ops.rscin` in float64: min-max normalised scores averaged over the
    k most similar images (self included) with similarity weights, mean over k_list."""
    s = scores.double()
    s = (s - s.min()) / (s.max() - s.min())
    W = image_features.double() @ image_features.double().T
    outs = []
    for k in k_list:
        vals, idx = W.topk(k, dim=1)
        outs.append((vals * s[idx]).sum(1) / vals.sum(1))
    return torch.stack(outs, 1).mean(1)


# ---- Gaussian models (issue 13) ------------------------------------------------------------------
def mahalanobis(x: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor, cholesky: bool = False) -> torch.Tensor:
    """Reference of :func:`fastad.ops.mahalanobis`: float64 ``||(x - mean) @ tril(factor)||^2``, or with
    ``cholesky=True`` float64 ``||tril(factor)^{-1} (x - mean)||^2`` (``torch.linalg.solve_triangular``)."""
    L = factor.double().tril()
    delta = x.double() - mean.double()
    if cholesky:
        if x.dim() == 2:
            return torch.linalg.solve_triangular(L, delta.T, upper=False).square().sum(0)
        return torch.linalg.solve_triangular(L, delta.permute(1, 2, 0), upper=False).square().sum(1).T
    if x.dim() == 2:
        return (delta @ L).square().sum(-1)
    return torch.einsum("npk,pkj->npj", delta, L).square().sum(-1)


def gaussian_accumulate(
    x: torch.Tensor, shift: torch.Tensor, sum: torch.Tensor, sumsq: torch.Tensor,
    row_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`fastad.ops.gaussian_accumulate`, functional: returns the updated
    ``(sum, sumsq)`` (float64; the strict upper triangle of ``sumsq`` unchanged; a packed ``sumsq``,
    ``[..., d (d + 1) / 2]``, holds the lower triangles row by row; rows ``i < row_start[p]`` unchanged)."""
    y = x.double() - shift.double()
    s1 = sum + y.sum(0)
    if x.dim() == 2:
        prod = y.T @ y
    else:
        prod = torch.einsum("npi,npj->pij", y, y)
    d = x.shape[-1]
    keep = None  # [.., d, 1]: True on the rows the op updates
    if row_start is not None:
        rows = torch.arange(d)[:, None] >= row_start.cpu().view(-1, 1, 1)  # [P, d, 1]
        keep = rows if x.dim() == 3 else rows[0]
    if sumsq.dim() == x.dim() - 1:  # packed
        i, j = torch.tril_indices(d, d)
        add = prod[..., i, j]
        if keep is not None:
            add = add * keep[..., i, 0]
        return s1, sumsq + add
    add = prod.tril()
    if keep is not None:
        add = add * keep
    return s1, sumsq + add


def gaussian_covariance(sumsq: torch.Tensor, m: torch.Tensor, n: float, scale: float, reg: float,
                        dtype: torch.dtype = torch.float64, row_start: torch.Tensor | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`fastad.ops.gaussian_covariance`: the lower triangles (upper zero) of
    ``(S - n m m^T) * scale + reg I`` in float64 from dense or packed sums, cast to ``dtype``; with
    ``row_start``, rows ``i < row_start[p]`` are those of ``out`` (the op leaves them as they are)."""
    d = m.shape[-1]
    if sumsq.dim() == m.dim():  # packed [.., d (d + 1) / 2]
        i, j = torch.tril_indices(d, d)
        S = torch.zeros(m.shape[:-1] + (d, d), dtype=torch.float64)
        S[..., i, j] = sumsq.double()
    else:
        S = sumsq.double()
    m64 = m.double()
    c = (S - float(n) * m64[..., :, None] * m64[..., None, :]) * float(scale)
    c = c + float(reg) * torch.eye(d, dtype=torch.float64)
    res = c.tril().to(dtype)
    if row_start is not None:
        old = out.to(dtype) if out is not None else torch.zeros_like(res)
        above = (torch.arange(d)[:, None] < row_start.cpu().view(-1, 1, 1)).view(res.shape[:-2] + (d, 1))
        res = torch.where(above, old, torch.where(torch.ones(d, d, dtype=torch.bool).tril(), res, old))
    return res


def cholesky_lower(a: torch.Tensor, row_start: torch.Tensor | None = None,
                   row_src: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`fastad.ops.cholesky_lower` (not in place): ``(C, info)``, the float64 lower
    Cholesky factors of the symmetric matrices whose lower triangle ``a`` holds (``C`` zero where
    ``info != 0``), and LAPACK's ``info`` (0, or the order of the first non-positive-definite minor).
    ``row_start`` / ``row_src``: matrix ``p``'s leading ``r = row_start[p]`` rows are those of matrix
    ``row_src[p]``'s factor ``C11`` (copied, in order of increasing ``row_start``; a failed source's info
    is taken over), the rest by blocks: ``C21 = A21 C11^{-T}``, ``C22 = chol(A22 - C21 C21^T)``."""
    low = a.double().tril()
    full = low + low.tril(-1).transpose(-1, -2)
    if row_start is None:
        C, info = torch.linalg.cholesky_ex(full)
        C = torch.where((info == 0)[..., None, None], C, torch.zeros_like(C))
        return C, info.to(torch.int64)
    unbatched = a.dim() == 2
    full = full[None] if unbatched else full
    P = full.shape[0]
    C = torch.zeros_like(full)
    info = torch.zeros(P, dtype=torch.int64)
    rs, src = row_start.cpu().tolist(), row_src.cpu().tolist()
    for p in sorted(range(P), key=lambda q: rs[q]):
        r = rs[p]
        if r == 0:
            c, i = torch.linalg.cholesky_ex(full[p])
            C[p], info[p] = (c if int(i) == 0 else torch.zeros_like(c)), int(i)
            continue
        q = src[p]
        if int(info[q]) != 0:
            info[p] = info[q]
            continue
        C11 = C[q, :r, :r]
        C21 = torch.linalg.solve_triangular(C11.T, full[p, r:, :r], upper=True, left=False)
        c22, i = torch.linalg.cholesky_ex(full[p, r:, r:] - C21 @ C21.T)
        if int(i) != 0:
            info[p] = r + int(i)
            continue
        C[p, :r, :r], C[p, r:, :r], C[p, r:, r:] = C11, C21, c22
    return (C[0], info[0]) if unbatched else (C, info)


def gather_maps(maps: Sequence[torch.Tensor], channels: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`fastad.ops.gather_maps`: the embedding formed as PaDiM / anomalib form it
    (nearest resize to the first map's grid, concatenation, channel subset), position-major."""
    import torch.nn.functional as F

    first = maps[0].float()
    parts = [first] + [F.interpolate(m.float(), size=first.shape[-2:], mode="nearest") for m in maps[1:]]
    emb = torch.cat(parts, 1).index_select(1, channels)
    return emb.flatten(2).transpose(1, 2).contiguous()
