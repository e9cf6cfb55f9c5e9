"""fastad.ops.cholesky_lower (the float32 factorisation of the PaDiM fit) against its float64 reference on
every kernel (AVX-512 32-column panels, AVX2 16-column panels, portable): the backward error of LAPACK's
spotrf, the forward error of float32 rounding, only the lower triangle read, failures at the right
order (panel boundaries included), NaN / Inf, bad input named, opcheck."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastad
from fastad.ops import _reference as ref

PATHS = ["fast", "avx512", "avx2", "generic"]


def _path(path, monkeypatch):
    if path == "avx512":  # (AMD CPUs default to the 16-column panels)
        monkeypatch.setenv("FASTAD_MAHA_AVX512", "1")
    elif path == "avx2":
        monkeypatch.setenv("FASTAD_FORCE_AVX2", "1")
    elif path == "generic":
        monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")


def _spd(P, d, gen, n=None, ridge=0.01):
    """Random covariances [P, d, d] float64 whose float32 rounding is what the op gets (exactly)."""
    n = 2 * d + 4 if n is None else n
    x = torch.randn(P, n, d, generator=gen, dtype=torch.float64)
    c = x.transpose(1, 2) @ x / n + ridge * torch.eye(d, dtype=torch.float64)
    return c.float().double()


def _upper_garbage(a):
    """a with NaN in its strict upper triangle: the op must read only the lower one."""
    d = a.shape[-1]
    return torch.where(torch.ones(d, d, dtype=torch.bool).triu(1), torch.full_like(a, float("nan")), a)


def _backward_error(C, A):
    return ((C.double() @ C.double().transpose(-1, -2) - A).abs().amax((-2, -1)) / A.abs().amax((-2, -1))).max().item()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("d", [1, 2, 7, 15, 16, 17, 31, 32, 33, 48, 95, 152, 330])
def test_matches_reference(d, path, monkeypatch):
    _path(path, monkeypatch)
    gen = torch.Generator().manual_seed(d)
    A = _spd(3, d, gen)
    a = _upper_garbage(A.float()).contiguous()
    info = fastad.ops.cholesky_lower(a)
    assert info.dtype == torch.int64 and info.tolist() == [0, 0, 0]
    assert bool((a.triu(1) == 0).all()), "the strict upper triangle is zeroed"
    want, winfo = ref.cholesky_lower(A.float())
    assert winfo.tolist() == [0, 0, 0]
    # backward error: LAPACK spotrf's on the same matrices is 1-2e-7 (1.4e-7 at d = 152); bound 6 u sqrt(d)
    # would be loose for a bad algorithm: 3e-7 * max(1, sqrt(d / 16)) keeps the kernels near spotrf's
    assert _backward_error(a, A) <= 3e-7 * max(1.0, (d / 16) ** 0.5)
    # forward error: these covariances are well conditioned (cond ~10-100): a few float32 ulps
    assert ((a.double() - want).abs().amax((-2, -1)) / want.abs().amax((-2, -1))).max().item() <= 2e-6


@settings(max_examples=30, deadline=None)
@given(P=st.integers(1, 5), d=st.integers(1, 80), seed=st.integers(0, 2**16), path=st.sampled_from(PATHS),
       scale=st.sampled_from([1e-6, 1.0, 1e6]))
def test_random_shapes_and_scales(P, d, seed, path, scale):
    with pytest.MonkeyPatch.context() as mp:
        _path(path, mp)
        gen = torch.Generator().manual_seed(seed)
        A = (_spd(P, d, gen) * scale).float().double()
        a = A.float().contiguous()
        assert fastad.ops.cholesky_lower(a).tolist() == [0] * P
        assert _backward_error(a, A) <= 6e-7 * max(1.0, (d / 16) ** 0.5)


@pytest.mark.parametrize("path", PATHS)
def test_as_accurate_as_lapack_spotrf(path, monkeypatch):
    """The blocked kernels sum the update products in blocks (not one chain) and divide by the pivot (no
    reciprocal): their backward error stays within 3x of LAPACK spotrf's at d = 152 and 550."""
    from scipy.linalg import lapack

    _path(path, monkeypatch)
    gen = torch.Generator().manual_seed(11)
    for d in (152, 550):
        A = _spd(2, d, gen, n=d + 40)
        a = A.float().contiguous()
        assert fastad.ops.cholesky_lower(a).tolist() == [0, 0]
        ours = _backward_error(a, A)
        lap = max(_backward_error(torch.from_numpy(lapack.spotrf(A[p].float().numpy(), lower=1, clean=1)[0]), A[p:p + 1])
                  for p in range(2))
        assert ours <= 3 * lap + 1e-8, (d, ours, lap)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k", [1, 2, 16, 17, 32, 33, 70])
def test_not_positive_definite_reports_the_minor(k, path, monkeypatch):
    # A = B B^T with the k-th diagonal entry lowered below the Schur complement: leading minors of order
    # < k are positive definite, the order-k one is not (LAPACK's info = k)
    _path(path, monkeypatch)
    gen = torch.Generator().manual_seed(k)
    d = 80
    A = _spd(1, d, gen)[0]
    A[k - 1, k - 1] -= A[k - 1, k - 1] * 1.5
    a = torch.stack([_spd(1, d, gen)[0], A, _spd(1, d, gen)[0]]).float().contiguous()
    info = fastad.ops.cholesky_lower(a)
    assert info.tolist() == [0, k, 0]
    assert int(ref.cholesky_lower(A.float())[1]) == k


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_is_reported(bad, path, monkeypatch):
    _path(path, monkeypatch)
    gen = torch.Generator().manual_seed(1)
    a = _spd(2, 40, gen).float().contiguous()
    a[1, 21, 19] = bad  # lower triangle: the pivot of row 21 (order 22) is not finite
    a[0, 3, 30] = bad  # strict upper triangle: never read
    info = fastad.ops.cholesky_lower(a)
    assert info[0].item() == 0 and 1 <= info[1].item() <= 22


def test_unbatched_empty_and_threads():
    gen = torch.Generator().manual_seed(2)
    A = _spd(1, 20, gen)[0].float()
    a = A.clone()
    info = fastad.ops.cholesky_lower(a)
    assert info.shape == () and int(info) == 0
    assert torch.equal(fastad.ops.cholesky_lower(torch.zeros(0, 5, 5)), torch.zeros(0, dtype=torch.int64))
    assert fastad.ops.cholesky_lower(torch.zeros(3, 0, 0)).tolist() == [0, 0, 0]
    # one matrix per task: the same bits on any thread count
    many = _spd(9, 70, gen).float()
    outs = []
    for t in (1, 2, 3):
        prev = torch.get_num_threads()
        torch.set_num_threads(t)
        try:
            b = many.clone()
            fastad.ops.cholesky_lower(b)
            outs.append(b)
        finally:
            torch.set_num_threads(prev)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("args,match", [
    (lambda: torch.zeros(4, 4, dtype=torch.float64), "a must be float32"),
    (lambda: torch.zeros(4, 3), "a must hold square matrices"),
    (lambda: torch.zeros(4), r"a must be \[d, d\] or \[P, d, d\]"),
    (lambda: torch.zeros(2, 2, 4, 4), r"a must be \[d, d\] or \[P, d, d\]"),
    (lambda: torch.zeros(2, 4, 4).transpose(1, 2), "a must be contiguous"),
])
def test_bad_input(args, match):
    with pytest.raises(RuntimeError, match=match):
        fastad.ops.cholesky_lower(args())


def test_cuda_matches_cpu(device):
    if device != "cuda":
        pytest.skip("the CPU is the reference here")
    gen = torch.Generator().manual_seed(8)
    A = _upper_garbage(_spd(4, 70, gen).float()).contiguous()
    A[2, 40, 40] = -5.0  # not positive definite at order 41
    cpu, gpu = A.clone(), A.cuda()
    info_c, info_g = fastad.ops.cholesky_lower(cpu), fastad.ops.cholesky_lower(gpu)
    assert info_c.tolist() == info_g.cpu().tolist() == [0, 0, 41, 0]
    for p in (0, 1, 3):
        torch.testing.assert_close(gpu[p].cpu(), cpu[p], rtol=2e-5, atol=2e-6)
        assert bool((gpu[p].triu(1) == 0).all())


def test_meta_and_opcheck():
    out = fastad.ops.cholesky_lower(torch.zeros(3, 5, 5, device="meta"))
    assert out.shape == (3,) and out.dtype == torch.int64 and out.device.type == "meta"
    gen = torch.Generator().manual_seed(6)
    torch.library.opcheck(torch.ops.fastad.cholesky_lower.default, (_spd(3, 9, gen).float().contiguous(),))
    torch.library.opcheck(torch.ops.fastad.cholesky_lower.default, (_spd(1, 40, gen)[0].float().contiguous(),))


def test_reference_is_lapack_info():
    a = torch.eye(4)
    a[2, 2] = -1.0
    C, info = ref.cholesky_lower(a)
    assert int(info) == 3 and bool((C == 0).all())
    assert np.isclose(ref.cholesky_lower(torch.eye(3) * 4)[0].diagonal().numpy(), 2.0).all()


# ---- row_start / row_src: leading rows copied from another matrix's factor -----------------------------
def _shared_spd(d, starts, gen):
    """Covariances whose leading blocks chain: matrix p's block of order starts[p] is matrix src[p]'s
    (src[p] = the last earlier matrix with a smaller start); returns (A [P, d, d] float64, src [P])."""
    P = len(starts)
    A = _spd(P, d, gen, ridge=0.5)
    src = []
    for p, r in enumerate(starts):
        q = max([k for k in range(p) if starts[k] < r], default=0) if r else 0
        src.append(q)
        if r:  # the leading block is q's (then A stays positive definite: a principal block of an SPD
            A[p, :r, :r] = A[q, :r, :r]  # matrix replaced by another SPD one, with the ridge dominating)
    return A, torch.tensor(src)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("d,starts", [(152, [0, 112, 0, 112, 128, 32]), (40, [0, 16, 32, 5, 0, 39, 40]),
                                      (70, [0, 33, 64, 17, 1]), (9, [0, 9, 4])])
def test_row_start_copies_the_leading_factor(d, starts, path, monkeypatch):
    """The rows below row_start equal the reference's block formula (and the whole matrix's factor); the
    rows above are the source's factor, bit for bit; rows above row_start in a are never read; with
    row_start a multiple of the panel (16 / 32) or on the portable kernel, bit for bit the whole factor."""
    _path(path, monkeypatch)
    gen = torch.Generator().manual_seed(d + len(starts))
    A, src = _shared_spd(d, starts, gen)
    rs = torch.tensor(starts)
    a = A.float().contiguous()
    whole = a.clone()
    assert fastad.ops.cholesky_lower(whole).tolist() == [0] * len(starts)
    for p, r in enumerate(starts):  # rows above row_start: not read (garbage)
        a[p, :r] = float("nan")
    a = _upper_garbage(a).contiguous()
    info = fastad.ops.cholesky_lower(a, rs, src)
    assert info.tolist() == [0] * len(starts)
    want, winfo = ref.cholesky_lower(A.float(), rs, src)
    assert winfo.tolist() == [0] * len(starts)
    assert bool((a.triu(1) == 0).all()) and bool(torch.isfinite(a).all())
    assert ((a.double() - want).abs().amax((-2, -1)) / want.abs().amax((-2, -1))).max().item() <= 2e-6
    assert _backward_error(a, A) <= 3e-7 * max(1.0, (d / 16) ** 0.5)
    nb = {"avx512": 32, "avx2": 16}.get(path, 1 if path == "generic" else None)

    def aligned(p):  # row_start on a panel boundary here and all along the chain of sources
        return starts[p] == 0 or (starts[p] % nb == 0 and aligned(int(src[p])))

    for p, r in enumerate(starts):
        if r:
            assert torch.equal(a[p, :r], a[int(src[p]), :r])  # the source's rows, copied
        if nb is not None and aligned(p):
            assert torch.equal(a[p], whole[p]), (p, r)  # the whole matrix's factor, bit for bit


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_row_start_failures(path, monkeypatch):
    _path(path, monkeypatch)
    gen = torch.Generator().manual_seed(4)
    A, src = _shared_spd(48, [0, 20, 0, 20], gen)
    A[0, 10, 10] = -1.0  # matrix 0 fails at order 11 <= 20: matrix 1 (its copy) reports the same minor
    A[2, 30, 30] = -1.0  # matrix 2 fails at 31 > 20; matrix 3 copies from 2: gets 2's info, left as it was
    A[3, 40, 40] = -5.0  # (matrix 3's own failure is not reached)
    a = A.float().contiguous()
    before = a.clone()
    info = fastad.ops.cholesky_lower(a, torch.tensor([0, 20, 0, 20]), torch.tensor([0, 0, 0, 2]))
    assert info.tolist() == [11, 11, 31, 31]
    assert torch.equal(a[1], before[1]) and torch.equal(a[3], before[3])
    _, winfo = ref.cholesky_lower(A.float(), torch.tensor([0, 20, 0, 20]), torch.tensor([0, 0, 0, 2]))
    assert winfo.tolist() == [11, 11, 31, 31]
    B, src = _shared_spd(48, [0, 20], gen)
    B[1, 30, 30] = -100.0  # a failure below row_start: its order
    info = fastad.ops.cholesky_lower(B.float().contiguous(), torch.tensor([0, 20]), src)
    assert info.tolist()[0] == 0 and info.tolist()[1] == 31


@pytest.mark.parametrize("kw,match", [
    ({"row_start": torch.tensor([0, 2])}, "row_start and row_src go together"),
    ({"row_src": torch.tensor([0, 0])}, "row_start and row_src go together"),
    ({"row_start": torch.tensor([0, 2]), "row_src": torch.tensor([0, 5])}, r"row_src\[1\] = 5 is not a matrix of a"),
    ({"row_start": torch.tensor([2, 2]), "row_src": torch.tensor([0, 0])}, "must have a smaller row_start"),
    ({"row_start": torch.tensor([0, 7]), "row_src": torch.tensor([0, 0])}, r"row_start values must lie in \[0, d = 4\]"),
    ({"row_start": torch.tensor([0, 2]), "row_src": torch.tensor([0.0, 0.0])}, "row_src must be int64"),
])
def test_row_start_bad_input(kw, match):
    with pytest.raises(RuntimeError, match=match):
        fastad.ops.cholesky_lower(torch.eye(4).repeat(2, 1, 1), **kw)


def test_row_start_opcheck():
    gen = torch.Generator().manual_seed(1)
    A, src = _shared_spd(20, [0, 8, 16], gen)
    torch.library.opcheck(torch.ops.fastad.cholesky_lower.default,
                          (A.float().contiguous(), torch.tensor([0, 8, 16]), src))


def test_row_start_cuda_matches_cpu():
    if not (fastad.build_info()["cuda_compiled"] and torch.cuda.is_available()):
        pytest.skip("no CUDA device (or fastad built without CUDA)")
    gen = torch.Generator().manual_seed(3)
    A, src = _shared_spd(70, [0, 33, 64, 17, 1, 0], gen)
    rs = torch.tensor([0, 33, 64, 17, 1, 0])
    a, c = A.float().contiguous(), A.float().cuda()
    assert fastad.ops.cholesky_lower(a, rs, src).tolist() == fastad.ops.cholesky_lower(c, rs.cuda(), src.cuda()).cpu().tolist()
    assert ((c.cpu().double() - a.double()).abs().max() / a.abs().max()).item() <= 1e-5
