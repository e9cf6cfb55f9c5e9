import math

import pytest
import torch

import fastad
from fastad.ops import _reference as ref
from fastad.ops.coreset import auto_projection_dim, jl_min_dim, project, sparse_random_matrix


def assert_greedy(bank, idx, dist, rtol=1e-5, atol=1e-6):
    """Replay greedy k-center in float64 on `bank` and check `idx`/`dist` step by step, tie-aware.

    At every step the chosen row must be new and its float64 min-distance must equal the float64
    maximum up to `rtol`/`atol` (a near-tie may be resolved either way); `dist[i]` must match the
    float64 min-distance of that row to within `rtol`/`atol`. The replay follows `idx`, so one
    tie resolved differently does not derail the rest of the comparison.
    """
    idx, dist = idx.cpu(), dist.cpu().double()
    x = bank.cpu().double()
    N, n = x.shape[0], idx.shape[0]
    assert idx.dtype == torch.int64 and dist.dtype == torch.float64 and dist.shape == (n,)
    assert len(set(idx.tolist())) == n, "indices must be distinct"
    assert math.isinf(dist[0]) and dist[0] > 0
    mind = torch.full((N,), float("inf"), dtype=torch.float64)
    chosen = torch.zeros(N, dtype=torch.bool)
    for i in range(1, n):
        c = int(idx[i - 1])
        chosen[c] = True
        mind = torch.minimum(mind, ((x - x[c]) ** 2).sum(1).sqrt())
        best = float(torch.where(chosen, torch.full_like(mind, -1.0), mind).max())
        got = int(idx[i])
        assert not chosen[got], f"step {i}: row {got} chosen twice"
        tol = atol + rtol * best
        assert float(mind[got]) >= best - tol, f"step {i}: chose row {got} at {float(mind[got])}, best is {best}"
        assert abs(float(dist[i]) - float(mind[got])) <= tol, f"step {i}: distance {float(dist[i])} vs {float(mind[got])}"


def _bank(N, D, gen, offset=0.0, dtype=torch.float32):
    return (torch.randn(N, D, generator=gen) * 2 + offset).to(dtype)


@pytest.mark.parametrize(
    "N,D,n,start",
    [(1, 1, 1, 0), (2, 3, 2, 1), (50, 3, 20, 7), (300, 13, 60, 0), (700, 129, 40, 699), (5000, 8, 30, 123)],
)
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_coreset_matches_reference(device, N, D, n, start, offset, gen):
    b = _bank(N, D, gen, offset)
    idx, dist = torch.ops.fastad.coreset(b.to(device), n, start)
    assert idx.shape == (n,) and dist.shape == (n,) and idx.device.type == device.type
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32
    assert int(idx[0]) == start
    assert_greedy(b, idx, dist.double())
    # without near-ties (continuous random data) the index sequence is the reference's
    ri, rd = ref.coreset(b, n, start)
    assert torch.equal(idx.cpu(), ri)
    torch.testing.assert_close(dist.cpu().double()[1:], rd[1:], rtol=1e-5, atol=1e-6)


def test_coreset_offset_data_relative_accuracy(device, gen):
    # features far from the origin: the exact difference form keeps 1e-4 relative accuracy (issue 3)
    b = torch.randn(400, 64, generator=gen) * 0.01 + 1000.0
    idx, dist = fastad.ops.coreset(b.to(device), 50)
    _, rd = ref.coreset(b, 50)
    rel = ((dist.cpu().double()[1:] - rd[1:]).abs() / rd[1:]).max()
    assert rel < 1e-4, rel
    assert_greedy(b, idx, dist.double(), rtol=1e-4)


def test_coreset_exact_ties_prefer_smaller_index(device):
    # small-integer coordinates: fp32 distances are exact, so ties are exact and resolved by index
    b = torch.tensor([[0.0, 0], [1, 0], [3, 0], [0, 3], [-3, 0], [3, 0]])
    idx, dist = fastad.ops.coreset(b.to(device), 6)
    ri, rd = ref.coreset(b, 6)
    assert idx.cpu().tolist() == ri.tolist() == [0, 2, 3, 4, 1, 5]
    assert dist.cpu().tolist()[1:] == rd.tolist()[1:] == [3.0, 3.0, 3.0, 1.0, 0.0]


def test_coreset_integer_grid_equals_reference(device, gen):
    b = torch.randint(-3, 4, (600, 5), generator=gen).float()  # many duplicates and exact ties
    idx, dist = fastad.ops.coreset(b.to(device), 600, start=11)
    ri, rd = ref.coreset(b, 600, start=11)
    assert torch.equal(idx.cpu(), ri)
    assert torch.equal(dist.cpu().double(), rd.float().double())
    assert sorted(idx.tolist()) == list(range(600))  # n == N: a permutation


def test_coreset_all_rows_equal(device):
    b = torch.ones(9, 4)
    idx, dist = fastad.ops.coreset(b.to(device), 9, start=4)
    assert idx.cpu().tolist() == [4, 0, 1, 2, 3, 5, 6, 7, 8]
    assert dist.cpu().tolist()[1:] == [0.0] * 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_coreset_low_precision_storage(device, dtype, gen):
    b = _bank(900, 40, gen, offset=3.0, dtype=dtype)
    idx, dist = fastad.ops.coreset(b.to(device), 60, start=5)
    assert dist.dtype == torch.float32
    assert_greedy(b.float(), idx, dist.double())  # fp32 arithmetic on the rounded values
    # the wrapper's storage_dtype gives the same as converting first
    i2, d2 = fastad.ops.coreset(b.float().to(device), 60, start=5, storage_dtype=dtype)
    assert torch.equal(idx, i2) and torch.equal(dist, d2)


def test_coreset_non_contiguous(device, gen):
    b = torch.randn(40, 600, generator=gen).to(device).T  # [600, 40], non-contiguous
    assert not b.is_contiguous()
    idx, dist = fastad.ops.coreset(b, 30, start=2)
    ri, _ = ref.coreset(b.cpu(), 30, start=2)
    assert torch.equal(idx.cpu(), ri)
    assert_greedy(b, idx, dist.double())


def test_coreset_thread_count_invariant(gen):
    # N = 9002: the 2-thread chunk boundary (4501) is not a multiple of the kernel's 4-row block
    b = torch.randn(9002, 21, generator=gen) + 5.0
    b[4501:] = b[:4501]  # duplicated halves: exact ties across the per-thread chunks
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        i1, d1 = fastad.ops.coreset(b, 200)
        torch.set_num_threads(max(old, 2))
        i2, d2 = fastad.ops.coreset(b, 200)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)
    assert (i1 < 4501).all()  # the first copy of a duplicated row always wins


def test_coreset_distances_non_increasing(device, gen):
    b = _bank(2000, 24, gen)
    _, dist = fastad.ops.coreset(b.to(device), 300)
    assert (dist[1:] <= dist[:-1]).all()


def test_coreset_opcheck(gen):
    b = _bank(120, 7, gen)
    torch.library.opcheck(torch.ops.fastad.coreset.default, (b, 10, 3))
    torch.library.opcheck(torch.ops.fastad.coreset.default, (b.half(), 1, 0))
    torch.library.opcheck(torch.ops.fastad.coreset.default, (b, 10, 3, torch.zeros(1, dtype=torch.int64)))


def test_coreset_progress_counter(device, gen):
    b = _bank(5000, 24, gen).to(device)
    want = fastad.ops.coreset(b, 300, start=7)
    counter = torch.full((1,), -1, dtype=torch.int64)
    got = torch.ops.fastad.coreset(b, 300, 7, counter)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert counter.item() == 300  # CPU: after every step; CUDA: once the device loop is enqueued
    ri, rd = ref.coreset(b.cpu(), 20, 7, counter)
    assert counter.item() == 20 and torch.equal(ri, fastad.ops.coreset(b, 20, start=7)[0].cpu())


def test_coreset_progress_bar_same_result(gen, capsys):
    # the wrapper's progress path runs the op in a worker thread and polls the counter for tqdm
    b = _bank(20000, 32, gen)
    want = fastad.ops.coreset(b, 400, start=3)
    got = fastad.ops.coreset(b, 400, start=3, progress=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert "coreset" in capsys.readouterr().err  # the bar was drawn (tqdm writes to stderr)
    with pytest.raises(RuntimeError, match="finite"):  # errors of the worker reach the caller
        bad = b.clone()
        bad[5, 0] = float("nan")
        fastad.ops.coreset(bad, 10, progress=True)


@pytest.mark.parametrize(
    "progress,match",
    [
        (torch.zeros(1, dtype=torch.int32), "progress must be int64, got Int"),
        (torch.zeros(0, dtype=torch.int64), "at least one element"),
        (torch.zeros(4, dtype=torch.int64)[::2], "contiguous"),
    ],
)
def test_coreset_progress_errors(progress, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastad.coreset(torch.randn(10, 3), 2, 0, progress)


@pytest.mark.parametrize(
    "bank,n,start,match",
    [
        (torch.randn(10), 2, 0, "bank must be 2-D"),
        (torch.randn(2, 3, 4), 1, 0, "bank must be 2-D"),
        (torch.randn(10, 3).double(), 2, 0, "bank dtype must be float32"),
        (torch.randint(0, 5, (10, 3)), 2, 0, "bank dtype must be float32"),
        (torch.randn(0, 3), 1, 0, "at least one row"),
        (torch.randn(5, 0), 1, 0, "feature dimension D must be >= 1"),
        (torch.randn(5, 3), 0, 0, r"n \(centres to choose\) must be in \[1, N\] = \[1, 5\], got 0"),
        (torch.randn(5, 3), 6, 0, r"must be in \[1, N\] = \[1, 5\], got 6"),
        (torch.randn(5, 3), 2, 5, r"start must be a bank row index in \[0, 5\), got 5"),
        (torch.randn(5, 3), 2, -1, r"start must be a bank row index in \[0, 5\), got -1"),
    ],
)
def test_coreset_errors(bank, n, start, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastad.coreset(bank, n, start)
    with pytest.raises(RuntimeError, match=match):  # the fake kernel repeats the checks
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            torch.ops.fastad.coreset(mode.from_tensor(bank), n, start)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("row", [0, 37])
def test_coreset_rejects_non_finite(device, bad, row, gen):
    b = torch.randn(100, 6, generator=gen)
    b[row, 2] = bad
    err = RuntimeError if device.type == "cpu" else ValueError
    with pytest.raises(err, match="coreset: bank must hold finite values"):
        fastad.ops.coreset(b.to(device), 5)


def test_coreset_rejects_overflowing_distances():
    b = torch.zeros(4, 2)
    b[1, 0] = 3e38
    b[2, 0] = -3e38
    with pytest.raises(RuntimeError, match="must hold finite values"):
        torch.ops.fastad.coreset(b, 3, 0)


# ---- projection (wrapper) ----


def test_jl_min_dim_matches_anomalib_formula():
    assert jl_min_dim(50_000) == 267  # PERF.md section 4
    assert jl_min_dim(1000) == int(4 * math.log(1000) / (0.9**2 / 2 - 0.9**3 / 3))


def test_sparse_random_matrix_properties():
    D, k = 1536, 128
    m = sparse_random_matrix(D, k, seed=3)
    assert m.shape == (D, k) and m.dtype == torch.float32
    assert torch.equal(m, sparse_random_matrix(D, k, seed=3))
    assert not torch.equal(m, sparse_random_matrix(D, k, seed=4))
    s = 1 / math.sqrt(D)
    scale = math.sqrt(1 / s) / math.sqrt(k)
    vals = m.unique()
    assert len(vals) == 3
    torch.testing.assert_close(vals, torch.tensor([-scale, 0.0, scale]))
    nz = (m != 0).float().mean().item()
    assert abs(nz - s) < 0.2 * s
    assert abs((m > 0).float().sum().item() - (m < 0).float().sum().item()) < 0.2 * (m != 0).sum().item()
    # squared norms are preserved in expectation (JL): check on random vectors
    x = torch.randn(200, D, generator=torch.Generator().manual_seed(0))
    ratio = ((x @ m).pow(2).sum(1) / x.pow(2).sum(1)).mean().item()
    assert 0.8 < ratio < 1.2


def test_project_blocks_equal_one_matmul(gen):
    b = torch.randn(1000, 50, generator=gen)
    m = sparse_random_matrix(50, 20, seed=1)
    torch.testing.assert_close(project(b, m, block_rows=77), b @ m)
    torch.testing.assert_close(project(b.half(), m, block_rows=300), b.half().float() @ m)


@pytest.mark.parametrize("projection_dim", [16, "auto"])
def test_coreset_with_projection(device, projection_dim, gen):
    b = _bank(500, 96, gen, offset=1.0)
    idx, dist = fastad.ops.coreset(b.to(device), 40, projection_dim=projection_dim, seed=7, start=9)
    k = 16 if projection_dim == 16 else auto_projection_dim(500, 96)
    assert projection_dim == 16 or k is None  # JL bound 306 > 96 dims: "auto" never expands
    p = b if k is None else b @ sparse_random_matrix(96, k, seed=7)
    assert_greedy(p, idx, dist.double(), rtol=1e-4, atol=1e-5)
    i2, d2 = fastad.ops.coreset(b.to(device), 40, projection_dim=projection_dim, seed=7, start=9)
    assert torch.equal(idx, i2) and torch.equal(dist, d2)  # deterministic
    i3, _ = fastad.ops.coreset(b.to(device), 40, projection_dim=projection_dim, seed=8, start=9)
    assert int(i3[0]) == 9


def test_coreset_projection_storage_dtype(gen):
    b = _bank(300, 64, gen)
    idx, dist = fastad.ops.coreset(b, 20, projection_dim=32, storage_dtype=torch.float16)
    p = (b @ sparse_random_matrix(64, 32, seed=0)).half()
    i2, d2 = torch.ops.fastad.coreset(p, 20, 0)
    assert torch.equal(idx, i2) and torch.equal(dist, d2)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"projection_dim": 0}, "projection_dim must be None, an int >= 1 or 'auto'"),
        ({"projection_dim": "jl"}, "projection_dim must be None"),
        ({"projection_dim": 2.5}, "projection_dim must be None"),
        ({"storage_dtype": torch.float64}, "storage_dtype must be None, float32, float16 or bfloat16"),
    ],
)
def test_coreset_wrapper_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        fastad.ops.coreset(torch.randn(10, 4), 3, **kw)


def test_coreset_docstring_example():
    idx, dist = fastad.ops.coreset(torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [5.0, 0.0]]), 3)
    assert idx.tolist() == [0, 2, 3] and dist.tolist() == [float("inf"), 10.0, 5.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_coreset_generic_path_equals_simd_path(monkeypatch, dtype, gen):
    # FASTAD_SIMD=generic forces the portable C++ loop; both must follow the float64 greedy
    b = _bank(3000, 37, gen, offset=2.0, dtype=dtype)
    i1, d1 = fastad.ops.coreset(b, 80, start=1)
    monkeypatch.setenv("FASTAD_SIMD", "generic")
    i2, d2 = fastad.ops.coreset(b, 80, start=1)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(d1, d2, rtol=1e-5, atol=1e-6)
    assert_greedy(b.float(), i2, d2.double())


def test_coreset_projection_padding_changes_nothing(gen):
    # k = 20 is padded to 32 zero columns: same selection as the unpadded projected bank
    b = _bank(400, 50, gen)
    idx, dist = fastad.ops.coreset(b, 30, projection_dim=20, seed=2)
    p = b @ sparse_random_matrix(50, 20, seed=2)
    ri, rd = ref.coreset(p, 30)
    assert torch.equal(idx, ri)
    torch.testing.assert_close(dist.double()[1:], rd[1:], rtol=1e-5, atol=1e-6)


def test_coreset_torch_compile(gen):
    b = _bank(300, 16, gen)
    f = torch.compile(lambda x: fastad.ops.coreset(x, 7, start=3), backend="eager", fullgraph=True)
    i1, d1 = f(b)
    i2, d2 = fastad.ops.coreset(b, 7, start=3)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def _clustered(N, D, clusters, gen, spread=0.05, offset=3.0):
    centres = torch.randn(clusters, D, generator=gen) * 4 + offset
    lab = torch.randint(0, clusters, (N,), generator=gen)
    return centres[lab] + spread * torch.randn(N, D, generator=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("simd", ["", "generic"])
def test_coreset_pruning_is_exact(monkeypatch, dtype, simd, gen):
    # clustered data: after the first centres most rows are far closer to their own centre than half
    # the distance to the next one, so the triangle-inequality pruning skips them
    b = _clustered(2500, 24, 30, gen).to(dtype)
    if simd:
        monkeypatch.setenv("FASTAD_SIMD", simd)
    i1, d1 = fastad.ops.coreset(b, 120, start=17)
    monkeypatch.setenv("FASTAD_CORESET_PRUNE", "0")
    i0, d0 = fastad.ops.coreset(b, 120, start=17)
    assert torch.equal(i1, i0) and torch.equal(d1, d0)
    ri, rd = ref.coreset(b.float(), 120, start=17)
    assert torch.equal(i1, ri)
    torch.testing.assert_close(d1.double()[1:], rd[1:], rtol=1e-5, atol=1e-6)


def test_coreset_pruning_thread_invariant(gen):
    b = _clustered(9002, 16, 30, gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        i1, d1 = fastad.ops.coreset(b, 150)
        torch.set_num_threads(max(old, 2))
        i2, d2 = fastad.ops.coreset(b, 150)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)
