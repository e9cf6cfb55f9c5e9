"""group_min through the bf16 screen (issue 15): output identical (bit for bit) to the float32 path."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastad
from tests.ops.test_knn_bf16 import _screen_data, bf16_mode, needs_avx2  # noqa: F401  (fixture)


def _assert_identical(q, b, gs, metric="l2", exclude=None, screen="bf16"):
    o0 = fastad.ops.group_min(q, b, gs, metric, exclude)
    o1 = fastad.ops.group_min(q, b, gs, metric, exclude, screen=screen)
    assert torch.equal(o0.view(torch.int32), o1.view(torch.int32)), (o0, o1)


@st.composite
def _case(draw):
    Q = draw(st.integers(1, 25))
    gs = draw(st.integers(1, 40))
    G = draw(st.integers(1, 8))
    D = draw(st.sampled_from([1, 3, 16, 33, 70]))
    kind = draw(st.sampled_from(["randn", "offset", "large", "ints", "dups", "neartie", "tiny"]))
    use_ex = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return Q, gs, G, D, kind, use_ex, seed


@needs_avx2
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_case(), metric=st.sampled_from(["l2", "sqeuclidean"]))
def test_group_min_screen_identical(bf16_mode, case, metric):  # noqa: F811
    Q, gs, G, D, kind, use_ex, seed = case
    q, b = _screen_data(Q, gs * G, D, kind, seed)
    ex = torch.randint(-1, G, (Q,), generator=torch.Generator().manual_seed(seed)) if use_ex else None
    _assert_identical(q, b, gs, metric, ex)


@needs_avx2
@pytest.mark.parametrize("kind", ["randn", "offset", "dups", "neartie"])
def test_group_min_screen_identical_larger(bf16_mode, kind):  # noqa: F811
    Q, gs, G, D = (64, 196, 12, 96) if bf16_mode == "hw" else (6, 49, 4, 24)
    q, b = _screen_data(Q, gs * G, D, kind, 3)
    ex = torch.arange(Q) % (G + 1) - 1
    _assert_identical(q, b, gs, "l2", ex)
    _assert_identical(q, b, gs, "sqeuclidean", screen="auto")


@needs_avx2
def test_group_min_screen_counts_survivors_and_errors(gen):
    q, b = torch.randn(40, 64, generator=gen), torch.randn(8 * 100, 64, generator=gen)
    fastad.knn_screen_stats(reset=True)
    _assert_identical(q, b, 100)
    s = fastad.knn_screen_stats(reset=True)
    if fastad.build_info()["bf16_micro_kernel"] == "avx512bf16":
        assert s["calls"] == 1 and 40 * 8 <= s["survivors"] < s["pairs"] == 40 * 800
    with pytest.raises(ValueError, match="screen must be one of"):
        fastad.ops.group_min(q, b, 100, screen="yes")
    with pytest.raises(RuntimeError, match="exclude_group values must be group ids"):
        fastad.ops.group_min(q, b, 100, exclude_group=torch.full((40,), 8), screen="bf16")
    _assert_identical(q, b, 100, "cosine")  # other metrics: the float32 path


def test_group_min_screen_opcheck(gen):
    q, b = torch.randn(5, 16, generator=gen), torch.randn(60, 16, generator=gen)
    torch.library.opcheck(torch.ops.fastad.group_min_screen.default, (q, b, 20))
    torch.library.opcheck(torch.ops.fastad.group_min_screen.default,
                          (q, b, 20, "sqeuclidean", torch.tensor([0, -1, 2, 1, 0]), "auto"))


@needs_avx2
@pytest.mark.parametrize("gs", [1, 2, 3, 5, 7])
def test_group_min_screen_small_groups(bf16_mode, gs):  # noqa: F811
    """Groups smaller than the 8-lane epilogue vector: every group a vector touches keeps its candidates
    (regression: a fresh group between two others lost all of them; hypothesis found Q=1, gs=3, G=5, D=1)."""
    for seed in range(60):
        G = 5 + seed % 3
        q, b = _screen_data(1 + seed % 2, gs * G, 1 + seed % 3, "dups", seed)
        ex = torch.randint(-1, G, (q.shape[0],), generator=torch.Generator().manual_seed(seed))
        _assert_identical(q, b, gs, "l2", ex)
