"""Fuzz (hypothesis) over the public op API and a few CLI argument combinations (issue 11).

The contract: a clear error (``ValueError`` / ``TypeError`` / ``RuntimeError`` whose message names
the op and an argument) or the correct answer (checked against ``fastad.ops._reference``); never a
crash, a hang, a traceback or a silent zero. Kept small (< 30 s on 2 busy cores).
"""
import re

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastad  # noqa: E402
from fastad.ops import _reference as ref  # noqa: E402

SETTINGS = dict(max_examples=60, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64]
DEVICES = ["cpu"] + (["cuda"] if fastad.build_info()["cuda_available"] else [])
BIG_K = 1 << 40


def _clear_error(e: BaseException, op: str, args: tuple[str, ...]) -> None:
    msg = str(e)
    assert isinstance(e, (ValueError, TypeError, RuntimeError)), f"{type(e).__name__}: {msg}"
    assert op in msg, f"the message does not name {op}: {msg}"
    assert any(re.search(rf"\b{a}\b", msg) for a in args), f"the message names none of {args}: {msg}"
    assert "Traceback" not in msg and "Exception raised from" not in msg, msg


@st.composite
def tensor(draw, rows, cols, dtype, device):
    t = torch.randn(rows, cols, generator=torch.Generator().manual_seed(draw(st.integers(0, 999))))
    if rows * cols and draw(st.booleans()) and draw(st.booleans()):
        t.view(-1)[draw(st.integers(0, rows * cols - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    if dtype.is_floating_point:
        return t.to(dtype).to(device)
    return (t * 10).nan_to_num(0, 0, 0).to(dtype).to(device)


@settings(**SETTINGS)
@given(data=st.data(), Q=st.integers(0, 6), N=st.integers(0, 9), D=st.integers(0, 5),
       k=st.one_of(st.integers(-2, 12), st.just(BIG_K)), metric=st.sampled_from(["l2", "sqeuclidean", "cosine", "ip", "L2"]),
       dtype=st.sampled_from(DTYPES), device=st.sampled_from(DEVICES), exclude_self=st.booleans())
def test_fuzz_knn(data, Q, N, D, k, metric, dtype, device, exclude_self):
    q = data.draw(tensor(Q, D, dtype, device))
    bdtype = data.draw(st.sampled_from([dtype, dtype, torch.float32]))
    b = data.draw(tensor(N, D, bdtype, device))
    try:
        d, i = fastad.ops.knn(q, b, k, metric, exclude_self=exclude_self)
    except Exception as e:  # noqa: BLE001
        _clear_error(e, "knn", ("query", "bank", "k", "metric", "exclude_self", "dtype", "D"))
        return
    # accepted: then it must be right
    assert dtype in (torch.float32, torch.float16, torch.bfloat16) and dtype == bdtype
    assert metric != "L2" and k >= 1 and D >= 1
    assert bool(torch.isfinite(q).all()) and bool(torch.isfinite(b).all())
    assert d.shape == (Q, k) and i.shape == (Q, k) and d.dtype == torch.float32 and i.dtype == torch.int64
    want_d, want_i = ref.knn(q.cpu().float(), b.cpu().float(), k, metric, exclude_self=exclude_self)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.equal(i.cpu() < 0, want_i < 0)
    assert torch.allclose(d.cpu().double(), want_d, rtol=tol, atol=tol, equal_nan=False)


@settings(**SETTINGS)
@given(data=st.data(), Q=st.integers(0, 5), G=st.integers(0, 4), gs=st.integers(-1, 4), D=st.integers(1, 4),
       metric=st.sampled_from(["l2", "sqeuclidean", "cosine", "ip"]), dtype=st.sampled_from(DTYPES[:3] + [torch.float64]),
       exclude=st.sampled_from([None, "ok", "bad", "short"]))
def test_fuzz_group_min(data, Q, G, gs, D, metric, dtype, exclude):
    N = G * max(gs, 1) + (data.draw(st.integers(0, 1)) if gs > 1 else 0)
    q = data.draw(tensor(Q, D, dtype, "cpu"))
    b = data.draw(tensor(N, D, dtype, "cpu"))
    ex = None
    if exclude == "ok" and G:
        ex = torch.randint(-1, G, (Q,))
    elif exclude == "bad":
        ex = torch.full((Q,), G + 3)
    elif exclude == "short":
        ex = torch.zeros(Q + 1, dtype=torch.int64)
    try:
        out = fastad.ops.group_min(q, b, gs, metric, exclude_group=ex)
    except Exception as e:  # noqa: BLE001
        _clear_error(e, "group_min", ("query", "bank", "group_size", "exclude_group", "metric", "dtype", "N"))
        return
    assert gs >= 1 and N % gs == 0 and dtype != torch.float64
    if out.numel():  # an empty result (no groups or no queries) does not depend on the values
        assert bool(torch.isfinite(q).all()) and bool(torch.isfinite(b).all())
    want = ref.group_min(q.float(), b.float(), gs, metric, ex)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert out.shape == (Q, N // gs)
    assert torch.allclose(out.double(), want, rtol=tol, atol=tol)


@settings(**SETTINGS)
@given(data=st.data(), B=st.integers(0, 3), H=st.integers(0, 4), C=st.integers(0, 4), r=st.integers(-1, 6),
       dtype=st.sampled_from(DTYPES[:3] + [torch.float64]), nonsquare=st.booleans())
def test_fuzz_lnamd(data, B, H, C, r, dtype, nonsquare):
    L = H * H + (1 if nonsquare and H else 0)
    t = data.draw(tensor(B * L, C, dtype, "cpu")).reshape(B, L, C)
    try:
        out = fastad.ops.lnamd(t, r)
    except Exception as e:  # noqa: BLE001
        _clear_error(e, "lnamd", ("tokens", "r", "L", "C", "dtype"))
        return
    assert r >= 1 and r % 2 == 1 and not (nonsquare and H) and dtype != torch.float64
    assert bool(torch.isfinite(t).all())
    if B * L * C:
        want = ref.lnamd(t.float(), r)
        assert torch.allclose(out.double(), want.double(), rtol=2e-2 if dtype != torch.float32 else 1e-4, atol=2e-2)


@settings(**SETTINGS)
@given(data=st.data(), N=st.integers(0, 6), H=st.integers(1, 3), C=st.integers(1, 4), k=st.integers(-1, 7),
       pool=st.integers(-1, 4))
def test_fuzz_mutual_scores(data, N, H, C, k, pool):
    z = data.draw(tensor(N * H * H, C, torch.float32, "cpu")).reshape(N, H * H, C)
    p = None if pool < 0 else data.draw(tensor(pool * H * H, C, torch.float32, "cpu")).reshape(pool, H * H, C)
    try:
        out = fastad.ops.mutual_scores(z, k=k, pool=p)
    except Exception as e:  # noqa: BLE001
        _clear_error(e, "mutual_scores", ("z", "k", "pool", "N", "L", "C"))
        return
    assert out.shape == (N, H * H)
    if N == 0:  # nothing to score
        return
    n_ref = pool if p is not None else N - 1
    assert 1 <= k <= n_ref and bool(torch.isfinite(z).all()) and (p is None or bool(torch.isfinite(p).all()))
    want = ref.mutual_scores(z, k, p)
    assert torch.allclose(out.double(), want.double(), rtol=1e-3, atol=1e-3)


@settings(**dict(SETTINGS, max_examples=40))
@given(data=st.data(), N=st.integers(0, 12), D=st.integers(0, 4), n=st.one_of(st.integers(-1, 14), st.just(BIG_K)),
       dtype=st.sampled_from(DTYPES[:3] + [torch.float64]))
def test_fuzz_coreset(data, N, D, n, dtype):
    b = data.draw(tensor(N, D, dtype, "cpu"))
    try:
        idx, dist = torch.ops.fastad.coreset(b, n)
    except Exception as e:  # noqa: BLE001
        _clear_error(e, "coreset", ("bank", "n", "start", "N", "D", "dtype"))
        return
    assert 1 <= n <= N and D >= 1 and bool(torch.isfinite(b).all()) and dtype != torch.float64
    want_i, want_d = ref.coreset(b.float(), n)
    assert idx.shape == (n,) and len(set(idx.tolist())) == n
    assert torch.allclose(dist.double(), want_d.double(), rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from tests.test_cli import make_tree

    return make_tree(tmp_path_factory.mktemp("fuzzdata") / "toy", n_train=10, n_good=2, n_bad=2)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(ratio=st.sampled_from(["1e-9", "0.001", "0.5", "0", "2", "abc", "nan"]),
       size=st.sampled_from(["7", "16", "32", "0", "x"]),
       nn=st.sampled_from(["1", "9", "0", "100000"]))
def test_fuzz_cli_fit(ratio, size, nn, tree, tmp_path_factory, capsys):
    """`fastad fit` exits 0 with a model that does not score everything 0, or exits 2 with one line
    naming an option that exists (and, for a degenerate value, one that works)."""
    from fastad.cli import main

    out = tmp_path_factory.mktemp("fit") / "m.safetensors"
    argv = ["fit", "--data", str(tree), "--out", str(out), "--backbone", "random_cnn", "--num-workers", "0", "-q",
            "--coreset-ratio", ratio, "--image-size", size, "--num-neighbors", nn]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: one line, status 2
        rc = e.code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip() and "warning" not in l]
    if rc == 0:
        from fastad.detectors import load

        det = load(out)
        x = torch.rand(2, 3, int(size), int(size))
        s = det.decision_function(x)
        assert bool(torch.isfinite(s).all()) and float(s.abs().max()) > 0, "a silent zero"
        return
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert re.search(r"--(coreset-ratio|image-size|num-neighbors)\b", line), line
    assert "_ratio" not in line and "positive_int" not in line, line
    if "would be" in line or "smaller than" in line or "fewer than" in line:
        assert re.search(r"(--coreset-ratio|--image-size|--num-neighbors)[ =]\d", line.split(";")[-1]), line
    assert not out.exists()


BAD_VALUES = {
    "--batch-size": ["0", "-3", "x", "1.5"], "--num-workers": ["-1", "two"], "--seed": ["s"], "--image-size": ["0", "-7", "big"],
    "--top-k": ["-1", "k"], "--heatmaps": ["-2", "some"], "--max-images": ["0"], "--coreset-ratio": ["0", "1.5", "nan", "r"],
    "--calibration": ["1", "-0.1"], "--threshold-quantile": ["1.01", "q"], "--projection-dim": ["0", "-1", "p"],
    "--fraction": ["0", "2"], "--k-list": ["a,b", "-1"], "--r-list": ["", "2", "1,4"], "--same-position": ["2", "0"], "--divide-num": ["0"], "--contamination": ["1"],
}
COMMAND_OPTIONS = {
    "fit": ["--batch-size", "--num-workers", "--seed", "--image-size", "--coreset-ratio", "--calibration",
            "--threshold-quantile", "--projection-dim"],
    "predict": ["--batch-size", "--num-workers", "--image-size", "--top-k", "--heatmaps", "--max-images"],
    "zeroshot": ["--batch-size", "--image-size", "--top-k", "--heatmaps", "--fraction", "--k-list", "--r-list",
                 "--divide-num", "--contamination", "--same-position"],
    "demo": ["--batch-size", "--image-size", "--coreset-ratio", "--calibration", "--top-k"],
}
REQUIRED = {"fit": ["--data", "d", "--out", "m.safetensors"], "predict": ["--model", "m", "--data", "d", "--out", "r"],
            "zeroshot": ["--data", "d", "--out", "r"], "demo": []}


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), command=st.sampled_from(sorted(COMMAND_OPTIONS)))
def test_fuzz_cli_bad_option_values_are_one_line_errors(data, command, capsys):
    """A bad option value: exit 2, one line naming the option, no internal function names, before any work."""
    from fastad.cli import main

    option = data.draw(st.sampled_from(COMMAND_OPTIONS[command]))
    value = data.draw(st.sampled_from(BAD_VALUES[option]))
    with pytest.raises(SystemExit) as e:
        main([command] + REQUIRED[command] + [option, value])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert e.value.code == 2 and len(lines) == 1, err
    assert option in lines[0] and "Traceback" not in err, err
    assert not re.search(r"invalid \w+ value|_ratio|_pos_int|positive_int|_fraction|_int_list|_odd", lines[0]), lines[0]


@settings(**dict(SETTINGS, max_examples=40))
@given(data=st.data(), B=st.integers(0, 3), H=st.integers(1, 4), C=st.integers(1, 4),
       r_list=st.lists(st.integers(-1, 6), min_size=0, max_size=3), k=st.integers(0, 4))
def test_fuzz_snamd_and_lnamd_mutual_scores(data, B, H, C, r_list, k):
    t = data.draw(tensor(B * H * H, C, torch.float32, "cpu")).reshape(B, H * H, C)
    try:
        out = fastad.ops.snamd(t, r_list)
    except Exception as e:  # noqa: BLE001
        _clear_error(e, "snamd", ("tokens", "r_list", "r", "L", "C"))
    else:
        assert r_list and all(r >= 1 and r % 2 for r in r_list) and bool(torch.isfinite(t).all())
        if out.numel():
            torch.testing.assert_close(out.double(), ref.snamd(t, r_list), rtol=1e-3, atol=1e-4)
    try:
        out = fastad.ops.lnamd_mutual_scores(t, r_list, k=k)
    except Exception as e:  # noqa: BLE001
        _clear_error(e, "lnamd_mutual_scores", ("tokens", "r_list", "r", "k", "pool", "L", "C"))
        return
    assert r_list and all(r >= 1 and r % 2 for r in r_list) and bool(torch.isfinite(t).all())
    assert out.shape == (len(r_list), B, H * H)
    if B:
        assert 1 <= k <= B - 1
        want = torch.stack([ref.mutual_scores(ref.lnamd(t, r).float(), k) for r in r_list])
        torch.testing.assert_close(out.double(), want, rtol=1e-3, atol=1e-3)


@settings(**dict(SETTINGS, max_examples=40))
@given(data=st.data(), N=st.integers(0, 6), D=st.integers(0, 3), constant=st.booleans(), zero_row=st.booleans())
def test_fuzz_rscin(data, N, D, constant, zero_row):
    k_list = data.draw(st.lists(st.integers(-1, N + 1), min_size=1, max_size=3))
    s = torch.full((N,), 0.5) if constant else data.draw(tensor(1, N, torch.float32, "cpu")).reshape(N)
    f = data.draw(tensor(N, D, torch.float32, "cpu")).abs()
    if zero_row and N:
        f[0] = 0
    try:
        out = fastad.ops.rscin(s, f, k_list)
    except Exception as e:  # noqa: BLE001
        _clear_error(e, "rscin", ("scores", "image_features", "k_list", "k", "N"))
        return
    if 0 in k_list:
        assert out is s
        return
    assert bool(torch.isfinite(out).all()), (s, f, k_list, out)  # never a silent NaN
    assert all(1 <= k <= N for k in k_list)


@settings(**dict(SETTINGS, max_examples=30))
@given(N=st.integers(0, 3), h=st.integers(1, 5), w=st.integers(1, 5), S=st.integers(1, 40))
def test_fuzz_bilinear_max(N, h, w, S):
    g = torch.randn(N, h, w, generator=torch.Generator().manual_seed(N * 100 + h * 10 + w))
    out = fastad.ops.bilinear_max(g, S, rows_per_chunk=7)
    want = torch.nn.functional.interpolate(g[:, None], size=(S, S), mode="bilinear", align_corners=True).amax(dim=(1, 2, 3)) \
        if N else torch.empty(0)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
