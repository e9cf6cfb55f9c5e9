"""fastad.ops.mahalanobis and fastad.ops.gaussian_accumulate against their float64 references."""
import math

import pytest
import torch

import fastad
from fastad.ops import _reference as ref

# Documented tolerances (relative to the float64 reference on the same, already rounded, factor):
TOL = {torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 3e-2}


def _rand_factor(P, d, gen, dtype=torch.float32):
    """A well-conditioned lower factor (unit-ish diagonal) per position; the strict upper triangle holds
    garbage that the op must ignore."""
    L = torch.randn(P, d, d, generator=gen) / math.sqrt(d)
    L.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return L.to(dtype)


def _check(x, mean, L, dtype, monkeypatch=None):
    got = fastad.ops.mahalanobis(x, mean, L)
    want = ref.mahalanobis(x.float(), mean.float(), L.float())
    assert got.dtype == torch.float32 and got.shape == want.shape
    rel = ((got.double() - want).abs() / want.abs().clamp_min(1e-3)).max().item() if want.numel() else 0.0
    assert rel <= TOL[dtype], (rel, tuple(x.shape), dtype)


# random shapes: d 1..600, P 1..1024, N 1..300, sampled (not all combinations)
SHAPES = [(1, 1, 1), (7, 1, 5), (13, 3, 31), (6, 2, 32), (5, 4, 33), (300, 1, 64), (50, 1024, 9), (3, 17, 97),
          (37, 5, 128), (2, 2, 255), (61, 3, 383), (4, 2, 550), (12, 1, 600), (1, 9, 600)]


@pytest.mark.parametrize("N,P,d", SHAPES)
@pytest.mark.parametrize("path", ["fast", "avx512", "avx2", "generic"])
def test_mahalanobis_matches_reference(N, P, d, path, monkeypatch):
    if path == "generic":
        monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    if path == "avx512":  # the 6 x 32 AVX-512 kernel also on AMD CPUs (which default to 6 x 16)
        monkeypatch.setenv("FASTAD_MAHA_AVX512", "1")
    if path == "avx2":  # the 6 x 16 AVX2 kernel (Zen 2/3 CI machines) on an AVX-512 CPU
        monkeypatch.setenv("FASTAD_FORCE_AVX2", "1")
    gen = torch.Generator().manual_seed(N * 1000 + P * 7 + d)
    x = torch.randn(N, P, d, generator=gen) * 3 + 5
    mean = torch.randn(P, d, generator=gen) + 5
    L = _rand_factor(P, d, gen)
    if P == 1 and N % 2:  # the one-Gaussian form
        _check(x[:, 0], mean[0], L[0], torch.float32)
    else:
        _check(x, mean, L, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,P,d", [(9, 3, 33), (40, 2, 200), (7, 1, 550)])
@pytest.mark.parametrize("no_bf16", [False, True, "avx2", "avx512"])
def test_mahalanobis_low_precision_factor(dtype, N, P, d, no_bf16, monkeypatch):
    if no_bf16:
        monkeypatch.setenv("FASTAD_FORCE_NO_BF16", "1")
    if no_bf16 == "avx512":
        monkeypatch.setenv("FASTAD_MAHA_AVX512", "1")
    if no_bf16 == "avx2":  # AVX2 kernel: the factor widened in registers (F16C / 16-bit shift)
        monkeypatch.setenv("FASTAD_FORCE_AVX2", "1")
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(N, P, d, generator=gen)
    mean = torch.randn(P, d, generator=gen) * 0.1
    L = _rand_factor(P, d, gen, dtype)
    tol = TOL[dtype] if (dtype == torch.bfloat16 and not no_bf16) else 2e-5
    got = fastad.ops.mahalanobis(x, mean, L)
    want = ref.mahalanobis(x, mean, L.float())
    assert ((got.double() - want).abs() / want).max().item() <= tol


def test_mahalanobis_low_precision_x():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20, 4, 40, generator=gen)
    mean = torch.randn(4, 40, generator=gen)
    L = _rand_factor(4, 40, gen)
    for dt in (torch.float16, torch.bfloat16):
        xs, ms = x.to(dt), mean.to(dt)
        got = fastad.ops.mahalanobis(xs, ms, L)
        want = ref.mahalanobis(xs, ms, L)
        assert torch.allclose(got.double(), want, rtol=2e-5)


def test_mahalanobis_identity_and_ties():
    # identity factor: squared Euclidean distance; equal rows give bit-identical distances
    x = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.0, 0.0], [-3.0, -4.0]])
    got = fastad.ops.mahalanobis(x, torch.zeros(2), torch.eye(2))
    assert got.tolist() == [25.0, 25.0, 0.0, 25.0]
    # an upper triangle full of garbage is ignored
    L = torch.eye(2)
    L[0, 1] = 1e30
    assert fastad.ops.mahalanobis(x, torch.zeros(2), L).tolist() == [25.0, 25.0, 0.0, 25.0]


def test_mahalanobis_sklearn_equivalence():
    sk = pytest.importorskip("sklearn.covariance")
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(300, 20, generator=gen, dtype=torch.float64) @ torch.randn(20, 20, generator=gen, dtype=torch.float64)
    est = sk.EmpiricalCovariance().fit(X.numpy())
    from fastad.gaussian import precision_factor

    L = precision_factor(torch.from_numpy(est.covariance_), torch.float32)
    got = fastad.ops.mahalanobis(X.float(), torch.from_numpy(est.location_).float(), L)
    want = torch.from_numpy(est.mahalanobis(X.numpy()))
    assert torch.allclose(got.double(), want, rtol=1e-4)


def test_mahalanobis_empty():
    assert fastad.ops.mahalanobis(torch.zeros(0, 3), torch.zeros(3), torch.eye(3)).shape == (0,)
    assert fastad.ops.mahalanobis(torch.zeros(0, 2, 3), torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3)).shape == (0, 2)


@pytest.mark.parametrize(
    "x,mean,factor,match",
    [
        (torch.zeros(3, 4), torch.zeros(4), torch.zeros(4, 3), "factor must be square"),
        (torch.zeros(3, 4), torch.zeros(4), torch.zeros(5, 5), "factor must be .* d = 4"),
        (torch.zeros(3, 4), torch.zeros(5), torch.eye(4), "mean must be \\[d\\]"),
        (torch.zeros(3, 2, 4), torch.zeros(4), torch.eye(4), "mean must be \\[P, d\\]"),
        (torch.zeros(3, 2, 4), torch.zeros(2, 4), torch.eye(4), "factor must be \\[P, d, d\\]"),
        (torch.zeros(3), torch.zeros(3), torch.eye(3), "x must be 2-D"),
        (torch.zeros(3, 4, dtype=torch.float64), torch.zeros(4), torch.eye(4), "x dtype"),
        (torch.zeros(3, 4), torch.zeros(4), torch.eye(4, dtype=torch.int32), "factor dtype"),
        (torch.tensor([[float("nan"), 0.0]]), torch.zeros(2), torch.eye(2), "NaN"),
        (torch.zeros(1, 2), torch.zeros(2), torch.tensor([[1.0, 0.0], [float("inf"), 1.0]]), "NaN or Inf"),
    ],
)
def test_mahalanobis_bad_input(x, mean, factor, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        fastad.ops.mahalanobis(x, mean, factor)


def test_mahalanobis_device_mismatch():
    # without a GPU: a meta tensor next to CPU ones reaches the fake kernel, which repeats the C++ checks
    with pytest.raises(RuntimeError, match="mean must be on x's device"):
        torch.ops.fastad.mahalanobis(torch.zeros(2, 3), torch.zeros(3, device="meta"), torch.eye(3))
    with pytest.raises(RuntimeError, match="shift, sum and sumsq must be on x's device"):
        torch.ops.fastad.gaussian_accumulate(torch.zeros(2, 3), torch.zeros(3, device="meta"),
                                             torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64))
    if torch.cuda.is_available() and fastad.build_info()["cuda_compiled"]:
        with pytest.raises(RuntimeError, match="device"):
            fastad.ops.mahalanobis(torch.zeros(2, 3), torch.zeros(3, device="cuda"), torch.eye(3))


def test_mahalanobis_opcheck(device):
    gen = torch.Generator().manual_seed(5)
    x, mean, L = torch.randn(5, 3, 7, generator=gen), torch.randn(3, 7, generator=gen), _rand_factor(3, 7, gen)
    torch.library.opcheck(torch.ops.fastad.mahalanobis.default, (x.to(device), mean.to(device), L.to(device)))
    torch.library.opcheck(torch.ops.fastad.mahalanobis.default, (x[:, 0].to(device), mean[0].to(device), L[0].to(device)))


def test_mahalanobis_gradcheck():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 2, 5, generator=gen, requires_grad=True)
    mean = torch.randn(2, 5, generator=gen, requires_grad=True)
    L = _rand_factor(2, 5, gen).tril().requires_grad_(True)
    out = fastad.ops.mahalanobis(x, mean, L)
    g = torch.randn_like(out)
    gx, gm, gL = torch.autograd.grad(out, (x, mean, L), g)
    xr, mr, Lr = x.detach().double().requires_grad_(), mean.detach().double().requires_grad_(), L.detach().double().requires_grad_()
    outr = ref.mahalanobis(xr, mr, Lr)
    rx, rm, rL = torch.autograd.grad(outr, (xr, mr, Lr), g.double())
    assert torch.allclose(gx.double(), rx, rtol=1e-4, atol=1e-5)
    assert torch.allclose(gm.double(), rm, rtol=1e-4, atol=1e-5)
    assert torch.allclose(gL.double(), rL, rtol=1e-4, atol=1e-5)
    # d d2/dx = 2 (x - mean) L L^T (the closed form, float64)
    P = Lr.detach().tril() @ Lr.detach().tril().transpose(1, 2)
    closed = 2 * torch.einsum("npk,pkj->npj", xr.detach() - mr.detach(), P) * g.double()[:, :, None]
    assert torch.allclose(gx.double(), closed, rtol=1e-4, atol=1e-5)


def test_mahalanobis_torch_compile():
    gen = torch.Generator().manual_seed(7)
    x, mean, L = torch.randn(5, 7, generator=gen), torch.randn(7, generator=gen), _rand_factor(1, 7, gen)[0]

    @torch.compile(backend="eager", fullgraph=True)
    def f(x, m, L):
        return torch.ops.fastad.mahalanobis(x, m, L).sqrt()

    assert torch.allclose(f(x, mean, L), fastad.ops.mahalanobis(x, mean, L).sqrt())


# ---- gaussian_accumulate ------------------------------------------------------------------------
ACC_SHAPES = [(1, 1, 1), (5, 3, 7), (300, 1, 64), (257, 2, 33), (520, 3, 19), (40, 1024, 5), (3, 4, 550), (600, 1, 17), (20, 2, 600),
              (70, 2, 152)]  # (d mod 6 = 0..5: every partial row block of the 6-row SYRK tiles)


@pytest.mark.parametrize("N,P,d", ACC_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("path", ["fast", "avx2", "generic"])
def test_gaussian_accumulate_matches_reference(N, P, d, dtype, path, monkeypatch):
    if path == "generic":
        monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    if path == "avx2":
        monkeypatch.setenv("FASTAD_FORCE_AVX2", "1")
    gen = torch.Generator().manual_seed(N + P + d)
    x = (torch.randn(N, P, d, generator=gen, dtype=torch.float64) * 2 + 100).to(dtype)
    shift = x[: max(1, N // 2)].double().mean(0).to(torch.float64 if dtype == torch.float64 else torch.float32)
    s1 = torch.randn(P, d, generator=gen, dtype=torch.float64)
    s2 = torch.randn(P, d, d, generator=gen, dtype=torch.float64)
    if P == 1 and d % 2:
        x, shift, s1, s2 = x[:, 0], shift[0], s1[0].contiguous(), s2[0].contiguous()
    w1, w2 = ref.gaussian_accumulate(x, shift, s1, s2)
    fastad.ops.gaussian_accumulate(x, shift, s1, s2)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    scale = max(1.0, float(w2.diagonal(dim1=-2, dim2=-1).abs().max()))
    assert (s1 - w1).abs().max().item() <= tol * max(1.0, float(w1.abs().max()))
    assert (s2 - w2).abs().max().item() <= tol * scale
    assert torch.equal(s2.triu(1), w2.triu(1))  # upper triangle untouched


@pytest.mark.parametrize("N,P,d", [(1, 1, 1), (5, 3, 7), (300, 1, 64), (257, 2, 33), (3, 4, 550), (600, 1, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_accumulate_packed(N, P, d, dtype):
    """sumsq packed [P, d (d + 1) / 2]: the reference, and bit for bit the dense layout's lower triangle."""
    gen = torch.Generator().manual_seed(N * P + d)
    x = (torch.randn(N, P, d, generator=gen, dtype=torch.float64) * 2 + 100).to(dtype)
    shift = x[: max(1, N // 2)].double().mean(0).to(torch.float64 if dtype == torch.float64 else torch.float32)
    i, j = torch.tril_indices(d, d)
    s1 = torch.randn(P, d, generator=gen, dtype=torch.float64)
    dense = torch.randn(P, d, d, generator=gen, dtype=torch.float64)
    packed = dense[:, i, j].contiguous()
    if P == 1 and d % 2:  # [N, d] x, [d (d + 1) / 2] sumsq
        x, shift, s1, dense, packed = x[:, 0], shift[0], s1[0].contiguous(), dense[0].contiguous(), packed[0].contiguous()
    w1, w2 = ref.gaussian_accumulate(x, shift, s1, packed)
    d1 = s1.clone()
    fastad.ops.gaussian_accumulate(x, shift, d1, dense)
    fastad.ops.gaussian_accumulate(x, shift, s1, packed)
    assert torch.equal(packed, dense[..., i, j]) and torch.equal(s1, d1)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (packed - w2).abs().max().item() <= tol * max(1.0, float(w2.abs().max()))


@pytest.mark.parametrize("N", [257, 2000, 5000])
def test_gaussian_accumulate_one_position_is_deterministic_on_any_thread_count(N):
    """P = 1 with many rows runs row-chunk groups in parallel: the groups (fixed by N) are summed in their
    order, so 1 and 2 threads and repeated runs give the same bits."""
    gen = torch.Generator().manual_seed(N)
    x = torch.randn(N, 40, generator=gen) * 3 + 50
    shift = x[:10].mean(0)
    outs = []
    n = torch.get_num_threads()
    try:
        for threads in (1, 2, 2, 1, 3):
            torch.set_num_threads(threads)
            s1, s2 = torch.zeros(40, dtype=torch.float64), torch.zeros(40, 40, dtype=torch.float64)
            fastad.ops.gaussian_accumulate(x, shift, s1, s2)
            outs.append((s1, s2))
    finally:
        torch.set_num_threads(n)
    for s1, s2 in outs[1:]:
        assert torch.equal(s1, outs[0][0]) and torch.equal(s2, outs[0][1])
    w1, w2 = ref.gaussian_accumulate(x, shift, torch.zeros(40, dtype=torch.float64), torch.zeros(40, 40, dtype=torch.float64))
    assert (outs[0][1] - w2).abs().max().item() <= 2e-5 * float(w2.abs().max())


def test_gaussian_accumulate_streaming_equals_one_shot():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(50, 3, 9, generator=gen) + 10
    shift = x[:8].mean(0)
    a1, a2 = torch.zeros(3, 9, dtype=torch.float64), torch.zeros(3, 9, 9, dtype=torch.float64)
    b1, b2 = a1.clone(), a2.clone()
    fastad.ops.gaussian_accumulate(x, shift, a1, a2)
    for s in range(0, 50, 8):
        fastad.ops.gaussian_accumulate(x[s : s + 8], shift, b1, b2)
    # float32 products per chunk, float64 across chunks: agreement to float32 rounding of the scale
    scale = float(a2.diagonal(dim1=-2, dim2=-1).max())
    assert torch.allclose(a1, b1, rtol=1e-6, atol=1e-6 * scale) and torch.allclose(a2, b2, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("N,P,d", [(1, 1, 1), (5, 3, 7), (300, 1, 64), (257, 4, 33), (70, 6, 152), (3, 4, 550), (600, 1, 17),
                                   (9, 5, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("path", ["fast", "avx2", "generic"])
def test_gaussian_accumulate_row_start(N, P, d, dtype, path, monkeypatch):
    """row_start: rows above it are left exactly as they were (dense and packed), rows from it equal the
    reference and, bit for bit, the rows of a call without row_start (the same products and order); every
    first row 0..d, across the 6-row blocks and the diagonal's column panels."""
    if path == "generic":
        monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    if path == "avx2":
        monkeypatch.setenv("FASTAD_FORCE_AVX2", "1")
    gen = torch.Generator().manual_seed(3 * N + P + d)
    x = (torch.randn(N, P, d, generator=gen, dtype=torch.float64) * 2 + 100).to(dtype)
    shift = x[: max(1, N // 2)].double().mean(0).to(torch.float64 if dtype == torch.float64 else torch.float32)
    starts = torch.randint(0, d + 1, (P,), generator=gen)
    starts[0] = d  # nothing formed
    if P > 1:
        starts[1] = 0
    if P > 2:
        starts[2] = d - 1
    i, j = torch.tril_indices(d, d)
    for packed in (False, True):
        s1 = torch.randn(P, d, generator=gen, dtype=torch.float64)
        s2 = torch.randn(P, d, d, generator=gen, dtype=torch.float64)
        if packed:
            s2 = s2[:, i, j].contiguous()
        xs, sh, a1, a2, rs = x, shift, s1, s2, starts
        if P == 1 and d % 2:  # unbatched [N, d]
            xs, sh, a1, a2 = x[:, 0], shift[0], s1[0].contiguous(), s2[0].contiguous()
        w1, w2 = ref.gaussian_accumulate(xs, sh, a1, a2, rs)
        b1, b2 = a1.clone(), a2.clone()
        fastad.ops.gaussian_accumulate(xs, sh, b1, b2)  # every row
        before = a2.clone()
        fastad.ops.gaussian_accumulate(xs, sh, a1, a2, rs)
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        assert torch.equal(a1, b1)
        assert (a2 - w2).abs().max().item() <= tol * max(1.0, float(w2.abs().max()))
        def dense(t):
            if not packed:
                return t
            out = torch.zeros(t.shape[:-1] + (d, d), dtype=t.dtype)
            out[..., i, j] = t
            return out

        got, full, old = dense(a2).view(-1, d, d), dense(b2).view(-1, d, d), dense(before).view(-1, d, d)
        for p in range(got.shape[0]):
            r = int(rs[p])
            assert torch.equal(got[p, :r], old[p, :r]), (p, r)  # untouched
            assert torch.equal(got[p, r:].tril(-r), full[p, r:].tril(-r)), (p, r)  # the same bits as every row


def test_gaussian_accumulate_row_start_bad_input():
    x, sh = torch.zeros(3, 2, 4), torch.zeros(2, 4)
    s1, s2 = torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4, 4, dtype=torch.float64)
    for rs, match in [(torch.zeros(2, dtype=torch.int32), "row_start must be int64"),
                      (torch.zeros(3, dtype=torch.int64), r"row_start must be \[2\]"),
                      (torch.tensor([0, 5]), r"row_start values must lie in \[0, d = 4\], got \[0, 5\]"),
                      (torch.tensor([-1, 0]), "row_start values must lie in")]:
        with pytest.raises(RuntimeError, match=match):
            fastad.ops.gaussian_accumulate(x, sh, s1, s2, rs)
    with pytest.raises(RuntimeError, match="row_start must be on x's device"):
        torch.ops.fastad.gaussian_accumulate(x, sh, s1, s2, torch.zeros(2, dtype=torch.int64, device="meta"))


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(3, 4), torch.zeros(4), torch.zeros(4, dtype=torch.float64), torch.zeros(4, 4)), "sumsq must be float64"),
        ((torch.zeros(3, 4), torch.zeros(4), torch.zeros(4), torch.zeros(4, 4, dtype=torch.float64)), "sum must be float64"),
        ((torch.zeros(3, 4), torch.zeros(3), torch.zeros(4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)), "shift must be"),
        ((torch.zeros(3, 2, 4), torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4, 3, dtype=torch.float64)), "sumsq must be"),
        ((torch.zeros(3, 2, 4), torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 11, dtype=torch.float64)), "or packed lower triangles"),
        ((torch.zeros(3, 4, dtype=torch.int64), torch.zeros(4), torch.zeros(4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)), "x dtype"),
        ((torch.full((3, 4), float("nan")), torch.zeros(4), torch.zeros(4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)), "NaN"),
    ],
)
def test_gaussian_accumulate_bad_input(args, match):
    with pytest.raises(RuntimeError, match=match):
        fastad.ops.gaussian_accumulate(*args)


def test_gaussian_accumulate_opcheck(device):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(6, 3, 5, generator=gen).to(device)
    args = (x, x.mean(0), torch.zeros(3, 5, dtype=torch.float64, device=device),
            torch.zeros(3, 5, 5, dtype=torch.float64, device=device))
    torch.library.opcheck(torch.ops.fastad.gaussian_accumulate.default, args)
    packed = (x, x.mean(0), torch.zeros(3, 5, dtype=torch.float64, device=device), torch.zeros(3, 15, dtype=torch.float64, device=device))
    torch.library.opcheck(torch.ops.fastad.gaussian_accumulate.default, packed)
    rows = (x, x.mean(0), torch.zeros(3, 5, dtype=torch.float64, device=device),
            torch.zeros(3, 15, dtype=torch.float64, device=device), torch.tensor([0, 3, 5], device=device))
    torch.library.opcheck(torch.ops.fastad.gaussian_accumulate.default, rows)


@pytest.mark.parametrize("N,P,d", [(33, 5, 70), (8, 2, 550)])
def test_cuda_matches_cpu(N, P, d):
    if not (fastad.build_info()["cuda_compiled"] and torch.cuda.is_available()):
        pytest.skip("no CUDA device (or fastad built without CUDA)")
    gen = torch.Generator().manual_seed(9)
    x, mean, L = torch.randn(N, P, d, generator=gen), torch.randn(P, d, generator=gen), _rand_factor(P, d, gen)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        want = ref.mahalanobis(x, mean, L.to(dt).float())
        got = fastad.ops.mahalanobis(x.cuda(), mean.cuda(), L.to(dt).cuda()).cpu()
        assert ((got.double() - want).abs() / want).max().item() <= 2e-4
        want = ref.mahalanobis(x, mean, L.to(dt).float(), cholesky=True)
        got = fastad.ops.mahalanobis(x.cuda(), mean.cuda(), L.to(dt).cuda(), cholesky=True).cpu()
        assert ((got.double() - want).abs() / want).max().item() <= 2e-4
    shift = x.mean(0)
    s1, s2 = torch.zeros(P, d, dtype=torch.float64), torch.zeros(P, d, d, dtype=torch.float64)
    c1, c2 = s1.cuda(), s2.cuda()
    fastad.ops.gaussian_accumulate(x, shift, s1, s2)
    fastad.ops.gaussian_accumulate(x.cuda(), shift.cuda(), c1, c2)
    assert torch.allclose(c1.cpu(), s1, rtol=1e-5, atol=1e-6) and torch.allclose(c2.cpu().tril(), s2.tril(), rtol=1e-5, atol=1e-5)
    i, j = torch.tril_indices(d, d)
    k1, k2 = torch.zeros(P, d, dtype=torch.float64, device="cuda"), torch.zeros(P, d * (d + 1) // 2, dtype=torch.float64, device="cuda")
    fastad.ops.gaussian_accumulate(x.cuda(), shift.cuda(), k1, k2)  # packed lower triangles
    assert torch.equal(k1, c1) and torch.equal(k2, c2[:, i, j])
    rs = torch.arange(P) * d // max(1, P - 1)  # first rows 0 .. d, across the 32-row tiles
    r1, r2 = torch.zeros_like(k1), torch.full_like(k2, 7.0)
    fastad.ops.gaussian_accumulate(x.cuda(), shift.cuda(), r1, r2, rs.cuda())
    above = torch.arange(d)[i] < rs[:, None]  # [P, tri]: the rows left alone
    assert torch.equal(r2.cpu()[above], torch.full_like(r2.cpu()[above], 7.0))
    assert torch.equal(r2.cpu()[~above], k2.cpu()[~above] + 7.0)


# ---- cholesky=True: the covariance's Cholesky factor and a triangular solve ---------------------
def _rand_cholesky(P, d, gen):
    """The lower Cholesky factor of a random well-conditioned covariance (A A^T / d + I / 2) per position,
    as a fit produces it; the strict upper triangle holds garbage that the op must ignore. (A random
    triangular matrix such as _rand_factor's is exponentially ill-conditioned in d: at d = 550 its solve
    loses all digits in float64 too, so it cannot serve as an oracle for the solve.)"""
    A = torch.randn(P, d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    cov = A @ A.transpose(-1, -2) + 0.5 * torch.eye(d, dtype=torch.float64)
    C = torch.linalg.cholesky(cov)
    return (C + torch.randn(P, d, d, generator=gen, dtype=torch.float64).triu(1)).float()


CHOL_SHAPES = [(1, 1, 1), (7, 1, 5), (17, 3, 31), (33, 2, 6), (5, 4, 13), (300, 1, 64), (50, 1024, 9), (3, 17, 97),
               (49, 2, 128), (4, 2, 550), (12, 1, 600)]


@pytest.mark.parametrize("N,P,d", CHOL_SHAPES)
@pytest.mark.parametrize("path", ["fast", "generic"])
def test_mahalanobis_cholesky_matches_reference(N, P, d, path, monkeypatch):
    if path == "generic":
        monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    gen = torch.Generator().manual_seed(N * 1000 + P * 7 + d + 1)
    x = torch.randn(N, P, d, generator=gen) * 3 + 5
    mean = torch.randn(P, d, generator=gen) + 5
    C = _rand_cholesky(P, d, gen)  # strict upper triangle: garbage, ignored
    if P == 1 and N % 2:
        x, mean, C = x[:, 0], mean[0], C[0]
    got = fastad.ops.mahalanobis(x, mean, C, cholesky=True)
    want = ref.mahalanobis(x, mean, C, cholesky=True)
    # the float64 solve against an explicit inverse: the reference itself is right
    # (scipy, not torch.linalg.inv: torch 2.13's MKL getri has returned wrong inverses / bad pivots here on
    # an AMD CPU once other tests had run, which is not what this test is about)
    import numpy as np
    from scipy.linalg import solve_triangular

    Cd = C.double().tril().reshape(-1, C.shape[-1], C.shape[-1]).numpy()
    Ci = torch.from_numpy(np.stack([solve_triangular(c, np.eye(c.shape[0]), lower=True) for c in Cd])).reshape(C.shape)
    direct = ((x.double() - mean.double()).unsqueeze(-1).transpose(-1, -2) @ Ci.transpose(-1, -2)).squeeze(-2).square().sum(-1)
    assert torch.allclose(want, direct, rtol=1e-9)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert ((got.double() - want).abs() / want.abs().clamp_min(1e-3)).max().item() <= TOL[torch.float32]


def test_mahalanobis_cholesky_equals_precision_factor_route():
    """The two routes give one distance: C from the covariance, L from its inverse (precision_factor)."""
    from fastad.gaussian import precision_factor

    gen = torch.Generator().manual_seed(11)
    A = torch.randn(3, 40, 80, generator=gen, dtype=torch.float64)
    cov = A @ A.transpose(1, 2) / 80 + 0.1 * torch.eye(40, dtype=torch.float64)
    x, mean = torch.randn(25, 3, 40, generator=gen), torch.randn(3, 40, generator=gen)
    C = torch.linalg.cholesky(cov).float()
    d_c = fastad.ops.mahalanobis(x, mean, C, cholesky=True).double()
    d_l = fastad.ops.mahalanobis(x, mean, precision_factor(cov)).double()
    assert ((d_c - d_l).abs() / d_l).max().item() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mahalanobis_cholesky_half_factor(dtype):
    gen = torch.Generator().manual_seed(12)
    x, mean, C = torch.randn(20, 2, 70, generator=gen), torch.randn(2, 70, generator=gen), _rand_factor(2, 70, gen, dtype)
    got = fastad.ops.mahalanobis(x, mean, C, cholesky=True)
    want = ref.mahalanobis(x, mean, C.float(), cholesky=True)  # exact widening: float32 tolerance
    assert ((got.double() - want).abs() / want).max().item() <= TOL[torch.float32]


def test_mahalanobis_cholesky_zero_diagonal_and_nan():
    C = torch.eye(3)
    C[1, 1] = 0.0
    with pytest.raises((ValueError, RuntimeError), match="zero on its diagonal"):
        fastad.ops.mahalanobis(torch.ones(2, 3), torch.zeros(3), C, cholesky=True)
    x = torch.ones(2, 3)
    x[1, 2] = float("nan")
    with pytest.raises((ValueError, RuntimeError), match="NaN or Inf"):
        fastad.ops.mahalanobis(x, torch.zeros(3), torch.eye(3), cholesky=True)


def test_mahalanobis_cholesky_opcheck_and_grad(device):
    gen = torch.Generator().manual_seed(13)
    x, mean, C = torch.randn(5, 3, 7, generator=gen), torch.randn(3, 7, generator=gen), _rand_factor(3, 7, gen)
    torch.library.opcheck(torch.ops.fastad.mahalanobis.default, (x.to(device), mean.to(device), C.to(device), True))
    torch.library.opcheck(torch.ops.fastad.mahalanobis.default, (x[:, 0].to(device), mean[0].to(device), C[0].to(device), True))
    if device != "cpu":
        return
    for xs, ms, Cs in ((x, mean, C.tril()), (x[:, 0], mean[0], C[0].tril())):
        xs, ms, Cs = xs.clone().requires_grad_(), ms.clone().requires_grad_(), Cs.clone().requires_grad_()
        out = fastad.ops.mahalanobis(xs, ms, Cs, cholesky=True)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (xs, ms, Cs), g)
        xr, mr, Cr = (t.detach().double().requires_grad_() for t in (xs, ms, Cs))
        want = torch.autograd.grad(ref.mahalanobis(xr, mr, Cr, cholesky=True), (xr, mr, Cr), g.double())
        for a, b in zip(got, want):
            assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-5)
