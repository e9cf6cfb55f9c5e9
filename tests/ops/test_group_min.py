import pytest
import torch

import fastad
from fastad.ops import _reference as ref

METRICS = ["l2", "sqeuclidean", "cosine", "ip"]


def _data(Q, G, gs, D, gen, offset=0.0):
    return torch.randn(Q, D, generator=gen) + offset, torch.randn(G * gs, D, generator=gen) + offset


def _assert_close(out, r, rtol=1e-4, atol=1e-4):
    out, r = out.double().cpu(), r.double()
    assert out.shape == r.shape
    fin = torch.isfinite(r)
    assert torch.equal(fin, torch.isfinite(out)) and torch.equal(out[~fin], r[~fin])
    assert torch.allclose(out[fin], r[fin], rtol=rtol, atol=atol), (out - r).abs()[fin].max()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("Q,G,gs,D", [(1, 1, 1, 1), (5, 3, 7, 3), (37, 12, 50, 13), (100, 5, 333, 70), (8, 40, 3, 9)])
def test_group_min_matches_reference(device, metric, Q, G, gs, D, gen):
    q, b = _data(Q, G, gs, D, gen)
    out = fastad.ops.group_min(q.to(device), b.to(device), gs, metric)
    assert out.dtype == torch.float32 and out.shape == (Q, G) and out.device == q.to(device).device
    _assert_close(out, ref.group_min(q, b, gs, metric))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("Q,G,gs,D", [(7, 3, 5, 4), (130, 9, 61, 33), (13, 2, 600, 700), (6, 70, 16, 8)])
def test_group_min_cpu_paths(cpu_path, metric, Q, G, gs, D, gen):
    q, b = _data(Q, G, gs, D, gen)
    ex = torch.randint(-1, G, (Q,), generator=gen)
    _assert_close(fastad.ops.group_min(q, b, gs, metric), ref.group_min(q, b, gs, metric))
    _assert_close(fastad.ops.group_min(q, b, gs, metric, exclude_group=ex), ref.group_min(q, b, gs, metric, ex))


def test_group_min_exclude(device, gen):
    q, b = _data(6, 4, 10, 5, gen)
    ex = torch.tensor([0, -1, 3, 2, 2, 1])
    out = fastad.ops.group_min(q.to(device), b.to(device), 10, exclude_group=ex.to(device)).cpu()
    assert torch.isinf(out[0, 0]) and torch.isfinite(out[1]).all() and torch.isinf(out[2, 3])
    assert int(torch.isinf(out).sum()) == 5
    _assert_close(out, ref.group_min(q, b, 10, exclude_group=ex))
    out = fastad.ops.group_min(q.to(device), b.to(device), 10, "ip", exclude_group=ex.to(device)).cpu()
    assert out[0, 0] == float("-inf")
    _assert_close(out, ref.group_min(q, b, 10, "ip", exclude_group=ex))


def test_group_min_equals_knn_k1(device, gen):
    # one group = the whole bank: group_min is the k=1 distance
    q, b = _data(30, 1, 500, 24, gen)
    out = fastad.ops.group_min(q.to(device), b.to(device), 500)
    d, _ = fastad.ops.knn(q.to(device), b.to(device), 1)
    assert torch.allclose(out, d, rtol=1e-5, atol=1e-5)


def test_group_min_offset_data_accuracy(cpu_path, gen):
    q, b = _data(40, 6, 150, 256, gen, offset=4.0)
    q = b[::23][:40] + 0.05 * torch.randn(40, 256, generator=gen)
    _assert_close(fastad.ops.group_min(q, b, 150), ref.group_min(q, b, 150), rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_group_min_low_precision(device, dtype, gen):
    q, b = _data(10, 4, 30, 16, gen)
    q, b = q.to(dtype), b.to(dtype)
    out = fastad.ops.group_min(q.to(device), b.to(device), 30)
    _assert_close(out, ref.group_min(q.float(), b.float(), 30), rtol=1e-3, atol=1e-3)


def test_group_min_non_contiguous(device, gen):
    qt = torch.randn(20, 30, generator=gen).to(device).T
    bs = torch.randn(240, 20, generator=gen).to(device)[::2]
    assert not qt.is_contiguous() and not bs.is_contiguous()
    _assert_close(fastad.ops.group_min(qt, bs, 12), ref.group_min(qt.cpu(), bs.cpu(), 12))


def test_group_min_empty(device):
    out = fastad.ops.group_min(torch.zeros(0, 5, device=device), torch.randn(6, 5, device=device), 3)
    assert out.shape == (0, 2)
    out = fastad.ops.group_min(torch.randn(4, 5, device=device), torch.zeros(0, 5, device=device), 3)
    assert out.shape == (4, 0)


@pytest.mark.parametrize(
    "q,b,gs,kw,match",
    [
        (torch.randn(3), torch.randn(4, 3), 1, {}, r"group_min: query must be 2-D \[Q, D\], got 1-D"),
        (torch.randn(2, 3), torch.randn(4, 5), 2, {}, r"same feature dimension D"),
        (torch.randn(2, 3), torch.randn(4, 3), 0, {}, r"group_size must be >= 1, got 0"),
        (torch.randn(2, 3), torch.randn(5, 3), 2, {}, r"multiple of group_size .* got N=5 and group_size=2"),
        (torch.randn(2, 3), torch.randn(4, 3).half(), 2, {}, r"same dtype"),
        (torch.randn(2, 3).double(), torch.randn(4, 3).double(), 2, {}, r"query dtype must be float32"),
        (torch.randn(2, 3), torch.randn(4, 3), 2, {"exclude_group": torch.zeros(3, dtype=torch.long)}, r"exclude_group must be 1-D \[Q\] with Q = 2"),
        (torch.randn(2, 3), torch.randn(4, 3), 2, {"exclude_group": torch.zeros(2)}, r"exclude_group must be int64"),
        (torch.randn(2, 3), torch.randn(4, 3), 2, {"exclude_group": torch.tensor([0, 2])}, r"in \[0, G\) or -1, with G = 2; got 2 for query 1"),
        (torch.randn(2, 3), torch.randn(4, 3), 2, {"exclude_group": torch.tensor([-2, 0])}, r"got -2 for query 0"),
    ],
)
def test_group_min_errors(q, b, gs, kw, match):
    with pytest.raises(RuntimeError, match=match):
        fastad.ops.group_min(q, b, gs, **kw)


def test_group_min_bad_metric():
    with pytest.raises(ValueError, match="metric must be one of"):
        fastad.ops.group_min(torch.randn(2, 3), torch.randn(4, 3), 2, "manhattan")
    with pytest.raises(RuntimeError, match="group_min: metric must be one of 'l2'"):
        torch.ops.fastad.group_min(torch.randn(2, 3), torch.randn(4, 3), 2, "manhattan", None)


@pytest.mark.parametrize("where", ["query", "bank"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_group_min_non_finite_raise(device, where, bad):
    q, b = torch.randn(4, 6), torch.randn(40, 6)
    (q if where == "query" else b)[1, 2] = bad
    with pytest.raises((RuntimeError, ValueError), match="finite"):
        fastad.ops.group_min(q.to(device), b.to(device), 10)


def test_group_min_thread_count_invariant(cpu_path, gen):
    old = torch.get_num_threads()
    for Q, G in [(150, 7), (2100, 3), (50, 1)]:
        q, b = _data(Q, G, 41, 17, gen)
        ex = torch.randint(-1, G, (Q,), generator=gen)
        try:
            torch.set_num_threads(1)
            a = fastad.ops.group_min(q, b, 41, exclude_group=ex)
            torch.set_num_threads(2)
            c = fastad.ops.group_min(q, b, 41, exclude_group=ex)
        finally:
            torch.set_num_threads(old)
        assert torch.equal(a, c)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_group_min_opcheck(device, metric, gen):
    q, b = _data(9, 4, 10, 6, gen)
    ex = torch.tensor([0, -1, 1, 2, 3, 0, -1, 1, 2])
    torch.library.opcheck(torch.ops.fastad.group_min.default, (q.to(device), b.to(device), 10, metric, None))
    torch.library.opcheck(torch.ops.fastad.group_min.default, (q.to(device), b.to(device), 10, metric, ex.to(device)))


def test_group_min_torch_compile(gen):
    q, b = _data(9, 4, 10, 6, gen)

    @torch.compile(backend="eager", fullgraph=True)
    def f(q, b):
        return torch.ops.fastad.group_min(q, b, 10, "l2", None)

    _assert_close(f(q, b), ref.group_min(q, b, 10))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_group_min_many_bank_chunks(device, metric, gen):
    """More groups than one chunk of the CUDA kernel holds (65,536 rows -> 65 groups of 1000)."""
    q, b = _data(5, 70, 1000, 3, gen, offset=2.0)
    ex = torch.tensor([0, 69, -1, 65, 3])
    out = fastad.ops.group_min(q.to(device), b.to(device), 1000, metric, exclude_group=ex.to(device))
    _assert_close(out, ref.group_min(q, b, 1000, metric, exclude_group=ex))


@pytest.mark.parametrize("Q,G,gs,D", [(101, 5, 67, 700), (250, 9, 16, 19), (48, 3, 400, 1030)])
def test_group_min_avx512_micro_bit_identical_to_avx2(monkeypatch, Q, G, gs, D, gen):
    # the AVX-512 24x16 micro-kernel computes the same FMA chains as the AVX2 6x16 one: equal outputs
    if fastad.build_info()["dist_micro_kernel"] != "avx512":
        pytest.skip("no AVX-512F on this CPU (or build): only the AVX2 micro-kernel can run here")
    q, b = _data(Q, G, gs, D, gen)
    ex = torch.randint(-1, G, (Q,), generator=gen)
    for metric in METRICS:
        monkeypatch.delenv("FASTAD_FORCE_AVX2", raising=False)
        a = fastad.ops.group_min(q, b, gs, metric, exclude_group=ex)
        monkeypatch.setenv("FASTAD_FORCE_AVX2", "1")
        assert fastad.build_info()["dist_micro_kernel"] == "avx2"
        c = fastad.ops.group_min(q, b, gs, metric, exclude_group=ex)
        assert torch.equal(a, c), metric
        _assert_close(c, ref.group_min(q, b, gs, metric, ex))
