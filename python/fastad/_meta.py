"""Fake (meta) kernels of the fastad operators, for torch.compile, FakeTensor and opcheck.

Each repeats the checks of the C++ entry function (same messages) and returns empty outputs of
the right shape, dtype and device.
"""
from __future__ import annotations

import torch

_METRICS = ("l2", "sqeuclidean", "cosine", "ip")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)


def check_query_bank(op: str, query: torch.Tensor, bank: torch.Tensor) -> None:
    _check(query.dim() == 2, f"{op}: query must be 2-D [Q, D], got {query.dim()}-D tensor of shape {list(query.shape)}")
    _check(bank.dim() == 2, f"{op}: bank must be 2-D [N, D], got {bank.dim()}-D tensor of shape {list(bank.shape)}")
    _check(
        query.shape[1] == bank.shape[1],
        f"{op}: query and bank must have the same feature dimension D, got query {list(query.shape)} "
        f"and bank {list(bank.shape)}",
    )
    _check(query.shape[1] >= 1, f"{op}: feature dimension D must be >= 1, got {query.shape[1]}")
    _check(query.dtype in _FLOATS, f"{op}: query dtype must be float32, float16 or bfloat16, got {query.dtype}")
    _check(query.dtype == bank.dtype, f"{op}: query and bank must have the same dtype, got query {query.dtype} and bank {bank.dtype}")
    _check(query.device == bank.device, f"{op}: query and bank must be on the same device, got query on {query.device} and bank on {bank.device}")


def check_metric(op: str, metric: str) -> None:
    _check(metric in _METRICS, f"{op}: metric must be one of 'l2', 'sqeuclidean', 'cosine', 'ip', got '{metric}'")


@torch.library.register_fake("fastad::knn")
def _knn_fake(query, bank, k, metric="l2", bank_norms=None, exclude_self=False):
    check_query_bank("knn", query, bank)
    check_metric("knn", metric)
    _check(k >= 1, f"knn: k must be >= 1, got {k}")
    Q, N = query.shape[0], bank.shape[0]
    _check(not exclude_self or Q <= N, f"knn: exclude_self=True needs query row i to be bank row i, so Q <= N; got Q={Q} and N={N}")
    if bank_norms is not None:
        _check(bank_norms.dim() == 1 and bank_norms.shape[0] == N, f"knn: bank_norms must be 1-D [N] with N = {N}")
    return (query.new_empty((Q, k), dtype=torch.float32), query.new_empty((Q, k), dtype=torch.int64))


@torch.library.register_fake("fastad::knn_screen")
def _knn_screen_fake(query, bank, k, metric="l2", bank_norms=None, exclude_self=False, screen="bf16"):
    _check(screen in ("bf16", "auto"), f"knn_screen: screen must be 'bf16' or 'auto', got '{screen}'")
    return _knn_fake(query, bank, k, metric, bank_norms, exclude_self)


@torch.library.register_fake("fastad::group_min")
def _group_min_fake(query, bank, group_size, metric="l2", exclude_group=None):
    check_query_bank("group_min", query, bank)
    check_metric("group_min", metric)
    _check(group_size >= 1, f"group_min: group_size must be >= 1, got {group_size}")
    Q, N = query.shape[0], bank.shape[0]
    _check(
        N % group_size == 0,
        f"group_min: bank rows N must be a multiple of group_size (G consecutive groups of group_size rows), "
        f"got N={N} and group_size={group_size}",
    )
    if exclude_group is not None:
        _check(
            exclude_group.dim() == 1 and exclude_group.shape[0] == Q,
            f"group_min: exclude_group must be 1-D [Q] with Q = {Q} (one group id or -1 per query), "
            f"got shape {list(exclude_group.shape)}",
        )
        _check(exclude_group.dtype == torch.int64, f"group_min: exclude_group must be int64, got {exclude_group.dtype}")
        _check(
            exclude_group.device == query.device,
            f"group_min: exclude_group must be on the query's device ({query.device}), got {exclude_group.device}",
        )
    return query.new_empty((Q, N // group_size), dtype=torch.float32)


@torch.library.register_fake("fastad::group_min_screen")
def _group_min_screen_fake(query, bank, group_size, metric="l2", exclude_group=None, screen="bf16"):
    _check(screen in ("bf16", "auto"), f"group_min_screen: screen must be 'bf16' or 'auto', got '{screen}'")
    return _group_min_fake(query, bank, group_size, metric, exclude_group)


# coreset: greedy k-center selection (csrc/cpu/coreset_kernel.cpp, csrc/common/checks.cpp check_coreset_args).
@torch.library.register_fake("fastad::coreset")
def _coreset_fake(bank, n, start=0, progress=None, method="exhaustive"):
    op = "coreset"
    _check(method in ("pruned", "exhaustive"), f"{op}: method must be 'pruned' or 'exhaustive', got '{method}'")
    if progress is not None:
        _check(progress.device.type == "cpu",
               f"{op}: progress must be a CPU tensor (it is polled from the host), got device {progress.device}")
        _check(progress.dtype == torch.int64, f"{op}: progress must be int64, got {progress.dtype}")
        _check(progress.numel() >= 1,
               f"{op}: progress must be a contiguous tensor with at least one element, got shape {list(progress.shape)}")
    _check(bank.dim() == 2, f"{op}: bank must be 2-D [N, D], got {bank.dim()}-D tensor of shape {list(bank.shape)}")
    _check(bank.dtype in _FLOATS, f"{op}: bank dtype must be float32, float16 or bfloat16, got {bank.dtype}")
    N = bank.shape[0]
    _check(N >= 1, f"{op}: bank must have at least one row, got shape {list(bank.shape)}")
    _check(bank.shape[1] >= 1, f"{op}: feature dimension D must be >= 1, got shape {list(bank.shape)}")
    _check(1 <= n <= N, f"{op}: n (centres to choose) must be in [1, N] = [1, {N}], got {n}")
    _check(0 <= start < N, f"{op}: start must be a bank row index in [0, {N}), got {start}")
    _check(N < 2**31, f"{op}: bank must have fewer than 2^31 rows, got {N}")
    return (bank.new_empty((n,), dtype=torch.int64), bank.new_empty((n,), dtype=torch.float32))
# ---- MuSc (issue 5) ------------------------------------------------------------------------------

def _grid_side(L: int) -> int:
    s = int(round(L ** 0.5))
    return s if s * s == L else -1


def _check_tokens(op, arg, t, need_grid):
    _check(t.dim() == 3, f"{op}: {arg} must be 3-D [N, L, C], got {t.dim()}-D tensor of shape {list(t.shape)}")
    _check(t.dtype in _FLOATS, f"{op}: {arg} dtype must be float32, float16 or bfloat16, got {t.dtype}")
    _check(t.shape[2] >= 1, f"{op}: {arg} must have C >= 1 channels, got shape {list(t.shape)}")
    if need_grid:
        _check(t.shape[1] >= 1 and _grid_side(t.shape[1]) > 0,
               f"{op}: {arg} must hold a square grid of L = H * H patch tokens (CLS removed), got L = {t.shape[1]}")


def _check_r(op, r):
    _check(r >= 1 and r % 2 == 1, f"{op}: r must be an odd integer >= 1, got {r}")


def _check_mutual(op, z, k, pool, window, need_grid):
    _check_tokens(op, "z", z, need_grid or window > 0)
    _check(window >= 0 and (window == 0 or window % 2 == 1),
           f"{op}: window (same_position) must be 0 (off) or an odd integer >= 1, got {window}")
    nref = z.shape[0] - 1
    if pool is not None:
        _check_tokens(op, "pool", pool, False)
        _check(pool.shape[1] == z.shape[1] and pool.shape[2] == z.shape[2],
               f"{op}: pool must have the same L and C as z, got z {list(z.shape)} and pool {list(pool.shape)}")
        _check(pool.dtype == z.dtype, f"{op}: pool and z must have the same dtype, got z {z.dtype} and pool {pool.dtype}")
        _check(pool.device == z.device, f"{op}: pool must be on z's device ({z.device}), got {pool.device}")
        nref = pool.shape[0]
    _check(k >= 1, f"{op}: k must be >= 1 (k = int(fraction * number of reference images)), got k={k}")
    _check(z.shape[0] == 0 or k <= nref,
           f"{op}: k must be <= the number of reference images per query "
           f"({'pool size' if pool is not None else 'N - 1'} = {nref}), got k={k}")


@torch.library.register_fake("fastad::lnamd")
def _lnamd_fake(tokens, r):
    _check_tokens("lnamd", "tokens", tokens, True)
    _check_r("lnamd", r)
    return tokens.new_empty(tokens.shape, dtype=torch.float32)


@torch.library.register_fake("fastad::snamd")
def _snamd_fake(tokens, r_list):
    _check_tokens("snamd", "tokens", tokens, True)
    _check(len(r_list) > 0, "snamd: r_list must not be empty")
    for r in r_list:
        _check_r("snamd", r)
    return tokens.new_empty(tokens.shape, dtype=torch.float32)


@torch.library.register_fake("fastad::mutual_scores")
def _mutual_scores_fake(z, k, pool=None, window=0):
    _check_mutual("mutual_scores", z, k, pool, window, False)
    return z.new_empty((z.shape[0], z.shape[1]), dtype=torch.float32)


@torch.library.register_fake("fastad::mutual_scores_screen")
def _mutual_scores_screen_fake(z, k, pool=None, window=0, screen="bf16"):
    _check(screen in ("bf16", "auto"), f"mutual_scores_screen: screen must be 'bf16' or 'auto', got '{screen}'")
    _check_mutual("mutual_scores", z, k, pool, window, False)
    return z.new_empty((z.shape[0], z.shape[1]), dtype=torch.float32)


@torch.library.register_fake("fastad::lnamd_mutual_scores")
def _lnamd_mutual_scores_fake(tokens, r_list, k, pool=None, window=0):
    _check_mutual("lnamd_mutual_scores", tokens, k, pool, window, True)
    _check(len(r_list) > 0, "lnamd_mutual_scores: r_list must not be empty")
    for r in r_list:
        _check_r("lnamd_mutual_scores", r)
    return tokens.new_empty((len(r_list), tokens.shape[0], tokens.shape[1]), dtype=torch.float32)


# ---- Gaussian models (issue 13): csrc/common/mahalanobis_checks.cpp -------------------------------
_GAUSS_X = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_maha_x(op, x, dtypes):
    _check(x.dim() in (2, 3), f"{op}: x must be 2-D [N, d] or 3-D [N, P, d], got {x.dim()}-D tensor of shape {list(x.shape)}")
    _check(x.shape[-1] >= 1, f"{op}: x must have d >= 1 features, got shape {list(x.shape)}")
    _check(x.dtype in dtypes, f"{op}: x dtype must be {', '.join(str(t).split('.')[-1] for t in dtypes)}, got {x.dtype}")


@torch.library.register_fake("fastad::mahalanobis")
def _mahalanobis_fake(x, mean, factor, cholesky=False):
    op = "mahalanobis"
    _check_maha_x(op, x, _FLOATS)
    for name, t in (("mean", mean), ("factor", factor)):
        _check(t.dtype in _FLOATS, f"{op}: {name} dtype must be float32, float16 or bfloat16, got {t.dtype}")
    d = x.shape[-1]
    if x.dim() == 3:
        P = x.shape[1]
        _check(tuple(mean.shape) == (P, d), f"{op}: mean must be [P, d] = [{P}, {d}] for x of shape {list(x.shape)}, got {list(mean.shape)}")
        _check(factor.dim() == 3 and factor.shape[0] == P,
               f"{op}: factor must be [P, d, d] = [{P}, {d}, {d}] (one lower-triangular factor per position) for x of shape {list(x.shape)}, got {list(factor.shape)}")
    else:
        _check(tuple(mean.shape) == (d,), f"{op}: mean must be [d] = [{d}] for x of shape {list(x.shape)}, got {list(mean.shape)}")
        _check(factor.dim() == 2, f"{op}: factor must be [d, d] = [{d}, {d}] (a lower-triangular factor) for x of shape {list(x.shape)}, got {list(factor.shape)}")
    _check(factor.shape[-1] == factor.shape[-2], f"{op}: factor must be square (triangular-shaped [.., d, d]), got {list(factor.shape)}")
    _check(factor.shape[-1] == d, f"{op}: factor must be [.., d, d] with d = {d} (x's features), got {list(factor.shape)}")
    _check(mean.device == x.device, f"{op}: mean must be on x's device ({x.device}), got {mean.device}")
    _check(factor.device == x.device, f"{op}: factor must be on x's device ({x.device}), got {factor.device}")
    return x.new_empty(tuple(x.shape[:-1]), dtype=torch.float32)


def _check_sumsq(op, sumsq, vec, name, t):
    """sumsq for the vectors ``vec`` (``[d]`` / ``[P, d]``) of ``t`` (called ``name``): dense or packed lower triangles."""
    d = vec[-1]
    mat, packed = tuple(vec) + (d,), tuple(vec[:-1]) + (d * (d + 1) // 2,)
    _check(tuple(sumsq.shape) in (mat, packed),
           f"{op}: sumsq must be {list(mat)} (or packed lower triangles {list(packed)}) for {name} of shape {list(t.shape)}, got {list(sumsq.shape)}")


def _check_row_start(op, row_start, P, name, t):
    if row_start is None:
        return
    _check(row_start.dtype == torch.int64, f"{op}: row_start must be int64, got {row_start.dtype}")
    _check(tuple(row_start.shape) == (P,), f"{op}: row_start must be [{P}] (one first row per "
           f"{'position' if t.dim() == 3 else 'call'}) for {name} of shape {list(t.shape)}, got {list(row_start.shape)}")
    _check(row_start.device == t.device, f"{op}: row_start must be on {name}'s device ({t.device}), got {row_start.device}")


@torch.library.register_fake("fastad::gaussian_accumulate")
def _gaussian_accumulate_fake(x, shift, sum, sumsq, row_start=None):
    op = "gaussian_accumulate"
    _check_maha_x(op, x, _GAUSS_X)
    d = x.shape[-1]
    vec = (x.shape[1], d) if x.dim() == 3 else (d,)
    _check(shift.dtype in (torch.float32, torch.float64), f"{op}: shift dtype must be float32 or float64, got {shift.dtype}")
    _check(sum.dtype == torch.float64, f"{op}: sum must be float64, got {sum.dtype}")
    _check(sumsq.dtype == torch.float64, f"{op}: sumsq must be float64, got {sumsq.dtype}")
    _check(tuple(shift.shape) == vec, f"{op}: shift must be {list(vec)} for x of shape {list(x.shape)}, got {list(shift.shape)}")
    _check(tuple(sum.shape) == vec, f"{op}: sum must be {list(vec)} for x of shape {list(x.shape)}, got {list(sum.shape)}")
    _check_sumsq(op, sumsq, vec, "x", x)
    for t in (shift, sum, sumsq):
        _check(t.device == x.device, f"{op}: shift, sum and sumsq must be on x's device ({x.device}), got {t.device}")
    _check_row_start(op, row_start, x.shape[1] if x.dim() == 3 else 1, "x", x)
    return None


@torch.library.register_fake("fastad::gaussian_covariance")
def _gaussian_covariance_fake(sumsq, m, n, scale, reg, out, row_start=None):
    op = "gaussian_covariance"
    _check(m.dim() in (1, 2), f"{op}: m must be [d] or [P, d] (the shifted means), got shape {list(m.shape)}")
    mat = tuple(m.shape) + (m.shape[-1],)
    _check(m.dtype == torch.float64, f"{op}: m must be float64, got {m.dtype}")
    _check(sumsq.dtype == torch.float64, f"{op}: sumsq must be float64, got {sumsq.dtype}")
    _check(out.dtype in (torch.float32, torch.float64), f"{op}: out must be float32 or float64, got {out.dtype}")
    _check_sumsq(op, sumsq, tuple(m.shape), "m", m)
    _check(tuple(out.shape) == mat, f"{op}: out must be {list(mat)} for m of shape {list(m.shape)}, got {list(out.shape)}")
    for t in (sumsq, m):
        _check(t.device == out.device, f"{op}: sumsq and m must be on out's device ({out.device}), got {t.device}")
    _check_row_start(op, row_start, m.shape[0] if m.dim() == 2 else 1, "out", out)
    return None


@torch.library.register_fake("fastad::cholesky_lower")
def _cholesky_lower_fake(a, row_start=None, row_src=None):
    op = "cholesky_lower"
    _check(a.dim() in (2, 3), f"{op}: a must be [d, d] or [P, d, d] (symmetric matrices, lower triangle read), got shape {list(a.shape)}")
    _check(a.shape[-1] == a.shape[-2], f"{op}: a must hold square matrices, got shape {list(a.shape)}")
    _check(a.dtype == torch.float32, f"{op}: a must be float32, got {a.dtype}")
    _check((row_start is None) == (row_src is None), f"{op}: row_start and row_src go together (rows copied from another "
           f"matrix), got {'row_start only' if row_src is None else 'row_src only'}")
    P = a.shape[0] if a.dim() == 3 else 1
    _check_row_start(op, row_start, P, "a", a)
    if row_src is not None:
        _check(row_src.dtype == torch.int64 and tuple(row_src.shape) == (P,),
               f"{op}: row_src must be int64 [{P}], got {row_src.dtype} {list(row_src.shape)}")
        _check(row_src.device == a.device, f"{op}: row_src must be on a's device ({a.device}), got {row_src.device}")
    return a.new_empty(tuple(a.shape[:-2]), dtype=torch.int64)


@torch.library.register_fake("fastad::gather_maps")
def _gather_maps_fake(maps, channels, out):
    op = "gather_maps"
    _check(len(maps) >= 1, f"{op}: maps must hold at least one layer map")
    for i, m in enumerate(maps):
        _check(m.dim() == 4, f"{op}: maps[{i}] must be 4-D [N, C, h, w], got shape {list(m.shape)}")
        _check(m.dtype == torch.float32, f"{op}: maps[{i}] must be float32, got {m.dtype}")
        _check(m.device == out.device, f"{op}: maps[{i}] must be on out's device ({out.device}), got {m.device}")
        _check(m.shape[0] == maps[0].shape[0], f"{op}: the maps must share N = {maps[0].shape[0]}, got {m.shape[0]} for maps[{i}]")
    _check(channels.dim() == 1 and channels.dtype == torch.int64,
           f"{op}: channels must be a 1-D int64 tensor, got {channels.dtype} of shape {list(channels.shape)}")
    N, _, h, w = maps[0].shape
    want = (N, h * w, channels.shape[0])
    _check(out.dtype == torch.float32, f"{op}: out must be float32, got {out.dtype}")
    _check(tuple(out.shape) == want, f"{op}: out must be [N, h * w, C] = {list(want)}, got {list(out.shape)}")
    return None


# coreset_step: one greedy k-center step on a bank shard (csrc/cpu/kcenter_step_kernel.cpp; fastad.distributed).
@torch.library.register_fake("fastad::coreset_step")
def _coreset_step_fake(bank, centre, min_sq, assign=None, centre_dists=None, centre_id=0):
    op = "coreset_step"
    _check(bank.dim() == 2, f"{op}: bank must be 2-D [N, D], got shape {list(bank.shape)}")
    _check(bank.dtype in _FLOATS, f"{op}: bank dtype must be float32, float16 or bfloat16, got {bank.dtype}")
    N, D = bank.shape
    _check(D >= 1, f"{op}: feature dimension D must be >= 1, got shape {list(bank.shape)}")
    _check(centre.dim() == 1 and centre.shape[0] == D and centre.dtype == torch.float32,
           f"{op}: centre must be a float32 [D] tensor with D = {D}, got {centre.dtype} of shape {list(centre.shape)}")
    _check(min_sq.dim() == 1 and min_sq.shape[0] == N and min_sq.dtype == torch.float32,
           f"{op}: min_sq must be a contiguous float32 [N] tensor with N = {N}, got {min_sq.dtype} of shape "
           f"{list(min_sq.shape)}")
    return (bank.new_empty((), dtype=torch.float32), bank.new_empty((), dtype=torch.int64),
            bank.new_empty((), dtype=torch.int64))
