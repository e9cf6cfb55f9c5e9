"""knn on bfloat16 inputs (bf16 GEMM, fp32 accumulation) and the bf16 screen of float32 knn (issue 15).

* bf16 inputs: results vs a float64 reference on the (exact) bf16 values, within the documented fp32
  accumulation bound; the AVX512-BF16 kernel equals its scalar emulation bit for bit where both run.
* screen="bf16": indices AND distances identical (torch.equal) to the float32 path, on random shapes
  (hypothesis), ties, duplicated rows, large norms, uncentred data, near-ties, k up to N.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastad
from fastad.ops import _reference as ref

HW = fastad.build_info()["bf16_micro_kernel"] == "avx512bf16"
AVX2 = fastad.build_info()["simd"] == "avx2"
needs_avx2 = pytest.mark.skipif(not AVX2, reason="the bf16 GEMM runs on the AVX2 path only")
needs_hw = pytest.mark.skipif(not HW, reason="CPU without AVX512-BF16: only the emulation runs here")
METRICS = ["l2", "sqeuclidean", "cosine", "ip"]
U = 2.0**-24


# The AMX kernel runs by default on a CPU with AMX-BF16 once its self-check (cpu/amx_check.cpp) has passed
# there. Tests of what users get run it in that state ("amx" below: answers within the fp32 bound, screen
# answers identical). The strict comparison with the emulation (test_amx_hw_equals_emulation) runs only when
# asked (FASTAD_TEST_AMX=1): the emulation models the SDM's order, not yet confirmed on a CPU, and a
# rounding-order difference there must not turn CI red on such a machine (the answers allow any order).
AMX_HW = fastad.build_info()["bf16_amx"] in ("available", "amx")
AMX_CHECK = fastad.build_info()["bf16_amx_check"]
AMX_OK = AMX_HW and AMX_CHECK in ("identical", "within-bound")
AMX = AMX_HW and os.environ.get("FASTAD_TEST_AMX") == "1"
needs_amx = pytest.mark.skipif(not AMX, reason="needs a CPU with AMX-BF16 and FASTAD_TEST_AMX=1")


@pytest.fixture(params=["hw", "emulated", "amx_emulated", "amx"])
def bf16_mode(request, monkeypatch):
    """Runs a test on the AVX512-BF16 kernel (FASTAD_AMX=0), on its scalar emulation (FASTAD_BF16_EMULATE=1),
    on the AMX tile kernel's emulation (FASTAD_AMX_EMULATE=1) and, where the CPU has AMX and the kernel's
    self-check passed, on the AMX kernel as users get it (no variable set)."""
    if not AVX2:
        pytest.skip("no AVX2 path")
    for v in ("FASTAD_BF16_EMULATE", "FASTAD_AMX", "FASTAD_AMX_EMULATE"):
        monkeypatch.delenv(v, raising=False)
    if request.param in ("hw", "amx") and not HW:
        pytest.skip("CPU without AVX512-BF16")
    if request.param == "amx" and not AMX_OK:
        pytest.skip(f"no AMX kernel in use here (AMX-BF16: {AMX_HW}, self-check: {AMX_CHECK})")
    if request.param == "hw":
        monkeypatch.setenv("FASTAD_AMX", "0")
    if request.param == "emulated" or (request.param == "amx_emulated" and not HW):
        monkeypatch.setenv("FASTAD_BF16_EMULATE", "1")
    if request.param == "amx_emulated":
        monkeypatch.setenv("FASTAD_AMX_EMULATE", "1")
    expect = {"amx": "amx", "amx_emulated": "emulated"}.get(request.param, "available" if AMX_HW else "none")
    assert fastad.build_info()["bf16_amx"] == expect
    return request.param


def _check_bf16_knn(q, b, k, metric, d, i):
    """d, i from knn on bf16 q, b: every returned distance within the fp32 accumulation bound of the
    float64 distance of its pair, and the selection optimal up to twice that bound."""
    qd, bd = q.double(), b.double()
    D = q.shape[1]
    g = D * U / (1 - D * U)
    s = ref.pairwise_scores(q, b, metric)  # float64 on the rounded inputs
    rd, _ = ref.knn(q, b, k, metric)
    absprod = qd.abs() @ bd.abs().T  # sum_p |q_p b_p|
    qn, bn = qd.norm(dim=1), bd.norm(dim=1)
    for r in range(q.shape[0]):
        fin = torch.isfinite(rd[r])
        assert torch.equal(fin, torch.isfinite(d[r])) and (i[r][~fin] == -1).all()
        idx = i[r][fin]
        assert len(set(idx.tolist())) == idx.numel()
        true = s[r, idx]
        if metric in ("l2", "sqeuclidean"):  # exact fp32 re-rank of the bf16 values: ~1e-6 relative
            sq = true**2 if metric == "l2" else true
            tol_sel = 4 * g * absprod[r, idx].max().item() + 4 * g * (bn[idx] ** 2).max().item() + 1e-30
            tol_ret = (sq * 4 * D * U + 1e-30).sqrt() if metric == "l2" else sq * 4 * D * U + 1e-30
            assert ((d[r][fin].double() - true).abs() <= tol_ret + 1e-7 * true.abs()).all()
            sel_true, sel_ref = sq, (rd[r][fin] ** 2 if metric == "l2" else rd[r][fin])
        else:  # ip / cosine: the GEMM's dot, fp32-accumulated
            acc = g * absprod[r, idx] + D * 2.0**-125
            if metric == "cosine":
                acc = acc / (qn[r] * bn[idx]).clamp_min(1e-300) + 4 * U
            assert ((d[r][fin].double() - true).abs() <= acc * 1.01 + 1e-12).all(), (d[r][fin], true)
            tol_sel = 2 * acc.max().item() * 1.01 + 1e-12
            sel_true, sel_ref = (-true, -rd[r][fin]) if metric == "ip" else (true, rd[r][fin])
        # rank c of the result is no worse than rank c of the exact answer, up to the selection bound
        assert (sel_true.sort().values <= sel_ref + tol_sel).all()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("Q,N,D,k", [(1, 1, 1, 1), (7, 50, 3, 5), (31, 300, 33, 7), (50, 517, 64, 1), (5, 130, 1100, 9)])
def test_bf16_knn_within_fp32_accumulation_bound(bf16_mode, metric, Q, N, D, k, gen):
    if bf16_mode == "emulated" and Q * N * D > 2e6:
        Q = 3
    q = torch.randn(Q, D, generator=gen).bfloat16()
    b = torch.randn(N, D, generator=gen).bfloat16()
    b[N // 2 : N // 2 + N // 4] = b[: N // 4]  # exact ties
    d, i = fastad.ops.knn(q, b, k, metric)
    assert d.dtype == torch.float32 and i.dtype == torch.int64 and d.shape == (Q, k)
    _check_bf16_knn(q, b, k, metric, d, i)


@pytest.mark.parametrize("metric", METRICS)
def test_bf16_knn_exclude_self_and_padding(bf16_mode, metric, gen):
    b = torch.randn(20, 9, generator=gen).bfloat16()
    d, i = fastad.ops.knn(b, b, 25, metric, exclude_self=True)
    assert (i[:, 19:] == -1).all() and (i[:, :19] != torch.arange(20)[:, None]).all()
    rd, ri = ref.knn(b, b, 25, metric, exclude_self=True)
    assert torch.equal(torch.isfinite(d), torch.isfinite(rd))


def _adversarial_bf16(gen, Q, N, D):
    """bf16 data whose fp32 accumulation rounds, cancels, underflows (products below 2^-126 and sums
    flushed to zero) and ties."""
    q = torch.randn(Q, D, generator=gen)
    b = torch.randn(N, D, generator=gen)
    q[0] = 2.0**-64 * (1 + torch.rand(D, generator=gen))  # products ~2^-128: underflow, FTZ
    b[1] = 2.0**-63 * torch.randn(D, generator=gen)
    b[2] = torch.randn(D, generator=gen) * 2.0 ** torch.randint(-30, 30, (D,), generator=gen)
    q[1, ::2], q[1, 1::2] = 1.0, -1.0  # cancellation against a constant row
    b[3] = 1.0
    b[4] = b[5]
    q[2] = 2.0**-126  # denormal-range bf16 inputs read as zero (DAZ)
    b[6, : D // 2] = 2.0**-130
    return q.bfloat16(), b.bfloat16()


@needs_hw
@pytest.mark.parametrize("Q,N,D", [(31, 37, 65), (24, 16, 1100), (6, 100, 2), (7, 33, 1)])
def test_bf16_hardware_equals_emulation_bit_for_bit(monkeypatch, gen, Q, N, D):
    q, b = _adversarial_bf16(gen, Q, N, D) if D >= 8 else (torch.randn(Q, D, generator=gen).bfloat16(),
                                                           torch.randn(N, D, generator=gen).bfloat16())
    outs = []
    monkeypatch.setenv("FASTAD_AMX", "0")  # the vdpbf16ps kernel, also on a CPU with AMX
    for emu in ("0", "1"):
        monkeypatch.setenv("FASTAD_BF16_EMULATE", emu)
        assert fastad.build_info()["bf16_micro_kernel"] == ("emulated" if emu == "1" else "avx512bf16")
        # "ip" with k = N returns every raw GEMM dot (sorted): compares the micro-kernels' bits
        outs.append(fastad.ops.knn(q, b, N, "ip"))
    (d0, i0), (d1, i1) = outs
    assert torch.equal(d0.view(torch.int32), d1.view(torch.int32)) and torch.equal(i0, i1)


def test_bf16_emulation_flushes_tiny_results(monkeypatch):
    """acc + product below 2^-126 flushes to zero (tininess before rounding), as measured on Zen 4."""
    if not AVX2:
        pytest.skip("no AVX2 path")
    monkeypatch.setenv("FASTAD_BF16_EMULATE", "1")
    q = torch.tensor([[2.0**-63, 0.0]]).bfloat16()
    b = torch.tensor([[2.0**-64, 0.0], [1.0, 0.0]]).bfloat16()
    d, i = fastad.ops.knn(q, b, 2, "ip")
    assert d[0].tolist() == [2.0**-63, 0.0] and i[0].tolist() == [1, 0]  # 2^-127 -> 0
    # each product is added with its own rounding: 1, then + 2^-24 (tie: 1), then + 2^-24 (1 again);
    # a fused sum of the pair would give 1 + 2^-23
    q = torch.tensor([[1.0, 0.0, 2.0**-24, 2.0**-24]]).bfloat16()
    b = torch.ones(1, 4).bfloat16()
    d, _ = fastad.ops.knn(q, b, 1, "ip")
    assert d.item() == 1.0
    # odd element first: 1 + 2^-23 (odd) then + 2^-24 (even) ties up to 1 + 2^-22; the other order gives 1 + 2^-23
    q = torch.tensor([[1.0, 0.0, 2.0**-24, 2.0**-23]]).bfloat16()
    d, _ = fastad.ops.knn(q, b, 1, "ip")
    assert d.item() == 1.0 + 2.0**-22


# ---- the AMX tile kernel (tdpbf16ps): its emulation everywhere, the hardware where a CPU has it ----------


def _sdm_dots(q, b):
    """[Q, N] float32 dots as tdpbf16ps forms them per Intel's SDM, with the kernel's blocking: depth slices
    of KC2 pairs (sweep_bf16: ceil(D2 / 512) slices), each cut into instructions of 16 pairs; per
    instruction, the even and the odd elements summed in two float32 partial sums from zero (pairs in order,
    one rounding per add: bf16 products are exact in float32), then the accumulator += (even + odd)."""
    D2 = (q.shape[1] + 1) // 2
    qf = torch.nn.functional.pad(q.float(), (0, 2 * D2 - q.shape[1]))
    bf = torch.nn.functional.pad(b.float(), (0, 2 * D2 - b.shape[1]))
    nkb = -(-D2 // 512)
    kc2 = -(-D2 // nkb)
    acc = torch.zeros(q.shape[0], b.shape[0])
    for pc in range(0, D2, kc2):
        for k0 in range(pc, min(D2, pc + kc2), 16):
            even = torch.zeros_like(acc)
            odd = torch.zeros_like(acc)
            for k in range(k0, min(k0 + 16, pc + kc2, D2)):
                even = even + qf[:, 2 * k, None] * bf[None, :, 2 * k]
                odd = odd + qf[:, 2 * k + 1, None] * bf[None, :, 2 * k + 1]
            acc = acc + (even + odd)
    return acc


@pytest.mark.parametrize("Q,N,D", [(1, 1, 1), (17, 33, 30), (40, 70, 33), (33, 16, 64), (100, 47, 152), (20, 35, 1030)])
def test_amx_emulation_is_the_sdm_sum(monkeypatch, gen, Q, N, D):
    """The AMX tile kernel (emulated) returns every dot bit for bit as tdpbf16ps per the SDM forms it, across
    block edges (rows not a multiple of 16 or 32, bank panels not a multiple of 32), the depth tail (pairs
    not a multiple of 16, odd D) and the depth slices accumulated through C (D = 1030: slices of 258 / 257
    pairs)."""
    if not AVX2:
        pytest.skip("no AVX2 path")
    if not HW:
        monkeypatch.setenv("FASTAD_BF16_EMULATE", "1")
    monkeypatch.setenv("FASTAD_AMX_EMULATE", "1")
    q = torch.randn(Q, D, generator=gen).bfloat16()
    b = torch.randn(N, D, generator=gen).bfloat16()
    d, i = fastad.ops.knn(q, b, N, "ip")  # every raw dot, sorted
    assert torch.equal(d.view(torch.int32), _sdm_dots(q, b).gather(1, i).view(torch.int32))


def test_amx_emulation_order(monkeypatch):
    """Products 1 (even) and 2^-24 (odd) in pair 0, 0 and 2^-24 in pair 1: tdpbf16ps per the SDM sums the
    odd elements apart (2^-23), then 1 + 2^-23; one sequential sum (the older intrinsics guide) and Zen 4's
    vdpbf16ps (odd element first, pair by pair) both lose each 2^-24 against 1."""
    if not AVX2:
        pytest.skip("no AVX2 path")
    if not HW:
        monkeypatch.setenv("FASTAD_BF16_EMULATE", "1")
    q = torch.tensor([[1.0, 2.0**-12, 0.0, 2.0**-12]]).bfloat16()
    monkeypatch.setenv("FASTAD_AMX", "0")
    assert fastad.ops.knn(q, q, 1, "ip")[0].item() == 1.0
    monkeypatch.setenv("FASTAD_AMX_EMULATE", "1")
    assert fastad.ops.knn(q, q, 1, "ip")[0].item() == 1.0 + 2.0**-23


@needs_amx
@pytest.mark.parametrize("Q,N,D", [(31, 37, 65), (24, 16, 1100), (6, 100, 2), (7, 33, 1), (96, 64, 384)])
def test_amx_hw_equals_emulation(monkeypatch, gen, Q, N, D):
    """The AMX kernel (FASTAD_AMX=1) against its emulation, bit for bit, adversarial values included (FTZ,
    DAZ, cancellation). If this fails on a CPU with AMX while the self-check says "within-bound", the CPU
    sums tdpbf16ps in another order than the SDM's model: fix amx::EmuTiles::dp and _sdm_dots."""
    q, b = _adversarial_bf16(gen, Q, N, D) if D >= 8 else (torch.randn(Q, D, generator=gen).bfloat16(),
                                                           torch.randn(N, D, generator=gen).bfloat16())
    outs = []
    for env in ("FASTAD_AMX", "FASTAD_AMX_EMULATE"):
        monkeypatch.delenv("FASTAD_AMX", raising=False)
        monkeypatch.delenv("FASTAD_AMX_EMULATE", raising=False)
        monkeypatch.setenv(env, "1")
        outs.append(fastad.ops.knn(q, b, N, "ip"))
    (d0, i0), (d1, i1) = outs
    assert torch.equal(d0.view(torch.int32), d1.view(torch.int32)) and torch.equal(i0, i1)


def test_amx_self_check_classifies_kernels():
    """The self-check that decides whether the AMX kernel runs (cpu/amx_check.cpp), on kernels whose answer
    is known: the emulation itself (identical), tdpbf16ps summed in one sequential chain (other rounding,
    within the fp32 bound: accepted), every bank panel read from the first (a layout fault: refused)."""
    check = fastad._C.amx_self_check
    assert check("emulation") == ("identical", 0, 0.0)
    verdict, differing, worst = check("sequential")
    assert verdict == "within-bound" and differing > 100 and 0 < worst < 1e-5
    verdict, differing, worst = check("first_panel")
    assert verdict == "failed" and differing == 40 * 32 and worst > 1e-3
    with pytest.raises(ValueError, match="variant must be"):
        check("nope")


def test_amx_mode_follows_the_self_check(monkeypatch):
    """Without AMX the check does not run and nothing uses the kernel; with it, the kernel runs by default
    exactly when its check passed, FASTAD_AMX=0 turns it off and FASTAD_AMX=1 forces it on."""
    monkeypatch.delenv("FASTAD_AMX", raising=False)
    monkeypatch.delenv("FASTAD_AMX_EMULATE", raising=False)
    monkeypatch.delenv("FASTAD_BF16_EMULATE", raising=False)
    info = fastad.build_info()
    if not AMX_HW:
        assert info["bf16_amx"] == "none" and info["bf16_amx_check"] == "not-run"
        monkeypatch.setenv("FASTAD_AMX", "1")  # forcing needs the hardware
        assert fastad.build_info()["bf16_amx"] == "none"
        return
    assert info["bf16_amx"] == ("amx" if AMX_OK else "available")
    assert ("AMX tdpbf16ps" in fastad.op_kernels()["knn bfloat16"]) == AMX_OK
    monkeypatch.setenv("FASTAD_AMX", "0")
    assert fastad.build_info()["bf16_amx"] == "available"
    assert "FASTAD_AMX=0" in fastad.op_kernels()["knn bfloat16"]
    monkeypatch.setenv("FASTAD_AMX", "1")
    assert fastad.build_info()["bf16_amx"] == "amx"


# ---- the screen: identical answers to the float32 path --------------------------------------------


def _assert_identical(q, b, k, metric="l2", exclude_self=False, screen="bf16"):
    d0, i0 = fastad.ops.knn(q, b, k, metric, exclude_self=exclude_self)
    d1, i1 = fastad.ops.knn(q, b, k, metric, exclude_self=exclude_self, screen=screen)
    assert torch.equal(i0, i1), (i0, i1)
    assert torch.equal(d0.view(torch.int32), d1.view(torch.int32))


@st.composite
def _screen_case(draw):
    Q = draw(st.integers(1, 30))
    N = draw(st.integers(1, 200))
    D = draw(st.sampled_from([1, 2, 3, 7, 16, 33, 64, 100]))
    k = draw(st.integers(1, N + 2))
    kind = draw(st.sampled_from(["randn", "offset", "large", "ints", "dups", "neartie", "tiny"]))
    exclude_self = draw(st.booleans()) and Q <= N
    seed = draw(st.integers(0, 2**31 - 1))
    return Q, N, D, k, kind, exclude_self, seed


def _screen_data(Q, N, D, kind, seed):
    g = torch.Generator().manual_seed(seed)
    q, b = torch.randn(Q, D, generator=g), torch.randn(N, D, generator=g)
    if kind == "offset":  # uncentred: a mean 1000x the spread
        q, b = q + 1000.0, b + 1000.0
    elif kind == "large":  # large norms
        q, b = q * 1e15, b * 1e15
    elif kind == "ints":  # many exact ties in distance
        q, b = torch.randint(-2, 3, (Q, D), generator=g).float(), torch.randint(-2, 3, (N, D), generator=g).float()
    elif kind == "dups":  # duplicated rows, queries equal to bank rows
        b[N // 2 :] = b[: N - N // 2].clone()
        q[: min(Q, N)] = b[: min(Q, N)]
    elif kind == "neartie":  # rows differing in the last float32 bits
        b = b[:1].repeat(N, 1) * (1 + 1e-7 * torch.randn(N, 1, generator=g))
        q = b[:1].repeat(Q, 1) + 1e-6 * torch.randn(Q, D, generator=g)
    elif kind == "tiny":  # values whose squares are denormal or underflow
        q, b = q * 1e-21, b * 1e-21
    return q.contiguous(), b.contiguous()


@needs_avx2
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_screen_case(), metric=st.sampled_from(["l2", "sqeuclidean"]))
def test_screen_identical_to_fp32_path(bf16_mode, case, metric):
    Q, N, D, k, kind, exclude_self, seed = case
    q, b = _screen_data(Q, N, D, kind, seed)
    _assert_identical(q, b, k, metric, exclude_self)


@needs_avx2
@pytest.mark.parametrize("kind", ["randn", "offset", "large", "ints", "dups", "neartie", "tiny"])
@pytest.mark.parametrize("k", [1, 9, 64])
def test_screen_identical_larger_shapes(bf16_mode, kind, k):
    Q, N, D = (40, 3000, 96) if bf16_mode == "hw" else (6, 700, 40)
    q, b = _screen_data(Q, N, D, kind, 7)
    _assert_identical(q, b, k)
    _assert_identical(b[:Q].clone(), b, k, exclude_self=True)


@needs_hw
def test_screen_survivor_counter_and_auto(gen):
    q, b = torch.randn(300, 128, generator=gen), torch.randn(5000, 128, generator=gen)
    fastad.knn_screen_stats(reset=True)
    _assert_identical(q, b, 9, screen="auto")
    st_ = fastad.knn_screen_stats()
    assert st_["calls"] == 1 and st_["fallbacks"] == 0 and st_["pairs"] == 300 * 5000
    assert 300 * 9 <= st_["survivors"] < 0.5 * st_["pairs"]
    fastad.knn_screen_stats(reset=True)
    assert fastad.knn_screen_stats()["calls"] == 0


@needs_avx2
def test_screen_falls_back_when_everything_ties(bf16_mode):
    """All bank rows equal: every row survives, the bounded lists overflow, the fp32 path answers."""
    b = torch.ones(2100, 8)
    q = torch.randn(3, 8)
    fastad.knn_screen_stats(reset=True)
    _assert_identical(q, b, 5)
    assert fastad.knn_screen_stats()["fallbacks"] == 1


@needs_avx2
def test_screen_errors():
    q, b = torch.randn(3, 4), torch.randn(10, 4)
    with pytest.raises(ValueError, match="screen must be one of"):
        fastad.ops.knn(q, b, 2, screen="fp16")
    b[7, 1] = float("nan")
    with pytest.raises(RuntimeError, match="bank must hold finite values, but row 7"):
        fastad.ops.knn(q, b, 2, screen="bf16")
    b[7, 1] = 0.0
    q[2, 0] = float("inf")
    with pytest.raises(RuntimeError, match="query must hold finite values, but row 2"):
        fastad.ops.knn(q, b, 2, screen="bf16")
    with pytest.raises(RuntimeError, match="screen must be 'bf16' or 'auto'"):
        torch.ops.fastad.knn_screen(q, b, 2, "l2", None, False, "none")


@needs_avx2
@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_screen_other_metrics_run_fp32_path(metric, gen):
    q, b = torch.randn(5, 16, generator=gen), torch.randn(50, 16, generator=gen)
    _assert_identical(q, b, 3, metric)


def test_knn_screen_opcheck(gen):
    q, b = torch.randn(5, 16, generator=gen), torch.randn(50, 16, generator=gen)
    torch.library.opcheck(torch.ops.fastad.knn_screen.default, (q, b, 3))
    torch.library.opcheck(torch.ops.fastad.knn_screen.default, (q, b, 3, "sqeuclidean", (b * b).sum(1), False, "auto"))


@needs_avx2
def test_screen_with_bank_norms(gen):
    q, b = torch.randn(7, 80, generator=gen), torch.randn(900, 80, generator=gen)
    n = (b * b).sum(1)
    d0, i0 = fastad.ops.knn(q, b, 4, bank_norms=n)
    d1, i1 = fastad.ops.knn(q, b, 4, bank_norms=n, screen="bf16")
    assert torch.equal(d0, d1) and torch.equal(i0, i1)
    with pytest.raises(RuntimeError, match="bank_norms"):
        fastad.ops.knn(q, b, 4, bank_norms=n[:5], screen="bf16")


def test_screen_with_grad_uses_fp32_path(gen):
    q = torch.randn(4, 8, generator=gen, requires_grad=True)
    b = torch.randn(30, 8, generator=gen)
    d, i = fastad.ops.knn(q, b, 2, screen="bf16")
    d.sum().backward()
    assert q.grad is not None and math.isfinite(q.grad.abs().sum().item())
