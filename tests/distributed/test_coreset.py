"""fastad.distributed.coreset on 2 and 3 gloo CPU processes == fastad.ops.coreset on the concatenated bank
(indices and distances bit for bit), and the coreset_step op it is built on."""
import math

import pytest
import torch

import fastad
from fastad.distributed.coreset import projected_shard
from fastad.ops import _reference as ref
from fastad.ops.coreset import projected_bank
from tests.distributed.spawn_utils import results, run


def _greedy_with_steps(x, n, start=0):
    """ops.coreset's loop written with coreset_step alone (one process)."""
    min_sq = torch.full((x.shape[0],), math.inf)
    idx, d = [start], [math.inf]
    for _ in range(1, n):
        c = idx[-1]
        min_sq[c] = -1.0
        v, i, _ = torch.ops.fastad.coreset_step(x, x[c].float(), min_sq)
        idx.append(int(i))
        d.append(math.sqrt(max(float(v), 0.0)))
    return torch.tensor(idx), torch.tensor(d, dtype=torch.float32)


@pytest.mark.parametrize("simd", ["avx2", "generic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,D", [(1, 3), (257, 5), (2100, 33)])
def test_coreset_step_loop_equals_ops_coreset(monkeypatch, simd, dtype, N, D, gen):
    if simd == "generic":
        monkeypatch.setenv("FASTAD_SIMD", "generic")
    x = torch.randn(N, D, generator=gen).to(dtype)
    if N > 8:
        x[N // 2 : N // 2 + N // 8] = x[: N // 8]  # duplicates: exact ties in the argmax
    n = min(N, 60)
    i1, d1 = _greedy_with_steps(x, n, start=N // 3)
    i2, d2 = fastad.ops.coreset(x, n, start=N // 3)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)
    ri, _ = ref.coreset(x.float(), n, start=N // 3)
    assert len(set(i1.tolist())) == n and i1[0] == ri[0]


def test_coreset_step_values_and_errors(gen):
    x = torch.randn(50, 7, generator=gen)
    c = torch.randn(7, generator=gen)
    m = torch.full((50,), math.inf)
    m[4] = -1.0
    v, i, _ = torch.ops.fastad.coreset_step(x, c, m)
    d2 = ((x.double() - c.double()) ** 2).sum(1)
    assert torch.allclose(m[torch.arange(50) != 4].double(), d2[torch.arange(50) != 4], rtol=1e-5)
    assert m[4] == -1 and int(i) == int(torch.argmax(torch.where(torch.arange(50) == 4, -1.0, d2)))
    v, i, _ = torch.ops.fastad.coreset_step(x[:0], c, torch.empty(0))
    assert float(v) == -2 and int(i) == -1
    with pytest.raises(RuntimeError, match="centre must be a float32"):
        torch.ops.fastad.coreset_step(x, c[:3], m)
    with pytest.raises(RuntimeError, match="min_sq must be"):
        torch.ops.fastad.coreset_step(x, c, m[:3])
    bad = x.clone()
    bad[3, 3] = float("nan")
    with pytest.raises(RuntimeError, match="finite"):
        torch.ops.fastad.coreset_step(bad, c, torch.full((50,), math.inf))


def test_coreset_step_opcheck(gen):
    x = torch.randn(40, 6, generator=gen)
    torch.library.opcheck(torch.ops.fastad.coreset_step, (x, x[2].clone(), torch.full((40,), math.inf)))


@pytest.mark.parametrize("k", [16, 20])
def test_projected_shard_is_bit_identical_across_block_boundaries(k, gen):
    N = 16384 + 700  # two projection blocks
    bank = torch.randn(N, 9, generator=gen)
    full = projected_bank(bank, k, seed=3)
    for a, b in [(0, 1), (0, 9000), (9000, N), (16000, 16500), (16384, N), (5, 16384), (N, N)]:
        assert torch.equal(projected_shard(bank[a:b], a, N, k, 3), full[a:b])


CASES = [  # (sizes per world, D, n, projection_dim, storage_dtype, start)
    ({2: [120, 0], 3: [50, 0, 70]}, 12, 40, None, None, 0),
    ({2: [1, 180], 3: [60, 61, 60]}, 24, 60, 8, None, 77),
    ({2: [90, 91], 3: [0, 100, 81]}, 20, 50, "auto", torch.float16, 3),
    ({2: [100, 80], 3: [1, 1, 178]}, 9, 180, None, torch.bfloat16, 179),  # n = N: every row
]


def _bank(N, D, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(N, D, generator=g)
    b[N // 2 : N // 2 + N // 5] = b[: N // 5]  # duplicates across shards
    b[-10:] = torch.round(b[-10:])  # a few grid rows
    return b


def _cases(rank, world):
    import fastad.distributed as fd

    out = []
    for ci, (sizes_by_world, D, n, proj, storage, start) in enumerate(CASES):
        sizes = sizes_by_world[world]
        bank = _bank(sum(sizes), D, ci)
        o = sum(sizes[:rank])
        i, d = fd.coreset(bank[o : o + sizes[rank]], n, projection_dim=proj, seed=5, start=start,
                          storage_dtype=storage)
        ri, rd = fastad.ops.coreset(bank, n, projection_dim=proj, seed=5, start=start, storage_dtype=storage)
        out.append((ci, torch.equal(i, ri), torch.equal(d, rd)))
        ic, _ = fd.coreset(bank[o : o + sizes[rank]], n, projection_dim=proj, seed=5, start=start, method="composable")
        out.append((f"{ci}-composable", ic.tolist(), int(ic[0]) == start and len(set(ic.tolist())) == n))
    # a bank of two projection blocks split inside the first block
    N = 16384 + 300
    bank = _bank(N, 6, 99)
    cut = [9000, N - 9000] if world == 2 else [9000, 7500, N - 16500]
    o = sum(cut[:rank])
    i, d = fd.coreset(bank[o : o + cut[rank]], 30, projection_dim=16, seed=1)
    ri, rd = fastad.ops.coreset(bank, 30, projection_dim=16, seed=1)
    out.append(("blocks", torch.equal(i, ri), torch.equal(d, rd)))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_coreset_equals_ops_coreset(world):
    outs = results(run(_cases, world, deadline=90))
    for rank_out in outs:
        bad = [c for c in rank_out if not (c[1] and c[2])]
        assert not bad, bad
    # the composable approximation gives the same indices on every rank
    comp = [[c[1] for c in ro if str(c[0]).endswith("composable")] for ro in outs]
    assert all(c == comp[0] for c in comp)


def _disagree_n(rank, world):
    import fastad.distributed as fd

    return fd.coreset(torch.ones(5, 3), 3 if rank != 2 else 4)


def _too_many(rank, world):
    import fastad.distributed as fd

    return fd.coreset(torch.randn(2, 3), 7)


def test_coreset_ranks_that_disagree_on_n_fail_on_every_rank():
    for o in run(_disagree_n, 3, deadline=40):
        assert o.get("type") == "ValueError" and "same n" in o["err"] and "rank 2: 4" in o["err"], o


def test_coreset_n_above_the_global_rows_fails_on_every_rank():
    for o in run(_too_many, 2, deadline=40):
        assert o.get("type") == "ValueError" and "[1, 4]" in o["err"], o


@pytest.mark.parametrize("simd", ["avx2", "generic"])
def test_pruned_steps_equal_ops_coreset_on_clustered_data(monkeypatch, simd, gen):
    """The distributed loop's per-rank stepper prunes rows by the triangle inequality (as the op does);
    on clustered data it skips most rows and still chooses the op's rows."""
    from fastad.distributed.coreset import _Stepper

    if simd == "generic":
        monkeypatch.setenv("FASTAD_SIMD", "generic")
    x = (torch.randn(40, 16, generator=gen) * 4).repeat_interleave(100, 0) + 0.3 * torch.randn(4000, 16, generator=gen)
    n = 300
    st = _Stepper(x, n)
    min_sq = torch.full((4000,), math.inf)
    idx = [7]
    for step in range(1, n):
        c = idx[-1]
        min_sq[c] = -1.0
        v, i = st(step, x[c].float(), min_sq, True)
        idx.append(i)
    ref, _ = fastad.ops.coreset(x, n, start=7)
    assert idx == ref.tolist()
    assert st.rows_skipped > 0.5 * (n - 1) * 4000, st.rows_skipped  # most rows were not read
