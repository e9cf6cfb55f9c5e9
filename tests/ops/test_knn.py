import os

import pytest
import torch

import fastad
from fastad.ops import _reference as ref
from tests.helpers.knn_utils import assert_knn_equal

METRICS = ["l2", "sqeuclidean", "cosine", "ip"]


def _data(Q, N, D, gen, dup=False, offset=0.0):
    q = torch.randn(Q, D, generator=gen) + offset
    b = torch.randn(N, D, generator=gen) + offset
    if dup and N >= 4:  # duplicated bank rows -> exact ties
        b[N // 2 : N // 2 + N // 4] = b[: N // 4]
    return q, b


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    "Q,N,D,k",
    [(1, 1, 1, 1), (1, 50, 3, 5), (37, 600, 13, 7), (70, 1100, 64, 1), (5, 130, 129, 40), (129, 513, 8, 3)],
)
def test_knn_matches_reference(device, metric, Q, N, D, k, gen):
    q, b = _data(Q, N, D, gen, dup=True)
    d, i = fastad.ops.knn(q.to(device), b.to(device), k, metric)
    assert d.dtype == torch.float32 and i.dtype == torch.int64 and d.shape == (Q, k) and d.device == q.to(device).device
    rd, ri = ref.knn(q, b, k, metric)
    assert_knn_equal(d, i, rd, ri)


@pytest.mark.parametrize("metric", METRICS)
def test_knn_k_larger_than_bank_pads(device, metric, gen):
    q, b = _data(4, 3, 5, gen)
    d, i = fastad.ops.knn(q.to(device), b.to(device), 6, metric)
    pad = float("-inf") if metric == "ip" else float("inf")
    assert (d[:, 3:] == pad).all() and (i[:, 3:] == -1).all()
    rd, ri = ref.knn(q, b, 6, metric)
    assert_knn_equal(d, i, rd, ri)


def test_knn_exact_ties_prefer_smaller_index(device):
    b = torch.zeros(10, 4)
    b[:, 0] = torch.tensor([1.0, 2, 1, 2, 1, 3, 3, 1, 2, 5])
    q = torch.zeros(1, 4)
    d, i = fastad.ops.knn(q.to(device), b.to(device), 6)
    assert i[0].tolist() == [0, 2, 4, 7, 1, 3]
    assert d[0].tolist() == [1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_knn_low_precision_inputs(device, dtype, gen):
    q, b = _data(20, 300, 48, gen)
    q, b = q.to(dtype), b.to(dtype)
    d, i = fastad.ops.knn(q.to(device), b.to(device), 4)
    assert d.dtype == torch.float32
    rd, ri = ref.knn(q.float(), b.float(), 4)  # the kernel accumulates in fp32 on the rounded inputs
    assert_knn_equal(d, i, rd, ri, rtol=1e-3, atol=1e-3)


def test_knn_non_contiguous(device, gen):
    q, b = _data(30, 200, 20, gen)
    qt = torch.randn(20, 30, generator=gen).to(device).T  # [30, 20], non-contiguous
    bs = torch.randn(400, 20, generator=gen).to(device)[::2]  # strided rows
    assert not qt.is_contiguous() and not bs.is_contiguous()
    d, i = fastad.ops.knn(qt, bs, 5)
    rd, ri = ref.knn(qt.cpu(), bs.cpu(), 5)
    assert_knn_equal(d, i, rd, ri)


def test_knn_exclude_self(device, gen):
    _, b = _data(1, 300, 16, gen, dup=True)
    d, i = fastad.ops.knn(b.to(device), b.to(device), 3, exclude_self=True)
    assert not (i.cpu() == torch.arange(300)[:, None]).any()
    rd, ri = ref.knn(b, b, 3, exclude_self=True)
    assert_knn_equal(d, i, rd, ri)
    # duplicated rows find their twin at distance 0
    assert torch.allclose(d[:75, 0].cpu(), torch.zeros(75), atol=1e-3)


def test_knn_bank_norms(device, gen):
    q, b = _data(10, 100, 12, gen)
    norms = (b * b).sum(1)
    d1, i1 = fastad.ops.knn(q.to(device), b.to(device), 4, bank_norms=norms.to(device))
    d2, i2 = fastad.ops.knn(q.to(device), b.to(device), 4)
    assert torch.equal(i1, i2) and torch.allclose(d1, d2)


def test_knn_empty(device):
    d, i = fastad.ops.knn(torch.zeros(0, 5, device=device), torch.randn(7, 5, device=device), 3)
    assert d.shape == (0, 3) and i.shape == (0, 3)
    d, i = fastad.ops.knn(torch.randn(2, 5, device=device), torch.zeros(0, 5, device=device), 3)
    assert (d == float("inf")).all() and (i == -1).all()


def test_knn_offset_data_accuracy(device, gen):
    # non-centred features (PERF.md 2c): distances must still be accurate
    q, b = _data(16, 500, 256, gen, offset=4.0)
    d, i = fastad.ops.knn(q.to(device), b.to(device), 3)
    rd, ri = ref.knn(q, b, 3)
    assert_knn_equal(d, i, rd, ri, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "q,b,k,kw,match",
    [
        (torch.randn(3), torch.randn(4, 3), 1, {}, r"knn: query must be 2-D \[Q, D\], got 1-D"),
        (torch.randn(2, 3), torch.randn(4, 3, 1), 1, {}, r"knn: bank must be 2-D \[N, D\], got 3-D"),
        (torch.randn(2, 3), torch.randn(4, 5), 1, {}, r"same feature dimension D"),
        (torch.randn(2, 3), torch.randn(4, 3), 0, {}, r"k must be >= 1, got 0"),
        (torch.randn(2, 3), torch.randn(4, 3).double(), 1, {}, r"dtype must be float32, float16 or bfloat16|same dtype"),
        (torch.randn(2, 3).double(), torch.randn(4, 3).double(), 1, {}, r"query dtype must be float32"),
        (torch.randn(2, 3), torch.randn(4, 3).half(), 1, {}, r"same dtype"),
        (torch.randn(2, 0), torch.randn(4, 0), 1, {}, r"D must be >= 1"),
        (torch.randn(5, 3), torch.randn(4, 3), 1, {"exclude_self": True}, r"Q <= N"),
        (torch.randn(2, 3), torch.randn(4, 3), 1, {"bank_norms": torch.ones(3)}, r"bank_norms must be 1-D \[N\]"),
    ],
)
def test_knn_errors(q, b, k, kw, match):
    with pytest.raises(RuntimeError, match=match):
        fastad.ops.knn(q, b, k, **kw)


def test_knn_bad_metric():
    with pytest.raises(ValueError, match="metric must be one of"):
        fastad.ops.knn(torch.randn(2, 3), torch.randn(4, 3), 1, "manhattan")
    with pytest.raises(RuntimeError, match="metric must be one of 'l2'"):
        torch.ops.fastad.knn(torch.randn(2, 3), torch.randn(4, 3), 1, "manhattan")


@pytest.mark.parametrize("where", ["query", "bank"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_knn_non_finite_inputs_raise(device, where, bad):
    q, b = torch.randn(4, 6), torch.randn(9, 6)
    (q if where == "query" else b)[1, 2] = bad
    with pytest.raises((RuntimeError, ValueError), match="finite"):
        fastad.ops.knn(q.to(device), b.to(device), 2)


def test_knn_cuda_device_mismatch():
    if not (fastad.build_info()["cuda_compiled"] and torch.cuda.is_available()):
        pytest.skip("needs a GPU")
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.fastad.knn(torch.randn(2, 3), torch.randn(4, 3, device="cuda"), 1)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_opcheck(device, metric, gen):
    q, b = _data(9, 40, 10, gen)
    torch.library.opcheck(torch.ops.fastad.knn.default, (q.to(device), b.to(device), 3, metric, None, False))
    torch.library.opcheck(torch.ops.fastad.knn.default, (b.to(device), b.to(device), 5, metric, None, True))


def test_knn_torch_compile(gen):
    q, b = _data(9, 40, 10, gen)

    @torch.compile(backend="eager", fullgraph=True)
    def f(q, b):
        return torch.ops.fastad.knn(q, b, 2, "l2", None, False)

    d, i = f(q, b)
    rd, ri = ref.knn(q, b, 2)
    assert_knn_equal(d, i, rd, ri)


def test_knn_thread_count_invariant(gen):
    q, b = _data(200, 700, 33, gen, dup=True)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        d1, i1 = fastad.ops.knn(q, b, 5)
        torch.set_num_threads(2)
        d2, i2 = fastad.ops.knn(q, b, 5)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_build_info_keys():
    info = fastad.build_info()
    for key in ("version", "torch_compiled", "torch_runtime", "cuda_compiled", "cuda_archs", "openmp_threads", "simd"):
        assert key in info
    assert info["torch_compiled"] == torch.__version__
    assert info["simd"] in ("avx2", "generic")
    assert info["dist_micro_kernel"] in ("avx512", "avx2", "generic")
    # "simd" is what the CPU and build support; "dist_micro_kernel" is what runs (env switches included)
    forced = os.environ.get("FASTAD_FORCE_GENERIC", "") not in ("", "0")
    assert (info["dist_micro_kernel"] == "generic") == (info["simd"] == "generic" or forced)


def test_import_refuses_other_torch(monkeypatch):
    from fastad import _library

    monkeypatch.setattr(_library, "_sidecar", lambda: {"torch": "0.0.1"})
    with pytest.raises(ImportError, match=r"compiled against torch 0.0.1 but torch .* is installed.*make build"):
        _library._load()


# --- both CPU code paths (AVX2 GEMM and portable), edge shapes of the blocked kernel -------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    "Q,N,D,k",
    [(7, 37, 5, 3), (100, 530, 13, 4), (13, 1000, 700, 2), (200, 700, 33, 1), (6, 16, 8, 16)],
)
def test_knn_cpu_paths_match_reference(cpu_path, metric, Q, N, D, k, gen):
    # Q across query blocks (96) and panels (6), N across bank blocks / panels (16), D across depth passes (320)
    q, b = _data(Q, N, D, gen, dup=True)
    d, i = fastad.ops.knn(q, b, k, metric)
    rd, ri = ref.knn(q, b, k, metric)
    assert_knn_equal(d, i, rd, ri)


@pytest.mark.parametrize("offset", [4.0, 30.0])
@pytest.mark.parametrize("D", [64, 384])
def test_knn_offset_data_within_1e4_of_float64(cpu_path, offset, D, gen):
    # non-centred features: the expansion |q|^2+|b|^2-2qb cancels; centring + exact re-rank must keep 1e-4
    q, b = _data(40, 900, D, gen, offset=offset)
    q = b[:40] + 0.05 * torch.randn(40, D, generator=gen)  # near duplicates: small distances, large norms
    for metric in ("l2", "sqeuclidean"):
        d, i = fastad.ops.knn(q, b, 5, metric)
        rd, ri = ref.knn(q, b, 5, metric)
        assert_knn_equal(d, i, rd, ri, rtol=1e-4, atol=0)


@pytest.mark.parametrize("k", [33, 100])
def test_knn_large_k_heap(cpu_path, k, gen):
    q, b = _data(20, 400, 24, gen, dup=True)
    for metric in ("l2", "ip"):
        d, i = fastad.ops.knn(q, b, k, metric)
        rd, ri = ref.knn(q, b, k, metric)
        assert_knn_equal(d, i, rd, ri)
    d, i = fastad.ops.knn(b, b, k, exclude_self=True)
    rd, ri = ref.knn(b, b, k, exclude_self=True)
    assert_knn_equal(d, i, rd, ri)


def test_knn_ties_cpu_paths(cpu_path):
    b = torch.zeros(40, 4)
    b[:, 0] = torch.tensor([1.0, 2, 1, 2, 1, 3, 3, 1, 2, 5] * 4)
    d, i = fastad.ops.knn(torch.zeros(1, 4), b, 12)
    assert i[0].tolist() == [0, 2, 4, 7, 10, 12, 14, 17, 20, 22, 24, 27]
    d, i = fastad.ops.knn(torch.zeros(3, 4), b, 1)
    assert i[:, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("Q,N", [(200, 700), (2100, 64)])  # bank split across threads / query split
def test_knn_thread_count_invariant_paths(cpu_path, Q, N, gen):
    q, b = _data(Q, N, 19, gen, dup=True)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        d1, i1 = fastad.ops.knn(q, b, 5)
        e1 = fastad.ops.knn(b, b, 3, exclude_self=True)
        torch.set_num_threads(2)
        d2, i2 = fastad.ops.knn(q, b, 5)
        e2 = fastad.ops.knn(b, b, 3, exclude_self=True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)
    assert torch.equal(e1[0], e2[0]) and torch.equal(e1[1], e2[1])


def test_knn_paths_agree_and_bank_norms_ignored_safely(gen, monkeypatch):
    if fastad.build_info()["simd"] != "avx2":
        pytest.skip("AVX2/FMA kernels not available")
    q, b = _data(50, 300, 40, gen)
    d1, i1 = fastad.ops.knn(q, b, 4, bank_norms=(b * b).sum(1))
    monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    d2, i2 = fastad.ops.knn(q, b, 4)
    assert torch.equal(i1, i2) and torch.allclose(d1, d2, rtol=1e-5)


@pytest.mark.parametrize("where", ["query", "bank"])
def test_knn_non_finite_cpu_paths(cpu_path, where):
    q, b = torch.randn(4, 6), torch.randn(90, 6)
    (q if where == "query" else b)[3 if where == "query" else 77, 2] = float("nan")
    with pytest.raises(RuntimeError, match="finite"):
        torch.ops.fastad.knn(q, b, 2, "l2", None, False)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("N,k", [(70_000, 5), (9_000, 50)])
def test_knn_many_bank_chunks(device, metric, N, k, gen):
    """Banks longer than one chunk of the CUDA kernel (65,536 rows for k <= 32, 4096 - k above), with
    exact ties across chunks and exclude_self: the running top-k must merge chunks exactly."""
    q, b = _data(6, N, 4, gen, dup=True)
    q = b[[0, 1, N // 2, N - 1, 17, 65_535 % N]].clone()
    d, i = fastad.ops.knn(q.to(device), b.to(device), k, metric)
    rd, ri = ref.knn(q, b, k, metric)
    assert_knn_equal(d, i, rd, ri)
    d, i = fastad.ops.knn(b[:6].to(device), b.to(device), k, metric, exclude_self=True)
    rd, ri = ref.knn(b[:6], b, k, metric, exclude_self=True)
    assert_knn_equal(d, i, rd, ri)


# --- the AVX-512 24x16 micro-kernel against the AVX2 6x16 one (same packed operands, same FMA chains) ----


def _need_avx512_micro():
    if fastad.build_info()["dist_micro_kernel"] != "avx512":
        pytest.skip("no AVX-512F on this CPU (or build): only the AVX2 micro-kernel can run here")


@pytest.mark.parametrize(
    "Q,N,D,k",
    # Q: 24-row kernel calls plus 6-row remainders within and across 96-row query blocks; N: partial
    # 16-row panels; D: several depth slices (KC <= 512) and odd depths
    [(101, 333, 700, 7), (24, 16, 5, 1), (250, 1100, 19, 3), (97, 70, 1030, 40), (2100, 64, 9, 2)],
)
def test_knn_avx512_micro_bit_identical_to_avx2(monkeypatch, Q, N, D, k, gen):
    _need_avx512_micro()
    q, b = _data(Q, N, D, gen, dup=True)
    for metric in METRICS:
        monkeypatch.delenv("FASTAD_FORCE_AVX2", raising=False)
        d1, i1 = fastad.ops.knn(q, b, k, metric)
        monkeypatch.setenv("FASTAD_FORCE_AVX2", "1")
        assert fastad.build_info()["dist_micro_kernel"] == "avx2"
        d2, i2 = fastad.ops.knn(q, b, k, metric)
        assert torch.equal(i1, i2) and torch.equal(d1, d2), metric
        rd, ri = ref.knn(q, b, k, metric)
        assert_knn_equal(d2, i2, rd, ri)
