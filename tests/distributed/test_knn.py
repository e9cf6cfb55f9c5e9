"""fastad.distributed.knn on 2 and 3 gloo CPU processes == fastad.ops.knn on the concatenated bank."""
import os
import time

import pytest
import torch

import fastad
from tests.distributed.spawn_utils import results, run

METRICS = ["l2", "sqeuclidean", "cosine", "ip"]
SIZES = {2: [(53, 0), (1, 200), (70, 70)], 3: [(0, 37, 100), (64, 1, 0), (30, 50, 20)]}


def _bank(n, d, seed, dup=True):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, d, generator=g)
    if dup and n >= 8:  # duplicated rows in other shards -> exact ties across ranks
        b[n // 2 : n // 2 + n // 4] = b[: n // 4]
    return b


def _shard(bank, sizes, rank):
    o = sum(sizes[:rank])
    return bank[o : o + sizes[rank]]


def _cases(rank, world):
    import fastad.distributed as fd

    out = []
    for si, sizes in enumerate(SIZES[world]):
        N = sum(sizes)
        bank = _bank(N, 19, 100 + si)
        q = torch.randn(23, 19, generator=torch.Generator().manual_seed(7))
        q[:3] = bank[:3]  # queries equal to bank rows (distance 0, ties with their duplicates)
        for metric in METRICS:
            for k in (1, 5, N + 3):
                d, i = fd.knn(q, _shard(bank, sizes, rank), k, metric)
                rd, ri = fastad.ops.knn(q, bank, k, metric)
                out.append((sizes, metric, k, torch.equal(d, rd), torch.equal(i, ri)))
        # scatter_queries: every rank its own queries (rank 1 none)
        qr = torch.randn(0 if rank == 1 else 11 + rank, 19, generator=torch.Generator().manual_seed(50 + rank))
        for metric in ("l2", "ip"):
            d, i = fd.knn(qr, _shard(bank, sizes, rank), 4, metric, scatter_queries=True)
            rd, ri = fastad.ops.knn(qr, bank, 4, metric)
            out.append((sizes, "scatter-" + metric, 4, torch.equal(d, rd), torch.equal(i, ri)))
    # integer ties (fastad.ops.knn's own tie test) split over the ranks
    b = torch.zeros(40, 4)
    b[:, 0] = torch.tensor([1.0, 2, 1, 2, 1, 3, 3, 1, 2, 5] * 4)
    sizes = [13, 27] if world == 2 else [13, 0, 27]
    d, i = fd.knn(torch.zeros(2, 4), _shard(b, sizes, rank), 12)
    out.append(("ties", "l2", 12, d[0].tolist() == [1.0] * 12 and torch.equal((d, i)[0], fastad.ops.knn(torch.zeros(2, 4), b, 12)[0]),
                i[0].tolist() == [0, 2, 4, 7, 10, 12, 14, 17, 20, 22, 24, 27]))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_knn_equals_ops_knn(world):
    for rank_out in results(run(_cases, world, deadline=60)):
        bad = [c for c in rank_out if not (c[3] and c[4])]
        assert not bad, bad
        assert len(rank_out) == 3 * (4 * 3 + 2) + 1


def _disagree_k(rank, world):
    import fastad.distributed as fd

    return fd.knn(torch.zeros(2, 3), torch.ones(4, 3), 2 if rank == 0 else 3)


def _nan_shard(rank, world):
    import fastad.distributed as fd

    b = torch.ones(5, 3)
    if rank == 1:
        b[2, 1] = float("nan")
    return fd.knn(torch.zeros(2, 3), b, 2)


def _absent(rank, world):
    import fastad.distributed as fd

    if rank == 1:
        raise KeyError("user code failed on rank 1 before the call")
    return fd.knn(torch.zeros(2, 3), torch.ones(4, 3), 2)


def _dies(rank, world):
    import fastad.distributed as fd

    if rank == world - 1:
        os._exit(3)
    return fd.knn(torch.zeros(2, 3), torch.ones(4, 3), 2)


def test_ranks_that_disagree_fail_on_every_rank_before_work():
    out = run(_disagree_k, 3, deadline=40)
    for o in out:
        assert o.get("type") == "ValueError", o
        assert "same k" in o["err"] and "rank 0: 2" in o["err"] and "rank 1: 3" in o["err"]


def test_a_rank_that_raises_inside_is_named_on_every_rank():
    out = run(_nan_shard, 3, deadline=40)
    for o in out:
        assert o.get("type") == "DistributedError", o
        assert "rank(s) [1]" in o["err"] and "finite" in o["err"]


def test_a_rank_that_never_arrives_is_named_within_the_timeout():
    t0 = time.monotonic()
    out = run(_absent, 3, deadline=40, fastad_timeout=3)
    assert time.monotonic() - t0 < 30
    assert out[1]["type"] == "KeyError"
    for r in (0, 2):
        assert out[r].get("type") == "DistributedError", out[r]
        assert "rank(s) [1] did not reach" in out[r]["err"]


def test_a_rank_that_dies_is_named_no_hang():
    out = run(_dies, 3, deadline=40, fastad_timeout=3)
    assert out[2].get("missing")
    for r in (0, 1):
        assert out[r].get("type") == "DistributedError", out[r]
        assert "[2]" in out[r]["err"]


def test_knn_without_process_group_says_so():
    import fastad.distributed as fd

    with pytest.raises(RuntimeError, match="init_process_group"):
        fd.knn(torch.zeros(1, 2), torch.zeros(3, 2), 1)


def _subgroup(rank, world):
    import torch.distributed as dist

    import fastad.distributed as fd

    g = dist.new_group([0, 2])  # every rank creates it; ranks 0 and 2 use it
    if rank == 1:
        return None
    bank = _bank(50, 6, 9)
    sizes = {0: bank[:20], 2: bank[20:]}
    q = bank[:5] + 0.01
    d, i = fd.knn(q, sizes[rank], 3, group=g)
    ci, cd = fd.coreset(sizes[rank], 10, group=g)
    rd, ri = fastad.ops.knn(q, bank, 3)
    rci, rcd = fastad.ops.coreset(bank, 10)
    return torch.equal(d, rd) and torch.equal(i, ri) and torch.equal(ci, rci) and torch.equal(cd, rcd)


def test_a_subgroup_is_honoured():
    out = results(run(_subgroup, 3, deadline=40))
    assert out == [True, None, True]
