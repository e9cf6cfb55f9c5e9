"""Small row-level helpers for sharded tensors: split work by rank, gather a sharded bank, fetch rows
by global index."""
from __future__ import annotations

import torch
import torch.distributed as dist

from ._comm import Ctx, disagreement, dtype_code, dtype_name, offsets_of


def shard_range(n: int, *, group=None) -> tuple[int, int]:
    """``(lo, hi)``: this rank's contiguous share of ``n`` items (rank order; sizes differ by at most 1)."""
    ctx = Ctx("shard_range", group)
    return n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world


def shard(x, *, group=None):
    """This rank's contiguous share of the rows of ``x`` (a tensor or a sequence): ``x[lo:hi]``."""
    lo, hi = shard_range(len(x), group=group)
    return x[lo:hi]


def all_rows(local_rows: torch.Tensor, *, group=None, timeout: float | None = None) -> torch.Tensor:
    """The concatenation (rank order) of every rank's ``local_rows`` ``[n_r, ...]``, on every rank."""
    ctx = Ctx("all_rows", group, timeout)
    err = None if local_rows.dim() <= 9 else ValueError(f"all_rows: at most 9 dims, got shape {list(local_rows.shape)}")
    meta = [local_rows.shape[0], local_rows.dim(), dtype_code(local_rows.dtype)] + list(local_rows.shape[1:9])
    table = ctx.roll_call(meta, err, stage="entry")
    disagreement(ctx, table, 1, "number of dims of local_rows")
    disagreement(ctx, table, 2, "dtype of local_rows", dtype_name)
    for f in range(3, 3 + local_rows.dim() - 1):
        disagreement(ctx, table, f, f"size of dim {f - 2} of local_rows")
    sizes = table[:, 0].tolist()
    n_max = max(sizes)
    buf = local_rows.new_zeros((n_max,) + tuple(local_rows.shape[1:]))
    buf[: local_rows.shape[0]] = local_rows
    got = ctx.all_gather(buf, "all_gather of the shards")
    return torch.cat([got[r, : sizes[r]] for r in range(ctx.world)])


def rows_by_index(local_bank: torch.Tensor, idx: torch.Tensor, *, group=None, timeout: float | None = None):
    """Rows ``idx`` (global row numbers, any shape, the same on every rank) of the sharded bank whose
    shard on this rank is ``local_bank``: ``Tensor[*idx.shape, D]`` on every rank (each owner fills its
    rows, one all_reduce(SUM) of ``idx.numel() * D`` values; x + 0 = x, so the rows are exact)."""
    ctx = Ctx("rows_by_index", group, timeout)
    table = ctx.roll_call([local_bank.shape[0], local_bank.shape[1], idx.numel()], None, stage="entry")
    off = offsets_of(table[:, 0])[ctx.rank]
    flat = idx.reshape(-1).to(local_bank.device)
    out = local_bank.new_zeros((flat.numel(), local_bank.shape[1]))
    mine = (flat >= off) & (flat < off + local_bank.shape[0])
    out[mine] = local_bank[flat[mine] - off]
    ctx.all_reduce(out, dist.ReduceOp.SUM, "all_reduce of the requested rows")
    return out.view(*idx.shape, local_bank.shape[1])


def is_main_process(group=None) -> bool:
    """True on rank 0 of ``group`` (and without a process group)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank(group) == 0
