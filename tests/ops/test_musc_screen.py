"""mutual_scores through the bf16 screen (issue 15): output identical (bit for bit) to the float32 path.

Runs on the AVX512-BF16 kernel where the CPU has it and on its scalar emulation (FASTAD_BF16_EMULATE=1)
everywhere with AVX2: random shapes (hypothesis), ties, duplicated rows, large norms, uncentred data,
pool mode, the survivor counter and the fallbacks.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastad
from tests.ops.test_knn_bf16 import HW, bf16_mode, needs_avx2, needs_hw  # noqa: F401  (fixture)


def _assert_identical(z, k, pool=None, window=None, screen="bf16"):
    o0 = fastad.ops.mutual_scores(z, k=k, pool=pool, same_position=window)
    o1 = fastad.ops.mutual_scores(z, k=k, pool=pool, same_position=window, screen=screen)
    assert torch.equal(o0.view(torch.int32), o1.view(torch.int32)), (o0, o1)
    return o1


def _tokens(N, L, C, kind, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, L, C, generator=g)
    if kind == "unit":  # LNAMD's output: unit-norm rows
        z = torch.nn.functional.normalize(z, dim=-1)
    elif kind == "offset":  # uncentred: a mean 1000x the spread
        z = z + 1000.0
    elif kind == "shared":  # unit rows sharing a large common direction (a ViT layer's LNAMD features)
        z = torch.nn.functional.normalize(z + 6.0 * torch.randn(1, 1, C, generator=g), dim=-1)
    elif kind == "large":  # large norms (squared norms ~1e26 C, below the screen's 2^100 ~ 1.3e30 limit)
        z = z * 1e13
    elif kind == "ints":  # many exact ties in distance
        z = torch.randint(-2, 3, (N, L, C), generator=g).float()
    elif kind == "dups":  # duplicated patches within and across images
        z[:, L // 2 :] = z[:, : L - L // 2].clone()
        z[N // 2 :] = z[: N - N // 2].clone()
    elif kind == "neartie":  # patches differing in the last float32 bits
        z = z[:1, :1].repeat(N, L, 1) * (1 + 1e-7 * torch.randn(N, L, 1, generator=g))
    elif kind == "tiny":  # values whose squares are denormal or underflow
        z = z * 1e-21
    return z.contiguous()


KINDS = ["randn", "unit", "shared", "offset", "large", "ints", "dups", "neartie", "tiny"]


@st.composite
def _case(draw):
    N = draw(st.integers(2, 6))
    Np = draw(st.sampled_from([0, 0, 1, 3]))
    L = draw(st.integers(1, 30))
    C = draw(st.sampled_from([1, 3, 16, 33, 70]))
    kind = draw(st.sampled_from(KINDS))
    nref = Np if Np else N - 1
    k = draw(st.integers(1, nref))
    seed = draw(st.integers(0, 2**31 - 1))
    return N, Np, L, C, kind, k, seed


@needs_avx2
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_case())
def test_mutual_scores_screen_identical(bf16_mode, case):  # noqa: F811
    N, Np, L, C, kind, k, seed = case
    z = _tokens(N + Np, L, C, kind, seed)
    pool = z[N:].clone() if Np else None
    _assert_identical(z[:N].clone(), k, pool)


@needs_avx2
@pytest.mark.parametrize("kind", KINDS)
def test_mutual_scores_screen_identical_larger(bf16_mode, kind):  # noqa: F811
    N, L, C = (8, 196, 128) if bf16_mode == "hw" else (4, 49, 40)
    z = _tokens(N + 2, L, C, kind, 5)
    _assert_identical(z[:N].clone(), 2)
    _assert_identical(z[:N].clone(), 1, pool=z[N:].clone())


@needs_avx2
def test_mutual_scores_screen_counts_survivors(bf16_mode):  # noqa: F811
    N, L, C = 4, 64, 64
    z = _tokens(N, L, C, "unit", 1)
    fastad.knn_screen_stats(reset=True)
    _assert_identical(z, 1)
    s = fastad.knn_screen_stats(reset=True)
    _assert_identical(_tokens(N, L, C, "large", 1), 1)  # large norms: screened, not declined
    assert fastad.knn_screen_stats(reset=True)["fallbacks"] == 0
    pairs = N * (N - 1) // 2 * L * L
    assert s["calls"] == 1 and s["fallbacks"] == 0 and s["pairs"] == pairs
    assert L * N * (N - 1) // 2 <= s["survivors"] < 0.5 * pairs  # every row keeps its minimiser, few others


@needs_avx2
def test_mutual_scores_screen_declines_huge_norms(bf16_mode):  # noqa: F811
    z = _tokens(3, 9, 8, "randn", 2) * 1e17  # squared norms ~1e34 >= 2^100: the fp32 path answers
    fastad.knn_screen_stats(reset=True)
    _assert_identical(z, 1)
    s = fastad.knn_screen_stats(reset=True)
    assert s["fallbacks"] == 1 and s["pairs"] == 0


@needs_avx2
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mutual_scores_screen_half_inputs(bf16_mode, dtype):  # noqa: F811
    z = _tokens(4, 25, 24, "unit", 3).to(dtype)
    _assert_identical(z, 2)


@needs_avx2
def test_mutual_scores_screen_window_and_auto_run_fp32_path(monkeypatch):
    z = _tokens(4, 25, 16, "unit", 4)
    monkeypatch.setenv("FASTAD_BF16_EMULATE", "1")
    fastad.knn_screen_stats(reset=True)
    _assert_identical(z, 2, window=3)  # same_position: the fp32 path
    _assert_identical(z, 2, screen="auto")  # C < 128: the fp32 path even with AVX512-BF16
    assert fastad.knn_screen_stats(reset=True)["calls"] == 0
    if not HW:  # no AVX512-BF16: "auto" never screens (the emulation is far slower than fp32)
        z = _tokens(3, 256, 128, "unit", 4)
        _assert_identical(z, 1, screen="auto")
        assert fastad.knn_screen_stats(reset=True)["calls"] == 0


@needs_hw
def test_mutual_scores_auto_screens_only_where_measured_faster():
    """'auto' on AVX512-BF16: L * C >= 32768 with C >= 128 screens; L=144, C=128 (measured 0.89x) and
    L=256, C=96 (0.95x) run the fp32 path."""
    for (L, C), on in {(144, 128): False, (256, 96): False, (256, 128): True, (144, 384): True}.items():
        z = _tokens(3, L, C, "unit", 5)
        fastad.knn_screen_stats(reset=True)
        _assert_identical(z, 1, screen="auto")
        assert (fastad.knn_screen_stats(reset=True)["calls"] > 0) == on, (L, C)


@needs_hw
def test_mutual_scores_screen_hardware_equals_emulation(monkeypatch):
    z = _tokens(6, 100, 160, "unit", 6)
    outs = []
    for emu in ("0", "1"):
        monkeypatch.setenv("FASTAD_BF16_EMULATE", emu)
        outs.append(fastad.ops.mutual_scores(z, k=2, screen="bf16"))
    assert torch.equal(outs[0].view(torch.int32), outs[1].view(torch.int32))


def test_mutual_scores_screen_errors():
    z = torch.randn(3, 4, 8)
    with pytest.raises(ValueError, match="screen must be one of"):
        fastad.ops.mutual_scores(z, k=1, screen="fp16")
    with pytest.raises(RuntimeError, match="screen must be 'bf16' or 'auto'"):
        torch.ops.fastad.mutual_scores_screen(z, 1, None, 0, "none")
    with pytest.raises(RuntimeError, match="k must be >= 1"):
        torch.ops.fastad.mutual_scores_screen(z, 0, None, 0, "bf16")
    z[1, 2, 3] = float("nan")
    with pytest.raises((RuntimeError, ValueError), match="finite"):
        fastad.ops.mutual_scores(z, k=1, screen="bf16")


def test_mutual_scores_screen_opcheck(gen):
    z = torch.randn(3, 9, 8, generator=gen)
    torch.library.opcheck(torch.ops.fastad.mutual_scores_screen.default, (z, 1))
    torch.library.opcheck(torch.ops.fastad.mutual_scores_screen.default, (z, 2, torch.randn(2, 9, 8), 3, "auto"))
