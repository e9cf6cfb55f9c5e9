"""Exact k-NN over a memory bank sharded across processes (``torch.distributed``)."""
from __future__ import annotations

import struct

import torch

from .. import ops
from ._comm import Ctx, disagreement, dtype_code, dtype_name, offsets_of

METRIC_CODES = {"l2": 1, "sqeuclidean": 2, "cosine": 3, "ip": 4}


def merge_topk(dists: torch.Tensor, idx: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-shard k-best lists into the global k best.

    Args:
        dists, idx: ``[P, Q, k']`` per-shard results in shard (rank) order, each list best first with
            ties by increasing index and global indices (padding: ``+inf``/``-inf`` and ``-1``).
        k: neighbours to keep. largest: ``True`` for ``"ip"`` (largest first).

    Returns ``(Tensor[Q, k], Tensor[Q, k])`` ordered by (distance, global index), the rule of
    :func:`fastad.ops.knn`: a stable sort of the rank-ordered concatenation keeps, among equal
    distances, the shard order and within a shard the index order, i.e. increasing global index.
    """
    P, Q, kk = dists.shape
    d = dists.permute(1, 0, 2).reshape(Q, P * kk)
    i = idx.permute(1, 0, 2).reshape(Q, P * kk)
    order = torch.sort(d, dim=1, descending=largest, stable=True).indices[:, :k]
    return torch.gather(d, 1, order), torch.gather(i, 1, order)


def _local_knn(query, shard, k, metric, offset):
    if shard.shape[0] == 0:
        pad = float("-inf") if metric == "ip" else float("inf")
        return (torch.full((query.shape[0], k), pad, dtype=torch.float32, device=query.device),
                torch.full((query.shape[0], k), -1, dtype=torch.int64, device=query.device))
    d, i = ops.knn(query, shard, k, metric)
    return d, torch.where(i >= 0, i + offset, i)


def knn(
    query: torch.Tensor,
    local_bank: torch.Tensor,
    k: int,
    metric: str = "l2",
    *,
    scatter_queries: bool = False,
    group=None,
    timeout: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN against a bank whose rows are split across the ranks of a process group.

    Every rank calls this with its own shard ``local_bank`` (shards may differ in size, also be empty);
    the bank is the concatenation of the shards in rank order, so rank ``r``'s row ``j`` is global row
    ``offset_r + j``.

    Default mode (``scatter_queries=False``): ``query`` is the same on every rank; each rank runs
    :func:`fastad.ops.knn` on its shard, the k best of every rank are all-gathered (``P * Q * k``
    distances and indices) and merged. Every rank returns the full result.

    ``scatter_queries=True``: each rank passes its *own* queries (any number, also 0) and gets their
    neighbours in the whole bank: the shards travel around a ring (``P - 1`` steps, each rank sends one
    shard per step) and each rank merges its running k best with the k best of the visiting shard.

    Result: equal to ``fastad.ops.knn(query, torch.cat(shards), k, metric)``: same order rule
    (distance, then lowest global index), and distances bit-identical, because every distance is the
    one ``ops.knn`` computes for that (query, row) pair (``"l2"``/``"sqeuclidean"`` winners are
    re-ranked with exact distances; cosine/ip scores do not depend on the other rows). One caveat
    inherited from ``ops.knn``: it picks ``"l2"`` candidates with an expansion centred on an estimate
    of the (whole) bank's mean before the exact re-rank, so when two rows are within fp32 rounding of
    each other at the k-th place, the sharded search (which centres each shard on its own mean) can
    keep the other one; the returned list is then still correctly ordered by exact distance.

    Args:
        query: ``Tensor[Q, D]`` float32/float16/bfloat16 (CPU with gloo, CUDA with NCCL).
        local_bank: ``Tensor[N_r, D]``, same dtype and device as ``query``.
        k: neighbours (>= 1); with fewer than ``k`` rows in the whole bank the extra slots hold ``inf``
            (``-inf`` for ``"ip"``) and ``-1``.
        metric: as :func:`fastad.ops.knn`.
        scatter_queries: see above.
        group: process group (``None`` = the default group).
        timeout: seconds to wait for the other ranks in each exchange (default :func:`get_timeout`).

    Returns:
        ``(distances Tensor[Q, k] float32, global indices Tensor[Q, k] int64)`` on the query's device.

    Raises:
        ValueError on every rank, before any work, if the ranks disagree on ``D``, dtype, device type,
        ``k``, ``metric``, the mode, or (default mode) the queries; :class:`DistributedError` on every
        rank if a rank raised (e.g. NaN in its shard) or did not answer within the timeout.
    """
    ctx = Ctx("knn", group, timeout)
    err = None
    try:
        if metric not in METRIC_CODES:
            raise ValueError(f"knn: metric must be one of {tuple(METRIC_CODES)}, got {metric!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"knn: k must be an int >= 1, got {k!r}")
        if query.dim() != 2 or local_bank.dim() != 2:
            raise ValueError(f"knn: query and local_bank must be 2-D, got shapes {list(query.shape)} and "
                             f"{list(local_bank.shape)}")
        if query.shape[1] != local_bank.shape[1] or query.dtype != local_bank.dtype or query.device != local_bank.device:
            raise ValueError(
                f"knn: query and local_bank must have the same D, dtype and device, got {list(query.shape)} "
                f"{query.dtype} {query.device} and {list(local_bank.shape)} {local_bank.dtype} {local_bank.device}")
    except (ValueError, TypeError) as e:
        err = e
    # checksum of the queries (default mode: they must be the same everywhere); float64 bits as int64
    qsum = 0
    if err is None and not scatter_queries and query.numel():
        qsum = struct.unpack("<q", struct.pack("<d", float(query.double().sum())))[0]
    meta = [0, 0, 0, 0, 0, 0, 0, 0]
    if err is None:
        meta = [local_bank.shape[0], query.shape[1], dtype_code(query.dtype), int(k), METRIC_CODES[metric],
                int(bool(scatter_queries)), query.shape[0] if not scatter_queries else 0, qsum,
                0 if query.device.type == "cpu" else 1]
    table = ctx.roll_call(meta, err, stage="entry")
    disagreement(ctx, table, 5, "scatter_queries", lambda v: bool(v))
    disagreement(ctx, table, 1, "feature dimension D")
    disagreement(ctx, table, 2, "dtype", dtype_name)
    disagreement(ctx, table, 8, "device type", lambda v: "cuda" if v else "cpu")
    disagreement(ctx, table, 3, "k")
    disagreement(ctx, table, 4, "metric", lambda v: {c: m for m, c in METRIC_CODES.items()}[v])
    if not scatter_queries:
        disagreement(ctx, table, 6, "number of queries Q (scatter_queries=False: the queries must be the same)")
        disagreement(ctx, table, 7, "queries (scatter_queries=False; shown: the bits of their float64 sum)",
                     lambda v: f"{v:#x}")
    sizes = table[:, 0]
    offsets = offsets_of(sizes)
    largest = metric == "ip"

    if not scatter_queries:
        err, res = None, None
        try:
            res = _local_knn(query, local_bank, k, metric, offsets[ctx.rank])
        except Exception as e:  # noqa: BLE001 - reported to every rank by the roll call
            err = e
        ctx.roll_call([0], err, stage="local search")
        d_all = ctx.all_gather(res[0], "all_gather of the k best distances")
        i_all = ctx.all_gather(res[1], "all_gather of the k best indices")
        return merge_topk(d_all, i_all, k, largest)

    # scatter_queries: the shards travel around the ring; each rank keeps its queries
    n_max = int(sizes.max())
    D = query.shape[1]
    err, best = None, None
    try:
        best = _local_knn(query, local_bank, k, metric, offsets[ctx.rank])
    except Exception as e:  # noqa: BLE001
        err = e
    ctx.roll_call([0], err, stage="local search")
    if ctx.world == 1:
        return best
    cur = local_bank.new_zeros((n_max, D))
    cur[: local_bank.shape[0]] = local_bank
    nxt = torch.empty_like(cur)
    for step in range(1, ctx.world):
        ctx.shift(cur, nxt, 1, f"ring step {step}: shard exchange")
        cur, nxt = nxt, cur
        owner = (ctx.rank - step) % ctx.world
        shard = cur[: int(sizes[owner])]
        d, i = _local_knn(query, shard, k, metric, offsets[owner])
        # the running list and the visiting shard's interleave in global index: merge by (distance, index)
        best = _merge_by_index(torch.stack([best[0], d]), torch.stack([best[1], i]), k, largest)
    return best


def _merge_by_index(d: torch.Tensor, i: torch.Tensor, k: int, largest: bool):
    """Merge two k-best lists ``[2, Q, k]`` whose index ranges interleave: sort by (distance, index)."""
    Q = d.shape[1]
    dd = d.permute(1, 0, 2).reshape(Q, 2 * d.shape[2])
    ii = i.permute(1, 0, 2).reshape(Q, 2 * i.shape[2])
    # sort by index first (padding -1 to the end), then a stable sort by distance
    key = torch.where(ii < 0, torch.iinfo(torch.int64).max, ii)
    o1 = torch.sort(key, dim=1, stable=True).indices
    dd, ii = torch.gather(dd, 1, o1), torch.gather(ii, 1, o1)
    o2 = torch.sort(dd, dim=1, descending=largest, stable=True).indices[:, :k]
    return torch.gather(dd, 1, o2), torch.gather(ii, 1, o2)
