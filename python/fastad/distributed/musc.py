"""MuSc's mutual scoring with the images split across processes: blocks of images travel around a ring."""
from __future__ import annotations

from typing import Sequence

import torch

from .. import ops
from ._comm import Ctx, DistributedError, disagreement, dtype_code, dtype_name, offsets_of


def _pair_minima(pair_fn, a: torch.Tensor, b: torch.Tensor, a_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For one image pair: ``(d(a -> b) [R, L], d(b -> a) [R, L])``, the per-patch distance to the other
    image's nearest patch, exactly as the single-process op computes them for this pair: the pair is
    scored as a 2-image batch with ``k = 1`` in global order (lower global index first), which is the
    pair's Gram tile and min epilogue in ``ops.mutual_scores``."""
    z = torch.stack([a, b] if a_first else [b, a])
    s = pair_fn(z)  # [R, 2, L]
    return (s[:, 0], s[:, 1]) if a_first else (s[:, 1], s[:, 0])


def _ring_scores(ctx: Ctx, z: torch.Tensor, sizes, R: int, pair_fn, k: int) -> torch.Tensor:
    P, me = ctx.world, ctx.rank
    offs = offsets_of(sizes)
    n_me, L = z.shape[0], z.shape[1]
    n_max = int(max(sizes))
    N = int(sum(sizes))
    # d[i, r, p, g]: distance of own image i's patch p (slot r) to global image g's nearest patch
    dmat = torch.full((n_me, R, L, N), float("inf"), dtype=torch.float32, device=z.device)
    # back[q]: distances of rank q's images to ours, computed here, returned to q at the end
    back = torch.zeros((P, n_max, R, L, n_max), dtype=torch.float32, device=z.device)
    mine = torch.zeros(n_me, N, dtype=torch.bool)  # dmat columns this rank filled itself
    for i in range(n_me):  # own pairs (i < j)
        for j in range(i + 1, n_me):
            dij, dji = _pair_minima(pair_fn, z[i], z[j], True)
            dmat[i, :, :, offs[me] + j] = dij
            dmat[j, :, :, offs[me] + i] = dji
    cur = z.new_zeros((n_max,) + tuple(z.shape[1:]))
    cur[:n_me] = z
    nxt = torch.empty_like(cur)
    for step in range(1, P // 2 + 1):
        ctx.shift(cur, nxt, 1, f"ring step {step}: image block exchange")
        cur, nxt = nxt, cur
        q = (me - step) % P
        # with P even, blocks P/2 apart meet at both ranks: each scores the pairs of one parity of i + j
        half = 2 * step == P
        parity = 0 if me < q else 1
        for i in range(n_me):
            for j in range(int(sizes[q])):
                if half and (i + j) % 2 != parity:
                    continue
                dij, dji = _pair_minima(pair_fn, z[i], cur[j], offs[me] < offs[q])
                dmat[i, :, :, offs[q] + j] = dij
                back[q, j, :, :, i] = dji
                mine[i, offs[q] + j] = True
    if P > 1:
        got = torch.empty_like(back)
        ctx.count(back.numel() * back.element_size() * (P - 1) // P)
        ctx.all_to_all(got, back, "all_to_all of the returned minima")
        for q in range(P):
            if q != me and sizes[q]:
                n_q = int(sizes[q])
                sl = got[q, :n_me, :, :, :n_q]  # [n_me, R, L, n_q]; zeros where q did not score the pair
                take = ~mine[:, offs[q] : offs[q] + n_q].to(z.device)  # [n_me, n_q]: pairs q scored
                cols = dmat[:, :, :, offs[q] : offs[q] + n_q]
                cols.copy_(torch.where(take[:, None, None, :], sl, cols))
    # drop self, mean of the k smallest (the op's interval mean: float sqrt distances summed in double)
    own = torch.arange(n_me, device=z.device) + offs[me]
    keep = torch.ones(n_me, N, dtype=torch.bool, device=z.device)
    keep[torch.arange(n_me), own] = False
    vals = dmat.permute(0, 3, 1, 2)[keep].reshape(n_me, N - 1, R, L)
    top = torch.topk(vals, k, dim=1, largest=False).values
    return (top.double().sum(1) / k).float().permute(1, 0, 2)  # [R, n_me, L]


def _check(ctx, local, kind, k_arg, fraction, ceil_small, same_position, extra_meta):
    err, meta = None, [0] * 10
    try:
        if local.dim() != 3:
            raise ValueError(f"{kind}: local_{'z' if kind == 'mutual_scores' else 'tokens'} must be 3-D [n_r, L, C], "
                             f"got shape {list(local.shape)}")
        if local.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"{kind}: dtype must be float32, float16 or bfloat16, got {local.dtype}")
        meta = [local.shape[0], local.shape[1], local.shape[2], dtype_code(local.dtype), -1 if k_arg is None else k_arg,
                int(round(fraction * 1e9)), int(bool(ceil_small)), int(same_position or 0)] + list(extra_meta)
    except (ValueError, TypeError) as e:
        err = e
    table = ctx.roll_call(meta, err, stage="entry")
    for f, name, render in [(1, "number of patches L", str), (2, "channels C", str), (3, "dtype", dtype_name),
                            (4, "k", str), (5, "fraction", lambda v: str(v / 1e9)), (6, "ceil_small", str),
                            (7, "same_position", str), (8, "r_list", str), (9, "r_list", str)]:
        disagreement(ctx, table, f, name, render)
    sizes = table[:, 0].tolist()
    N = int(sum(sizes))
    k = k_arg if k_arg is not None else ops.interval_k(N - 1, fraction, ceil_small=ceil_small)
    if not 1 <= k <= N - 1:
        raise ValueError(f"{ctx.op}: k must be in [1, N - 1] = [1, {N - 1}] (N = all ranks' images), got {k}")
    return sizes, k


def _run(ctx, local, sizes, R, pair_fn, k):
    err, out = None, None
    try:
        out = _ring_scores(ctx, local, sizes, R, pair_fn, k)
    except DistributedError:
        raise
    except Exception as e:  # noqa: BLE001 - reported to every rank
        err = e
    ctx.roll_call([0], err, stage="scoring")
    return out


def mutual_scores(
    local_z: torch.Tensor,
    fraction: float = 0.3,
    *,
    k: int | None = None,
    same_position: int | None = None,
    ceil_small: bool = False,
    group=None,
    timeout: float | None = None,
) -> torch.Tensor:
    """MuSc's mutual scoring when the ``N`` images are split across the ranks.

    Every rank passes its images ``local_z`` (``[n_r, L, C]``, any ``n_r`` also 0; the images are the
    concatenation in rank order) and gets the scores of its own images, equal to the matching rows of
    ``fastad.ops.mutual_scores(torch.cat(all z), fraction, ...)`` (the same per-pair arithmetic: each
    pair is the op's Gram tile, scored once for both directions; ``k = int(fraction * (N - 1))``).

    Ring: the blocks of images travel one rank per step for ``floor(P / 2)`` steps; at step ``s`` rank
    ``r`` scores its images against rank ``r - s``'s block in both directions (with ``P`` even, blocks
    ``P/2`` apart meet at both ranks, which split their pairs by the parity of ``i + j``); the other
    direction's minima go back to their owner in one ``all_to_all`` at the end. Per rank: ``floor(P/2)`` sends of ``n_max * L * C``
    values and one all_to_all of ``n_max^2 * L`` floats per peer; work ``~N^2 / (2P)`` pairs.

    Returns:
        ``Tensor[n_r, L]`` float32 on ``local_z``'s device.
    """
    ctx = Ctx("mutual_scores", group, timeout)
    sizes, kk = _check(ctx, local_z, "mutual_scores", k, fraction, ceil_small, same_position, [0, 0])

    def pair_fn(z2):
        return ops.mutual_scores(z2, k=1, same_position=same_position)[None]

    return _run(ctx, local_z, sizes, 1, pair_fn, kk)[0]


def lnamd_mutual_scores(
    local_tokens: torch.Tensor,
    r_list: Sequence[int] = (1, 3, 5),
    fraction: float = 0.3,
    *,
    k: int | None = None,
    same_position: int | None = None,
    ceil_small: bool = False,
    group=None,
    timeout: float | None = None,
) -> torch.Tensor:
    """:func:`fastad.ops.lnamd_mutual_scores` with the images split across the ranks (the ring of
    :func:`mutual_scores`; LNAMD is per image, so each pair is the op's fused tile). Returns
    ``Tensor[R, n_r, L]`` float32: the rows of the single-process result for this rank's images."""
    ctx = Ctx("lnamd_mutual_scores", group, timeout)
    rl = [int(r) for r in r_list]
    code = sum(r * 100 ** t for t, r in enumerate(rl[:4]))
    sizes, kk = _check(ctx, local_tokens, "lnamd_mutual_scores", k, fraction, ceil_small, same_position,
                       [len(rl), code])

    def pair_fn(t2):
        return ops.lnamd_mutual_scores(t2, rl, k=1, same_position=same_position)

    return _run(ctx, local_tokens, sizes, len(rl), pair_fn, kk)
