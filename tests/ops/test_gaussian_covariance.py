"""fastad.ops.gaussian_covariance (the covariance pass of the float32 Cholesky fit) against its float64
reference: dense and packed sums, float32 / float64 out, batched and not, the strict upper triangle left
alone, bad input named, opcheck; CUDA == CPU bit for bit where a GPU is usable."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastad
from fastad.ops import _reference as ref


def _sums(P, d, n, gen, packed):
    x = torch.randn(n, P, d, generator=gen, dtype=torch.float64) * 3 + 1
    shift = x[0].clone()
    y = x - shift
    s1 = y.sum(0)
    s2 = torch.einsum("npi,npj->pij", y, y)
    if packed:
        i, j = torch.tril_indices(d, d)
        s2 = s2[..., i, j].contiguous()
    else:
        s2 = s2.tril() + 7.0 * torch.ones(d, d, dtype=torch.float64).triu(1)  # upper: never read
    return s1 / n, s2


@settings(max_examples=40, deadline=None)
@given(P=st.integers(1, 6), d=st.integers(1, 40), n=st.integers(2, 30), packed=st.booleans(),
       f32=st.booleans(), reg=st.sampled_from([0.0, 1e-3, 0.5]), seed=st.integers(0, 2**16))
def test_matches_reference(P, d, n, packed, f32, reg, seed):
    gen = torch.Generator().manual_seed(seed)
    m, s2 = _sums(P, d, n, gen, packed)
    dt = torch.float32 if f32 else torch.float64
    out = torch.full((P, d, d), -123.0, dtype=dt)
    got = fastad.ops.gaussian_covariance(s2, m, n, 1.0 / (n - 1), reg, out)
    assert got is out
    want = ref.gaussian_covariance(s2, m, n, 1.0 / (n - 1), reg, torch.float64)
    low = torch.ones(d, d, dtype=torch.bool).tril()
    # float64: a few ulps of the values' scale (the same terms, summed in another order by the reference)
    scale = want.abs().amax().item() + 1.0
    err = (out.double() - want)[..., low].abs().max().item()
    assert err <= (2e-7 if f32 else 1e-14) * scale
    assert bool((out[..., ~low] == -123.0).all()), "the strict upper triangle must not be written"


def test_float32_is_the_float64_result_rounded_once():
    """One formula: the float32 out is exactly the float64 out rounded (the fit's float64 redo of a
    position factorises the values its float32 factorisation rounded)."""
    gen = torch.Generator().manual_seed(3)
    m, s2 = _sums(5, 33, 17, gen, packed=True)
    o64, o32 = torch.zeros(5, 33, 33, dtype=torch.float64), torch.zeros(5, 33, 33)
    fastad.ops.gaussian_covariance(s2, m, 17, 1 / 16, 0.01, o64)
    fastad.ops.gaussian_covariance(s2, m, 17, 1 / 16, 0.01, o32)
    assert torch.equal(o64.float(), o32)


def test_unbatched_and_empty():
    gen = torch.Generator().manual_seed(4)
    m, s2 = _sums(1, 6, 9, gen, packed=False)
    out = torch.zeros(6, 6, dtype=torch.float64)
    fastad.ops.gaussian_covariance(s2[0], m[0], 9, 0.125, 0.0, out)
    torch.testing.assert_close(out, ref.gaussian_covariance(s2[0], m[0], 9, 0.125, 0.0), rtol=0, atol=1e-13)
    fastad.ops.gaussian_covariance(torch.zeros(0, 4, 4, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.float64),
                                   3, 1.0, 0.0, torch.zeros(0, 4, 4))


def test_is_the_covariance():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 3, 7, generator=gen, dtype=torch.float64) + 4
    s1, s2 = torch.zeros(3, 7, dtype=torch.float64), torch.zeros(3, 7, 7, dtype=torch.float64)
    fastad.ops.gaussian_accumulate(x, x[0], s1, s2)
    out = torch.zeros(3, 7, 7, dtype=torch.float64)
    fastad.ops.gaussian_covariance(s2, s1 / 50, 50, 1 / 49, 0.0, out)
    for p in range(3):
        torch.testing.assert_close(out[p].tril(), torch.cov(x[:, p].T).tril(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("args,match", [
    (lambda: (torch.zeros(2, 4, 4, dtype=torch.float64), torch.zeros(2, 4), 3, 1.0, 0.0, torch.zeros(2, 4, 4)),
     "m must be float64"),
    (lambda: (torch.zeros(2, 4, 4), torch.zeros(2, 4, dtype=torch.float64), 3, 1.0, 0.0, torch.zeros(2, 4, 4)),
     "sumsq must be float64"),
    (lambda: (torch.zeros(2, 4, 5, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64), 3, 1.0, 0.0,
              torch.zeros(2, 4, 4)), r"sumsq must be \[2, 4, 4\] \(or packed lower triangles \[2, 10\]\)"),
    (lambda: (torch.zeros(2, 10, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64), 3, 1.0, 0.0,
              torch.zeros(2, 4, 4, dtype=torch.float16)), "out must be float32 or float64"),
    (lambda: (torch.zeros(2, 10, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64), 3, 1.0, 0.0,
              torch.zeros(2, 4, 3)), r"out must be \[2, 4, 4\]"),
    (lambda: (torch.zeros(2, 10, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64), 3, 1.0, 0.0,
              torch.zeros(2, 4, 4).transpose(1, 2)), "out must be contiguous"),
    (lambda: (torch.zeros(2, 10, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64), float("nan"), 1.0, 0.0,
              torch.zeros(2, 4, 4)), "n, scale and reg must be finite"),
    (lambda: (torch.zeros(10, dtype=torch.float64), torch.zeros(1, 2, 4, dtype=torch.float64), 3, 1.0, 0.0,
              torch.zeros(2, 4, 4)), r"m must be \[d\] or \[P, d\]"),
])
def test_bad_input(args, match):
    with pytest.raises(RuntimeError, match=match):
        fastad.ops.gaussian_covariance(*args())


def test_tensors_on_different_devices_are_named():
    with pytest.raises(RuntimeError, match="sumsq and m must be on out's device"):
        fastad.ops.gaussian_covariance(torch.zeros(3, dtype=torch.float64, device="meta"),
                                       torch.zeros(2, dtype=torch.float64), 3, 1.0, 0.0, torch.zeros(2, 2))


def test_cuda_equals_cpu_bit_for_bit(device):
    if device != "cuda":
        pytest.skip("the CPU is the reference here")
    gen = torch.Generator().manual_seed(7)
    for packed in (False, True):
        m, s2 = _sums(4, 37, 12, gen, packed)
        for dt in (torch.float32, torch.float64):
            want = torch.zeros(4, 37, 37, dtype=dt)
            fastad.ops.gaussian_covariance(s2, m, 12, 1 / 11, 0.01, want)
            got = torch.zeros(4, 37, 37, dtype=dt, device="cuda")
            fastad.ops.gaussian_covariance(s2.cuda(), m.cuda(), 12, 1 / 11, 0.01, got)
            assert torch.equal(got.cpu(), want)
            rs = torch.tensor([0, 5, 37, 36])
            want.fill_(3.0)
            got.fill_(3.0)
            fastad.ops.gaussian_covariance(s2, m, 12, 1 / 11, 0.01, want, rs)
            fastad.ops.gaussian_covariance(s2.cuda(), m.cuda(), 12, 1 / 11, 0.01, got, rs.cuda())
            assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_row_start_leaves_the_rows_above(packed, dt):
    """row_start: rows above it (and the strict upper triangle) keep what out held; the rows from it are
    the values of a call without row_start, bit for bit."""
    gen = torch.Generator().manual_seed(9)
    m, s2 = _sums(5, 23, 30, gen, packed)
    rs = torch.tensor([0, 1, 12, 22, 23])
    out = torch.randn(5, 23, 23, generator=gen, dtype=torch.float64).to(dt)
    before = out.clone()
    fastad.ops.gaussian_covariance(s2, m, 30, 1 / 29, 0.01, out, rs)
    full = fastad.ops.gaussian_covariance(s2, m, 30, 1 / 29, 0.01, before.clone())
    want = ref.gaussian_covariance(s2, m, 30, 1 / 29, 0.01, dt, row_start=rs, out=before)
    low = torch.ones(23, 23, dtype=torch.bool).tril()
    for p, r in enumerate(rs.tolist()):
        assert torch.equal(out[p, :r], before[p, :r])
        assert torch.equal(out[p, r:][low[r:]], full[p, r:][low[r:]])
        assert torch.equal(out[p][~low], before[p][~low])
    assert torch.allclose(out.double(), want.double(), rtol=1e-6, atol=1e-6 * float(want.abs().max()))
    with pytest.raises(RuntimeError, match=r"row_start must be \[5\]"):
        fastad.ops.gaussian_covariance(s2, m, 30, 1 / 29, 0.01, out, rs[:3])
    torch.library.opcheck(torch.ops.fastad.gaussian_covariance.default, (s2, m, 30.0, 1 / 29, 0.01, out, rs))


def test_opcheck():
    gen = torch.Generator().manual_seed(6)
    for packed in (False, True):
        m, s2 = _sums(3, 5, 8, gen, packed)
        for dt in (torch.float32, torch.float64):
            torch.library.opcheck(torch.ops.fastad.gaussian_covariance.default,
                                  (s2, m, 8.0, 1 / 7, 0.01, torch.zeros(3, 5, 5, dtype=dt)))
