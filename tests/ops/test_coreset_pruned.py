"""coreset(method="pruned") (PCA row filter with block bounds, csrc/cpu/coreset_filter.cpp) returns exactly the exhaustive
method's indices and distances: random, clustered, duplicated and tied data, every storage dtype and
projection, both SIMD paths, any thread count."""
import re
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastad
from fastad.detectors.patchcore import SLOW_CORESET_S, PatchCore, coreset_estimate_message
from fastad.ops import _reference as ref
from fastad.ops.coreset import auto_projection_dim, jl_min_dim

KINDS = ("random", "clustered", "duplicated", "tied", "offset")


def make_bank(kind: str, N: int, D: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(N, D, generator=g)
    if kind == "clustered":  # tight clusters: most subtrees and rows are skipped
        k = max(1, N // 40)
        c = torch.randn(k, D, generator=g) * 5
        return c[torch.randint(0, k, (N,), generator=g)] + 0.2 * torch.randn(N, D, generator=g)
    if kind == "duplicated":  # each row several times: zero distances, equal running minima
        u = torch.randn(max(1, N // 4), D, generator=g)
        return u[torch.randint(0, u.shape[0], (N,), generator=g)]
    if kind == "tied":  # small integer grid: many exactly equal distances, argmax ties everywhere
        return torch.randint(0, 3, (N, D), generator=g).float()
    # large offset, small spread: distances much smaller than the coordinates (cancellation)
    return 1000.0 + 0.01 * torch.randn(N, D, generator=g)


def both(bank, n, **kw):
    ip, dp = fastad.ops.coreset(bank, n, method="pruned", **kw)
    ie, de = fastad.ops.coreset(bank, n, method="exhaustive", **kw)
    return ip, dp, ie, de


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    N=st.integers(1, 1500),
    D=st.integers(1, 40),
    frac=st.floats(0.01, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    proj=st.sampled_from([None, 8, "auto"]),
    seed=st.integers(0, 2**16),
)
def test_pruned_identical_to_exhaustive(kind, N, D, frac, dtype, proj, seed):
    bank = make_bank(kind, N, D, seed).to(dtype)
    n = max(1, min(N, int(N * frac)))
    start = seed % N
    ip, dp, ie, de = both(bank, n, start=start, projection_dim=proj, storage_dtype=dtype, seed=seed)
    assert torch.equal(ip, ie), (kind, N, D, n, dtype, proj)
    assert torch.equal(dp, de)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("simd", ["", "generic"])
def test_pruned_identical_long_rows_and_simd_paths(monkeypatch, kind, simd):
    # D not a multiple of 8 (scalar tails) and long rows (the rounding margin grows with D)
    if simd:
        monkeypatch.setenv("FASTAD_SIMD", simd)
    for D in (37, 1029):
        bank = make_bank(kind, 900, D, D)
        ip, dp, ie, de = both(bank, 300, start=5)
        assert torch.equal(ip, ie) and torch.equal(dp, de)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(("lowrank",) + KINDS),
    D=st.sampled_from([33, 64, 152]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_pruned_identical_wide_rows(kind, D, dtype, seed):
    # D > 32: the summaries keep 32 principal axes and a residual norm (the residual term of the bound)
    if kind == "lowrank":  # features near a low-dimensional subspace, like real CNN features
        g = torch.Generator().manual_seed(seed)
        bank = make_bank("clustered", 1500, 12, seed) @ torch.randn(12, D, generator=g) + 0.05 * torch.randn(1500, D, generator=g)
    else:
        bank = make_bank(kind, 1500, D, seed)
    bank = bank.to(dtype)
    ip, dp, ie, de = both(bank, 200, start=seed % 1500)
    assert torch.equal(ip, ie) and torch.equal(dp, de)


def test_pruned_skips_blocks_on_lowrank_wide_rows():
    g = torch.Generator().manual_seed(0)
    bank = make_bank("clustered", 8000, 10, 0) @ torch.randn(10, 152, generator=g) + 0.02 * torch.randn(8000, 152, generator=g)
    for dtype in (torch.float32, torch.float16):
        x = bank.to(dtype)
        counter = torch.zeros(3, dtype=torch.int64)
        ip, dp = torch.ops.fastad.coreset(x, 800, 0, counter, "pruned")
        ie, de = torch.ops.fastad.coreset(x, 800, 0, None, "exhaustive")
        assert torch.equal(ip, ie) and torch.equal(dp, de)
        assert counter[1] < 0.1 * counter[2], f"read {int(counter[1]) / int(counter[2]):.2%} of the rows"


def test_pruned_equals_float64_reference_and_tie_rule():
    bank = make_bank("clustered", 1200, 6, 3)
    ip, dp = fastad.ops.coreset(bank, 200, method="pruned")
    ri, rd = ref.coreset(bank, 200)
    assert torch.equal(ip, ri)
    torch.testing.assert_close(dp.double()[1:], rd[1:], rtol=1e-5, atol=1e-6)
    # all rows equal: every distance ties at 0 -> smallest unchosen index each step
    same = torch.ones(100, 5)
    ip, dp = fastad.ops.coreset(same, 10, start=42, method="pruned")
    assert ip.tolist() == [42, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert dp[1:].eq(0).all()


def test_pruned_skips_rows_on_clustered_data():
    bank = make_bank("clustered", 20000, 16, 0)
    counter = torch.zeros(3, dtype=torch.int64)
    torch.ops.fastad.coreset(bank, 2000, 0, counter, "pruned")
    done, read, full = counter.tolist()
    assert done == 2000 and full == 1999 * 20000
    assert read < 0.2 * full, f"read {read / full:.2%} of the rows"
    counter.zero_()
    torch.ops.fastad.coreset(bank, 2000, 0, counter, "exhaustive")
    assert counter[2] == 1999 * 20000 and counter[1] <= counter[2]


def test_pruned_thread_invariant():
    bank = make_bank("clustered", 9000, 12, 1)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        i1, d1 = fastad.ops.coreset(bank, 700, method="pruned")
        torch.set_num_threads(max(old, 2))
        i2, d2 = fastad.ops.coreset(bank, 700, method="pruned")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_pruned_non_finite_and_overflow():
    b = make_bank("clustered", 500, 4, 0)
    b[300, 2] = float("nan")
    with pytest.raises(RuntimeError, match="finite"):
        fastad.ops.coreset(b, 50, method="pruned")
    # huge but finite values: squared distances between far rows overflow; both methods agree
    big = make_bank("random", 400, 3, 0) * 1e18
    try:
        ie, de = fastad.ops.coreset(big, 40, method="exhaustive")
    except RuntimeError as e:
        with pytest.raises(RuntimeError, match="finite"):
            fastad.ops.coreset(big, 40, method="pruned")
        assert "finite" in str(e)
    else:
        ip, dp = fastad.ops.coreset(big, 40, method="pruned")
        assert torch.equal(ip, ie) and torch.equal(dp, de)


def test_method_errors():
    b = torch.randn(10, 3)
    with pytest.raises(ValueError, match="method must be 'pruned' or 'exhaustive', got 'fast'"):
        fastad.ops.coreset(b, 3, method="fast")
    with pytest.raises(RuntimeError, match="method must be 'pruned' or 'exhaustive'"):
        torch.ops.fastad.coreset(b, 3, 0, None, "fast")
    with pytest.raises(ValueError, match="coreset_method must be 'pruned' or 'exhaustive'"):
        PatchCore(backbone=None, coreset_method="greedy")._check_params()


def test_opcheck_with_method(gen):
    b = torch.randn(200, 7, generator=gen)
    torch.library.opcheck(torch.ops.fastad.coreset.default, (b, 20, 3, None, "pruned"))
    torch.library.opcheck(torch.ops.fastad.coreset.default, (b, 20, 3, torch.zeros(3, dtype=torch.int64), "exhaustive"))


def test_auto_projection_never_expands(gen):
    assert auto_projection_dim(493_920, 152) is None  # JL bound 323 > 152: no projection
    assert jl_min_dim(493_920) == 323
    assert auto_projection_dim(50_000, 1536) == 267
    b = torch.randn(3000, 16, generator=gen)
    ia, da = fastad.ops.coreset(b, 50, projection_dim="auto")
    inone, dnone = fastad.ops.coreset(b, 50, projection_dim=None)
    assert torch.equal(ia, inone) and torch.equal(da, dnone)


def test_on_estimate_and_message(monkeypatch):
    coreset_mod = sys.modules["fastad.ops.coreset"]  # fastad.ops.coreset is the function
    monkeypatch.setattr(coreset_mod, "ESTIMATE_AFTER_S", 0.0)
    monkeypatch.setattr(coreset_mod, "ESTIMATE_MIN_STEPS_S", 0.0)
    monkeypatch.setattr(coreset_mod, "PROGRESS_POLL_S", 0.001)
    got = []
    bank = make_bank("random", 20000, 64, 0)
    idx, dist = fastad.ops.coreset(bank, 2000, on_estimate=got.append)
    i0, d0 = fastad.ops.coreset(bank, 2000)
    assert torch.equal(idx, i0) and torch.equal(dist, d0)
    assert len(got) <= 1
    if got:  # the op may finish before the first poll on a fast machine
        info = got[0]
        assert info["rows"] == 20000 and info["dims"] == 64 and info["centres"] == 2000
        assert 1 <= info["done"] <= 2000 and info["estimate_s"] >= info["elapsed_s"] >= 0
        assert 0 <= info["read_fraction"] <= 1
    info = dict(rows=10, dims=2, centres=5000, done=100, elapsed_s=3.0, estimate_s=SLOW_CORESET_S + 1, read_fraction=0.5)
    msg = coreset_estimate_message(info)
    assert "estimated total <=" in msg and "--coreset-storage float16" in msg and "coreset_ratio" in msg
    assert "float16" not in coreset_estimate_message({**info, "estimate_s": 10.0})


def test_estimate_rates_steps_not_the_set_up(monkeypatch):
    """The estimate extrapolates the steps' rate, never the set-up before the first step (the pruned
    method builds its tree first: on the whole MTD ~4 s, once extrapolated to 49,522 s for a 44 s run)."""
    import time

    coreset_mod = sys.modules["fastad.ops.coreset"]
    monkeypatch.setattr(coreset_mod, "ESTIMATE_AFTER_S", 0.3)
    monkeypatch.setattr(coreset_mod, "ESTIMATE_MIN_STEPS_S", 0.2)
    monkeypatch.setattr(coreset_mod, "PROGRESS_POLL_S", 0.01)
    n, setup_s, step_s = 600, 0.6, 0.001

    def fake_op(x, n_, start, counter, method):  # the op's counters: centres, rows read, rows of full scans
        counter[0] = 1
        time.sleep(setup_s)
        for i in range(2, n_ + 1):
            time.sleep(step_s)
            counter[0], counter[1], counter[2] = i, i, 10 * i
        return torch.zeros(n_, dtype=torch.int64), torch.zeros(n_)

    class Ops:
        coreset = staticmethod(fake_op)

    class FakeTorchOps:
        fastad = Ops

    monkeypatch.setattr(coreset_mod.torch, "ops", FakeTorchOps)
    got = []
    t0 = time.perf_counter()
    coreset_mod._coreset_watched(torch.zeros(10, 2), n, 0, "pruned", False, got.append)
    total = time.perf_counter() - t0
    monkeypatch.undo()
    assert len(got) == 1, "no estimate although the run lasted beyond ESTIMATE_AFTER_S + ESTIMATE_MIN_STEPS_S"
    info = got[0]
    assert info["done"] >= 2 and info["elapsed_s"] >= 0.3
    # the steps' rate with the set-up counted once: close to the real total, far from set-up / step-rate
    assert info["estimate_s"] < 2.0 * total, (info, total)
    assert abs(info["read_fraction"] - 0.1) < 1e-9


def test_progress_bar_shows_rows_skipped(monkeypatch):
    import tqdm.auto

    coreset_mod = sys.modules["fastad.ops.coreset"]
    monkeypatch.setattr(coreset_mod, "PROGRESS_POLL_S", 0.001)
    posts = []

    class Bar:
        def __init__(self, total, **kw):
            self.n, self.total = 0, total

        def update(self, k):
            self.n += k

        def set_postfix_str(self, s, refresh=True):
            posts.append(s)

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    bank = make_bank("clustered", 12000, 16, 2)
    got = fastad.ops.coreset(bank, 1200, progress=True)
    want = fastad.ops.coreset(bank, 1200, method="exhaustive")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    pat = re.compile(r"rows skipped (\d+\.\d)% \(read ([\d.e+-]+)%\)")
    assert posts and all(pat.fullmatch(p) for p in posts), posts[:3]
    skipped, read = (float(v) for v in pat.fullmatch(posts[-1]).groups())
    assert skipped > 50.0  # clustered data: most rows are skipped late on
    assert abs(skipped + read - 100.0) < 0.1 + 0.05 * read  # the two shares are of the same rows


@pytest.mark.parametrize("leaf", ["8", "40"])
@pytest.mark.parametrize("simd", ["", "generic"])
def test_pruned_deep_tree_identical(monkeypatch, leaf, simd):
    # FASTAD_CORESET_LEAF: smaller leaves than the default, so that these small banks get deep trees (node
    # bounds, parent bounds, tournament maxima along changed paths, ties between subtrees, padded last group);
    # FASTAD_CORESET_PRUNE=0 builds the tree at the first step, on any data
    monkeypatch.setenv("FASTAD_CORESET_LEAF", leaf)
    monkeypatch.setenv("FASTAD_CORESET_PRUNE", "0")
    if simd:
        monkeypatch.setenv("FASTAD_SIMD", simd)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    for j, (kind, N, D) in enumerate([(k, N, D) for k in KINDS for N, D in ((1, 3), (9, 5), (1001, 37), (2500, 152))]):
        bank = make_bank(kind, N, D, j).to(dtypes[j % 3])
        ip, dp, ie, de = both(bank, max(1, N // 4), start=j % N)
        assert torch.equal(ip, ie) and torch.equal(dp, de), (kind, N, D, leaf)
