"""Greedy k-center (farthest point sampling) over a memory bank sharded across processes."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .. import ops
from ..ops.coreset import PROJECTION_BLOCK_ROWS, PROJECTION_PAD, jl_min_dim, project, sparse_random_matrix
from ._comm import Ctx, DistributedError, disagreement, dtype_code, dtype_name, offsets_of

METHODS = ("exact", "composable")
_STORAGE = (torch.float32, torch.float16, torch.bfloat16)
_NO_CANDIDATE = -1  # all_reduce key of a rank without a row left to choose
_KEY_ERROR = torch.iinfo(torch.int64).max  # minus the rank: a rank whose step failed


def _projection_code(projection_dim) -> int:
    if projection_dim is None:
        return -1
    if projection_dim == "auto":
        return -2
    if isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1:
        raise ValueError(f"coreset: projection_dim must be None, an int >= 1 or 'auto', got {projection_dim!r}")
    return projection_dim


def projected_shard(shard: torch.Tensor, offset: int, n_total: int, k: int, seed: int) -> torch.Tensor:
    """Rows ``[offset, offset + len(shard))`` of ``ops.coreset.projected_bank(bank, k, seed)`` for the
    whole bank of ``n_total`` rows, bit for bit, computed from this shard alone.

    The single-process projection multiplies the bank in blocks of ``PROJECTION_BLOCK_ROWS`` rows, and
    a BLAS GEMM's rounding of a row depends on the block's row count. So each global block that this
    shard overlaps is multiplied with that block's row count: the shard's rows in place, zeros in the
    rows other ranks own (a GEMM row depends only on its own inputs). Temporary: one block.
    """
    D = shard.shape[1]
    m = sparse_random_matrix(D, k, seed)
    pad = -k % PROJECTION_PAD
    if pad:
        m = torch.cat([m, m.new_zeros(m.shape[0], pad)], dim=1)
    out = torch.empty(shard.shape[0], k + pad, dtype=torch.float32, device=shard.device)
    B = PROJECTION_BLOCK_ROWS
    end = offset + shard.shape[0]
    for r0 in range((offset // B) * B, end, B):
        r1 = min(r0 + B, n_total)
        lo, hi = max(offset, r0), min(end, r1)
        if lo == r0 and hi == r1:
            blk = shard[lo - offset : hi - offset]
        else:
            blk = torch.zeros(r1 - r0, D, dtype=torch.float32, device=shard.device)
            blk[lo - r0 : hi - r0] = shard[lo - offset : hi - offset]
        out[lo - offset : hi - offset] = project(blk, m, block_rows=B)[lo - r0 : hi - r0]
    return out


def _step_torch(x: torch.Tensor, centre: torch.Tensor, min_sq: torch.Tensor):
    """The coreset step in torch arithmetic (CUDA shards: no compiled step there; fp32, but a different
    summation order than the CUDA coreset kernel, so near-ties may resolve differently)."""
    if x.shape[0] == 0:
        return -2.0, -1
    d2 = ((x.float() - centre) ** 2).sum(1)
    if not bool(torch.isfinite(d2).all()):
        raise ValueError("coreset: bank must hold finite values, but a squared distance was NaN or Inf")
    keep = min_sq >= 0
    torch.where(keep & (d2 < min_sq), d2, min_sq, out=min_sq)
    i = int(torch.argmax(min_sq))  # first maximum = smallest row
    return float(min_sq[i]), i


#: Pruning policy of the single-process op (csrc/cpu/coreset_kernel.cpp): keep pruning while a step
#: skips more than PRUNE_GAIN * (centres so far) rows, else retry after a doubling back-off (<= 256).
PRUNE_GAIN, PRUNE_MAX_BACKOFF = 2, 256


class _Stepper:
    """The per-rank side of the greedy loop: the op's row update with its adaptive, exact pruning."""

    def __init__(self, x: torch.Tensor, n: int):
        self.x = x
        self.cpu = x.device.type == "cpu"
        self.assign = torch.zeros(x.shape[0], dtype=torch.int32) if self.cpu else None
        self.centres = torch.empty(n, x.shape[1], dtype=torch.float32, device=x.device)
        self.next_try, self.backoff, self.chosen_here = 2, 1, 0
        self.rows_skipped = 0  # rows the pruning did not read, all steps

    def __call__(self, step: int, centre: torch.Tensor, min_sq: torch.Tensor, chosen_here: bool):
        self.chosen_here += int(chosen_here)
        self.centres[step - 1] = centre
        if not self.cpu:
            return _step_torch(self.x, centre, min_sq)
        cc2 = None
        if step >= self.next_try:  # squared distances from the new centre to every centre so far
            cc2 = ((self.centres[:step] - centre) ** 2).sum(1)
            cc2[step - 1] = 0.0
        v, i, skipped = torch.ops.fastad.coreset_step(self.x, centre, min_sq, self.assign, cc2, step - 1)
        self.rows_skipped += int(skipped)
        if cc2 is not None:
            if int(skipped) - self.chosen_here > PRUNE_GAIN * step:
                self.backoff, self.next_try = 1, step + 1
            else:
                self.backoff = min(self.backoff * 2, PRUNE_MAX_BACKOFF)
                self.next_try = step + self.backoff
        return float(v), int(i)


def _key(value: float, gidx: int) -> int:
    """(squared distance, global row) packed so that a larger int64 = larger distance, then smaller row."""
    if gidx < 0 or value < 0:
        return _NO_CANDIDATE
    bits = torch.tensor([value], dtype=torch.float32).view(torch.int32).item()
    return (int(bits) << 32) | (0xFFFFFFFF - gidx)


def _unkey(key: int) -> tuple[float, int]:
    bits = key >> 32
    value = torch.tensor([bits], dtype=torch.int32).view(torch.float32).item()
    return value, 0xFFFFFFFF - (key & 0xFFFFFFFF)


def coreset(
    local_bank: torch.Tensor,
    n: int,
    *,
    projection_dim: int | str | None = None,
    seed: int = 0,
    start: int = 0,
    storage_dtype: torch.dtype | None = None,
    method: str = "exact",
    group=None,
    timeout: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-center selection of ``n`` rows of a bank whose rows are split across the ranks.

    Every rank passes its shard (any size, also empty); the bank is the concatenation of the shards in
    rank order. Arguments other than ``local_bank`` must be the same on every rank.

    ``method="exact"``: the same indices and distances as ``fastad.ops.coreset(torch.cat(shards), n,
    projection_dim=..., seed=..., start=..., storage_dtype=...)`` on CPU, bit for bit: each rank
    projects its rows exactly as the single-process op would (:func:`projected_shard`), keeps the
    running min-distance of its own rows, and every step is: the local update + argmax with the op's
    arithmetic (``torch.ops.fastad.coreset_step``, the same row update as ``fastad::coreset``), ONE
    ``all_reduce(MAX)`` of an int64 key packing (squared distance, ``2^32 - 1 - global row``) so that
    the largest key is the farthest row and, among equal distances, the lowest global row (the op's tie
    rule), then ONE ``broadcast`` of the chosen row (fp32, the selection dimension) from its owner.
    Per step and rank: 8 + 4 * D' bytes and 2 collective round trips; the bank is read once per step
    in total across ranks, so the step time divides by the number of ranks. On CUDA shards the step
    runs in torch arithmetic (near-ties may resolve differently from the CUDA op).

    ``method="composable"`` (an approximation; Ceccarello, Pietracaprina & Pucci's composable
    coresets): each rank runs the greedy on its own shard (``min(n, N_r)`` centres), the chosen rows
    are all-gathered (one exchange of ``n * D'`` floats per rank) and every rank runs the greedy on
    their union (identical on every rank). Its covering radius is within a factor ~2 of the exact one in
    theory; measured figures are in ``benchmarks/RESULTS.md`` ("## distributed").

    Args:
        local_bank: ``Tensor[N_r, D]`` float32 / float16 / bfloat16.
        n: centres to choose, ``1 <= n <= N`` (N = all ranks' rows).
        projection_dim, seed, storage_dtype: as :func:`fastad.ops.coreset` (``"auto"`` uses the global N).
        start: global index of the first centre (``0 <= start < N``).
        method: ``"exact"`` or ``"composable"``.
        group, timeout: process group and per-exchange timeout (see :mod:`fastad.distributed`).

    Returns:
        ``(indices Tensor[n] int64, min_distances Tensor[n] float32)`` on every rank, on the shard's
        device: global row numbers in selection order, and (exact) each chosen row's Euclidean distance
        to the rows chosen before it (``min_distances[0] = inf``), as :func:`fastad.ops.coreset`;
        (composable) those distances within the union of the shard coresets.
    """
    ctx = Ctx("coreset", group, timeout)
    err = None
    meta = [0] * 11
    try:
        if method not in METHODS:
            raise ValueError(f"coreset: method must be one of {METHODS}, got {method!r}")
        if local_bank.dim() != 2:
            raise ValueError(f"coreset: local_bank must be 2-D [N_r, D], got shape {list(local_bank.shape)}")
        if local_bank.dtype not in _STORAGE:
            raise ValueError(f"coreset: local_bank dtype must be float32, float16 or bfloat16, got {local_bank.dtype}")
        if storage_dtype is not None and storage_dtype not in _STORAGE:
            raise ValueError(f"coreset: storage_dtype must be None, float32, float16 or bfloat16, got {storage_dtype}")
        if isinstance(n, bool) or not isinstance(n, int) or isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f"coreset: n and start must be ints, got {n!r} and {start!r}")
        meta = [local_bank.shape[0], local_bank.shape[1], dtype_code(local_bank.dtype), n,
                _projection_code(projection_dim), int(seed), start, METHODS.index(method),
                0 if storage_dtype is None else dtype_code(storage_dtype), 0 if local_bank.device.type == "cpu" else 1]
    except (ValueError, TypeError) as e:
        err = e
    table = ctx.roll_call(meta, err, stage="entry")
    for f, name, render in [(1, "feature dimension D", str), (2, "dtype", dtype_name), (3, "n", str),
                            (4, "projection_dim", lambda v: {-1: "None", -2: "'auto'"}.get(v, str(v))),
                            (5, "seed", str), (6, "start", str), (7, "method", lambda v: METHODS[v]),
                            (8, "storage_dtype", lambda v: "None" if v == 0 else dtype_name(v)),
                            (9, "device type", lambda v: "cuda" if v else "cpu")]:
        disagreement(ctx, table, f, name, render)
    sizes = table[:, 0]
    N = int(sizes.sum())
    offsets = offsets_of(sizes)
    if N < 1 or not 1 <= n <= N:
        raise ValueError(f"{ctx.op}: n (centres to choose) must be in [1, N] = [1, {N}] (N = all ranks' rows), got {n}")
    if not 0 <= start < N:
        raise ValueError(f"{ctx.op}: start must be a global row index in [0, {N}), got {start}")

    # the selection space of this shard (same values as the single-process op's rows)
    err, x = None, None
    try:
        x = local_bank
        if projection_dim is not None and local_bank.shape[1] >= 1:
            k = jl_min_dim(N) if projection_dim == "auto" else projection_dim
            x = projected_shard(local_bank, offsets[ctx.rank], N, k, seed)
        if storage_dtype is not None and x.dtype != storage_dtype:
            x = x.to(storage_dtype)
        x = x.contiguous()
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError("coreset: local_bank must hold finite values (after projection), got NaN or Inf")
    except Exception as e:  # noqa: BLE001 - reported to every rank
        err = e
    ctx.roll_call([0], err, stage="projection")
    if method == "composable":
        return _composable(ctx, x, n, start, offsets, sizes)
    return _exact(ctx, x, n, start, offsets, sizes)


def _owner(offsets, sizes, gidx: int) -> int:
    for r in range(len(offsets)):
        if offsets[r] <= gidx < offsets[r] + int(sizes[r]):
            return r
    raise AssertionError(gidx)


def _exact(ctx: Ctx, x, n, start, offsets, sizes):
    dev = x.device
    me, off = ctx.rank, offsets[ctx.rank]
    min_sq = torch.full((x.shape[0],), math.inf, dtype=torch.float32, device=dev)
    idx = torch.empty(n, dtype=torch.int64)
    dists = torch.empty(n, dtype=torch.float32)
    idx[0], dists[0] = start, math.inf
    centre = torch.empty(x.shape[1], dtype=torch.float32, device=dev)
    key_t = torch.zeros(1, dtype=torch.int64, device=dev)
    stepper = _Stepper(x, n)
    cur = start
    for step in range(1, n):
        owner = _owner(offsets, sizes, cur)
        if owner == me:
            centre.copy_(x[cur - off])  # fp32, converted from the storage like the op's centre
            min_sq[cur - off] = -1.0  # chosen (the op's kCoresetChosen)
        ctx.broadcast(centre, owner, f"step {step}: broadcast of the chosen row")
        try:
            v, i = stepper(step, centre, min_sq, owner == me)
            key = _key(v, i + off if i >= 0 else -1)
        except Exception:  # noqa: BLE001 - the other ranks learn it through the reduction
            key = _KEY_ERROR - me
        key_t.fill_(key)
        ctx.all_reduce(key_t, dist.ReduceOp.MAX, f"step {step}: all_reduce of the farthest row")
        best = int(key_t.item())
        if best > _KEY_ERROR - ctx.world:
            r = _KEY_ERROR - best
            raise DistributedError(
                f"{ctx.op}: rank {r} failed at step {step} (NaN/Inf squared distance in its shard: the bank holds "
                "values whose squared differences overflow float32)", [r])
        if best == _NO_CANDIDATE:
            raise AssertionError("coreset: no row left to choose (n > N should have been refused)")
        v, cur = _unkey(best)
        idx[step] = cur
        dists[step] = math.sqrt(max(v, 0.0))  # = the op's float sqrt (a double sqrt rounds to the same float)
    return idx.to(dev), dists.to(dev)


def _composable(ctx: Ctx, x, n, start, offsets, sizes):
    off, nr = offsets[ctx.rank], x.shape[0]
    m = min(n, nr)
    err, local = None, torch.zeros(0, dtype=torch.int64)
    try:
        if m:
            s_local = start - off if off <= start < off + nr else 0
            local, _ = ops.coreset(x, m, start=s_local)
            local = local.cpu()
    except Exception as e:  # noqa: BLE001
        err = e
    ctx.roll_call([0], err, stage="local greedy")
    rows = x.new_zeros((n, x.shape[1]))
    gidx = torch.full((n,), -1, dtype=torch.int64)
    if m:
        rows[:m] = x[local.to(x.device)]
        gidx[:m] = local + off
    all_rows = ctx.all_gather(rows, "all_gather of the shard coresets")
    all_idx = ctx.all_gather(gidx.to(x.device), "all_gather of the shard coreset indices").cpu()
    keep = all_idx.reshape(-1) >= 0
    union = all_rows.reshape(-1, x.shape[1])[keep.to(x.device)]
    uidx = all_idx.reshape(-1)[keep]
    u_start = int(torch.nonzero(uidx == start)[0, 0])
    sel, d = ops.coreset(union, n, start=u_start)
    return uidx[sel.cpu()].to(x.device), d
