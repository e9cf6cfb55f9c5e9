"""float16 knn / group_min on CPU (issue 15): the float16 rows are converted per packed panel (F16C), never
upcast as a whole, and the results equal the float32 kernels on the upcast inputs bit for bit, hence the
float64 reference on the rounded inputs within the float32 path's accuracy."""
import subprocess
import sys
import textwrap

import pytest
import torch

import fastad
from fastad.ops import _reference as ref
from tests.helpers.knn_utils import assert_knn_equal

AVX2 = fastad.build_info()["simd"] == "avx2"
needs_avx2 = pytest.mark.skipif(not AVX2, reason="the per-panel float16 conversion is in the AVX2 kernel")
METRICS = ["l2", "sqeuclidean", "cosine", "ip"]


def _data(gen, Q, N, D, shift=0.0):
    q = (torch.randn(Q, D, generator=gen) * 3 + shift).half()
    b = (torch.randn(N, D, generator=gen) * 3 + shift).half()
    b[N // 2 : N // 2 + N // 4] = b[: N // 4]  # exact ties
    if Q > 1 and N > 1:
        q[0] = b[1]  # a zero distance
    return q, b


@needs_avx2
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("Q,N,D,k,shift", [(1, 1, 1, 1, 0), (7, 50, 3, 5, 0), (31, 300, 33, 7, 40.0),
                                           (20, 517, 64, 1, 0), (5, 130, 300, 9, -7.0), (3, 20, 16, 30, 0)])
def test_f16_knn_equals_float32_on_upcast_and_reference(metric, Q, N, D, k, shift, gen):
    q, b = _data(gen, Q, N, D, shift)
    d, i = fastad.ops.knn(q, b, k, metric)
    d32, i32 = fastad.ops.knn(q.float(), b.float(), k, metric)
    assert torch.equal(d, d32) and torch.equal(i, i32)
    rd, ri = ref.knn(q, b, k, metric)  # float64 on the rounded (float16) values
    assert_knn_equal(d, i, rd, ri, rtol=1e-4, atol=1e-3)
    if Q <= N and metric == "l2":
        de, ie = fastad.ops.knn(q, b, min(k, N), metric, exclude_self=True)
        d32, i32 = fastad.ops.knn(q.float(), b.float(), min(k, N), metric, exclude_self=True)
        assert torch.equal(de, d32) and torch.equal(ie, i32)


@needs_avx2
@pytest.mark.parametrize("metric", METRICS)
def test_f16_group_min_equals_float32_on_upcast(metric, gen):
    q, b = _data(gen, 40, 12 * 37, 45, 3.0)
    ex = torch.randint(-1, 12, (40,), generator=gen)
    out = fastad.ops.group_min(q, b, 37, metric, exclude_group=ex)
    assert torch.equal(out, fastad.ops.group_min(q.float(), b.float(), 37, metric, exclude_group=ex))
    r = ref.group_min(q, b, 37, metric, exclude_group=ex)
    assert torch.allclose(out.double(), r, rtol=1e-4, atol=1e-3)


@needs_avx2
def test_f16_nonfinite_rows_are_named(gen):
    q, b = _data(gen, 4, 30, 8)
    b[17, 3] = float("inf")
    with pytest.raises(RuntimeError, match="bank must hold finite values, but row 17"):
        torch.ops.fastad.knn(q, b, 2, "l2", None, False)
    q[2, 0] = float("nan")
    with pytest.raises(RuntimeError, match="query must hold finite values, but row 2"):
        torch.ops.fastad.knn(q, b[:10], 2, "l2", None, False)


@needs_avx2
def test_f16_knn_makes_no_bank_sized_copy():
    """Peak RSS of a child process: a float32 copy of the 96 MiB float16 bank would add 192 MiB."""
    code = textwrap.dedent("""
        import resource, torch, fastad
        torch.set_num_threads(1)
        b = torch.randn(196608, 256).half()   # 96 MiB of float16
        q = torch.randn(64, 256).half()
        fastad.ops.knn(q[:2], b[:64], 1)      # loads the kernels, allocates the small tiles
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        d, i = fastad.ops.knn(q, b, 3)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grew)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grew_kib = int(out.stdout.split()[-1])
    assert grew_kib < 48 * 1024, f"peak RSS grew by {grew_kib / 1024:.0f} MiB (a float32 bank copy is 192 MiB)"
