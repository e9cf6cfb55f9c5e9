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


# coreset: greedy k-center selection (csrc/cpu/coreset_kernel.cpp, csrc/ops/checks.cpp check_coreset_args).
@torch.library.register_fake("fastad::coreset")
def _coreset_fake(bank, n, start=0):
    op = "coreset"
    _check(bank.dim() == 2, f"{op}: bank must be 2-D [N, D], got {bank.dim()}-D tensor of shape {list(bank.shape)}")
    _check(bank.dtype in _FLOATS, f"{op}: bank dtype must be float32, float16 or bfloat16, got {bank.dtype}")
    N = bank.shape[0]
    _check(N >= 1, f"{op}: bank must have at least one row, got shape {list(bank.shape)}")
    _check(bank.shape[1] >= 1, f"{op}: feature dimension D must be >= 1, got shape {list(bank.shape)}")
    _check(1 <= n <= N, f"{op}: n (centres to choose) must be in [1, N] = [1, {N}], got {n}")
    _check(0 <= start < N, f"{op}: start must be a bank row index in [0, {N}), got {start}")
    _check(N < 2**31, f"{op}: bank must have fewer than 2^31 rows, got {N}")
    return (bank.new_empty((n,), dtype=torch.int64), bank.new_empty((n,), dtype=torch.float32))
