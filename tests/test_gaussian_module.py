"""fastad.gaussian: streaming fit, Ledoit-Wolf / OAS against scikit-learn, precision factor, save/load."""
import sys

import numpy as np
import pytest
import torch

from fastad import gaussian as G
from fastad.gaussian import GaussianAccumulator

sk = pytest.importorskip("sklearn.covariance")


def _data(n, p, seed, dtype=torch.float64, mix=1.0):
    gen = torch.Generator().manual_seed(seed)
    A = mix * torch.randn(p, p, generator=gen, dtype=torch.float64) / p**0.5 + torch.eye(p, dtype=torch.float64)
    return (torch.randn(n, p, generator=gen, dtype=torch.float64) @ A + 5.0).to(dtype)


@pytest.mark.parametrize("n,p", [(200, 30), (40, 64), (500, 1), (1000, 8), (167, 120)])
@pytest.mark.parametrize("method", ["ledoit_wolf", "oas", None, 0.3])
def test_matches_sklearn_float64(n, p, method):
    if method is None and p > n:
        pytest.skip("singular")
    X = _data(n, p, n + p)
    est = {"ledoit_wolf": sk.LedoitWolf(), "oas": sk.OAS(), None: sk.EmpiricalCovariance(),
           0.3: sk.ShrunkCovariance(shrinkage=0.3)}[method].fit(X.numpy())
    # streamed in uneven batches: the same result as one batch
    g = G.gaussian_fit([X[:7], X[7:60], X[60:]] if n > 60 else X, shrinkage=method)
    np.testing.assert_allclose(g.mean.numpy(), est.location_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.covariance.numpy(), est.covariance_, rtol=1e-10, atol=1e-10 * np.abs(est.covariance_).max())
    assert abs(float(g.shrinkage_) - float(getattr(est, "shrinkage_", 0.0 if method is None else method))) <= 1e-10
    np.testing.assert_allclose(g.precision().numpy(), est.precision_, rtol=1e-8, atol=1e-10 * np.abs(est.precision_).max())
    Y = _data(50, p, 99) * 1.5
    np.testing.assert_allclose(g.mahalanobis(Y).numpy(), est.mahalanobis(Y.numpy()), rtol=1e-10)
    assert abs(float(g.logdet) - np.linalg.slogdet(est.covariance_)[1]) <= 1e-9 * max(1.0, abs(np.linalg.slogdet(est.covariance_)[1]))


@pytest.mark.parametrize("method", ["ledoit_wolf", "oas", None])
def test_matches_sklearn_float32(method):
    """float32 data: products in float32 (256-row chunks), sums in float64: the covariance is within
    ~3e-7 relative of float64, so distances are within ~eps32 x cond(cov); at cond ~30 <= 1e-5, against
    scikit-learn in float64 and in its own float32 path."""
    X = _data(300, 40, 3, torch.float32, mix=0.3)
    Y = _data(20, 40, 4, torch.float32, mix=0.3)
    g = G.gaussian_fit(X, shrinkage=method)  # float32 data: float32 factor, scored by the op
    assert g.factor.dtype == torch.float32
    for Xs in (X.double().numpy(), X.numpy()):
        est = {"ledoit_wolf": sk.LedoitWolf(), "oas": sk.OAS(), None: sk.EmpiricalCovariance()}[method].fit(Xs)
        assert np.linalg.cond(est.covariance_.astype(np.float64)) < 100
        np.testing.assert_allclose(g.covariance.numpy(), est.covariance_, rtol=1e-5, atol=1e-5 * np.abs(est.covariance_).max())
        assert abs(float(g.shrinkage_) - float(getattr(est, "shrinkage_", 0.0))) <= 1e-5
        np.testing.assert_allclose(g.mahalanobis(Y).double().numpy(), est.mahalanobis(Y.numpy().astype(Xs.dtype)), rtol=1e-5)


def test_per_position_equals_independent_fits():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 5, 7, generator=gen, dtype=torch.float64) * torch.arange(1, 6, dtype=torch.float64)[:, None] + 3
    for method in ("ledoit_wolf", "oas", None):
        g = G.gaussian_fit(x, shrinkage=method, ddof=1 if method is None else 0, reg=0.01)
        for p in range(5):
            gp = G.gaussian_fit(x[:, p], shrinkage=method, ddof=1 if method is None else 0, reg=0.01)
            torch.testing.assert_close(g.covariance[p], gp.covariance, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(g.factor[p], gp.factor, rtol=1e-10, atol=1e-12)
            if method is not None:
                assert abs(float(g.shrinkage_[p]) - gp.shrinkage_) <= 1e-12
        if method is None:  # ddof = 1 as np.cov
            np.testing.assert_allclose(g.covariance[2].numpy(), np.cov(x[:, 2].numpy(), rowvar=False) + 0.01 * np.eye(7), rtol=1e-10)


def test_streaming_buffered_and_folded_paths_agree():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 6, 4, generator=gen) + 100.0  # float32, large offset: the shift keeps it exact
    few = G.gaussian_fit(x[:5], reg=1e-3)  # 5 rows < 2 d: stays buffered, folded per position block
    acc = G.GaussianAccumulator()
    for s in range(0, 300, 32):
        acc.update(x[s : s + 32])
    assert acc.s2 is not None  # folded into the float64 sums
    many = acc.finalize(reg=1e-3)
    ref = G.gaussian_fit(x.double(), reg=1e-3)
    torch.testing.assert_close(many.covariance, ref.covariance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(many.mean.double(), ref.mean, rtol=1e-7, atol=1e-6)
    ref5 = G.gaussian_fit(x[:5].double(), reg=1e-3)
    torch.testing.assert_close(few.covariance, ref5.covariance, rtol=1e-5, atol=1e-6)


def test_precision_factor_and_low_precision_models():
    X = _data(500, 20, 5)
    cov = torch.from_numpy(np.cov(X.numpy(), rowvar=False))
    L = G.precision_factor(cov, torch.float64)
    assert torch.equal(L, L.tril())
    torch.testing.assert_close(L @ L.T, torch.linalg.inv(cov), rtol=1e-9, atol=1e-12)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert G.precision_factor(cov, dt).dtype == dt
    g = G.gaussian_fit(X.float(), factor_dtype=torch.bfloat16)
    ref = G.gaussian_fit(X)
    Y = _data(30, 20, 6)
    rel = ((g.mahalanobis(Y.float()).double() - ref.mahalanobis(Y)).abs() / ref.mahalanobis(Y)).max()
    assert rel < 5e-2  # bf16 factor (and bf16 rows on AVX512-BF16 CPUs): ~1e-2 relative


def test_save_load_roundtrip(tmp_path):
    gen = torch.Generator().manual_seed(3)
    g = G.gaussian_fit(torch.randn(50, 3, 4, generator=gen), shrinkage="oas")
    path = g.save(tmp_path / "g.safetensors")
    back = G.GaussianModel.load(path)
    for a in ("mean", "factor", "logdet", "covariance"):
        assert torch.equal(getattr(back, a), getattr(g, a))
    assert torch.equal(back.shrinkage_, g.shrinkage_) and back.n_samples_ == 50
    x = torch.randn(5, 3, 4, generator=gen)
    assert torch.equal(back.mahalanobis(x), g.mahalanobis(x))
    from fastad.detectors import load

    assert isinstance(load(path), G.GaussianModel)
    g1 = G.gaussian_fit(torch.randn(50, 4, generator=gen, dtype=torch.float64), shrinkage="ledoit_wolf", keep_covariance=False)
    b1 = G.GaussianModel.load(g1.save(tmp_path / "g1.safetensors"))
    assert b1.covariance is None and b1.shrinkage_ == g1.shrinkage_


def test_errors():
    X = _data(10, 20, 7)
    with pytest.raises(ValueError, match=r"x has 10 samples of d=20 features: the covariance is singular"):
        G.gaussian_fit(X)
    G.gaussian_fit(X, shrinkage="ledoit_wolf")  # fine with shrinkage
    G.gaussian_fit(X, reg=0.1)
    const = torch.zeros(30, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not positive definite"):
        G.gaussian_fit(const)
    bad = _data(30, 3, 8)
    bad[4, 1] = float("nan")
    with pytest.raises((ValueError, RuntimeError), match="NaN"):
        G.gaussian_fit(bad.float())
    with pytest.raises((ValueError, RuntimeError), match="NaN"):
        G.gaussian_fit([bad[:2], bad[2:]])
    with pytest.raises(ValueError, match="shrinkage must be None, 'ledoit_wolf', 'oas' or a float in"):
        G.gaussian_fit(X, shrinkage="lw")
    with pytest.raises(ValueError, match="reg must be"):
        G.gaussian_fit(X, reg=-1.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        G.gaussian_fit(X[:1], ddof=1, reg=1.0)
    with pytest.raises(ValueError, match=r"cov must be a \[d, d\] or \[P, d, d\]"):
        G.precision_factor(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"precision_factor: cov: the covariance of position 1 \(of 2\) is not positive definite"):
        G.precision_factor(torch.stack([torch.eye(3), -torch.eye(3)]).double())
    acc = G.GaussianAccumulator().update(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"batch is \(2, 5\) but earlier batches were \[B, 3\]"):
        acc.update(torch.zeros(2, 5))
    g = G.gaussian_fit(_data(40, 3, 9))
    with pytest.raises(ValueError, match=r"X must be \[N, 3\]"):
        g.mahalanobis(torch.zeros(2, 4))


@pytest.mark.parametrize("per_position", [False, True])
def test_float32_factorisation(per_position):
    # compute_dtype=float32 (spotrf + strtri): the same model as the float64 factorisation within
    # ~0.1 cond 6e-8 relative on the distances; logdet within float32 rounding of the diagonal
    gen = torch.Generator().manual_seed(5)
    d = 80
    x = torch.randn(150, 3, d, generator=gen) @ (torch.eye(d) + 0.3 * torch.randn(d, d, generator=gen) / d**0.5) + 2.0
    x = x if per_position else x[:, 0]
    g64 = G.gaussian_fit(x, ddof=1, reg=0.01, factor_dtype=torch.float32)
    g32 = G.gaussian_fit(x, ddof=1, reg=0.01, factor_dtype=torch.float32, compute_dtype=torch.float32)
    assert g32.factor.dtype == torch.float32 and g32.factor.shape == g64.factor.shape
    assert torch.equal(g32.factor, g32.factor.tril())
    cond = float(torch.linalg.cond(g64.covariance).max())
    t = torch.randn(40, *x.shape[1:], generator=gen) * 1.5 + 2.0
    d64, d32 = g64.mahalanobis(t).double(), g32.mahalanobis(t).double()
    rel = float(((d32 - d64).abs() / d64).max())
    assert rel <= max(1e-5, 0.5 * cond * 6e-8), (rel, cond)
    torch.testing.assert_close(g32.logdet, g64.logdet, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="compute_dtype"):
        G.gaussian_fit(x, reg=0.01, compute_dtype=torch.float16)
    # a singular covariance is still named (float32 Cholesky fails as float64 does)
    with pytest.raises(ValueError, match="not positive definite"):
        G.gaussian_fit(torch.ones(10, 4) + torch.arange(4.0), ddof=1, reg=0.0, compute_dtype=torch.float32)


def test_float32_cholesky_factor_redoes_ill_conditioned_positions_in_float64():
    # factor_kind="cholesky", float32 (PaDiM's fit): each covariance is rounded once into the float32 factor
    # and factorised there; a position whose squared diagonal ratio exceeds F32_CHOL_MAX_DIAG_RATIO_SQ is
    # redone in float64 from the same float64 covariance: its factor = float64 Cholesky, rounded once
    gen = torch.Generator().manual_seed(9)
    n, P, d = 120, 4, 24
    x = torch.randn(n, P, d, generator=gen, dtype=torch.float64) + 3.0
    x[:, 2, 0] *= 300.0  # position 2: variance ratio ~9e4 > 2000
    m = G.gaussian_fit(x.float(), ddof=1, reg=0.01, factor_dtype=torch.float32, compute_dtype=torch.float32,
                       factor_kind="cholesky", keep_covariance=False)
    assert m.n_refactored_ == 1
    xf = x.float().double()
    cov = torch.stack([torch.cov(xf[:, p].T) for p in range(P)]) + 0.01 * torch.eye(d, dtype=torch.float64)
    ref = torch.linalg.cholesky(cov)
    torch.testing.assert_close(m.factor[2].double(), ref[2].float().double(), rtol=1e-6, atol=1e-6)
    for p in (0, 1, 3):  # factorised in float32
        torch.testing.assert_close(m.factor[p].double(), ref[p], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.logdet, torch.logdet(cov), rtol=1e-5, atol=1e-4)


def test_fold_every_fold_rows_and_leftover_at_finalize(monkeypatch):
    # once the sums exist, batches are buffered until FOLD_ROWS rows and folded in one op call; rows
    # still buffered are folded by finalize: the same model as one batch, every position block size
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(23, 4, 6, generator=gen, dtype=torch.float64) * 2 + 3
    one = G.gaussian_fit(x, ddof=1, reg=0.01)
    monkeypatch.setattr(G, "BUFFER_BYTES_PER_FEATURE", 0)  # fold at the first batch
    monkeypatch.setattr(G, "FOLD_ROWS", 5)
    monkeypatch.setattr(G, "_BLOCK_BYTES", 3 * 8 * 6 * 6)  # one position per block
    acc = G.GaussianAccumulator()
    for s in range(0, 23, 2):  # 12 batches: folds at 2, then every 6 rows, 3 rows left at finalize
        acc.update(x[s : s + 2])
    assert acc.s2 is not None and acc._nbuf > 0
    many = acc.finalize(ddof=1, reg=0.01)
    torch.testing.assert_close(many.mean, one.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(many.covariance, one.covariance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(many.factor, one.factor, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("generic", [False, True])
def test_float32_cholesky_route_uses_the_op_only_with_simd(generic, monkeypatch):
    # the float32 factorisation runs ops.cholesky_lower where it has a SIMD kernel, LAPACK spotrf on a CPU
    # without AVX2 (its portable loop is slower than spotrf); both give the float64 Cholesky to float32 rounding
    from fastad import ops as fops

    if generic:
        monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    assert G._simd_cholesky() is (not generic and fastad_simd() != "generic")  # (x86 CI: AVX2 at least)
    calls = []
    real = fops.cholesky_lower
    monkeypatch.setattr(fops, "cholesky_lower", lambda a: calls.append(1) or real(a))
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(90, 3, 20, generator=gen, dtype=torch.float64) + 2.0
    m = G.gaussian_fit(x.float(), ddof=1, reg=0.01, factor_dtype=torch.float32, compute_dtype=torch.float32,
                       factor_kind="cholesky", keep_covariance=False)
    assert bool(calls) is G._simd_cholesky()
    xf = x.float().double()
    cov = torch.stack([torch.cov(xf[:, p].T) for p in range(3)]) + 0.01 * torch.eye(20, dtype=torch.float64)
    torch.testing.assert_close(m.factor.double(), torch.linalg.cholesky(cov), rtol=1e-5, atol=1e-5)


def fastad_simd():
    import fastad

    return fastad.build_info()["simd"]  # the CPU's level (not the environment's overrides)


# ---- shared_rows: covariance rows of repeated leading features formed once -------------------------
def _shared_data(N=300, P=12, d=20, e1=8, seed=0):
    """[N, P, d]: features [0, e1) repeat in pairs of positions (owner = p // 2 * 2), the rest free."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, P, d, generator=gen) * 3 + 5
    owner = torch.arange(P) // 2 * 2
    x[:, :, :e1] = x[:, owner, :e1]
    return x, [(e1, owner)]


@pytest.mark.parametrize("batch", [7, 64, 300])
def test_shared_rows_same_bits_as_every_row(batch):
    """The rows a position leaves to its owner are the owner's rows, which the full computation forms from
    the same features in the same order: the sums, the mean and the factor are bit for bit those of an
    accumulator without shared_rows (folded path: N > d + 1 rows)."""
    x, shared = _shared_data()
    # two levels: [0, 4) shared by groups of 4 positions, [4, 8) by pairs
    own4 = torch.arange(12) // 4 * 4
    x[:, :, :4] = x[:, own4, :4]
    shared = [(4, own4)] + shared
    a, b = GaussianAccumulator(), GaussianAccumulator(shared_rows=shared)
    a.update(x[:7])
    b.update(x[:7])
    # b's shift: a position's shared features take its owner's (torch's mean can round equal columns
    # differently); given the same shift, a forms every row itself
    a.shift.copy_(b.shift)
    for s in range(7, x.shape[0], batch):
        a.update(x[s : s + batch])
        b.update(x[s : s + batch])
    # the float32 Cholesky route (PaDiM's): with the op's SIMD kernel, the shared rows are copied in the
    # factor (ops.cholesky_lower row_start / row_src), not in the sums; rows below split panels differ by
    # rounding only
    ma = a.finalize(ddof=1, reg=0.01, factor_kind="cholesky", compute_dtype=torch.float32, keep_covariance=False)
    mb = b.finalize(ddof=1, reg=0.01, factor_kind="cholesky", compute_dtype=torch.float32, keep_covariance=False)
    assert torch.equal(ma.mean, mb.mean)
    torch.testing.assert_close(ma.logdet, mb.logdet, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mb.factor, ma.factor, rtol=1e-5, atol=1e-5)
    own = torch.arange(12) // 2 * 2
    assert torch.equal(mb.factor[:, :8], mb.factor[own, :8])  # the shared rows: the owner's, copied
    assert b._syrk_flops < a._syrk_flops
    # float64 route (the covariance kept; the sums' rows copied): the same bits, and again after more rows
    assert torch.equal(a.finalize(ddof=1).covariance, b.finalize(ddof=1).covariance)
    assert torch.equal(a.s2, b.s2)
    b.update(x[:50])
    a.update(x[:50])
    assert torch.equal(a.finalize(ddof=1).covariance, b.finalize(ddof=1).covariance)
    for e, o in shared:  # the shared shift entries are the owners'
        assert torch.equal(b.shift[:, :e], b.shift[o, :e])


def test_shared_rows_checks():
    x, shared = _shared_data()
    owner = shared[0][1]
    bad = [
        ([(0, owner)], r"end must be an int in \(0, d = 20\]"),
        ([(8, owner), (8, owner)], r"end must be an int in \(8, d = 20\]"),
        ([(21, owner)], "end must be an int"),
        ([(8, owner[:5])], r"owner must be an int64 Tensor\[12\]"),
        ([(8, owner.int())], "owner must be an int64"),
        ([(8, torch.arange(12).flip(0))], "owner must map each position p to a position <= p"),
        ([(8, torch.tensor([0, 0, 1, 2, 4, 4, 6, 6, 8, 8, 10, 10]))], "owners own themselves|owner\\[owner"),
        ([(4, owner), (8, torch.arange(12) // 4 * 4)], "must own the rows up to 8 too"),
        (["x"], r"shared_rows\[0\] must be an \(end, owner\) pair"),
    ]
    for rows, match in bad:
        with pytest.raises(ValueError, match=match):
            GaussianAccumulator(shared_rows=rows).update(x)
    y = x.clone()
    y[1, 5, 3] += 1  # position 5 differs from its owner 4 in the first rows
    with pytest.raises(ValueError, match=r"position 5's features \[0, 8\) differ from its owner's \(position 4\)"):
        GaussianAccumulator(shared_rows=shared).update(y)
    with pytest.raises(ValueError, match=r"shared_rows needs \[B, P, d\] batches"):
        GaussianAccumulator(shared_rows=shared).update(x[:, 0])


def test_shared_rows_redo_in_float64():
    """A position whose float32 factor is redone in float64 (ill-conditioned) gets its whole sums (the
    shared rows copied first) under shared rows too: the float64 factor of its covariance."""
    x, shared = _shared_data(N=200)
    x[:, 5, 15] = 7.0 + 1e-4 * x[:, 5, 15]  # a near-constant feature: squared diagonal ratio ~1e9
    b = GaussianAccumulator(shared_rows=shared)
    for s in range(0, 200, 50):
        b.update(x[s : s + 50])
    m = b.finalize(ddof=1, reg=0.0, factor_kind="cholesky", compute_dtype=torch.float32, keep_covariance=False)
    assert b.n_refactored_ >= 1
    xf = x.double()
    for p in (4, 5):
        cov = torch.cov(xf[:, p].T)
        torch.testing.assert_close(m.factor[p].double(), torch.linalg.cholesky(cov), rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("block_bytes", [1, 10**6, 10**9])
def test_shared_rows_buffered_blocks(block_bytes, monkeypatch):
    """Rows still buffered at finalize (N <= d + 1): blocks of positions start only where every owner of a
    later position is in the block (the cuts); each block forms its own rows from row_start and copies the
    factor rows in the block; the same model as every row formed, up to the split panels' rounding; a
    redo (ill-conditioned position) fills its shared rows from the block's owners."""
    monkeypatch.setattr(G, "_BLOCK_BYTES", block_bytes)
    x, shared = _shared_data(N=18, P=12, d=20)
    own4 = torch.arange(12) // 4 * 4
    x[:, :, :4] = x[:, own4, :4]
    shared = [(4, own4)] + shared
    x[:, 7, 15] = 3.0 + 1e-4 * x[:, 7, 15]  # position 7 (shares rows with 6 and 4): refactorised in float64
    a, b = GaussianAccumulator(), GaussianAccumulator(shared_rows=shared)
    for acc in (a, b):
        acc.update(x[:9])
        acc.update(x[9:])
    a.shift.copy_(b.shift)
    assert a.holds_rows and b.holds_rows
    for reg, redo in ((0.5, False), (1e-4, True)):  # float32 factors; (nearly) singular: redone in float64
        kw = dict(ddof=1, reg=reg, factor_kind="cholesky", compute_dtype=torch.float32, keep_covariance=False)
        ma, mb = a.finalize(**kw), b.finalize(**kw)
        assert b.n_refactored_ == a.n_refactored_ and (a.n_refactored_ > 0) == redo
        assert torch.equal(ma.mean, mb.mean)
        torch.testing.assert_close(mb.factor, ma.factor, rtol=1e-5, atol=1e-5)
        assert b._syrk_flops < a._syrk_flops
    cut = G._shared_row_plan(shared, 12, 20)[3].tolist()
    assert cut == [0, 4, 8]  # blocks of whole 4-position groups


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("block_bytes", [1, 10**9])
def test_consume_same_model_and_sums_released(shared, block_bytes, monkeypatch):
    """finalize(consume=True) (PaDiM, gaussian_fit): the folded sums are finalised block by block (blocks at
    the cuts with shared rows) and each block's pages go back to the OS once its factors are done: the same
    model bit for bit as consume=False, a redo included; the sums read back as zeros (Linux) and the
    accumulator refuses further use."""
    monkeypatch.setattr(G, "_BLOCK_BYTES", block_bytes)
    x, rows = _shared_data(N=200, P=12, d=64)
    x[:, 5, 30] = 7.0 + 1e-4 * x[:, 5, 30]  # position 5: float32 factor redone in float64
    kw = dict(ddof=1, reg=0.0, factor_kind="cholesky", compute_dtype=torch.float32, keep_covariance=False)
    models = []
    for consume in (False, True):
        acc = GaussianAccumulator(shared_rows=rows if shared else None)
        for s in range(0, 200, 50):
            acc.update(x[s : s + 50])
        s2 = acc.s2
        assert s2 is not None and s2.abs().sum() > 0
        models.append(acc.finalize(consume=consume, **kw))
        assert acc.n_refactored_ >= 1
    for a, b in zip((models[0].mean, models[0].factor, models[0].logdet), (models[1].mean, models[1].factor, models[1].logdet)):
        assert torch.equal(a, b)
    if sys.platform.startswith("linux"):
        assert s2.eq(0).double().mean() > 0.5  # the consumed sums' whole pages: released
    with pytest.raises(ValueError, match="finalised with consume=True"):
        acc.finalize(**kw)
    with pytest.raises(ValueError, match="finalised with consume=True"):
        acc.update(x[:5])
    # the float64 precision route (blocks of pb positions, the covariance kept), consumed: the same model
    out = []
    for consume in (False, True):
        acc = GaussianAccumulator(shared_rows=rows if shared else None)
        for s in range(0, 200, 50):
            acc.update(x[s : s + 50])
        out.append(acc.finalize(ddof=1, reg=0.1, consume=consume))
    assert torch.equal(out[0].factor, out[1].factor) and torch.equal(out[0].covariance, out[1].covariance)


@pytest.mark.parametrize("shared", [False, True])
def test_consume_buffered_rows(shared, monkeypatch):
    """Rows still buffered at finalize (N <= d + 1): consume=True releases each block's rows of the batches
    given with give=True (PaDiM's staging buffer) once the block is done, never a caller's rows
    (copy=False alone); the model is the same bit for bit."""
    monkeypatch.setattr(G, "_BLOCK_BYTES", 1)  # blocks of one position (or of one cut's group)
    monkeypatch.setattr(G, "RELEASE_ROW_BYTES", 4096)  # rows returned once a page of each image is done
    x, rows = _shared_data(N=40, P=12, d=512)
    kw = dict(ddof=1, reg=0.1, factor_kind="cholesky", compute_dtype=torch.float32, keep_covariance=False)
    models, given, kept = [], x[:20].clone(), x[20:].clone()
    zeros_before_last = []  # zeros in the given rows after each block but the last: released as it goes
    real = G._release_block

    def spy(s2, rows, r0, p0, p1, P, release):
        r0 = real(s2, rows, r0, p0, p1, P, release)
        if release and p1 < P:
            zeros_before_last.append(int(given.eq(0).sum()))
        return r0

    monkeypatch.setattr(G, "_release_block", spy)
    for consume in (False, True):
        acc = GaussianAccumulator(shared_rows=rows if shared else None)
        acc.update(given if consume else x[:20], copy=False, give=consume)
        acc.update(kept, copy=False)
        assert acc.holds_rows and acc.s2 is None
        models.append(acc.finalize(consume=consume, **kw))
    assert torch.equal(models[0].factor, models[1].factor) and torch.equal(models[0].mean, models[1].mean)
    assert torch.equal(kept, x[20:])  # the caller's rows: untouched
    if sys.platform.startswith("linux"):
        assert given.eq(0).double().mean() > 0.5  # the given rows' whole pages: released
        assert zeros_before_last[0] < zeros_before_last[-1] and zeros_before_last[-1] > given.numel() // 4
